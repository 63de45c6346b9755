//! A canonical hash of a JSON value, computed while it is parsed: object
//! members combine by a commutative sum, so neither key order nor
//! whitespace changes it, and strings are hashed by what they decode to
//! (`"\u0061"` is `"a"`). No tree is built, and strings are hashed in
//! place, as serde_json would write them: text on the wire almost always
//! is that already (only a string with other escapes is decoded and
//! written again, allocating). Two values with equal hashes are equal for
//! the detectors (64 bits: a collision is negligible, not impossible).
//!
//! Numbers keep their JSON kind, as `serde_json::Value` does: `1` and
//! `1.0` differ. An object with a repeated key hashes both members.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The hash of `null` (and of absent arguments).
pub const NULL: u64 = 0x6a09_e667_f3bc_c908;

/// Canonical hash of the JSON text `json`; invalid JSON hashes as `null`
/// (the parser that produced `json` already validated it).
///
/// A scan of the already-validated text finds each string's end sixteen
/// bytes at a time and hashes it in place; serde decodes only what needs
/// decoding (numbers, and strings with escapes serde_json would not write). It
/// gives exactly [`serde_hash`]'s value (tested), about three times as
/// fast on long strings, and falls back to it on anything it does not
/// expect.
pub fn hash(json: &str) -> u64 {
    scan(json).unwrap_or_else(|| serde_hash(json))
}

/// The scan behind [`hash`]; `None` where it hands over to serde.
fn scan(json: &str) -> Option<u64> {
    let mut s = Scan {
        b: json.as_bytes(),
        i: 0,
        depth: 0,
    };
    let h = s.value()?;
    s.at_end().then_some(h)
}

/// The same hash by serde's visitor: the reference, and the fallback.
pub fn serde_hash(json: &str) -> u64 {
    let mut de = serde_json::Deserializer::from_str(json);
    CanonicalHash.deserialize(&mut de).unwrap_or(NULL)
}

/// Nesting the scan follows before it hands over to serde (which stops at
/// 128 itself).
const MAX_DEPTH: u32 = 128;

/// A cursor over validated JSON text.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    depth: u32,
}

