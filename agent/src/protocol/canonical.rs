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
//!
//! A tools/call's arguments are hashed in the parse of their message
//! ([`ArgumentsHash`]); [`hash`] takes any JSON text, and [`serde_hash`]
//! is the reference both are tested against.

use std::fmt;

use super::bytes_hash::bytes_hash;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The hash of `null` (and of absent arguments).
pub const NULL: u64 = 0x6a09_e667_f3bc_c908;

/// Canonical hash of the JSON text `json`; invalid JSON hashes as `null`
/// (the parser that produced `json` already validated it).
///
/// A scan of the already-validated text finds each string's end
/// sixty-four bytes at a time and hashes it in place; serde decodes only what needs
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
        let (end, canonical) = string_end(self.b, open)?;
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

    /// After `{`: members combine by [`ObjectHash`].
    fn object(&mut self) -> Option<u64> {
        let mut h = ObjectHash::default();
        if self.eat(b'}').is_none() {
            loop {
                self.blank();
                if self.b.get(self.i) != Some(&b'"') {
                    return None;
                }
                let k = self.string()?;
                self.eat(b':')?;
                let v = self.value()?;
                h.add(k, v);
                if self.eat(b',').is_none() {
                    self.eat(b'}')?;
                    break;
                }
            }
        }
        Some(h.finish())
    }

    /// After `[`: elements chain by [`ArrayHash`].
    fn array(&mut self) -> Option<u64> {
        let mut h = ArrayHash::new();
        if self.eat(b']').is_none() {
            loop {
                h.add(self.value()?);
                if self.eat(b',').is_none() {
                    self.eat(b']')?;
                    break;
                }
            }
        }
        Some(h.finish())
    }
}

/// Bytes per block of [`string_end`]: one bit each in a `u64`.
const BLOCK: usize = 64;

/// The closing quote of the string whose opening quote is at `open`, and
/// whether every escape in it is one serde_json writes; `None` if it does
/// not close. Sixty-four bytes at a time, with no step per escape: a
/// block's masks of quotes and backslashes give the escaped bytes by bit
/// arithmetic (simdjson's, below), the first unescaped quote ends the
/// string, and only an escaped `/` or `u` is looked at on its own (the
/// escapes serde_json may not write). Strings on the wire are escaped
/// every few dozen bytes (`\"`, `\n`): a search that stopped at each
/// escape spent some forty instructions there, most of the detectors'
/// cost on prose. AVX-512 BW where the CPU has it, else AVX2, else SSE2.
fn string_end(b: &[u8], open: usize) -> Option<(usize, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512bw") {
            // SAFETY: the CPU has AVX-512 BW, checked just above.
            return unsafe { string_end_avx512(b, open) };
        }
        if has!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { string_end_avx2(b, open) };
        }
    }
    string_end_in::<SSE2>(b, open)
}

/// The forms of [`string_end`]'s masks, by the compares they are made of.
const SSE2: u8 = 0;
/// 32-byte compares and byte masks.
const AVX2: u8 = 1;
/// 64-byte compares straight into mask registers: one compare per block
/// and byte of interest, where AVX2 takes two compares, two byte masks and
/// a shift and an OR.
const AVX512: u8 = 2;

/// [`string_end`] with AVX2 enabled, its masks from 32-byte compares.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn string_end_avx2(b: &[u8], open: usize) -> Option<(usize, bool)> {
    string_end_in::<AVX2>(b, open)
}

/// [`string_end`] with AVX-512 BW enabled, its masks from 64-byte compares.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
fn string_end_avx512(b: &[u8], open: usize) -> Option<(usize, bool)> {
    string_end_in::<AVX512>(b, open)
}

/// [`string_end`]'s loop; `FORM` says which masks it takes (AVX2 and
/// AVX-512 only inside [`string_end_avx2`] and [`string_end_avx512`]).
#[inline(always)]
fn string_end_in<const FORM: u8>(b: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut canonical = true;
    let mut at = open + 1; // the block's first byte
    let mut carry = 0; // 1: the block's first byte is escaped
    loop {
        let m = specials::<FORM>(b, at);
        let escaped = escaped_bytes(m.backslashes, &mut carry);
        let ends = m.quotes & !escaped;
        // The bits before the closing quote, or all of them.
        let inside = if ends == 0 {
            !0
        } else {
            (ends & ends.wrapping_neg()) - 1
        };
        // With AVX-512, only escaped `/` and `u` are looked at (a compare
        // each per block into mask registers, not a step per escape: every
        // `\"` and `\n` of prose was a data-dependent branch); elsewhere
        // every escape is (see `Masks::odd`).
        let mut escapes = escaped & inside & m.odd;
        while escapes != 0 {
            // Only `\/` and some `\uXXXX` are escapes serde_json does not write.
            let k = at + escapes.trailing_zeros() as usize;
            match b.get(k) {
                Some(b'/') => canonical = false,
                Some(b'u') => canonical &= written_by_serde(&b[k..]),
                _ => {}
            }
            escapes &= escapes - 1;
        }
        if ends != 0 {
            return Some((at + ends.trailing_zeros() as usize, canonical));
        }
        if at + BLOCK >= b.len() {
            return None; // the text ends before the string does
        }
        at += BLOCK;
    }
}

