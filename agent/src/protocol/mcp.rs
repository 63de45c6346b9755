//! MCP semantics on top of JSON-RPC, for both live protocol eras:
//! 2025-11-25 (initialize handshake) and 2026-07-28 (stateless, `_meta`
//! envelope, `resultType`, input_required retries, tasks extension).

use std::{borrow::Cow, fmt};

use serde::{
    de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize,
};
use serde_json::value::RawValue;

use super::canonical;
use super::jsonrpc::{bounded, Message, PeerInfo, RpcId};

/// `_meta` key carrying the protocol version on 2026-07-28 requests.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key carrying clientInfo on 2026-07-28 requests.
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// `_meta` key carrying serverInfo on 2026-07-28 results.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// Which protocol revisions define a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// Defined up to 2025-11-25 and removed in 2026-07-28.
    Legacy,
    /// Defined in both.
    Both,
    /// New in 2026-07-28.
    Current,
}

/// Every method of the 2025-11-25 and 2026-07-28 schemas. Unknown methods are
/// still reported (never dropped); this table only says which are standard.
pub const METHODS: &[(&str, Era)] = &[
    ("initialize", Era::Legacy),
    ("notifications/initialized", Era::Legacy),
    ("ping", Era::Legacy),
    ("logging/setLevel", Era::Legacy),
    ("resources/subscribe", Era::Legacy),
    ("resources/unsubscribe", Era::Legacy),
    ("notifications/roots/list_changed", Era::Legacy),
    ("notifications/elicitation/complete", Era::Legacy),
    ("server/discover", Era::Current),
    ("subscriptions/listen", Era::Current),
    ("notifications/subscriptions/acknowledged", Era::Current),
    ("tasks/update", Era::Current),
    ("notifications/tasks", Era::Current),
    ("tools/list", Era::Both),
    ("tools/call", Era::Both),
    ("resources/list", Era::Both),
    ("resources/templates/list", Era::Both),
    ("resources/read", Era::Both),
    ("prompts/list", Era::Both),
    ("prompts/get", Era::Both),
    ("completion/complete", Era::Both),
    ("sampling/createMessage", Era::Both),
    ("elicitation/create", Era::Both),
    ("roots/list", Era::Both),
    ("tasks/get", Era::Both),
    ("tasks/result", Era::Legacy),
    ("tasks/list", Era::Legacy),
    ("tasks/cancel", Era::Both),
    ("notifications/cancelled", Era::Both),
    ("notifications/progress", Era::Both),
    ("notifications/message", Era::Both),
    ("notifications/resources/updated", Era::Both),
    ("notifications/resources/list_changed", Era::Both),
    ("notifications/tools/list_changed", Era::Both),
    ("notifications/prompts/list_changed", Era::Both),
    ("notifications/tasks/status", Era::Legacy),
];

/// The era that defines `method`, or `None` for a non-standard method.
pub fn method_era(method: &str) -> Option<Era> {
    METHODS.iter().find(|(m, _)| *m == method).map(|(_, e)| *e)
}

