//! The hash chain. A record is one JSON line
//! `{"seq":N,"ts":"…","kind":"…","prev":"<hex>","data":{…},"hash":"<hex>"}`
//! where `hash` is SHA-256 (or HMAC-SHA256 with a key) of the line's bytes
//! up to, not including, `,"hash":` — the body, which contains `prev`, the
//! previous record's hash. Editing, deleting, inserting or reordering any
//! record breaks the chain at that point.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_FIELD: &[u8] = b",\"hash\":\"";
/// Length of the sealed suffix: `,"hash":"` + 64 hex + `"}`.
pub const SEAL_LEN: usize = HASH_FIELD.len() + 64 + 2;

/// How records are hashed.
#[derive(Clone)]
pub enum Hasher {
    /// Plain SHA-256: detects tampering by anyone who cannot also rewrite
    /// every later record.
    Sha256,
    /// HMAC-SHA256 with a secret key: rewriting the chain needs the key.
    Hmac(Vec<u8>),
}

impl Hasher {
    /// The hash of `body`, lower-case hex.
    pub fn hash(&self, body: &[u8]) -> String {
        match self {
            Hasher::Sha256 => hex(&Sha256::digest(body)),
            Hasher::Hmac(key) => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(body);
                hex(&mac.finalize().into_bytes())
            }
        }
    }

    /// True for a keyed chain.
    pub fn keyed(&self) -> bool {
        matches!(self, Hasher::Hmac(_))
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Turns a body `{…}` into a sealed line `{…,"hash":"…"}` (no newline);
/// returns the hash.
pub fn seal(body: &mut Vec<u8>, hasher: &Hasher) -> String {
    let hash = hasher.hash(body);
    debug_assert_eq!(body.last(), Some(&b'}'));
    body.pop();
    body.extend_from_slice(HASH_FIELD);
    body.extend_from_slice(hash.as_bytes());
    body.extend_from_slice(b"\"}");
    hash
}

/// Splits a sealed line into (body, stored hash); `None` if it is not sealed.
pub fn unseal(line: &[u8]) -> Option<(Vec<u8>, &str)> {
    if line.len() < SEAL_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let at = line.len() - SEAL_LEN;
    if &line[at..at + HASH_FIELD.len()] != HASH_FIELD {
        return None;
    }
    let hash = std::str::from_utf8(&line[at + HASH_FIELD.len()..line.len() - 2]).ok()?;
    let mut body = line[..at].to_vec();
    body.push(b'}');
    Some((body, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_unseal_round_trip_and_keyed_differs() {
        let mut body = br#"{"seq":1,"prev":"00","data":{}}"#.to_vec();
        let h = seal(&mut body, &Hasher::Sha256);
        let (b, stored) = unseal(&body).unwrap();
        assert_eq!(stored, h);
        assert_eq!(Hasher::Sha256.hash(&b), h);
        assert_ne!(Hasher::Hmac(b"k".to_vec()).hash(&b), h);
        assert!(unseal(b"{\"seq\":1}").is_none());
    }
}
