//! Best-effort facts from a line that lost bytes (gap or oversize): `method`
//! from its head and `id` from wherever it survives (the TypeScript SDK puts
//! `id` last). Marked `salvaged`; never guesses more than it sees.

use memchr::memmem;

use super::{Kind, Message, RpcId};

/// Extracts what it can from a truncated JSON-RPC line, or `None` when the
/// bytes show no sign of JSON-RPC.
pub fn salvage(bytes: &[u8]) -> Option<Message> {
    let head = &bytes[..bytes.len().min(4096)];
    if memmem::find(head, b"\"jsonrpc\"").is_none()
        && memmem::rfind(bytes, b"\"jsonrpc\"").is_none()
    {
        return None;
    }
    let mut m = Message {
        salvaged: true,
        ..Message::default()
    };
    m.method = string_after(head, b"\"method\":").map(Into::into);
    m.id = id_after(bytes);
    m.kind = Some(if m.method.is_some() {
        if m.id.is_some() {
            Kind::Request
        } else {
            Kind::Notification
        }
    } else if memmem::find(head, b"\"error\":").is_some() {
        m.is_error = true;
        Kind::Error
    } else {
        Kind::Response
    });
    if m.method.as_deref() == Some("tools/call") {
        m.tool = string_after(head, b"\"name\":").map(Into::into);
    }
    Some(m)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn string_after(b: &[u8], key: &[u8]) -> Option<String> {
    let at = memmem::find(b, key)? + key.len();
    let start = skip_ws(b, at);
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let end = memchr::memchr(b'"', &b[start + 1..])? + start + 1;
    std::str::from_utf8(&b[start + 1..end])
        .ok()
        .map(str::to_owned)
}

/// The envelope's `"id":` value: near the start (Python SDK order) or else
/// the last one in the line (TypeScript SDK order, id last).
fn id_after(b: &[u8]) -> Option<RpcId> {
    let early = memmem::find(&b[..b.len().min(64)], b"\"id\":");
    let at = early.or_else(|| memmem::rfind(b, b"\"id\":"))?;
    let start = skip_ws(b, at + 5);
    if b.get(start) == Some(&b'"') {
        let end = memchr::memchr(b'"', &b[start + 1..])? + start + 1;
        return std::str::from_utf8(&b[start + 1..end])
            .ok()
            .map(|s| RpcId::Str(s.into()));
    }
    let end = b[start..]
        .iter()
        .position(|c| !(c.is_ascii_digit() || *c == b'-'))
        .map_or(b.len(), |p| p + start);
    std::str::from_utf8(&b[start..end])
        .ok()?
        .parse()
        .ok()
        .map(RpcId::Num)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvages_method_tool_and_trailing_id() {
        let m = salvage(br#"{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/x"#).unwrap();
        assert_eq!(
            (m.method.as_deref(), m.tool.as_deref(), m.id),
            (Some("tools/call"), Some("read_file"), Some(RpcId::Num(12)))
        );
        let r = salvage(br#"{"result":{"contents":[{"text":"aaaa"}]},"jsonrpc":"2.0","id":"x"}"#)
            .unwrap();
        assert_eq!(
            (r.kind, r.id),
            (Some(Kind::Response), Some(RpcId::Str("x".into())))
        );
        assert!(salvage(b"\x00\x01garbage").is_none());
    }
}
