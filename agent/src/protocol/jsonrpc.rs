//! JSON-RPC 2.0 envelopes, parsed with borrowed raw values so large params
//! and results are validated but never copied.

use std::{borrow::Cow, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::mcp;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Has `method` and `id`.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `result`.
    Response,
    /// Has `error`.
    Error,
}

/// A JSON-RPC id: a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum RpcId {
    /// Numeric id.
    Num(i64),
    /// String id.
    Str(Box<str>),
}

impl std::fmt::Display for RpcId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcId::Num(n) => write!(f, "{n}"),
            RpcId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Name and version from `clientInfo` / `serverInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PeerInfo {
    /// `name`.
    pub name: String,
    /// `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One parsed JSON-RPC message with the MCP facts an observer needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// Request, notification, response or error.
    pub kind: Option<Kind>,
    /// `id`.
    pub id: Option<RpcId>,
    /// `method` (requests and notifications).
    pub method: Option<Arc<str>>,
    /// `params.name` of tools/call.
    pub tool: Option<Arc<str>>,
    /// `params.uri` of resources/read, subscribe, unsubscribe.
    pub resource: Option<Box<str>>,
    /// `params.name` of prompts/get.
    pub prompt: Option<Box<str>>,
    /// A JSON-RPC error, or a tool result with `isError: true`.
    pub is_error: bool,
    /// JSON-RPC error code.
    pub error_code: Option<i64>,
    /// JSON-RPC error message (bounded).
    pub error_message: Option<Box<str>>,
    /// Protocol version carried by this message (initialize, or 2026 `_meta`).
    pub protocol_version: Option<Box<str>>,
    /// clientInfo (initialize params, or 2026 request `_meta`).
    pub client_info: Option<PeerInfo>,
    /// serverInfo (initialize result, or 2026 result `_meta`).
    pub server_info: Option<PeerInfo>,
    /// 2026 `resultType` (`complete`, `input_required`, `task`, …).
    pub result_type: Option<Box<str>>,
    /// 2026 retry of an input_required request (`requestState`/`inputResponses`).
    pub is_retry: bool,
    /// `params.requestId` of notifications/cancelled.
    pub cancelled_id: Option<RpcId>,
    /// `params._meta.progressToken` present.
    pub progress_token: bool,
    /// W3C `params._meta.traceparent`.
    pub traceparent: Option<Box<str>>,
    /// Salvaged from a truncated line: fields may be missing.
    pub salvaged: bool,
}

/// Why bytes are not a JSON-RPC message. No payload is kept (it could hold secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not valid JSON (or not UTF-8).
    #[error("not valid JSON")]
    Json,
    /// Valid JSON, but no JSON-RPC request, notification or response.
    #[error("JSON but not JSON-RPC 2.0")]
    NotJsonRpc,
    /// An empty batch array.
    #[error("empty batch")]
    EmptyBatch,
}

impl ParseError {
    /// Short reason used as a metric label.
    pub fn reason(self) -> &'static str {
        match self {
            ParseError::Json => "invalid_json",
            ParseError::NotJsonRpc => "not_jsonrpc",
            ParseError::EmptyBatch => "empty_batch",
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a, const HASH_ARGS: bool> {
    #[serde(default, borrow)]
    jsonrpc: Option<mcp::Text<'a>>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    method: Option<mcp::MaybeText<'a>>,
    #[serde(default, borrow)]
    params: Option<mcp::Params<'a, HASH_ARGS>>,
    #[serde(default, borrow)]
    result: Option<mcp::ResultBody<'a>>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrorObj<'a> {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

/// The parts of one message the detectors read, borrowed from the bytes
/// the parser already validated (so nothing is parsed twice).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawParts<'a> {
    /// The message's own bytes (one element of a batch, not the batch).
    pub bytes: &'a [u8],
    /// The canonical hash of a request's `params.arguments`, when asked
    /// for (see [`parse_batch`]): taken as the parser skips them.
    pub arguments_hash: Option<u64>,
    /// What a tool returned (`result` of a response).
    pub result: Option<mcp::ToolOutput<'a>>,
}

/// Parses one JSON-RPC message (not a batch).
pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    parse_text::<false>(utf8(bytes)?).map(|(m, _)| m)
}

/// Parses one JSON-RPC message (not a batch) and returns its raw parts too
/// (what the detectors read).
pub fn parse_raw(bytes: &[u8]) -> Result<(Message, RawParts<'_>), ParseError> {
    parse_text::<true>(utf8(bytes)?)
}

/// The message as text: UTF-8 is checked once here (a fast pass over
/// ASCII), so that the parser, reading from a `str`, never checks a string
/// or a raw value again. Invalid UTF-8 is invalid JSON.
pub fn utf8(bytes: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(bytes).map_err(|_| ParseError::Json)
}

/// One message; with `HASH_ARGS`, its `arguments` hashed canonically, else
/// skipped.
fn parse_text<const HASH_ARGS: bool>(text: &str) -> Result<(Message, RawParts<'_>), ParseError> {
    let env: Envelope<'_, HASH_ARGS> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            ParseError::NotJsonRpc
        } else {
            ParseError::Json
        }
    })?;
    let mut raw = RawParts {
        bytes: text.as_bytes(),
        arguments_hash: None,
        result: None,
    };
    let m = from_envelope(env, &mut raw)?;
    Ok((m, raw))
}