/// The bytes of a block escaped by a backslash, given its backslashes;
/// `carry` (0 or 1) says whether the block's first byte is escaped (by a
/// backslash ending the previous block), and is set for the next. Runs of
/// backslashes pair off: in `\\\"` the quote is escaped, in `\\"` it
/// is not. simdjson's branch-free form: an addition carries each run's
/// start to its end, which tells runs starting on odd and even bits apart.
fn escaped_bytes(backslashes: u64, carry: &mut u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    let backslashes = backslashes & !*carry; // an escaped backslash escapes nothing
    let follows = backslashes << 1 | *carry;
    let odd_starts = backslashes & !EVEN & !follows;
    let (even_runs, overflow) = odd_starts.overflowing_add(backslashes);
    *carry = u64::from(overflow);
    (EVEN ^ (even_runs << 1)) & follows
}

/// One block's bytes of interest (bit `k` for byte `at + k`).
struct Masks {
    quotes: u64,
    backslashes: u64,
    /// `/` and `u`, the bytes whose escapes serde_json may not write (a
    /// superset: all ones where a form does not find them).
    odd: u64,
}

/// The [`Masks`] of `b[at..at + 64]`, none past the end of `b`. A block
/// that would run past the end is read as the last 64 bytes of `b`, its
/// masks shifted into place; a text shorter than a block is copied into
/// one.
#[inline(always)]
fn specials<const FORM: u8>(b: &[u8], at: usize) -> Masks {
    let of = |block: &[u8]| -> Masks {
        let block: &[u8; BLOCK] = block.try_into().expect("a block");
        #[cfg(target_arch = "x86_64")]
        match FORM {
            // SAFETY: `FORM` is AVX2 only inside `string_end_avx2`.
            AVX2 => return unsafe { masks_avx2(block) },
            // SAFETY: `FORM` is AVX512 only inside `string_end_avx512`.
            AVX512 => return unsafe { masks_avx512(block) },
            _ => {}
        }
        masks_sse2(block)
    };
    if let Some(block) = b.get(at..at + BLOCK) {
        return of(block);
    }
    if at >= b.len() {
        return Masks {
            quotes: 0,
            backslashes: 0,
            odd: 0,
        };
    }
    let (m, shift) = match b.len().checked_sub(BLOCK) {
        Some(last) => (of(&b[last..]), at - last),
        None => {
            let mut block = [0u8; BLOCK]; // zeros: none of the bytes of interest
            block[..b.len() - at].copy_from_slice(&b[at..]);
            (of(&block), 0)
        }
    };
    Masks {
        quotes: m.quotes >> shift,
        backslashes: m.backslashes >> shift,
        odd: m.odd >> shift,
    }
}

/// [`Masks`] of a block by 32-byte compares.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn masks_avx2(block: &[u8; BLOCK]) -> Masks {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_set1_epi8,
    };
    // SAFETY: each load reads 32 of the block's 64 bytes (unaligned loads
    // are allowed).
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_si256(block.as_ptr().cast()),
            _mm256_loadu_si256(block.as_ptr().add(32).cast()),
        )
    };
    let (quote, backslash) = (_mm256_set1_epi8(b'"' as i8), _mm256_set1_epi8(b'\\' as i8));
    let bits = |v: __m256i| u64::from(_mm256_movemask_epi8(v) as u32);
    Masks {
        quotes: bits(_mm256_cmpeq_epi8(lo, quote)) | bits(_mm256_cmpeq_epi8(hi, quote)) << 32,
        backslashes: bits(_mm256_cmpeq_epi8(lo, backslash))
            | bits(_mm256_cmpeq_epi8(hi, backslash)) << 32,
        // Every escape is looked at: two more compares and masks per half
        // cost more here than they save (and LLVM took the shifted masks
        // of a short text apart bit by bit, some 300 instructions).
        odd: !0,
    }
}

