//! A canonical hash of a JSON value, computed while it is parsed: object
//! members combine by a commutative sum, so neither key order nor
//! whitespace changes it, and strings are hashed decoded (`"\u0061"` is
//! `"a"`). Nothing is allocated: no tree is built, borrowed strings are
//! hashed in place. Two values with equal hashes are equal for the
//! detectors (64 bits: a collision is negligible, not impossible).
//!
//! Numbers keep their JSON kind, as `serde_json::Value` does: `1` and
//! `1.0` differ. An object with a repeated key hashes both members.

use std::{fmt, hash::BuildHasher};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The hash of `null` (and of absent arguments).
pub const NULL: u64 = 0x6a09_e667_f3bc_c908;

/// Canonical hash of the JSON text `json`; invalid JSON hashes as `null`
/// (the parser that produced `json` already validated it).
pub fn hash(json: &str) -> u64 {
    let mut de = serde_json::Deserializer::from_str(json);
    CanonicalHash.deserialize(&mut de).unwrap_or(NULL)
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

/// A fixed-seed hash of bytes (folded multiplies, 16+ bytes per step):
/// the same in every run, fast on long strings.
pub fn bytes_hash(b: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(0x243f_6a88_85a3_08d3).hash_one(b)
}

fn str_hash(s: &str) -> u64 {
    tagged(6, bytes_hash(s.as_bytes()))
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
