//! HTTP/1.1 framing of one direction of one connection: heads parsed by
//! `httparse`, bodies delimited by `Content-Length`, chunked encoding
//! (`httparse::parse_chunk_size`) or the connection's end, decoded from
//! gzip/deflate by `flate2`, and `text/event-stream` bodies handed to the
//! [`SseParser`] as they arrive. Keep-alive and pipelining fall out of the
//! loop: one message after another in the same byte stream.
//!
//! Non-MCP HTTP is recognised from the head alone (no JSON or event-stream
//! content type, no MCP header) and its body is skipped without copying.
//!
//! Losses never go unnoticed: bytes lost inside a body mark its message
//! truncated; bytes lost where the framing itself lives (a head, a chunk
//! size) make the framer drop data until a syscall starts with an HTTP
//! start line again, counted as a resync.

use std::{io::Read, sync::Arc};

use memchr::memmem;

use super::sse::{SseEvent, SseParser};
use crate::protocol::http::{Encoding, HttpHead};

/// Largest head accepted; a longer one is bad input (counted, resynced).
pub const MAX_HEAD: usize = 64 * 1024;
/// Bytes of a cut body's tail kept for salvage (where `id` may sit).
const TAIL_KEEP: usize = 4096;

/// Counters of the HTTP framer.
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpStats {
    /// HTTP messages (requests and responses) framed.
    pub messages: u64,
    /// Heads that `httparse` rejected or that exceeded [`MAX_HEAD`].
    pub bad_heads: u64,
    /// Invalid chunk-size lines.
    pub bad_chunks: u64,
    /// Times the framer lost its place and waited for a new start line.
    pub resyncs: u64,
    /// Bytes dropped while waiting for a start line.
    pub resync_bytes: u64,
    /// Bodies that could not be decompressed (corrupt, or an encoding
    /// other than gzip/deflate).
    pub decode_errors: u64,
    /// Bodies longer than the message limit (cut; head and tail kept).
    pub oversized_bodies: u64,
    /// Bodies of non-MCP messages skipped unread.
    pub skipped_body_bytes: u64,
    /// SSE events cut by the connection's end (or a gap) before their
    /// blank line: never dispatched.
    pub cut_sse_events: u64,
}