impl Scan<'_> {
    fn blank(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn at_end(&mut self) -> bool {
        self.blank();
        self.i == self.b.len()
    }

    /// Consumes `c` after blanks.
    fn eat(&mut self, c: u8) -> Option<()> {
        self.blank();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn value(&mut self) -> Option<u64> {
        self.blank();
        match *self.b.get(self.i)? {
            b'{' => self.nested(Self::object),
            b'[' => self.nested(Self::array),
            b'"' => self.string(),
            b't' => self.literal(b"true", tagged(2, 1)),
            b'f' => self.literal(b"false", tagged(2, 0)),
            b'n' => self.literal(b"null", NULL),
            _ => self.number(),
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Option<u64>) -> Option<u64> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        self.i += 1; // the opening bracket
        let h = f(self);
        self.depth -= 1;
        h
    }

    fn literal(&mut self, word: &[u8], h: u64) -> Option<u64> {
        self.b[self.i..].starts_with(word).then(|| {
            self.i += word.len();
            h
        })
    }

    /// A string, hashed as serde_json would write it. Text whose escapes
    /// are all the ones serde_json writes (`\"`, `\\`, `\n`, `\t`,
    /// `\u001f`, …: almost all JSON on the wire) is that already, and is
    /// hashed where it lies; anything else (`\/`, `\u0061`) is decoded and
    /// written again first.
    fn string(&mut self) -> Option<u64> {
        let open = self.i;
        let mut end = special_at(self.b, open + 1)?;
        let mut canonical = true;
        while self.b[end] == b'\\' {
            let escape = self.b.get(end + 1..)?;
            canonical &= written_by_serde(escape);
            let next = end + if escape.first() == Some(&b'u') { 6 } else { 2 };
            end = special_at(self.b, next)?;
        }
        let quoted = &self.b[open..=end];
        self.i = end + 1;
        if canonical {
            return Some(tagged(6, bytes_hash(quoted)));
        }
        let decoded: String = serde_json::from_slice(quoted).ok()?;
        Some(str_hash(&decoded))
    }

    fn number(&mut self) -> Option<u64> {
        let start = self.i;
        while matches!(
            self.b.get(self.i),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.i += 1;
        }
        // serde's own number parsing, so the kind (u64, i64, f64) is its.
        let n: serde_json::Number = serde_json::from_slice(&self.b[start..self.i]).ok()?;
        Some(if let Some(u) = n.as_u64() {
            tagged(3, u)
        } else if let Some(i) = n.as_i64() {
            tagged(4, i as u64)
        } else {
            tagged(5, n.as_f64()?.to_bits())
        })
    }

    /// After `{`: members combine as in [`ValueHash::visit_map`].
    fn object(&mut self) -> Option<u64> {
        let (mut sum, mut n) = (0u64, 0u64);
        if self.eat(b'}').is_none() {
            loop {
                self.blank();
                if self.b.get(self.i) != Some(&b'"') {
                    return None;
                }
                let k = self.string()?;
                self.eat(b':')?;
                let v = self.value()?;
                sum = sum.wrapping_add(mix(k ^ v.rotate_left(32)));
                n += 1;
                if self.eat(b',').is_none() {
                    self.eat(b'}')?;
                    break;
                }
            }
        }
        Some(tagged(8, sum ^ mix(n)))
    }

    /// After `[`: elements chain as in [`ValueHash::visit_seq`].
    fn array(&mut self) -> Option<u64> {
        let mut h = tagged(7, 0);
        if self.eat(b']').is_none() {
            loop {
                let x = self.value()?;
                h = mix(h.rotate_left(23) ^ x);
                if self.eat(b',').is_none() {
                    self.eat(b']')?;
                    break;
                }
            }
        }
        Some(h)
    }
}

/// The first `"` or `\` in `b` at or after `i`: sixteen bytes at a time
/// (SSE2, part of every x86-64 CPU), then byte by byte for the last few.
/// Strings on the wire are escaped every few dozen bytes (`\"`, `\n`), and
/// a `memchr2` call per escape spent more on its set-up than on searching
/// (a fifth of the detectors' instructions on prose arguments); this
/// loop has none.
#[inline]
fn special_at(b: &[u8], mut i: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is in the baseline of every x86-64 target, and each
        // load reads the 16 bytes at `i`, inside `b` by the loop's
        // condition (unaligned loads are allowed).
        unsafe {
            let (quote, backslash) = (_mm_set1_epi8(b'"' as i8), _mm_set1_epi8(b'\\' as i8));
            while i + 16 <= b.len() {
                let v = _mm_loadu_si128(b.as_ptr().add(i).cast());
                let hits = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
                let mask = _mm_movemask_epi8(hits);
                if mask != 0 {
                    return Some(i + mask.trailing_zeros() as usize);
                }
                i += 16;
            }
        }
    }
    let rest = b.get(i..)?;
    rest.iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|at| i + at)
}

/// splitmix64's finaliser: every input bit reaches every output bit, so
/// sums of mixed member hashes do not cancel structurally.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn tagged(tag: u64, v: u64) -> u64 {
    mix(tag.rotate_left(56) ^ mix(v))
}

/// The hash of what a tool returned: the raw texts of its `content` and
/// `structuredContent` (one server writes equal results byte for byte, so
/// they are hashed as they are, not parsed) and `isError`, each under its
/// own tag: a result that differs in any one of them hashes apart.
pub fn output_hash(content: Option<&[u8]>, structured: Option<&[u8]>, is_error: bool) -> u64 {
    let part = |tag: u64, text: Option<&[u8]>| text.map_or(NULL, |t| tagged(tag, bytes_hash(t)));
    mix(part(9, content) ^ part(10, structured).rotate_left(32) ^ tagged(2, u64::from(is_error)))
}

/// A hash of bytes, seeded once per process: argument strings and
/// results are what peers send, and with a fixed seed colliding ones could
/// be searched for offline (see [`crate::collections::process_hash`]).
/// Equal within one run, not across runs: nothing made of it leaves the
/// process.
pub fn bytes_hash(b: &[u8]) -> u64 {
    crate::collections::process_hash(b)
}

/// A string's hash: of its JSON text as serde_json writes it (quotes
/// included), so that equal strings hash equal however they were escaped.
fn str_hash(s: &str) -> u64 {
    let written = serde_json::to_vec(s).expect("a string serialises");
    tagged(6, bytes_hash(&written))
}