/// Parses a line that may be a batch (a JSON array, allowed by 2025-03-26).
/// Calls `each` per element in order, with the element's raw parts, and
/// returns how many were parsed. With `hash_arguments` (the detectors
/// are on and use them), a request's `arguments` are hashed canonically
/// ([`RawParts::arguments_hash`]); without, they are only skipped. The
/// caller has the line as text: by [`utf8`], or by a pass of its own that
/// found every byte ASCII.
pub fn parse_batch<'a>(
    text: &'a str,
    hash_arguments: bool,
    each: &mut dyn FnMut(Result<(Message, RawParts<'a>), ParseError>),
) -> Result<usize, ParseError> {
    let one = |text| match hash_arguments {
        true => parse_text::<true>(text),
        false => parse_text::<false>(text),
    };
    let first = text.bytes().find(|b| !b.is_ascii_whitespace());
    if first != Some(b'[') {
        each(one(text));
        return Ok(1);
    }
    let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|_| ParseError::Json)?;
    if items.is_empty() {
        return Err(ParseError::EmptyBatch);
    }
    for item in &items {
        each(one(item.get()));
    }
    Ok(items.len())
}

fn parse_id(raw: &RawValue) -> Option<RpcId> {
    let s = raw.get();
    if s.starts_with('"') {
        serde_json::from_str::<Cow<'_, str>>(s)
            .ok()
            .map(|c| RpcId::Str(c.into()))
    } else if s == "null" {
        None
    } else {
        s.parse::<i64>()
            .ok()
            .map(RpcId::Num)
            .or_else(|| Some(RpcId::Str(s.into())))
    }
}

fn from_envelope<'a, const HASH_ARGS: bool>(
    env: Envelope<'a, HASH_ARGS>,
    raw: &mut RawParts<'a>,
) -> Result<Message, ParseError> {
    if let Some(mcp::Text(v)) = &env.jsonrpc {
        if v != "2.0" {
            return Err(ParseError::NotJsonRpc);
        }
    }
    let mut m = Message {
        id: env.id.and_then(parse_id),
        ..Message::default()
    };
    if let Some(method) = env.method.and_then(|m| m.0) {
        m.kind = Some(if env.id.is_some() {
            Kind::Request
        } else {
            Kind::Notification
        });
        m.method = Some(method.as_ref().into());
        raw.arguments_hash = env.params.and_then(|p| mcp::read_params(&mut m, p));
    } else if let Some(err) = env.error {
        m.kind = Some(Kind::Error);
        m.is_error = true;
        if let Ok(e) = serde_json::from_str::<ErrorObj<'_>>(err.get()) {
            m.error_code = e.code;
            m.error_message = e.message.map(|s| bounded(&s, 256).into());
        }
    } else if let Some(result) = env.result {
        m.kind = Some(Kind::Response);
        raw.result = Some(mcp::read_result(&mut m, result));
    } else {
        return Err(ParseError::NotJsonRpc);
    }
    if env.jsonrpc.is_none()
        && m.kind != Some(Kind::Request)
        && m.kind != Some(Kind::Notification)
        && m.id.is_none()
    {
        return Err(ParseError::NotJsonRpc);
    }
    Ok(m)
}

/// At most `max` bytes of `s`, cut at a char boundary.
pub(crate) fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_notification_response_error() {
        let r = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
        assert_eq!(
            (r.kind, r.id.clone()),
            (Some(Kind::Request), Some(RpcId::Num(1)))
        );
        let n = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.kind, Some(Kind::Notification));
        // TypeScript SDK order: id last.
        let resp = parse(br#"{"result":{"tools":[]},"jsonrpc":"2.0","id":"a-1"}"#).unwrap();
        assert_eq!(
            (resp.kind, resp.id),
            (Some(Kind::Response), Some(RpcId::Str("a-1".into())))
        );
        let e = parse(
            br#"{"jsonrpc":"2.0","id":4,"error":{"code":-32601,"message":"Method not found"}}"#,
        )
        .unwrap();
        assert_eq!(
            (e.kind, e.error_code, e.is_error),
            (Some(Kind::Error), Some(-32601), true)
        );
    }

    #[test]
    fn rejects_non_jsonrpc() {
        assert_eq!(
            parse(b"{\"level\":\"info\",\"msg\":\"hi\"}"),
            Err(ParseError::NotJsonRpc)
        );
        assert_eq!(
            parse(b"{\"jsonrpc\":\"1.0\",\"method\":\"x\"}"),
            Err(ParseError::NotJsonRpc)
        );
        assert_eq!(parse(b"{not json"), Err(ParseError::Json));
        assert_eq!(
            parse(b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\xfe\"}"),
            Err(ParseError::Json)
        );
        assert_eq!(parse(b"[1,2]"), Err(ParseError::NotJsonRpc));
    }

    #[test]
    fn batch_arrays_are_split() {
        let mut got = Vec::new();
        let n = parse_batch(
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
            false,
            &mut |m| got.push(m.unwrap().0.kind),
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(got, vec![Some(Kind::Request), Some(Kind::Notification)]);
        assert_eq!(
            parse_batch("[]", false, &mut |_| {}),
            Err(ParseError::EmptyBatch)
        );
    }
}