/// A visitor's answers to the JSON shapes it does not read (arrays and
/// scalars): `$empty`, the value consumed. An unexpected shape is skipped,
/// never an error that would make the whole message unreadable.
macro_rules! skip_other_shapes {
    ($de:lifetime, $value:ty, $empty:expr) => {
        fn visit_seq<A: SeqAccess<$de>>(self, seq: A) -> Result<$value, A::Error> {
            IgnoredAny.visit_seq(seq).map(|_| $empty)
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$value, E> {
            Ok($empty)
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$value, E> {
            Ok($empty)
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$value, E> {
            Ok($empty)
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$value, E> {
            Ok($empty)
        }

        fn visit_unit<E: de::Error>(self) -> Result<$value, E> {
            Ok($empty)
        }
    };
}

/// `params` of a request or notification, read in the envelope's own pass:
/// the MCP fields are picked out as the parser goes, and `arguments` is
/// skipped, or, with `HASH_ARGS` (the detectors are on), hashed
/// canonically for them as the parser skips it
/// ([`canonical::ArgumentsHash`]), so no byte of params is parsed twice.
/// Lenient: a field of an unexpected type is skipped (the rest is still
/// read), and params that are not an object read as empty; unknown shapes
/// are kept as plain JSON-RPC, never dropped.
#[derive(Default)]
pub(super) struct Params<'a, const HASH_ARGS: bool> {
    name: Option<Cow<'a, str>>,
    /// The canonical hash of `arguments` (with `HASH_ARGS`).
    arguments_hash: Option<u64>,
    uri: Option<Cow<'a, str>>,
    protocol_version: Option<Cow<'a, str>>,
    client_info: Option<PeerInfo>,
    meta: Option<Meta<'a>>,
    /// `requestState` or `inputResponses` present (a 2026 retry).
    retry: bool,
    request_id: Option<&'a RawValue>,
}

impl<'de: 'a, 'a, const HASH_ARGS: bool> Deserialize<'de> for Params<'a, HASH_ARGS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParamsVisitor::<HASH_ARGS>)
    }
}

struct ParamsVisitor<const HASH_ARGS: bool>;

impl<'de, const HASH_ARGS: bool> Visitor<'de> for ParamsVisitor<HASH_ARGS> {
    type Value = Params<'de, HASH_ARGS>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON-RPC params")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params<'de, HASH_ARGS>, A::Error> {
        let mut p = Params::default();
        while let Some(Text(key)) = map.next_key()? {
            match &*key {
                "name" => p.name = map.next_value::<MaybeText<'de>>()?.0,
                "uri" => p.uri = map.next_value::<MaybeText<'de>>()?.0,
                "protocolVersion" => p.protocol_version = map.next_value::<MaybeText<'de>>()?.0,
                "arguments" if HASH_ARGS => {
                    p.arguments_hash = Some(map.next_value_seed(canonical::ArgumentsHash)?)
                }
                "requestId" => p.request_id = map.next_value()?,
                "requestState" | "inputResponses" => {
                    p.retry |= map.next_value::<Option<IgnoredAny>>()?.is_some()
                }
                // Small objects: kept raw in this pass, read after it.
                "clientInfo" => p.client_info = small(map.next_value()?),
                "_meta" => p.meta = small(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(p)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Params<'de, HASH_ARGS>, E> {
        Ok(Params::default())
    }

    skip_other_shapes!('de, Params<'de, HASH_ARGS>, Params::default());
}

/// A small object kept raw during the envelope's pass, read after it;
/// `None` when it is not what MCP says it is.
fn small<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    serde_json::from_str(raw?.get()).ok()
}

/// A string, borrowed from the message when it has no escapes (serde's
/// own `Option<Cow<str>>` allocates every time, `borrow` or not); any other
/// value reads as empty.
pub(super) struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
            .map(|t| Text(t.unwrap_or_default()))
    }
}

/// A string if the value is one, else `None` (the value skipped): a field
/// of the wrong type does not make the whole message unreadable.
pub(super) struct MaybeText<'a>(pub Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor).map(MaybeText)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| None)
    }

    skip_other_shapes!('de, Option<Cow<'de, str>>, None);
}

#[derive(Deserialize, Default)]
struct Meta<'a> {
    #[serde(default, borrow, rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<Cow<'a, str>>,
    #[serde(default, rename = "io.modelcontextprotocol/clientInfo")]
    client_info: Option<PeerInfo>,
    #[serde(default, rename = "io.modelcontextprotocol/serverInfo")]
    server_info: Option<PeerInfo>,
    #[serde(default, borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
    #[serde(default, borrow)]
    traceparent: Option<Cow<'a, str>>,
}