/// [`Masks`] of a block by 64-byte compares into mask registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
#[inline]
fn masks_avx512(block: &[u8; BLOCK]) -> Masks {
    use std::arch::x86_64::{_mm512_cmpeq_epi8_mask, _mm512_loadu_si512, _mm512_set1_epi8};
    // SAFETY: one load of the block's 64 bytes (unaligned loads are
    // allowed).
    let v = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
    Masks {
        quotes: _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'"' as i8)),
        backslashes: _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'\\' as i8)),
        odd: _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'/' as i8))
            | _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'u' as i8)),
    }
}

/// [`Masks`] of a block by 16-byte compares (SSE2, part of every x86-64
/// CPU), or byte by byte elsewhere.
#[inline(always)]
fn masks_sse2(block: &[u8; BLOCK]) -> Masks {
    let mut m = Masks {
        quotes: 0,
        backslashes: 0,
        odd: !0, // every escape looked at, as with AVX2
    };
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is in the baseline of every x86-64 target, and each
        // load reads 16 of the block's 64 bytes.
        unsafe {
            let (quote, backslash) = (_mm_set1_epi8(b'"' as i8), _mm_set1_epi8(b'\\' as i8));
            for k in 0..BLOCK / 16 {
                let v = _mm_loadu_si128(block.as_ptr().add(16 * k).cast());
                let bits = |x| u64::from(_mm_movemask_epi8(x) as u16) << (16 * k);
                m.quotes |= bits(_mm_cmpeq_epi8(v, quote));
                m.backslashes |= bits(_mm_cmpeq_epi8(v, backslash));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (k, &c) in block.iter().enumerate() {
        m.quotes |= u64::from(c == b'"') << k;
        m.backslashes |= u64::from(c == b'\\') << k;
    }
    m
}

/// An object's hash, member by member: a sum of member hashes, so key
/// order does not matter. The one rule of the scan, the arguments' visitor
/// and serde's visitor, which must agree.
#[derive(Default)]
struct ObjectHash {
    sum: u64,
    members: u64,
}

impl ObjectHash {
    fn add(&mut self, key: u64, value: u64) {
        self.sum = self.sum.wrapping_add(mix(key ^ value.rotate_left(32)));
        self.members += 1;
    }

    fn finish(self) -> u64 {
        tagged(8, self.sum ^ mix(self.members))
    }
}

/// An array's hash, element by element: a chain, so order matters (as
/// [`ObjectHash`], shared by the three).
struct ArrayHash(u64);

impl ArrayHash {
    fn new() -> Self {
        ArrayHash(tagged(7, 0))
    }

    fn add(&mut self, element: u64) {
        self.0 = mix(self.0.rotate_left(23) ^ element);
    }

    fn finish(self) -> u64 {
        self.0
    }
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

/// The canonical hash of a tools/call's `arguments`, taken in the
/// message's own parse (`next_value_seed` where the parser meets them):
/// serde skips each member's value as it skips any value, keeping its
/// text, and only that text is hashed, by [`value_text_hash`]. Equal to
/// [`hash`] of the arguments' text (tested): no second pass over the text
/// to find where its strings end, the detectors' largest cost on long
/// string arguments.
pub struct ArgumentsHash;

impl<'de> DeserializeSeed<'de> for ArgumentsHash {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(ArgumentsVisitor)
    }
}

struct ArgumentsVisitor;

impl<'de> Visitor<'de> for ArgumentsVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tool arguments")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<u64, E> {
        ValueHash.visit_unit()
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<u64, E> {
        ValueHash.visit_bool(b)
    }
    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u64, E> {
        ValueHash.visit_u64(n)
    }
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<u64, E> {
        ValueHash.visit_i64(n)
    }
    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<u64, E> {
        ValueHash.visit_f64(n)
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<u64, E> {
        ValueHash.visit_str(s)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        // As `ValueHash::visit_seq`, each element from its text.
        let mut h = ArrayHash::new();
        while let Some(x) = seq.next_element::<&RawValue>()? {
            h.add(value_text_hash(x.get()));
        }
        Ok(h.finish())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        // As `ValueHash::visit_map`, each value from its text.
        let mut h = ObjectHash::default();
        while let Some(k) = map.next_key_seed(KeyHash)? {
            let v: &RawValue = map.next_value()?;
            h.add(k, value_text_hash(v.get()));
        }
        Ok(h.finish())
    }
}

/// A member's key, hashed as [`ValueHash`] hashes a string.
struct KeyHash;

impl<'de> DeserializeSeed<'de> for KeyHash {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    /// Borrowed: its text had no escape, so serde_json writes it as it
    /// is, between quotes.
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<u64, E> {
        let mut buf = [0u8; 64];
        Ok(match buf.get_mut(..s.len() + 2) {
            Some(quoted) => {
                let n = quoted.len();
                quoted[0] = b'"';
                quoted[1..n - 1].copy_from_slice(s.as_bytes());
                quoted[n - 1] = b'"';
                tagged(6, bytes_hash(quoted))
            }
            None => str_hash(s),
        })
    }
    fn visit_str<E>(self, s: &str) -> Result<u64, E> {
        Ok(str_hash(s))
    }
}

/// [`hash`] of a value's JSON text (no blanks around it). A string with
/// no escape serde_json may not write (no `\/`, no `\u`) is hashed where
/// it lies, found by one pass that looks for those pairs only (not for
/// where the string ends: the text ends there).
fn value_text_hash(text: &str) -> u64 {
    let b = text.as_bytes();
    if b.first() == Some(&b'"') && !odd_escape_possible(b) {
        return tagged(6, bytes_hash(b));
    }
    hash(text)
}

/// Whether `b` holds a backslash followed by `/` or `u`: every escape
/// serde_json may not write is one (an escaped backslash followed by `u`
/// is too: a superset, settled by the full hash). AVX2 where the CPU has
/// it, 32 pairs at a time.
fn odd_escape_possible(b: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { odd_escape_avx2(b) };
    }
    odd_escape_bytewise(b)
}

fn odd_escape_bytewise(b: &[u8]) -> bool {
    b.windows(2)
        .any(|w| w[0] == b'\\' && matches!(w[1], b'/' | b'u'))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn odd_escape_avx2(b: &[u8]) -> bool {
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_or_si256,
        _mm256_set1_epi8, _mm256_setzero_si256, _mm256_testz_si256,
    };
    if b.len() < 33 {
        return odd_escape_bytewise(b);
    }
    let (bs, slash, u) = (
        _mm256_set1_epi8(b'\\' as i8),
        _mm256_set1_epi8(b'/' as i8),
        _mm256_set1_epi8(b'u' as i8),
    );
    // The pairs starting in the 32 bytes at `at`.
    let pairs = |at: usize| -> __m256i {
        // SAFETY: `at + 33 <= b.len()`: both loads are in bounds.
        let (v, next) = unsafe {
            (
                _mm256_loadu_si256(b.as_ptr().add(at).cast()),
                _mm256_loadu_si256(b.as_ptr().add(at + 1).cast()),
            )
        };
        let odd = _mm256_or_si256(_mm256_cmpeq_epi8(next, slash), _mm256_cmpeq_epi8(next, u));
        _mm256_and_si256(_mm256_cmpeq_epi8(v, bs), odd)
    };
    let mut seen = _mm256_setzero_si256();
    let mut at = 0;
    while at + 33 <= b.len() {
        seen = _mm256_or_si256(seen, pairs(at));
        at += 32;
    }
    // The last pairs, overlapping the ones already looked at.
    seen = _mm256_or_si256(seen, pairs(b.len() - 33));
    _mm256_testz_si256(seen, seen) == 0
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
        let mut h = ArrayHash::new();
        while let Some(x) = seq.next_element_seed(CanonicalHash)? {
            h.add(x);
        }
        Ok(h.finish())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut h = ObjectHash::default();
        while let Some(k) = map.next_key_seed(CanonicalHash)? {
            h.add(k, map.next_value_seed(CanonicalHash)?);
        }
        Ok(h.finish())
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

    /// JSON texts to compare the hashes on: fixed ones; an escape at
    /// every offset of a string, either side of the 64-byte blocks of the
    /// search for its end (an escape may run into the next block) and of
    /// the 32-byte steps of the search for odd escapes, in texts both
    /// longer and shorter than a block, and with the string last in the
    /// text (its last block read as the text's last bytes); random
    /// values, compact and pretty, with escapes and unicode.
    fn sample_texts() -> Vec<String> {
        let mut all: Vec<String> = [
            r#"{"a":1,"b":{"x":[1,2,"s"],"y":null}}"#,
            r#" { "b" : { "y":null, "x":[1, 2, "\u0073"] }, "a":1 } "#,
            r#"{"k\"ey":"v\\al\"ue\n","\u00e9":"\ud83d\ude00","e":"é😀"}"#,
            r#"[0,-0,1.0,-1,1e3,1E-3,-2.5e+10,18446744073709551615,18446744073709551616,-9223372036854775808,-9223372036854775809]"#,
            r#"[true,false,null,[],{},[[]],[{}],{"":""}]"#,
            r#""just a string""#,
            "3.25",
            r#"{"path":"C:\\dir\\","x":"\\"}"#,
            r#"["\/","/","\u000a","\n","\u001F","\u001f","\u0008\b\f\u000C","\u007f","\t\r"]"#,
            &format!(r#"{{"{}":1,"{}":"\u00e9"}}"#, "k".repeat(62), "l".repeat(63)),
        ]
        .map(String::from)
        .to_vec();
        for len in [0, 5, 40, 70, 150] {
            for at in 0..=len {
                for escape in [
                    r#"\""#, r"\\", r"\n", r"\u00e9", r"\/", r#"\\\""#, r"\n\n", r"\\u",
                ] {
                    let text = format!("{}{escape}{}", "x".repeat(at), "y".repeat(len - at));
                    all.push(format!(r#"{{"k":"{text}","l":"{text}"}}"#));
                    all.push(format!(r#""{text}""#));
                    all.push(format!(r#"["{text}"]"#));
                }
            }
        }
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
            all.push(serde_json::to_string(&v).unwrap());
            all.push(serde_json::to_string_pretty(&v).unwrap());
        }
        all
    }

    #[test]
    fn the_scan_gives_serde_s_hash_exactly() {
        for j in sample_texts() {
            assert_eq!(scan(&j), Some(serde_hash(&j)), "{j}");
        }
        // A string that does not close is handed over (and serde refuses it).
        for open in [
            r#""abc"#,
            r#""abc\""#,
            r#""abc\"#,
            &format!(r#""{}"#, "x".repeat(100)),
        ] {
            assert_eq!(scan(open), None, "{open}");
        }
    }

    #[test]
    fn arguments_hashed_in_the_parse_hash_as_their_text_does() {
        for j in sample_texts() {
            let mut de = serde_json::Deserializer::from_str(&j);
            let taken = ArgumentsHash.deserialize(&mut de).unwrap();
            assert_eq!(taken, hash(&j), "{j}");
        }
    }

    #[test]
    fn the_odd_escape_search_finds_what_a_bytewise_walk_finds() {
        for len in 0..100 {
            for at in 0..len.max(1) {
                for pair in [*b"\\/", *b"\\u", *b"\\n", *b"u\\", *b"\\\\"] {
                    let mut b = vec![b'x'; len];
                    for (k, c) in pair.into_iter().enumerate() {
                        if let Some(x) = b.get_mut(at + k) {
                            *x = c;
                        }
                    }
                    assert_eq!(odd_escape_possible(&b), odd_escape_bytewise(&b), "{b:?}");
                }
            }
        }
    }

    /// A string's end and escapes, found one byte at a time.
    fn string_end_bytewise(b: &[u8], open: usize) -> Option<(usize, bool)> {
        let (mut i, mut canonical) = (open + 1, true);
        loop {
            match *b.get(i)? {
                b'"' => return Some((i, canonical)),
                b'\\' => {
                    let escape = b.get(i + 1..)?;
                    canonical &= written_by_serde(escape);
                    i += if escape.first() == Some(&b'u') { 6 } else { 2 };
                }
                _ => i += 1,
            }
        }
    }

    #[test]
    fn every_mask_form_finds_what_a_bytewise_walk_finds() {
        // Runs of backslashes of every length, quotes, `\/` and `\u`
        // escapes at every offset around the 64-byte blocks, in texts
        // shorter and longer than a block.
        let pieces = [
            r"\\", r#"\""#, r"\/", r"\u00e9", r"\u001f", r"\n", "u", "/", "x",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..20_000 {
            seed = mix(seed);
            let mut text = String::from("\"");
            let mut r = seed;
            while text.len() < (round % 200) {
                text.push_str(pieces[(r % pieces.len() as u64) as usize]);
                r = mix(r);
            }
            if round % 3 != 0 {
                text.push('"');
            }
            text.push_str(&"y".repeat((seed >> 40) as usize % 70));
            let b = text.as_bytes();
            let want = string_end_bytewise(b, 0);
            assert_eq!(string_end(b, 0), want, "{text}");
            assert_eq!(string_end_in::<SSE2>(b, 0), want, "{text}");
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx2") {
                    // SAFETY: the CPU has AVX2, checked just above.
                    assert_eq!(unsafe { string_end_avx2(b, 0) }, want, "{text}");
                }
                if has!("avx512bw") {
                    // SAFETY: the CPU has AVX-512 BW, checked just above.
                    assert_eq!(unsafe { string_end_avx512(b, 0) }, want, "{text}");
                }
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
