//! What an HTTP message head says about MCP: the Streamable HTTP headers of
//! both protocol eras, the session, the status, and the credentials (as
//! fingerprints). Built once per HTTP message from `httparse`'s headers and
//! shared by every JSON-RPC message of its body.

use base64::Engine;
use serde::Serialize;

use crate::identity::credential::{self, Credential};

/// Longest header value kept as text (the rest is cut).
const MAX_VALUE: usize = 256;
/// `Mcp-Param-*` headers kept per message.
const MAX_PARAMS: usize = 16;

/// The MCP-relevant part of one HTTP message head.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpHead {
    /// Request method (requests only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Box<str>>,
    /// Request path without the query string (query values can be session
    /// ids or keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Box<str>>,
    /// Response status code (responses only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `Content-Type` without parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<Box<str>>,
    /// Fingerprint of the MCP session id (`Mcp-Session-Id`, or the legacy
    /// `session_id`/`sessionId` query parameter): it binds connections
    /// into one session without writing the id, which is a bearer capability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Box<str>>,
    /// `MCP-Protocol-Version` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<Box<str>>,
    /// `Mcp-Method` header (2026-07-28).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_method: Option<Box<str>>,
    /// `Mcp-Name` header (2026-07-28).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_name: Option<Box<str>>,
    /// `Mcp-Param-*` headers, names lower case without the prefix, values
    /// decoded from `=?base64?…?=`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mcp_params: Vec<(Box<str>, Box<str>)>,
    /// `Last-Event-ID` of a resumed stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<Box<str>>,
    /// `WWW-Authenticate` of a 401/403.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub www_authenticate: Option<Box<str>>,
    /// Credentials presented (fingerprints and JWT claims only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    /// A request whose `Accept` takes `text/event-stream` (an MCP client's).
    #[serde(skip)]
    pub accept_sse: bool,
    /// Body is gzip or deflate encoded.
    #[serde(skip)]
    pub encoding: Encoding,
}