/// Whether the escape after a backslash (`escape` starts at the escaped
/// byte) is the one serde_json writes for its character: the short forms,
/// and `\u00xx` (lower-case hex) only for the other control characters.
fn written_by_serde(escape: &[u8]) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match escape {
        [b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't', ..] => true,
        [b'u', b'0', b'0', hi @ (b'0' | b'1'), lo, ..] => {
            HEX.iter().position(|h| h == lo).is_some_and(|lo| {
                let c = (hi - b'0') << 4 | lo as u8;
                !matches!(c, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d)
            })
        }
        _ => false,
    }
}

struct CanonicalHash;

impl<'de> DeserializeSeed<'de> for CanonicalHash {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(ValueHash)
    }
}

struct ValueHash;

impl<'de> Visitor<'de> for ValueHash {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<u64, E> {
        Ok(NULL)
    }
    fn visit_bool<E>(self, b: bool) -> Result<u64, E> {
        Ok(tagged(2, b as u64))
    }
    fn visit_u64<E>(self, n: u64) -> Result<u64, E> {
        Ok(tagged(3, n))
    }
    fn visit_i64<E>(self, n: i64) -> Result<u64, E> {
        // serde_json reports only negative integers as i64.
        Ok(tagged(4, n as u64))
    }
    fn visit_f64<E>(self, n: f64) -> Result<u64, E> {
        Ok(tagged(5, n.to_bits()))
    }
    fn visit_str<E>(self, s: &str) -> Result<u64, E> {
        Ok(str_hash(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        // Order matters in an array: a chained hash.
        let mut h = tagged(7, 0);
        while let Some(x) = seq.next_element_seed(CanonicalHash)? {
            h = mix(h.rotate_left(23) ^ x);
        }
        Ok(h)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        // Order does not matter in an object: a sum of member hashes.
        let (mut sum, mut n) = (0u64, 0u64);
        while let Some(k) = map.next_key_seed(CanonicalHash)? {
            let v = map.next_value_seed(CanonicalHash)?;
            sum = sum.wrapping_add(mix(k ^ v.rotate_left(32)));
            n += 1;
        }
        Ok(tagged(8, sum ^ mix(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_whitespace_and_escapes_do_not_matter() {
        let a = hash(r#"{"a":1,"b":{"x":[1,2,"s"],"y":null}}"#);
        assert_eq!(
            a,
            hash(r#"{ "b" : { "y":null, "x":[1, 2, "\u0073"] }, "a":1 }"#)
        );
        // Escapes serde_json would not write hash as the ones it would.
        for (x, y) in [
            (r#""\/""#, r#""/""#),
            (r#""\u000a""#, r#""\n""#),
            (r#""\u001F""#, r#""\u001f""#),
            (r#""\u00e9\ud83d\ude00""#, r#""é😀""#),
        ] {
            assert_eq!(hash(x), hash(y), "{x} vs {y}");
        }
        assert_ne!(
            a,
            hash(r#"{"a":1,"b":{"x":[2,1,"s"],"y":null}}"#),
            "array order"
        );
        assert_ne!(
            a,
            hash(r#"{"a":2,"b":{"x":[1,2,"s"],"y":null}}"#),
            "a value"
        );
        assert_ne!(a, hash(r#"{"A":1,"b":{"x":[1,2,"s"],"y":null}}"#), "a key");
    }

    #[test]
    fn kinds_and_shapes_stay_apart() {
        let all = [
            "null",
            "true",
            "false",
            "1",
            "-1",
            "1.0",
            "\"1\"",
            "[]",
            "{}",
            "[1]",
            "[[1]]",
            r#"{"a":"b"}"#,
            r#"{"b":"a"}"#,
            r#"{"a":1,"b":1}"#,
            r#"{"a":{"b":1}}"#,
            r#"[{"a":1}]"#,
            r#"{"a":[1,2]}"#,
            r#"{"a":[2,1]}"#,
            r#"["a","b"]"#,
            r#"{"a":"b","c":"d"}"#,
            r#"{"a":"d","c":"b"}"#,
        ];
        let hashes: std::collections::HashSet<u64> = all.iter().map(|j| hash(j)).collect();
        assert_eq!(hashes.len(), all.len());
    }

    #[test]
    fn the_scan_gives_serde_s_hash_exactly() {
        let fixed = [
            r#"{"a":1,"b":{"x":[1,2,"s"],"y":null}}"#,
            r#" { "b" : { "y":null, "x":[1, 2, "\u0073"] }, "a":1 } "#,
            r#"{"k\"ey":"v\\al\"ue\n","\u00e9":"\ud83d\ude00","e":"é😀"}"#,
            r#"[0,-0,1.0,-1,1e3,1E-3,-2.5e+10,18446744073709551615,18446744073709551616,-9223372036854775808,-9223372036854775809]"#,
            r#"[true,false,null,[],{},[[]],[{}],{"":""}]"#,
            r#""just a string""#,
            "3.25",
            r#"{"path":"C:\\dir\\","x":"\\"}"#,
            r#"["\/","/","\u000a","\n","\u001F","\u001f","\u0008\b\f\u000C","\u007f","\t\r"]"#,
        ];
        for j in fixed {
            assert_eq!(scan(j), Some(serde_hash(j)), "{j}");
        }
        // An escape at every offset of a string, either side of the
        // sixteen-byte steps of the search for its end.
        for at in 0..40 {
            for escape in [r#"\""#, r"\\", r"\n", r"\u00e9", r"\/"] {
                let text = format!("{}{escape}{}", "x".repeat(at), "y".repeat(40 - at));
                let j = format!(r#"{{"k":"{text}","l":"{text}"}}"#);
                assert_eq!(scan(&j), Some(serde_hash(&j)), "{j}");
            }
        }
        // Random values, compact and pretty, with escapes and unicode.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed = mix(seed);
            seed
        };
        fn gen(next: &mut dyn FnMut() -> u64, depth: u32) -> serde_json::Value {
            use serde_json::Value as V;
            let pick = next() % if depth > 3 { 5 } else { 7 };
            match pick {
                0 => V::Null,
                1 => V::Bool(next().is_multiple_of(2)),
                2 => match next() % 3 {
                    0 => V::from(next() >> (next() % 64)),
                    1 => V::from(-((next() >> 2) as i64)),
                    _ => V::from((next() % 100_000) as f64 / 7.0),
                },
                3 | 4 => {
                    let parts = [
                        "a",
                        "\"",
                        "\\",
                        "\n",
                        "é",
                        "😀",
                        "\u{7}",
                        "x y",
                        "/",
                        "\t",
                        "\r",
                        "\u{8}",
                        "\u{c}",
                        "\u{1f}",
                        "\u{7f}",
                        "a sixteen+ byte run",
                    ];
                    V::String(
                        (0..next() % 24)
                            .map(|_| parts[(next() % parts.len() as u64) as usize])
                            .collect(),
                    )
                }
                5 => V::Array((0..next() % 4).map(|_| gen(next, depth + 1)).collect()),
                _ => V::Object(
                    (0..next() % 4)
                        .map(|i| (format!("k{i}{}", next() % 3), gen(next, depth + 1)))
                        .collect(),
                ),
            }
        }
        for _ in 0..2_000 {
            let v = gen(&mut next, 0);
            for text in [
                serde_json::to_string(&v).unwrap(),
                serde_json::to_string_pretty(&v).unwrap(),
            ] {
                assert_eq!(scan(&text), Some(serde_hash(&text)), "{text}");
            }
        }
    }

    #[test]
    fn matches_the_tree_it_stands_for() {
        // The same decision serde_json's (key-sorted) Value makes.
        let pairs = [
            (
                r#"{"k":"v","n":[1,{"z":1,"a":2}]}"#,
                r#"{"n":[1,{"a":2,"z":1}],"k":"v"}"#,
            ),
            (r#"{"x":1e3}"#, r#"{"x":1000.0}"#),
        ];
        for (a, b) in pairs {
            let (va, vb): (serde_json::Value, serde_json::Value) = (
                serde_json::from_str(a).unwrap(),
                serde_json::from_str(b).unwrap(),
            );
            assert_eq!(va == vb, hash(a) == hash(b), "{a} vs {b}");
        }
    }
}
