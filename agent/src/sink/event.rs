//! The event schema: one JSON object per MCP message. Field names are a
//! contract (README, "Event schema"); new fields may be added, existing ones
//! never change meaning.

use std::sync::Arc;

use serde::Serialize;

use crate::{
    identity::{PodInfo, ProcessInfo},
    protocol::{http::HttpHead, Kind, PeerInfo, RpcId},
};

/// The HTTP message that carried an MCP message (`transport` `http` or
/// `sse`): its head's MCP facts and, for SSE, the event's name and id.
#[derive(Debug, Clone, Serialize)]
pub struct HttpInfo {
    /// Method, path, status, MCP headers, session and credential
    /// fingerprints of the HTTP message.
    #[serde(flatten)]
    pub head: Arc<HttpHead>,
    /// SSE `event:` (absent: `message`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_event: Option<Box<str>>,
    /// SSE `id:` (the resumption point, `Last-Event-ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_id: Option<Box<str>>,
    /// The message was made from the HTTP status (a 4xx/5xx answer without
    /// a JSON-RPC body), not read from a body.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_status: bool,
    /// Captured as TLS plaintext.
    #[serde(skip)]
    pub tls: bool,
    /// For a response: the id of the one JSON-RPC request its HTTP request
    /// carried (an error with `id: null` answers that request).
    #[serde(skip)]
    pub answers: Option<RpcId>,
    /// The MCP session that pairs this message when only this end is seen:
    /// a request's own, a response's request's (an initialize response
    /// names the session its request did not have yet), or the legacy
    /// stream's `endpoint` session.
    #[serde(skip)]
    pub session_key: Option<Box<str>>,
}

impl HttpInfo {
    /// `sse` when the message came as an SSE event, else `http`.
    pub fn transport(&self) -> &'static str {
        if self.head.is_event_stream() {
            "sse"
        } else {
            "http"
        }
    }
}

/// One end of a message: a process and the fd it used.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// The process.
    #[serde(flatten)]
    pub process: Arc<ProcessInfo>,
    /// The fd it read or wrote (absent when only inferred).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<u32>,
    /// The thread whose syscall completed the message (absent when only
    /// inferred).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    /// The Kubernetes pod (absent without Kubernetes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s: Option<Arc<PodInfo>>,
}

