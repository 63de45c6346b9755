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
    pub method: Option<Box<str>>,
    /// JSON-RPC id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<RpcId>,
    /// 2026-07-28: id of the first request of an input_required retry chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<RpcId>,
    /// Tool name (tools/call and its response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<Box<str>>,
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
    pub session: String,
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
