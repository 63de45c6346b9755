//! The pipeline's HTTP side: per-connection request/response bookkeeping
//! (HTTP/1.1 answers requests in order), the legacy SSE `endpoint`
//! binding, and JSON-RPC errors made from HTTP statuses.

use std::{collections::VecDeque, sync::Arc};

use super::{Core, HttpCtx, Join, StreamKey};
use crate::{
    capture::Task,
    protocol::{
        http::{legacy_session_id, HttpHead},
        Kind, Message, RpcId,
    },
    stream::{
        fdinfo::FdKind,
        framer::{Frame, LineFramer},
        http::{HttpFramer, HttpItem, HttpStats},
        sse::SseStats,
    },
};

/// Requests in flight on one connection before the oldest is dropped
/// (counted): HTTP/1.1 pipelining depth is small in practice.
const MAX_IN_FLIGHT: usize = 64;
/// JSON-RPC ids remembered per HTTP request (a batch).
const MAX_IDS: usize = 64;

/// How a stream is cut into messages.
pub(super) enum Framing {
    /// stdio: one JSON-RPC message per line.
    Line(LineFramer),
    /// HTTP/1.1, with JSON and SSE bodies.
    Http(Box<HttpFramer>),
}

/// One HTTP request awaiting its response on a connection.
pub(super) struct Request {
    head: Arc<HttpHead>,
    /// Ids of the JSON-RPC requests in its body.
    ids: Vec<RpcId>,
    /// Its body held JSON-RPC, or its head MCP headers.
    mcp: bool,
    /// Its body was read to the end.
    ended: bool,
}

/// An error status answered a request before its body was read (an auth
/// layer answers 401 from the head alone): the errors are made once the
/// body shows which JSON-RPC requests it carried.
pub(super) struct Deferred {
    /// The answer's head.
    head: Arc<HttpHead>,
    request: Request,
    /// The answering stream, and when the answer was written.
    key: StreamKey,
    meta: (FdKind, Join),
    task: Task,
    ts_ns: u64,
}

/// One HTTP connection as seen from one process (both directions of its fd).
#[derive(Default)]
pub(super) struct Conn {
    requests: VecDeque<Request>,
    /// The request the response being read answers.
    answering: Option<Request>,
    /// The response being read carried a JSON-RPC message.
    answered: bool,
    /// Legacy HTTP+SSE: the session named by the stream's `endpoint` event.
    session: Option<Box<str>>,
    /// An error status whose request's body is still to come.
    deferred: Option<Box<Deferred>>,
}

impl Conn {
    /// The request whose body is being read: the last request head read,
    /// wherever it is now (waiting, being answered, or answered early).
    fn body_owner(&mut self) -> Option<&mut Request> {
        if !self.requests.is_empty() {
            return self.requests.back_mut();
        }
        if self.answering.as_ref().is_some_and(|r| !r.ended) {
            return self.answering.as_mut();
        }
        self.deferred.as_mut().map(|d| &mut d.request)
    }
}

/// Counters of HTTP streams that ended (live streams are added at export).
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpTotals {
    /// HTTP framing.
    pub http: HttpStats,
    /// SSE parsing.
    pub sse: SseStats,
    /// Requests dropped from a connection's in-flight queue.
    pub requests_evicted: u64,
    /// Errors made from HTTP statuses.
    pub status_errors: u64,
}

impl HttpTotals {
    /// Adds a framer's counters.
    pub(super) fn add(&mut self, f: &HttpFramer) {
        let (h, s) = (f.stats, f.sse_stats());
        let t = &mut self.http;
        t.messages += h.messages;
        t.bad_heads += h.bad_heads;
        t.bad_chunks += h.bad_chunks;
        t.resyncs += h.resyncs;
        t.resync_bytes += h.resync_bytes;
        t.decode_errors += h.decode_errors;
        t.oversized_bodies += h.oversized_bodies;
        t.skipped_body_bytes += h.skipped_body_bytes;
        t.cut_sse_events += h.cut_sse_events;
        let u = &mut self.sse;
        u.events += s.events;
        u.empty_events += s.empty_events;
        u.comments += s.comments;
        u.retries += s.retries;
        u.truncated += s.truncated;
    }
}