/// `result` of a response, read in the envelope's own pass (as
/// [`Params`] is): the MCP fields are picked out as the parser goes, and
/// what a tool returned (`content`, `structuredContent`) stays raw
/// (borrowed) for the detectors; the rest is skipped. A result used to be
/// kept raw and parsed a second time, every byte of it scanned twice.
/// Lenient: a field of an unexpected type is skipped, and a result that is
/// not an object reads as empty.
#[derive(Default)]
pub(super) struct ResultBody<'a> {
    is_error: Option<&'a RawValue>,
    protocol_version: Option<Cow<'a, str>>,
    server_info: Option<&'a RawValue>,
    result_type: Option<Cow<'a, str>>,
    meta: Option<&'a RawValue>,
    content: Option<&'a RawValue>,
    structured_content: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ResultBody<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ResultVisitor)
    }
}

struct ResultVisitor;

impl<'de> Visitor<'de> for ResultVisitor {
    type Value = ResultBody<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC result")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ResultBody<'de>, A::Error> {
        let mut r = ResultBody::default();
        while let Some(Text(key)) = map.next_key()? {
            match &*key {
                "content" => r.content = map.next_value()?,
                "structuredContent" => r.structured_content = map.next_value()?,
                "isError" => r.is_error = map.next_value()?,
                "protocolVersion" => r.protocol_version = map.next_value::<MaybeText<'de>>()?.0,
                "resultType" => r.result_type = map.next_value::<MaybeText<'de>>()?.0,
                // Small objects: kept raw in this pass, read after it.
                "serverInfo" => r.server_info = map.next_value()?,
                "_meta" => r.meta = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(r)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<ResultBody<'de>, E> {
        Ok(ResultBody::default())
    }

    skip_other_shapes!('de, ResultBody<'de>, ResultBody::default());
}

/// What a tool returned, raw, for the detectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ToolOutput<'a> {
    /// `result.content`.
    pub content: Option<&'a RawValue>,
    /// `result.structuredContent`.
    pub structured_content: Option<&'a RawValue>,
    /// `result.isError` is `true`.
    pub is_error: bool,
}

const MAX_NAME: usize = 512;

/// A name from params, bounded (as a `Box<str>`, or an `Arc<str>` where
/// the parse, the pairing and the event share it).
fn name<T: for<'s> From<&'s str>>(s: &str) -> T {
    bounded(s, MAX_NAME).into()
}

/// Fills the MCP facts of a request or notification from its params;
/// returns the canonical hash of its `arguments`, if it was taken.
pub(super) fn read_params<'a, const HASH_ARGS: bool>(
    m: &mut Message,
    p: Params<'a, HASH_ARGS>,
) -> Option<u64> {
    match m.method.as_deref() {
        Some("tools/call") => m.tool = p.name.as_deref().map(name),
        Some("prompts/get") => m.prompt = p.name.as_deref().map(name),
        Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => {
            m.resource = p.uri.as_deref().map(name)
        }
        Some("notifications/cancelled") => m.cancelled_id = p.request_id.and_then(raw_id),
        _ => {}
    }
    if let Some(v) = p.protocol_version {
        m.protocol_version = Some(name(&v));
    }
    m.client_info = p.client_info;
    m.is_retry = p.retry;
    if let Some(meta) = p.meta {
        if let Some(v) = meta.protocol_version {
            m.protocol_version = Some(name(&v));
        }
        if meta.client_info.is_some() {
            m.client_info = meta.client_info;
        }
        m.progress_token = meta.progress_token.is_some();
        m.traceparent = meta.traceparent.as_deref().map(|t| bounded(t, 128).into());
    }
    p.arguments_hash
}