/// What the framer found, in stream order.
#[derive(Debug)]
pub enum HttpItem<'a> {
    /// A head was parsed; its body (if any) follows.
    Head(&'a Arc<HttpHead>),
    /// A JSON body, or one SSE event's data, of the current message.
    Message(BodyMessage<'a>),
    /// A legacy HTTP+SSE `endpoint` event: the URL the client must POST to.
    Endpoint(&'a str),
    /// The current message is complete.
    End(&'a Arc<HttpHead>),
}

/// One candidate JSON-RPC text from a body.
#[derive(Debug)]
pub struct BodyMessage<'a> {
    /// The head of the HTTP message carrying it.
    pub head: &'a Arc<HttpHead>,
    /// The bytes (for a cut body: head and tail).
    pub bytes: &'a [u8],
    /// True size.
    pub len: u64,
    /// Bytes were lost or cut.
    pub truncated: bool,
    /// `Some((event, id))` when it came as an SSE event.
    pub sse: Option<(Option<&'a str>, Option<&'a str>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delim {
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a head.
    Head,
    /// In a body delimited by length or connection end.
    Body,
    /// Waiting for a chunk-size line.
    ChunkSize,
    /// Inside chunk data: bytes left.
    ChunkData(u64),
    /// After chunk data: its CRLF.
    ChunkEnd,
    /// After the last chunk: trailers up to an empty line.
    Trailers,
    /// Framing lost: drop until a syscall starts with a start line.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    /// Buffer the whole body, then one message.
    Json,
    /// Feed the SSE parser as bytes arrive.
    Sse,
    /// Not read.
    Skip,
}

/// Per-stream HTTP framer.
#[derive(Debug)]
pub struct HttpFramer {
    state: State,
    /// Head bytes, then chunk-size or trailer line bytes.
    line: Vec<u8>,
    head: Arc<HttpHead>,
    delim: Delim,
    content: Content,
    body: Vec<u8>,
    tail: Vec<u8>,
    body_len: u64,
    body_lost: bool,
    sse: SseParser,
    max: usize,
    /// Counters.
    pub stats: HttpStats,
}

/// True when `data` starts an HTTP/1.x request or response.
pub fn starts_http(data: &[u8]) -> bool {
    const METHODS: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"HTTP/1.",
    ];
    METHODS.iter().any(|m| data.starts_with(m))
}

impl HttpFramer {
    /// A framer keeping at most `max` bytes of one body or SSE event.
    pub fn new(max: usize) -> Self {
        Self {
            state: State::Head,
            line: Vec::new(),
            head: Arc::default(),
            delim: Delim::Length(0),
            content: Content::Skip,
            body: Vec::new(),
            tail: Vec::new(),
            body_len: 0,
            body_lost: false,
            sse: SseParser::new(max),
            max,
            stats: HttpStats::default(),
        }
    }

    /// Bytes buffered.
    pub fn buffered(&self) -> usize {
        self.line.len() + self.body.len() + self.tail.len() + self.sse.buffered()
    }

    /// SSE counters of this stream.
    pub fn sse_stats(&self) -> super::sse::SseStats {
        self.sse.stats
    }

    /// `lost` bytes are missing from the stream here. When the loss leaves
    /// the body it fell in, that message is reported cut (its head may
    /// still name `id`, `method` and tool) before the framer resyncs.
    pub fn gap(&mut self, lost: u64, emit: &mut dyn FnMut(HttpItem<'_>)) {
        if lost == 0 {
            return;
        }
        match self.state {
            State::Body | State::ChunkData(_) if self.content != Content::Sse => {
                // Inside a body: the message is cut, the framing survives
                // as long as the loss stays inside the body.
                self.body_lost = true;
                self.body_len += lost;
                match (&mut self.state, &mut self.delim) {
                    (State::ChunkData(left), _) | (_, Delim::Length(left)) if lost <= *left => {
                        *left -= lost;
                    }
                    (_, Delim::UntilClose) => {}
                    _ => {
                        self.body_lost = true;
                        self.end_message(emit);
                        self.lose();
                    }
                }
            }
            State::Lost => {}
            State::Head => self.lose(),
            // Between chunks, or in an SSE body: the message is cut here.
            _ => {
                self.body_lost = true;
                self.end_message(emit);
                self.lose();
            }
        }
    }

    fn lose(&mut self) {
        self.stats.resyncs += 1;
        self.state = State::Lost;
        self.reset_body();
        self.line.clear();
        self.drop_sse_event();
    }

    /// Drops a half-received SSE event (counted), keeping the counters.
    fn drop_sse_event(&mut self) {
        if self.sse.buffered() > 0 {
            self.stats.cut_sse_events += 1;
        }
        let stats = self.sse.stats;
        self.sse = SseParser::new(self.max);
        self.sse.stats = stats;
    }

    /// Feeds one syscall's bytes (a syscall boundary is where a lost framer
    /// looks for a new start line); calls `emit` for every item.
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(HttpItem<'_>)) {
        if self.state == State::Lost {
            if !starts_http(data) {
                self.stats.resync_bytes += data.len() as u64;
                return;
            }
            self.state = State::Head;
        }
        while !data.is_empty() {
            let used = match self.state {
                State::Head => self.on_head_bytes(data, emit),
                State::Body => self.on_body_bytes(data, emit),
                State::ChunkSize => self.on_chunk_size(data, emit),
                State::ChunkData(left) => {
                    let n = (left.min(data.len() as u64)) as usize;
                    self.body_bytes(&data[..n], emit);
                    self.state = if left == n as u64 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left - n as u64)
                    };
                    n
                }
                State::ChunkEnd => self.on_chunk_end(data),
                State::Trailers => self.on_trailers(data, emit),
                State::Lost => {
                    self.stats.resync_bytes += data.len() as u64;
                    data.len()
                }
            };
            data = &data[used..];
        }
    }

    /// The connection ended: a body delimited by the connection's end is
    /// complete now; anything else unfinished is cut.
    pub fn finish(&mut self, emit: &mut dyn FnMut(HttpItem<'_>)) {
        if self.content == Content::Sse {
            self.drop_sse_event();
        }
        match self.state {
            State::Body if self.delim == Delim::UntilClose => self.end_message(emit),
            State::Head | State::Lost => {}
            _ => {
                self.body_lost = true;
                self.end_message(emit);
            }
        }
        self.line.clear();
    }

    fn on_head_bytes(&mut self, data: &[u8], emit: &mut dyn FnMut(HttpItem<'_>)) -> usize {
        // Search only the new bytes (and 3 before them, for a split CRLFCRLF).
        let from = self.line.len().saturating_sub(3);
        let (head_end, used) = if self.line.is_empty() {
            match memmem::find(data, b"\r\n\r\n") {
                Some(i) => (Some(i + 4), i + 4),
                None => (None, data.len()),
            }
        } else {
            let take = data.len().min(MAX_HEAD + 4);
            self.line.extend_from_slice(&data[..take]);
            match memmem::find(&self.line[from..], b"\r\n\r\n") {
                Some(i) => {
                    let end = from + i + 4;
                    let used = take - (self.line.len() - end);
                    self.line.truncate(end);
                    (Some(end), used)
                }
                None => (None, take),
            }
        };
        let Some(end) = head_end else {
            if self.line.is_empty() {
                self.line.extend_from_slice(&data[..used]);
            }
            if self.line.len() > MAX_HEAD {
                self.stats.bad_heads += 1;
                self.lose();
            }
            return used;
        };
        let parsed = if self.line.is_empty() {
            self.parse_head(&data[..end])
        } else {
            let line = std::mem::take(&mut self.line);
            let r = self.parse_head(&line);
            self.line = line;
            self.line.clear();
            r
        };
        if !parsed {
            self.stats.bad_heads += 1;
            self.lose();
            return used;
        }
        self.stats.messages += 1;
        emit(HttpItem::Head(&self.head));
        match self.delim {
            Delim::Length(0) => {
                self.end_message(emit);
            }
            Delim::Chunked => self.state = State::ChunkSize,
            _ => self.state = State::Body,
        }
        used
    }

    /// Parses a complete head; sets head, delimiter and content handling.
    fn parse_head(&mut self, raw: &[u8]) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut head = HttpHead::default();
        let (headers, request, status) = if raw.starts_with(b"HTTP/") {
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(raw) {
                Ok(httparse::Status::Complete(_)) => {}
                _ => return false,
            }
            head.status = r.code;
            (r.headers, false, r.code.unwrap_or(0))
        } else {
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(raw) {
                Ok(httparse::Status::Complete(_)) => {}
                _ => return false,
            }
            let (Some(m), Some(p)) = (r.method, r.path) else {
                return false;
            };
            head.set_request_line(m, p);
            (r.headers, true, 0)
        };
        head.add_headers(headers);
        let mut length = None;
        let mut chunked = false;
        let mut accept_sse = false;
        for h in headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if length.is_none() {
                    return false; // an unreadable length is unframeable
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = memmem::find(&h.value.to_ascii_lowercase(), b"chunked").is_some();
            } else if h.name.eq_ignore_ascii_case("accept") {
                accept_sse = memmem::find(h.value, b"text/event-stream").is_some();
            }
        }
        let bodyless_status = (100..200).contains(&status) || status == 204 || status == 304;
        self.delim = if bodyless_status {
            Delim::Length(0)
        } else if chunked {
            Delim::Chunked
        } else if let Some(n) = length {
            Delim::Length(n)
        } else if request {
            Delim::Length(0)
        } else {
            Delim::UntilClose
        };
        head.accept_sse = request && accept_sse;
        let mcp = head.has_mcp_headers() || head.accept_sse;
        self.content = if head.encoding == Encoding::Other {
            self.stats.decode_errors += 1;
            Content::Skip
        } else if head.is_event_stream() {
            if head.encoding != Encoding::Identity {
                self.stats.decode_errors += 1; // compressed SSE is not read
                Content::Skip
            } else {
                Content::Sse
            }
        } else if head.is_json() || (mcp && head.content_type.is_none()) {
            Content::Json
        } else {
            Content::Skip
        };
        self.head = Arc::new(head);
        self.reset_body();
        true
    }

    fn on_body_bytes(&mut self, data: &[u8], emit: &mut dyn FnMut(HttpItem<'_>)) -> usize {
        match self.delim {
            Delim::Length(left) => {
                let n = left.min(data.len() as u64) as usize;
                self.body_bytes(&data[..n], emit);
                self.delim = Delim::Length(left - n as u64);
                if left == n as u64 {
                    self.end_message(emit);
                }
                n
            }
            _ => {
                self.body_bytes(data, emit);
                data.len()
            }
        }
    }

    fn on_chunk_size(&mut self, data: &[u8], emit: &mut dyn FnMut(HttpItem<'_>)) -> usize {
        let Some(nl) = memchr::memchr(b'\n', data) else {
            self.line.extend_from_slice(data);
            if self.line.len() > 1024 {
                self.stats.bad_chunks += 1;
                self.lose();
            }
            return data.len();
        };
        let used = nl + 1;
        let parsed = if self.line.is_empty() {
            httparse::parse_chunk_size(&data[..used])
        } else {
            self.line.extend_from_slice(&data[..used]);
            httparse::parse_chunk_size(&self.line)
        };
        self.line.clear();
        match parsed {
            Ok(httparse::Status::Complete((_, 0))) => self.state = State::Trailers,
            Ok(httparse::Status::Complete((_, n))) => self.state = State::ChunkData(n),
            _ => {
                self.stats.bad_chunks += 1;
                // The body is cut here; report what there is, then resync.
                self.body_lost = true;
                self.end_message(emit);
                self.lose();
            }
        }
        used
    }

    fn on_chunk_end(&mut self, data: &[u8]) -> usize {
        // CRLF (or a bare LF) after chunk data.
        match data[0] {
            b'\r' => 1,
            b'\n' => {
                self.state = State::ChunkSize;
                1
            }
            _ => {
                self.stats.bad_chunks += 1;
                self.lose();
                0
            }
        }
    }

    fn on_trailers(&mut self, data: &[u8], emit: &mut dyn FnMut(HttpItem<'_>)) -> usize {
        let Some(nl) = memchr::memchr(b'\n', data) else {
            self.line.extend_from_slice(data);
            if self.line.len() > MAX_HEAD {
                self.stats.bad_heads += 1;
                self.lose();
            }
            return data.len();
        };
        let blank = self.line.iter().chain(&data[..nl]).all(|b| *b == b'\r');
        self.line.clear();
        if blank {
            self.end_message(emit);
        }
        nl + 1
    }

    fn body_bytes(&mut self, data: &[u8], emit: &mut dyn FnMut(HttpItem<'_>)) {
        match self.content {
            Content::Skip => self.stats.skipped_body_bytes += data.len() as u64,
            Content::Sse => {
                let head = &self.head;
                self.sse
                    .push(data, &mut |e: SseEvent<'_>| sse_item(head, e, emit));
            }
            Content::Json => {
                self.body_len += data.len() as u64;
                // Compressed bodies are kept whole up to the limit (they
                // decode only from the start).
                let room = self.max.saturating_sub(self.body.len());
                if data.len() <= room {
                    self.body.extend_from_slice(data);
                } else {
                    self.body.extend_from_slice(&data[..room]);
                    let rest = &data[room..];
                    let keep = rest.len().min(TAIL_KEEP);
                    self.tail.extend_from_slice(&rest[rest.len() - keep..]);
                    if self.tail.len() > TAIL_KEEP {
                        self.tail.drain(..self.tail.len() - TAIL_KEEP);
                    }
                }
            }
        }
    }

    fn end_message(&mut self, emit: &mut dyn FnMut(HttpItem<'_>)) {
        if self.content == Content::Json && self.body_len > 0 {
            let cut = self.body_len > self.body.len() as u64 + self.tail.len() as u64;
            if cut && !self.body_lost {
                self.stats.oversized_bodies += 1;
            }
            let truncated = cut || self.body_lost;
            if self.head.encoding != Encoding::Identity {
                if truncated {
                    self.stats.decode_errors += 1;
                } else {
                    match inflate(&self.body, self.head.encoding, self.max) {
                        Some((plain, whole)) => {
                            if !whole {
                                self.stats.oversized_bodies += 1;
                            }
                            emit(HttpItem::Message(BodyMessage {
                                head: &self.head,
                                bytes: &plain,
                                len: plain.len() as u64,
                                truncated: !whole,
                                sse: None,
                            }));
                        }
                        None => self.stats.decode_errors += 1,
                    }
                }
            } else {
                if !self.tail.is_empty() {
                    let tail = std::mem::take(&mut self.tail);
                    self.body.extend_from_slice(&tail);
                }
                emit(HttpItem::Message(BodyMessage {
                    head: &self.head,
                    bytes: &self.body,
                    len: self.body_len,
                    truncated,
                    sse: None,
                }));
            }
        }
        emit(HttpItem::End(&self.head));
        self.reset_body();
        self.state = State::Head;
    }

    fn reset_body(&mut self) {
        self.body.clear();
        self.tail.clear();
        self.body_len = 0;
        self.body_lost = false;
        if self.body.capacity() > 1 << 20 {
            self.body = Vec::new(); // don't keep a large body's buffer
        }
    }
}

fn sse_item(head: &Arc<HttpHead>, e: SseEvent<'_>, emit: &mut dyn FnMut(HttpItem<'_>)) {
    if e.event == Some("endpoint") {
        if let Ok(url) = std::str::from_utf8(e.data) {
            return emit(HttpItem::Endpoint(url.trim()));
        }
    }
    emit(HttpItem::Message(BodyMessage {
        head,
        bytes: e.data,
        len: e.len,
        truncated: e.truncated,
        sse: Some((e.event, e.id)),
    }))
}

/// Decompresses a gzip/deflate body, at most `max` bytes; (text, whole).
fn inflate(raw: &[u8], enc: Encoding, max: usize) -> Option<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let limit = max as u64 + 1;
    let res = match enc {
        Encoding::Gzip => flate2::read::MultiGzDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out),
        Encoding::Deflate => {
            // "deflate" is zlib-wrapped by the RFC; some servers send raw.
            let r = flate2::read::ZlibDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out);
            if r.is_err() {
                out.clear();
                flate2::read::DeflateDecoder::new(raw)
                    .take(limit)
                    .read_to_end(&mut out)
            } else {
                r
            }
        }
        _ => return None,
    };
    res.ok()?;
    let whole = out.len() <= max;
    out.truncate(max);
    Some((out, whole))
}

#[cfg(test)]
mod tests;