impl Core {
    /// A framer's stream ended: keep its counters.
    pub(super) fn http_ended(&mut self, f: &HttpFramer) {
        self.http_totals.add(f);
    }

    /// Handles one HTTP item. Some(true) when it was MCP, Some(false) when
    /// it was HTTP that is not MCP (a strike against the stream), None when
    /// it says neither.
    pub(super) fn on_http(
        &mut self,
        key: StreamKey,
        meta: (FdKind, Join),
        task: Task,
        ts_ns: u64,
        item: HttpItem<'_>,
    ) -> Option<bool> {
        let ck = (key.tgid, key.fd);
        match item {
            HttpItem::Head(h) => {
                let conn = self.conns.entry(ck).or_default();
                if h.method.is_some() {
                    // A new request: the deferred one's body never came.
                    conn.deferred = None;
                    if conn.requests.len() >= MAX_IN_FLIGHT {
                        conn.requests.pop_front();
                        self.http_totals.requests_evicted += 1;
                    }
                    conn.requests.push_back(Request {
                        mcp: h.has_mcp_headers() || h.accept_sse,
                        head: h.clone(),
                        ids: Vec::new(),
                        ended: false,
                    });
                } else {
                    conn.answering = conn.requests.pop_front();
                    conn.answered = false;
                }
                None
            }
            HttpItem::Endpoint(url) => {
                let conn = self.conns.entry(ck).or_default();
                let query = url.split_once('?').map_or("", |(_, q)| q);
                conn.session = legacy_session_id(query);
                if let Some(r) = &mut conn.answering {
                    r.mcp = true;
                }
                Some(true)
            }
            HttpItem::Message(m) => {
                let conn = self.conns.entry(ck).or_default();
                let request_side = m.head.method.is_some();
                let mut head = m.head.clone();
                if head.session_id.is_none() {
                    // A response names no session: its request, or the
                    // legacy stream's endpoint, does.
                    let known = conn
                        .answering
                        .as_ref()
                        .filter(|_| !request_side)
                        .and_then(|r| r.head.session_id.clone())
                        .or_else(|| conn.session.clone());
                    if known.is_some() {
                        let mut h = (*head).clone();
                        h.session_id = known;
                        head = Arc::new(h);
                    }
                }
                let (sse_event, sse_id) = m.sse.unwrap_or((None, None));
                let session_key = if request_side {
                    m.head.session_id.clone()
                } else {
                    conn.answering
                        .as_ref()
                        .and_then(|r| r.head.session_id.clone())
                        .or_else(|| conn.session.clone())
                };
                let answers = match &conn.answering {
                    Some(r) if !request_side && r.ids.len() == 1 => r.ids.first().cloned(),
                    _ => None,
                };
                let ctx = HttpCtx {
                    head,
                    sse_event: sse_event.map(Into::into),
                    sse_id: sse_id.map(Into::into),
                    from_status: false,
                    tls: task.tls,
                    answers,
                    session_key,
                };
                let frame = Frame {
                    bytes: m.bytes,
                    truncated: m.truncated,
                    len: m.len,
                };
                let ok = self.on_frame(key, meta, task, ts_ns, frame, Some(&ctx));
                // on_frame may have added the request's ids: look it up again.
                if let (true, Some(conn)) = (ok, self.conns.get_mut(&ck)) {
                    if request_side {
                        if let Some(r) = conn.body_owner() {
                            r.mcp = true;
                        }
                    } else {
                        conn.answered = true;
                        if let Some(r) = &mut conn.answering {
                            r.mcp = true;
                        }
                    }
                }
                Some(ok)
            }
            HttpItem::End(h) => {
                let conn = self.conns.entry(ck).or_default();
                if h.method.is_some() {
                    if let Some(d) = conn.deferred.take_if(|_| conn.requests.is_empty()) {
                        // The body of a request already answered by an error
                        // status: now its ids are known.
                        let mcp = !d.request.ids.is_empty();
                        if mcp {
                            let Deferred {
                                head,
                                request,
                                key: answering,
                                meta,
                                task,
                                ts_ns: written,
                            } = *d;
                            // Dated just after the body was read, not when
                            // the status was written: an answer cannot
                            // precede the request it pairs with (held
                            // one-sided copies leave in timestamp order).
                            let ts = written.max(ts_ns + 1);
                            self.status_errors(answering, meta, task, ts, &head, request);
                        }
                        return Some(mcp);
                    }
                    let mcp = conn.body_owner().is_some_and(|r| {
                        r.ended = true;
                        r.mcp
                    });
                    if mcp && h.method.as_deref() == Some("DELETE") && h.session_id.is_some() {
                        // The other end's copy says the same: report once,
                        // from the sender (or the receiver when it is alone).
                        if key.egress || meta.1.other_end.is_none() {
                            let data = serde_json::json!({
                                "pid": key.tgid, "fd": key.fd,
                                "session_id": h.session_id, "path": h.path,
                            });
                            self.record("http_session_delete", ts_ns, &data);
                        }
                    }
                    return Some(mcp);
                }
                let request = conn.answering.take();
                let answered = std::mem::take(&mut conn.answered);
                let mcp =
                    answered || h.has_mcp_headers() || request.as_ref().is_some_and(|r| r.mcp);
                let status = h.status.unwrap_or(0);
                if status >= 400 && !answered {
                    match request {
                        Some(r) if !r.ids.is_empty() => {
                            self.status_errors(key, meta, task, ts_ns, h, r)
                        }
                        Some(r) if !r.ended && conn.requests.is_empty() => {
                            conn.deferred = Some(Box::new(Deferred {
                                head: h.clone(),
                                request: r,
                                key,
                                meta,
                                task,
                                ts_ns,
                            }));
                        }
                        _ => {}
                    }
                }
                Some(mcp)
            }
        }
    }