/// Fills the MCP facts of a result; returns what a tool returned, raw.
pub(super) fn read_result<'a>(m: &mut Message, r: ResultBody<'a>) -> ToolOutput<'a> {
    m.is_error = r.is_error.is_some_and(|v| v.get() == "true");
    m.protocol_version = r.protocol_version.as_deref().map(name);
    m.server_info = small(r.server_info);
    m.result_type = r.result_type.as_deref().map(name);
    if let Some(meta) = small::<Meta<'_>>(r.meta) {
        if meta.server_info.is_some() {
            m.server_info = meta.server_info;
        }
        if let Some(v) = meta.protocol_version {
            m.protocol_version = Some(name(&v));
        }
    }
    ToolOutput {
        content: r.content,
        structured_content: r.structured_content,
        is_error: m.is_error,
    }
}

/// OpenTelemetry `error.type` of a message: the JSON-RPC code, or
/// `tool_error` for a result with `isError: true`.
pub fn error_type(m: &Message) -> Option<Cow<'static, str>> {
    match (m.error_code, m.is_error) {
        (Some(code), _) => Some(Cow::Owned(code.to_string())),
        (None, true) => Some(Cow::Borrowed("tool_error")),
        _ => None,
    }
}

/// Parses a raw id (used by notifications/cancelled).
pub(super) fn raw_id(raw: &RawValue) -> Option<RpcId> {
    serde_json::from_str::<serde_json::Value>(raw.get())
        .ok()
        .and_then(|v| match v {
            serde_json::Value::Number(n) => n.as_i64().map(RpcId::Num),
            serde_json::Value::String(s) => Some(RpcId::Str(s.into())),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use crate::protocol::{parse, Kind, RpcId};

    #[test]
    fn legacy_initialize_handshake() {
        let req = parse(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"mcp","version":"2.3.0"}}}"#).unwrap();
        assert_eq!(req.protocol_version.as_deref(), Some("2025-11-25"));
        assert_eq!(req.client_info.unwrap().name, "mcp");
        let resp = parse(br#"{"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"mcp-servers/everything","version":"2.0.0"}},"jsonrpc":"2.0","id":0}"#).unwrap();
        assert_eq!(resp.server_info.unwrap().name, "mcp-servers/everything");
    }

    #[test]
    fn current_era_meta_envelope_and_result_type() {
        let req = parse(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"agent","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#).unwrap();
        assert_eq!(req.tool.as_deref(), Some("echo"));
        assert_eq!(req.protocol_version.as_deref(), Some("2026-07-28"));
        assert_eq!(req.client_info.unwrap().name, "agent");
        let resp = parse(br#"{"jsonrpc":"2.0","id":3,"result":{"resultType":"input_required","inputRequests":{},"requestState":"abc","_meta":{"io.modelcontextprotocol/serverInfo":{"name":"srv"}}}}"#).unwrap();
        assert_eq!(resp.result_type.as_deref(), Some("input_required"));
        assert_eq!(resp.server_info.unwrap().name, "srv");
        let retry = parse(br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","inputResponses":{},"requestState":"abc"}}"#).unwrap();
        assert!(retry.is_retry);
    }

    #[test]
    fn tool_error_resource_prompt_cancel() {
        let r = parse(br#"{"jsonrpc":"2.0","id":9,"result":{"content":[{"type":"text","text":"boom"}],"isError":true}}"#).unwrap();
        assert!(r.is_error && r.kind == Some(Kind::Response));
        assert_eq!(super::error_type(&r).as_deref(), Some("tool_error"));
        let rr = parse(br#"{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"file:///etc/hosts"}}"#).unwrap();
        assert_eq!(rr.resource.as_deref(), Some("file:///etc/hosts"));
        let pg = parse(
            br#"{"jsonrpc":"2.0","id":6,"method":"prompts/get","params":{"name":"simple_prompt"}}"#,
        )
        .unwrap();
        assert_eq!(pg.prompt.as_deref(), Some("simple_prompt"));
        let c = parse(br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r7","reason":"x"}}"#).unwrap();
        assert_eq!(c.cancelled_id, Some(RpcId::Str("r7".into())));
    }

    #[test]
    fn results_read_in_one_pass_are_lenient_per_field() {
        use crate::protocol::{jsonrpc::parse_raw, Kind};
        // A field of the wrong type is skipped; the others are still read,
        // and what the tool returned is kept raw.
        let (m, raw) = parse_raw(br#"{"jsonrpc":"2.0","id":1,"result":{"isError":"yes","content":[{"type":"text","text":"a \"b\""}],"structuredContent":{"n":1},"resultType":7,"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"srv","version":"1"}}}}"#).unwrap();
        assert_eq!(m.kind, Some(Kind::Response));
        assert!(!m.is_error && m.result_type.is_none());
        assert_eq!(m.server_info.map(|s| s.name).as_deref(), Some("srv"));
        let out = raw.result.expect("a result");
        assert_eq!(
            out.content.map(|c| c.get()),
            Some(r#"[{"type":"text","text":"a \"b\""}]"#)
        );
        assert_eq!(out.structured_content.map(|c| c.get()), Some(r#"{"n":1}"#));
        let (m, raw) = parse_raw(br#"{"jsonrpc":"2.0","id":2,"result":{"isError":true,"serverInfo":{"name":5},"protocolVersion":"2025-11-25"}}"#).unwrap();
        assert!(m.is_error && raw.result.is_some_and(|r| r.is_error));
        assert_eq!(m.protocol_version.as_deref(), Some("2025-11-25"));
        assert!(m.server_info.is_none(), "a malformed serverInfo is skipped");
        // A result that is not an object is a response all the same.
        for result in ["[1,2]", "\"x\"", "3", "true", "{}"] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":3,"result":{result}}}"#);
            let m = crate::protocol::parse(line.as_bytes()).unwrap();
            assert_eq!(m.kind, Some(Kind::Response), "{result}");
        }
    }

    #[test]
    fn params_read_in_one_pass_are_lenient_per_field() {
        use crate::protocol::{canonical, jsonrpc::parse_raw};
        // A field of the wrong type is skipped; the others are still read.
        let (m, raw) = parse_raw(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5,"arguments":{"a":[1,{"b":"\"x"}]},"_meta":{"progressToken":7,"traceparent":"00-ab"}}}"#).unwrap();
        assert_eq!(m.tool, None);
        assert_eq!(
            raw.arguments_hash,
            Some(canonical::hash(r#"{"a":[1,{"b":"\"x"}]}"#))
        );
        assert!(m.progress_token);
        assert_eq!(m.traceparent.as_deref(), Some("00-ab"));
        // Escaped keys and values are read like plain ones; `null` hashes
        // as absent arguments do.
        let (m, raw) = parse_raw(br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"\u006eame":"e\u0063ho","arguments":null,"requestState":null}}"#).unwrap();
        assert_eq!(m.tool.as_deref(), Some("echo"));
        assert_eq!(raw.arguments_hash, Some(canonical::NULL));
        assert!(!m.is_retry);
        // Params that are not an object: plain JSON-RPC, kept.
        for params in ["[1,2]", "\"x\"", "3", "true", "null"] {
            let line =
                format!(r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{params}}}"#);
            let m = crate::protocol::parse(line.as_bytes()).unwrap();
            assert_eq!(
                (m.method.as_deref(), m.tool),
                (Some("tools/call"), None),
                "{params}"
            );
        }
        // Malformed JSON inside params is still invalid JSON.
        assert!(crate::protocol::parse(
            br#"{"jsonrpc":"2.0","id":4,"method":"x","params":{"a":}}"#
        )
        .is_err());
    }

    #[test]
    fn unknown_methods_are_kept() {
        let m = parse(br#"{"jsonrpc":"2.0","id":1,"method":"vendor/frobnicate","params":[1,2]}"#)
            .unwrap();
        assert_eq!(m.method.as_deref(), Some("vendor/frobnicate"));
        assert!(super::method_era("vendor/frobnicate").is_none());
        assert_eq!(
            super::method_era("server/discover"),
            Some(super::Era::Current)
        );
    }
}
