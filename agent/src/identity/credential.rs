//! Credentials seen in HTTP headers, reduced to what may be written down: a
//! fingerprint (first 16 hex characters of the value's SHA-256) and, for a
//! JWT, its unverified claims that name the caller. The raw value never
//! leaves this module.

use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A credential presented in a request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Credential {
    /// Header name, lower case (`authorization`, `x-api-key`, `cookie` …).
    pub header: Box<str>,
    /// Authorization scheme (`bearer`, `basic` …), lower case; absent for
    /// API-key-like headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Box<str>>,
    /// First 16 hex characters of SHA-256 of the credential (without the
    /// scheme): the same token always gives the same fingerprint.
    pub fingerprint: Box<str>,
    /// Unverified claims when the credential is a JWT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtClaims>,
}

/// The identity-bearing claims of a JWT, as the token states them (the
/// signature is not checked: this is attribution, not authentication).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JwtClaims {
    /// `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<Box<str>>,
    /// `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<Box<str>>,
    /// `aud` (a string or an array in the token).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aud: Vec<Box<str>>,
    /// `client_id`, or `azp` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Box<str>>,
    /// `scope` (or `scp` joined by spaces).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Box<str>>,
    /// `exp`, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

/// First 16 hex characters of SHA-256 of `value`.
pub fn fingerprint(value: &[u8]) -> Box<str> {
    let d = Sha256::digest(value);
    let mut s = String::with_capacity(16);
    for b in &d[..8] {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s.into_boxed_str()
}

/// True for a header whose value is a credential: `authorization`,
/// `proxy-authorization`, `cookie`, and API-key-like names (`x-api-key`,
/// `x-auth-token`, `api-key` …).
pub fn is_credential_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization")
        || name.eq_ignore_ascii_case("proxy-authorization")
        || name.eq_ignore_ascii_case("cookie")
        || (!name.eq_ignore_ascii_case("mcp-session-id")
            && !name.to_ascii_lowercase().starts_with("mcp-")
            && super::secrets::is_secret_name(name))
}

/// The credential in header `name: value`.
pub fn from_header(name: &str, value: &[u8]) -> Credential {
    let header = name.to_ascii_lowercase().into_boxed_str();
    let is_auth = header.ends_with("authorization");
    let (scheme, secret) = match (is_auth, memchr::memchr(b' ', value)) {
        (true, Some(sp)) => {
            let scheme = String::from_utf8_lossy(&value[..sp]).to_ascii_lowercase();
            (Some(scheme.into_boxed_str()), trim(&value[sp + 1..]))
        }
        _ => (None, trim(value)),
    };
    Credential {
        header,
        fingerprint: fingerprint(secret),
        jwt: jwt_claims(secret),
        scheme,
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// The claims of `token` when it is a JWT (three base64url parts whose
/// first two decode to JSON objects); None otherwise.
pub fn jwt_claims(token: &[u8]) -> Option<JwtClaims> {
    let mut parts = token.split(|b| *b == b'.');
    let (header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 16 * 1024 {
        return None;
    }
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |p: &[u8]| {
        // Some issuers pad; the no-pad engine rejects '='.
        let p = p.strip_suffix(b"==").or(p.strip_suffix(b"=")).unwrap_or(p);
        engine.decode(p).ok()
    };
    let header: serde_json::Value = serde_json::from_slice(&decode(header)?).ok()?;
    header.get("alg")?;
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&decode(payload)?).ok()?;
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(|v| v.as_str())
            .map(|s| bounded(s).into())
    };
    let aud = match claims.get("aud") {
        Some(serde_json::Value::String(s)) => vec![bounded(s).into()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str())
            .take(16)
            .map(|s| bounded(s).into())
            .collect(),
        _ => Vec::new(),
    };
    let scope = text("scope").or_else(|| {
        let scp = claims.get("scp")?.as_array()?;
        let joined: Vec<&str> = scp.iter().filter_map(|v| v.as_str()).collect();
        Some(bounded(&joined.join(" ")).into())
    });
    Some(JwtClaims {
        iss: text("iss"),
        sub: text("sub"),
        aud,
        client_id: text("client_id").or_else(|| text("azp")),
        scope,
        exp: claims.get("exp").and_then(|v| v.as_i64()),
    })
}

/// Claims are attacker-controlled text: keep at most 256 bytes of each.
fn bounded(s: &str) -> &str {
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            e.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            e.encode(claims)
        )
    }

    #[test]
    fn bearer_jwt_gives_fingerprint_and_claims_never_the_token() {
        let token = jwt(
            r#"{"iss":"https://idp.example","sub":"agent-7","aud":["mcp","x"],"azp":"cli","scp":["tools.read","tools.call"],"exp":1893456000}"#,
        );
        let c = from_header("Authorization", format!("Bearer {token}").as_bytes());
        assert_eq!(c.header.as_ref(), "authorization");
        assert_eq!(c.scheme.as_deref(), Some("bearer"));
        assert_eq!(c.fingerprint, fingerprint(token.as_bytes()));
        assert_eq!(c.fingerprint.len(), 16);
        let j = c.jwt.clone().unwrap();
        assert_eq!(j.iss.as_deref(), Some("https://idp.example"));
        assert_eq!(j.sub.as_deref(), Some("agent-7"));
        assert_eq!(j.aud.len(), 2);
        assert_eq!(j.client_id.as_deref(), Some("cli"));
        assert_eq!(j.scope.as_deref(), Some("tools.read tools.call"));
        assert_eq!(j.exp, Some(1893456000));
        let text = serde_json::to_string(&c).unwrap();
        assert!(!text.contains(&token[..20]), "{text}");
    }

    #[test]
    fn opaque_tokens_and_api_keys_are_fingerprinted_only() {
        let c = from_header("authorization", b"Bearer opaque-token-123");
        assert_eq!(c.jwt, None);
        assert_eq!(c.fingerprint, fingerprint(b"opaque-token-123"));
        let k = from_header("X-API-Key", b" sk-live-abc ");
        assert_eq!(k.scheme, None);
        assert_eq!(k.fingerprint, fingerprint(b"sk-live-abc"));
        assert!(is_credential_header("X-Api-Key"));
        assert!(is_credential_header("x-auth-token"));
        assert!(is_credential_header("Cookie"));
        assert!(!is_credential_header("Mcp-Session-Id"));
        assert!(!is_credential_header("content-type"));
    }

    #[test]
    fn malformed_jwts_are_not_claims() {
        assert_eq!(jwt_claims(b"a.b"), None);
        assert_eq!(jwt_claims(b"a.b.c.d"), None);
        assert_eq!(jwt_claims(b"!!.??.x"), None);
    }
}