/// `Content-Encoding` of a body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// No encoding (or `identity`).
    #[default]
    Identity,
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate` (zlib-wrapped, or raw as some servers send it).
    Deflate,
    /// Anything else (`br`, `zstd`): the body cannot be read.
    Other,
}

impl HttpHead {
    /// True when the body is JSON (a JSON-RPC message or batch).
    pub fn is_json(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|c| c == "application/json" || c.ends_with("+json"))
    }

    /// True when the body is an SSE stream.
    pub fn is_event_stream(&self) -> bool {
        self.content_type.as_deref() == Some("text/event-stream")
    }

    /// True when anything in the head marks it as MCP (so a body-less
    /// message such as a GET stream, a DELETE or a 202 still counts).
    pub fn has_mcp_headers(&self) -> bool {
        self.session_id.is_some()
            || self.protocol_version.is_some()
            || self.mcp_method.is_some()
            || self.is_event_stream()
    }

    /// Fills the head from parsed headers.
    pub fn add_headers(&mut self, headers: &[httparse::Header<'_>]) {
        for h in headers {
            let n = h.name;
            let eq = |s: &str| n.eq_ignore_ascii_case(s);
            if eq("content-type") {
                let v = text(h.value);
                let base = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                self.content_type = Some(base.into());
            } else if eq("content-encoding") {
                self.encoding = match text(h.value).trim().to_ascii_lowercase().as_str() {
                    "" | "identity" => Encoding::Identity,
                    "gzip" | "x-gzip" => Encoding::Gzip,
                    "deflate" => Encoding::Deflate,
                    _ => Encoding::Other,
                };
            } else if eq("mcp-session-id") {
                self.session_id = Some(credential::fingerprint(h.value.trim_ascii()));
            } else if eq("mcp-protocol-version") {
                self.protocol_version = Some(text(h.value).into());
            } else if eq("mcp-method") {
                self.mcp_method = Some(decode_value(h.value).into());
            } else if eq("mcp-name") {
                self.mcp_name = Some(decode_value(h.value).into());
            } else if n.len() > 10 && n[..10].eq_ignore_ascii_case("mcp-param-") {
                if self.mcp_params.len() < MAX_PARAMS {
                    let name = n[10..].to_ascii_lowercase().into_boxed_str();
                    self.mcp_params.push((name, decode_value(h.value).into()));
                }
            } else if eq("last-event-id") {
                self.last_event_id = Some(text(h.value).into());
            } else if eq("www-authenticate") {
                self.www_authenticate = Some(text(h.value).into());
            } else if credential::is_credential_header(n) && self.credentials.len() < 4 {
                self.credentials.push(credential::from_header(n, h.value));
            }
        }
    }

    /// Sets method and path from a request line; a legacy session id in the
    /// query (`?session_id=…` / `?sessionId=…`) becomes [`Self::session_id`].
    pub fn set_request_line(&mut self, method: &str, target: &str) {
        self.method = Some(method.into());
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        self.path = Some(bounded(path).into());
        if self.session_id.is_none() {
            self.session_id = legacy_session_id(query);
        }
    }
}

/// Fingerprint of the `session_id`/`sessionId` parameter of a query string
/// (the legacy HTTP+SSE transport's POST URL names the session this way).
pub fn legacy_session_id(query: &str) -> Option<Box<str>> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "session_id" || k == "sessionId").then(|| credential::fingerprint(v.as_bytes()))
    })
}

/// A header value as bounded text.
fn text(v: &[u8]) -> String {
    bounded(&String::from_utf8_lossy(v)).to_owned()
}

fn bounded(s: &str) -> &str {
    let mut end = s.len().min(MAX_VALUE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A 2026-07-28 header value: plain text, or `=?base64?<b64>?=` for values
/// that are not plain ASCII.
pub fn decode_value(v: &[u8]) -> String {
    let v = v.trim_ascii();
    if let Some(inner) = v
        .strip_prefix(b"=?base64?")
        .and_then(|r| r.strip_suffix(b"?="))
    {
        if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(inner) {
            return text(&raw);
        }
    }
    text(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> HttpHead {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut hs);
        req.parse(raw).unwrap();
        let mut h = HttpHead::default();
        h.add_headers(req.headers);
        h.set_request_line(req.method.unwrap(), req.path.unwrap());
        h
    }

    #[test]
    fn streamable_http_headers_of_both_eras() {
        let h = head(
            b"POST /mcp?x=1 HTTP/1.1\r\nContent-Type: application/json; charset=utf-8\r\n\
Mcp-Session-Id: abc123\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\n\
Mcp-Name: =?base64?d2VhdGhlcg==?=\r\nMcp-Param-City: =?base64?TcO8bmNoZW4=?=\r\n\
Authorization: Bearer tok\r\n\r\n",
        );
        assert_eq!(h.method.as_deref(), Some("POST"));
        assert_eq!(h.path.as_deref(), Some("/mcp"));
        assert!(h.is_json());
        assert_eq!(h.session_id, Some(credential::fingerprint(b"abc123")));
        assert_eq!(h.protocol_version.as_deref(), Some("2026-07-28"));
        assert_eq!(h.mcp_method.as_deref(), Some("tools/call"));
        assert_eq!(h.mcp_name.as_deref(), Some("weather"));
        assert_eq!(h.mcp_params, vec![("city".into(), "München".into())]);
        assert_eq!(h.credentials.len(), 1);
        assert_eq!(
            h.credentials[0].fingerprint,
            credential::fingerprint(b"tok")
        );
    }

    #[test]
    fn legacy_post_url_names_the_session() {
        let h = head(b"POST /messages/?session_id=0f3a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.path.as_deref(), Some("/messages/"));
        assert_eq!(h.session_id, Some(credential::fingerprint(b"0f3a")));
    }
}