/// One MCP message (or, later, a flag), as written to JSONL.
#[derive(Debug, Clone, Serialize)]
pub struct McpEvent {
    /// RFC 3339 UTC with microseconds, from the kernel timestamp.
    pub ts: String,
    /// Monotonic sequence number of events from this agent run.
    pub seq: u64,
    /// `request`, `response`, `notification` or `error`.
    pub kind: Kind,
    /// Method; for responses, the method of the paired request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Arc<str>>,
    /// JSON-RPC id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<RpcId>,
    /// 2026-07-28: id of the first request of an input_required retry chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<RpcId>,
    /// Tool name (tools/call and its response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<Arc<str>>,
    /// Resource URI (resources/read and its response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Box<str>>,
    /// Prompt name (prompts/get and its response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Box<str>>,
    /// JSON-RPC error, or tool result with `isError: true`.
    pub is_error: bool,
    /// JSON-RPC error code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// OpenTelemetry `error.type`: the code, or `tool_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// JSON-RPC error message (at most 256 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<Box<str>>,
    /// 2026-07-28 `resultType`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_type: Option<Box<str>>,
    /// Response latency: response time minus request time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// `seq` of the paired request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_seq: Option<u64>,
    /// `stdio`, `http` or `sse`.
    pub transport: &'static str,
    /// `pipe`, `unix` or `tcp`.
    pub net: &'static str,
    /// Captured as TLS plaintext.
    pub tls: bool,
    /// Sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Endpoint>,
    /// Receiver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Endpoint>,
    /// Stable key of the connection or session.
    pub session: Arc<str>,
    /// Protocol version in force for the session (negotiated or `_meta`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<Box<str>>,
    /// The session's clientInfo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<PeerInfo>,
    /// The session's serverInfo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<PeerInfo>,
    /// Size of the message in bytes (true size, also when truncated).
    pub bytes: u64,
    /// Bytes of this message were lost; fields come from salvage.
    pub truncated: bool,
    /// Index within a JSON-RPC batch array.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u32>,
    /// The HTTP message that carried it (transports `http` and `sse`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpInfo>,
    /// The raw message, only with `--capture-payloads` (capped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

impl McpEvent {
    /// Writes the event as one JSON object: the same text as serde's
    /// `Serialize` (tested), an order of magnitude cheaper. Each end's
    /// process — most of an event's bytes — is rendered once per process
    /// and copied after, not escaped and formatted again per message.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut o = Members::open(out);
        o.field("ts", &self.ts)?;
        o.field("seq", &self.seq)?;
        o.field("kind", &self.kind)?;
        o.some("method", &self.method)?;
        o.some("id", &self.id)?;
        o.some("logical_id", &self.logical_id)?;
        o.some("tool", &self.tool)?;
        o.some("resource", &self.resource)?;
        o.some("prompt", &self.prompt)?;
        o.field("is_error", &self.is_error)?;
        o.some("error_code", &self.error_code)?;
        o.some("error_type", &self.error_type)?;
        o.some("error_message", &self.error_message)?;
        o.some("result_type", &self.result_type)?;
        o.some("latency_ms", &self.latency_ms)?;
        o.some("request_seq", &self.request_seq)?;
        o.field("transport", self.transport)?;
        o.field("net", self.net)?;
        o.field("tls", &self.tls)?;
        for (key, end) in [("from", &self.from), ("to", &self.to)] {
            if let Some(end) = end {
                o.key(key);
                end.write_json(o.out)?;
            }
        }
        o.field("session", &self.session)?;
        o.some("protocol_version", &self.protocol_version)?;
        o.some("client", &self.client)?;
        o.some("server", &self.server)?;
        o.field("bytes", &self.bytes)?;
        o.field("truncated", &self.truncated)?;
        o.some("batch_index", &self.batch_index)?;
        o.some("http", &self.http)?;
        o.some("payload", &self.payload)?;
        o.close();
        Ok(())
    }
}

impl Endpoint {
    /// Writes the endpoint as [`McpEvent::write_json`] does.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let process = self.process.rendered.get_or(|| {
            let mut whole = serde_json::to_vec(&*self.process).expect("a process serialises");
            whole.pop(); // `}`
            whole.remove(0); // `{`
            whole
        });
        let mut o = Members::open(out);
        o.raw(process);
        o.some("fd", &self.fd)?;
        o.some("tid", &self.tid)?;
        o.some("k8s", &self.k8s)?;
        o.close();
        Ok(())
    }
}