    /// A 4xx/5xx answer without a JSON-RPC body: each JSON-RPC request the
    /// HTTP request carried gets an error, so it is paired and counted
    /// like any failed call (`error_type` is the status code).
    fn status_errors(
        &mut self,
        key: StreamKey,
        meta: (FdKind, Join),
        task: Task,
        ts_ns: u64,
        h: &Arc<HttpHead>,
        r: Request,
    ) {
        let status = h.status.unwrap_or(0);
        let mut head = (**h).clone();
        if head.session_id.is_none() {
            head.session_id = r.head.session_id.clone();
        }
        let ctx = HttpCtx {
            head: Arc::new(head),
            sse_event: None,
            sse_id: None,
            from_status: true,
            tls: task.tls,
            answers: None,
            session_key: r.head.session_id.clone(),
        };
        for (i, id) in r.ids.into_iter().enumerate() {
            self.http_totals.status_errors += 1;
            let msg = Message {
                kind: Some(Kind::Error),
                id: Some(id),
                is_error: true,
                error_message: Some(format!("HTTP {status}").into()),
                ..Message::default()
            };
            // Both ends make the same error from the same status line:
            // the join key is built from it, so they meet like any copy.
            let text = format!("HTTP {status} {i} {:?}", msg.id);
            self.route_made(key, meta, task, ts_ns, msg, ctx.clone(), text.as_bytes());
        }
    }

    /// Remembers the id of a JSON-RPC request read from an HTTP request
    /// body, for errors made from its response's status.
    pub(super) fn note_request_id(&mut self, key: StreamKey, h: &HttpCtx, msg: &Message) {
        if h.head.method.is_none() || msg.kind != Some(Kind::Request) {
            return;
        }
        if let (Some(id), Some(conn)) = (&msg.id, self.conns.get_mut(&(key.tgid, key.fd))) {
            if let Some(r) = conn.body_owner().filter(|r| r.ids.len() < MAX_IDS) {
                r.ids.push(id.clone());
            }
        }
    }
}