/// A JSON object being written member by member.
struct Members<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Members<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    /// A member's key (plain ASCII: the schema's own names).
    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> serde_json::Result<()> {
        self.key(key);
        serde_json::to_writer(&mut *self.out, value)
    }

    /// A member skipped when absent, as `skip_serializing_if = "Option::is_none"`.
    fn some<T: Serialize>(&mut self, key: &str, value: &Option<T>) -> serde_json::Result<()> {
        match value {
            Some(v) => self.field(key, v),
            None => Ok(()),
        }
    }

    /// Members already rendered (`"a":1,"b":2`, possibly none).
    fn raw(&mut self, members: &[u8]) {
        if !members.is_empty() {
            if !self.empty {
                self.out.push(b',');
            }
            self.empty = false;
            self.out.extend_from_slice(members);
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// Sample events for tests.
#[cfg(test)]
pub(crate) mod sample {
    use std::sync::Arc;

    use super::*;
    use crate::identity::{process::Ancestor, ContainerInfo};

    fn endpoint(pid: u32, full: bool) -> Endpoint {
        let mut p = ProcessInfo {
            pid,
            comm: "srv \"quoted\" \u{1}".into(),
            ..Default::default()
        };
        if full {
            p.ppid = Some(1);
            p.exe = Some("/usr/bin/python3".into());
            p.cmdline = Some("python3 -m server --name=\u{e9}\\x".into());
            p.uid = Some(0);
            p.user = Some("root".into());
            p.start_time = Some("2026-11-27T07:16:38.770Z".into());
            p.exec_id = Some("ac3642ad5ea51cc6".into());
            p.parent_exec_id = Some("5452d9b6386ef5d0".into());
            p.ancestors = vec![Ancestor {
                pid: 1,
                comm: "init".into(),
                exe: Some("/sbin/init".into()),
                exec_id: Some("00".into()),
            }];
            p.cgroup_id = Some(77);
            p.container = Some(Arc::new(ContainerInfo {
                id: Some("ab".repeat(32)),
                runtime: Some("containerd".into()),
                cgroup: "/kubepods/x".into(),
                ..Default::default()
            }));
            p.credential_env = vec!["GITHUB_TOKEN".into()];
        }
        Endpoint {
            process: Arc::new(p),
            fd: full.then_some(4),
            tid: full.then_some(pid + 1),
            k8s: full.then(|| {
                Arc::new(PodInfo {
                    pod: "agent-0".into(),
                    namespace: "ai".into(),
                    uid: "u-1".into(),
                    node: Some("n1".into()),
                    service_account: Some("agent".into()),
                    workload_kind: Some("StatefulSet".into()),
                    workload: Some("agent".into()),
                    spiffe_id: Some("spiffe://cluster.local/ns/ai/sa/agent".into()),
                    labels: [("app".to_string(), "agent".to_string())].into(),
                })
            }),
        }
    }

    /// An event with every optional field set (`full`), or a minimal one.
    pub(crate) fn event(full: bool) -> McpEvent {
        let some = |s: &str| full.then(|| Box::<str>::from(s));
        McpEvent {
            ts: "2026-11-27T07:16:39.779991Z".into(),
            seq: 7,
            kind: Kind::Response,
            method: Some("tools/call".into()),
            id: full.then(|| RpcId::Str("a\"1".into())),
            logical_id: full.then_some(RpcId::Num(-3)),
            tool: Some("echo".into()),
            resource: some("file:///etc/hosts"),
            prompt: some("p"),
            is_error: full,
            error_code: full.then_some(-32601),
            error_type: full.then(|| "-32601".to_string()),
            error_message: some("Method not found\n"),
            result_type: some("complete"),
            latency_ms: full.then_some(0.008515),
            request_seq: full.then_some(6),
            transport: "http",
            net: "tcp",
            tls: full,
            from: full.then(|| endpoint(10, true)),
            to: Some(endpoint(11, full)),
            session: "http:f19cd7d6da325a2f".into(),
            protocol_version: some("2025-11-25"),
            client: full.then(|| PeerInfo {
                name: "c".into(),
                version: Some("1".into()),
            }),
            server: full.then(|| PeerInfo {
                name: "s".into(),
                version: None,
            }),
            bytes: 93,
            truncated: full,
            batch_index: full.then_some(1),
            http: full.then(|| HttpInfo {
                head: Arc::new(HttpHead {
                    method: Some("POST".into()),
                    status: Some(200),
                    ..Default::default()
                }),
                sse_event: Some("message".into()),
                sse_id: Some("e1".into()),
                from_status: true,
                tls: true,
                answers: None,
                session_key: None,
            }),
            payload: full.then(|| "{\"jsonrpc\":\"2.0\"}".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::sample::event;

    #[test]
    fn written_json_is_what_serde_writes() {
        for full in [true, false] {
            let ev = event(full);
            for _ in 0..2 {
                // The second time from the processes' renderings.
                let mut ours = Vec::new();
                ev.write_json(&mut ours).unwrap();
                let serde = serde_json::to_vec(&ev).unwrap();
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    String::from_utf8(serde).unwrap()
                );
            }
        }
    }

    #[test]
    fn a_changed_copy_of_a_process_renders_its_own_fields() {
        let ev = event(false);
        ev.write_json(&mut Vec::new()).unwrap();
        let mut to = ev.to.clone().unwrap();
        Arc::make_mut(&mut to.process).comm = "changed".into();
        let mut out = Vec::new();
        to.write_json(&mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("\"comm\":\"changed\""));
    }
}
