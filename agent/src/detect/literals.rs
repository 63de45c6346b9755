//! Whether any of a few short literals occurs in a text, folded by
//! [`fold_byte`] (ASCII case, and a few aliases: a prefilter's superset),
//! in one AVX2 pass: Teddy's algorithm (as in aho-corasick's
//! packed searcher), with the fold built into its tables.
//!
//! aho-corasick's Teddy searches exact bytes, so the text had to be
//! folded into a copy first (a write and a read of every byte), and its
//! 32-pattern limit kept Slack's `xox` prefix out (a memmem pass of its
//! own). Here a raw byte matches a folded pattern byte `f` when its own
//! fold is `f`: the byte is `f` or `f` without bit 5, and the low nibble
//! is the same for both, so the high-nibble table takes both nibbles. One
//! pass, no copy, any number of patterns.
//!
//! Each pattern is fingerprinted by its first [`FINGERPRINT`] bytes; each
//! of the eight buckets merges the fingerprints of its patterns. Per chunk
//! of 32 bytes, a nibble lookup per byte and fingerprint position gives
//! the buckets whose fingerprint could have that byte there; shifted into
//! line (across chunks: the previous chunk's lookups are carried) and
//! ANDed, they give the buckets whose fingerprint could end at each byte.
//! Only those are verified: first four bytes, then the whole pattern.
//!
//! The unsafe code is the SIMD: loads stay inside the text (its last
//! partial chunk is copied into a zero-filled one), and every function
//! using AVX2 is reached only through [`FoldedLiterals::new`], which
//! checks that the CPU has it.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m256i, _mm256_alignr_epi8, _mm256_and_si256, _mm256_castsi256_si128, _mm256_cmpeq_epi8,
    _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_max_epu8, _mm256_movemask_epi8,
    _mm256_or_si256, _mm256_permute2x128_si256, _mm256_set1_epi8, _mm256_setzero_si256,
    _mm256_shuffle_epi8, _mm256_srli_epi16, _mm256_storeu_si256, _mm256_testz_si256,
    _mm_cvtsi128_si32, _mm_max_epu8, _mm_srli_si128,
};

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Bytes of each pattern in its fingerprint (every pattern has at least
/// as many).
const FINGERPRINT: usize = 4;

/// Bytes per chunk (an AVX2 register).
const BLOCK: usize = 32;

/// Filler of the last chunk past the text's end: zero, so that it never
/// raises the largest byte. Its fold, a space, may complete a fingerprint
/// whose last byte is a space (the text ending in `you` for `you are
/// now`); verification then finds the text too short, so the filler costs
/// at most one verification and never finds a pattern.
const FILLER: u8 = 0;

/// Where the AVX2 search stands between chunks: per fingerprint
/// position, the previous chunk's bucket bits (a fingerprint that starts
/// in one chunk ends in the next; zero before the text), and the largest
/// byte so far at each place.
#[cfg(target_arch = "x86_64")]
struct Carried {
    carry: [__m256i; FINGERPRINT - 1],
    top: __m256i,
}

/// The search, built for a CPU with AVX2 (see [`FoldedLiterals::new`]).
pub struct FoldedLiterals {
    /// Per fingerprint position: bucket bits by the byte's low nibble, and
    /// by its high nibble (both 16 entries, repeated for each 128-bit lane
    /// as the byte shuffle looks them up per lane).
    lo: [[u8; BLOCK]; FINGERPRINT],
    hi: [[u8; BLOCK]; FINGERPRINT],
    /// The patterns of each bucket.
    buckets: [Bucket; 8],
    /// Which form of the loop this CPU runs.
    form: Form,
}

/// The forms of the search, by what the CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// AVX2: 32 bytes a chunk.
    Avx2,
    /// AVX-512 VL and BW, without VBMI: the AVX2 loop compiled for it,
    /// with 32 vector registers instead of 16, which keep its tables and
    /// carries (with 16 it stored and loaded the carries every chunk).
    Avx2Wide,
    /// AVX-512 BW and VBMI: 64 bytes a chunk (`literals/avx512.rs`).
    Avx512,
}

impl Form {
    /// The widest form this CPU runs (AVX2 assumed).
    #[cfg(target_arch = "x86_64")]
    fn best() -> Self {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vbmi") {
            Form::Avx512
        } else if has!("avx512vl") && has!("avx512bw") {
            Form::Avx2Wide
        } else {
            Form::Avx2
        }
    }
}

/// The patterns of one bucket, folded, and their first four bytes as a
/// number: a candidate is compared with those first (one comparison per
/// pattern; most candidates fail there).
#[derive(Default)]
struct Bucket {
    heads: Vec<u32>,
    patterns: Vec<Box<[u8]>>,
}

/// [`fold_byte`] of four bytes at once.
const FOLD_HEAD: u32 = 0x2020_2020;

/// The first four bytes of `b` as a number (little-endian), if it has them.
fn head(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..FINGERPRINT)?.try_into().ok()?))
}

/// The fold the patterns and the searched text both go through: bit 5
/// set. ASCII letters become lower case (the patterns are
/// case-insensitive); a few other bytes alias (`_` and DEL, `\\` and `|`,
/// `[` and `{`, control characters and digits or punctuation), which can
/// only let more text through to the exact pass, never less. One OR per
/// byte: unlike a lower-casing that leaves other bytes alone, it needs no
/// compare.
pub const fn fold_byte(b: u8) -> u8 {
    b | 0x20
}

impl FoldedLiterals {
    /// A search for `patterns` (folded, each at least [`FINGERPRINT`]
    /// bytes), pattern `i` in bucket `bucket(i)`; `None` where the CPU has
    /// no AVX2.
    pub fn new(patterns: &[Vec<u8>], bucket: impl Fn(usize) -> usize) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(Self::build(patterns, bucket));
        }
        let _ = (patterns, bucket);
        None
    }

    fn build(patterns: &[Vec<u8>], bucket: impl Fn(usize) -> usize) -> Self {
        let mut s = Self {
            lo: [[0; BLOCK]; FINGERPRINT],
            hi: [[0; BLOCK]; FINGERPRINT],
            buckets: Default::default(),
            form: Form::Avx2,
        };
        #[cfg(target_arch = "x86_64")]
        {
            s.form = Form::best();
        }
        for (i, p) in patterns.iter().enumerate() {
            assert!(
                p.len() >= FINGERPRINT,
                "a pattern shorter than its fingerprint"
            );
            let b = bucket(i) % 8;
            let bit = 1u8 << b;
            for (k, &f) in p[..FINGERPRINT].iter().enumerate() {
                assert_eq!(f, fold_byte(f), "patterns are folded");
                let (low, high) = ((f & 0xF) as usize, (f >> 4) as usize);
                // Raw bytes whose fold is `f`: `f` and `f` without bit 5
                // (the high nibble's bit 1).
                for lane in [0, 16] {
                    s.lo[k][lane + low] |= bit;
                    s.hi[k][lane + high] |= bit;
                    s.hi[k][lane + (high ^ 2)] |= bit;
                }
            }
            s.buckets[b].heads.push(head(p).expect("checked above"));
            s.buckets[b].patterns.push(p.clone().into_boxed_slice());
        }
        s
    }

    /// Whether a pattern occurs in `text` folded; when none does, also the
    /// largest byte of `text` (0 when empty). A found pattern ends the
    /// search, and the byte is then 0.
    pub fn scan(&self, text: &[u8]) -> (bool, u8) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` built `self` only on a CPU with AVX2, and chose
        // its `form` by what the CPU has (`Form::best`).
        unsafe {
            match self.form {
                Form::Avx2 => self.scan_avx2(text),
                Form::Avx2Wide => self.scan_avx2_wide(text),
                Form::Avx512 => self.scan_avx512(text),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("built only on x86-64 with AVX2")
    }

    /// [`FoldedLiterals::scan`] on a CPU with AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn scan_avx2(&self, text: &[u8]) -> (bool, u8) {
        self.scan_chunks(text, |s, t, at, state| s.to_candidate_avx2(t, at, state))
    }

    /// [`FoldedLiterals::scan`] on a CPU with AVX-512 VL and BW: the same
    /// instructions, with twice the registers (see [`Form::Avx2Wide`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw")]
    fn scan_avx2_wide(&self, text: &[u8]) -> (bool, u8) {
        self.scan_chunks(text, |s, t, at, state| {
            s.to_candidate_avx2_wide(t, at, state)
        })
    }

    /// The search, inlined into each of the two above (both enable AVX2,
    /// which its intrinsics need), run by their `to_candidate`: the whole
    /// chunks of `text`, then its last partial chunk in a filled copy. The
    /// verifying call is here: in the loop, no vector register would
    /// survive it, and the tables would be loaded again every chunk.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn scan_chunks(
        &self,
        text: &[u8],
        to_candidate: impl Fn(&Self, &[u8], usize, &mut Carried) -> Option<(usize, __m256i)>,
    ) -> (bool, u8) {
        // SAFETY: AVX2 is enabled in both callers.
        let zero = unsafe { _mm256_setzero_si256() };
        let mut state = Carried {
            carry: [zero; FINGERPRINT - 1],
            top: zero,
        };
        let whole = text.len() / BLOCK * BLOCK;
        let mut at = 0;
        while let Some((chunk, ends)) = to_candidate(self, &text[..whole], at, &mut state) {
            // SAFETY: AVX2 is enabled in both callers.
            if unsafe { self.verify(text, chunk, ends) } {
                return (true, 0);
            }
            at = chunk + BLOCK;
        }
        if whole < text.len() {
            // The rest (fewer than 32 bytes), in a filled copy; its
            // candidates are verified in the text itself.
            let mut tail = [FILLER; BLOCK];
            tail[..text.len() - whole].copy_from_slice(&text[whole..]);
            if let Some((_, ends)) = to_candidate(self, &tail, 0, &mut state) {
                // SAFETY: as above.
                if unsafe { self.verify(text, whole, ends) } {
                    return (true, 0);
                }
            }
        }
        // SAFETY: as above.
        (false, unsafe { max_byte(state.top) })
    }

    /// [`FoldedLiterals::chunks_to_candidate`] compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline(never)]
    fn to_candidate_avx2(
        &self,
        text: &[u8],
        at: usize,
        state: &mut Carried,
    ) -> Option<(usize, __m256i)> {
        self.chunks_to_candidate(text, at, state)
    }

    /// [`FoldedLiterals::chunks_to_candidate`] compiled for AVX-512 VL and BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw")]
    #[inline(never)]
    fn to_candidate_avx2_wide(
        &self,
        text: &[u8],
        at: usize,
        state: &mut Carried,
    ) -> Option<(usize, __m256i)> {
        self.chunks_to_candidate(text, at, state)
    }

    /// Searches the whole chunks of `text` from `at` (a chunk's start) to
    /// the next one with a candidate: its start and its candidates'
    /// buckets (per byte); `None` past the last whole chunk. Calls
    /// nothing, so that the tables stay in registers where there are
    /// enough of them.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn chunks_to_candidate(
        &self,
        text: &[u8],
        mut at: usize,
        state: &mut Carried,
    ) -> Option<(usize, __m256i)> {
        // SAFETY: both callers enable AVX2. Each load reads 32 bytes of
        // `text` (unaligned loads are allowed).
        unsafe {
            let (mut carry, mut top) = (state.carry, state.top);
            let mut found = None;
            // Two chunks a turn: one loop test for both, and the carries
            // move on in place (a turn per chunk copied them, three
            // register moves a chunk).
            while at + 2 * BLOCK <= text.len() {
                let first = _mm256_loadu_si256(text.as_ptr().add(at).cast());
                let second = _mm256_loadu_si256(text.as_ptr().add(at + BLOCK).cast());
                // Both chunks' bytes, even where the search goes on from
                // the second: a maximum counts a byte read twice once.
                top = _mm256_max_epu8(top, _mm256_max_epu8(first, second));
                let before = carry;
                let ends = self.ends(first, &mut carry);
                let next = self.ends(second, &mut carry);
                let both = _mm256_or_si256(ends, next);
                if _mm256_testz_si256(both, both) == 0 {
                    // The search goes on after the chunk with the
                    // candidate, with the carries that chunk left.
                    found = Some(if _mm256_testz_si256(ends, ends) == 0 {
                        carry = before;
                        self.ends(first, &mut carry);
                        (at, ends)
                    } else {
                        (at + BLOCK, next)
                    });
                    break;
                }
                at += 2 * BLOCK;
            }
            while found.is_none() && at + BLOCK <= text.len() {
                let chunk = _mm256_loadu_si256(text.as_ptr().add(at).cast());
                top = _mm256_max_epu8(top, chunk);
                let ends = self.ends(chunk, &mut carry);
                if _mm256_testz_si256(ends, ends) == 0 {
                    found = Some((at, ends));
                    break;
                }
                at += BLOCK;
            }
            *state = Carried { carry, top };
            found
        }
    }

    /// For each byte of `chunk`, the buckets with a fingerprint that ends
    /// there: its last byte here, and the others just before (in this
    /// chunk, or in the previous one by `carry`, updated for the next).
    /// Each byte is looked up once per position, and the lookups are
    /// shifted into place, as aho-corasick's Teddy does.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn ends(&self, chunk: __m256i, carry: &mut [__m256i; FINGERPRINT - 1]) -> __m256i {
        let nibble = _mm256_set1_epi8(0x0F);
        let low = _mm256_and_si256(chunk, nibble);
        let high = _mm256_and_si256(_mm256_srli_epi16::<4>(chunk), nibble);
        let at = |k: usize| {
            // SAFETY: the tables are 32 bytes each.
            let (lo, hi) = unsafe {
                (
                    _mm256_loadu_si256(self.lo[k].as_ptr().cast()),
                    _mm256_loadu_si256(self.hi[k].as_ptr().cast()),
                )
            };
            _mm256_and_si256(_mm256_shuffle_epi8(lo, low), _mm256_shuffle_epi8(hi, high))
        };
        let (p0, p1, p2, p3) = (at(0), at(1), at(2), at(3));
        // Position k of a fingerprint ending here sits 3 − k bytes back.
        let ends = _mm256_and_si256(
            _mm256_and_si256(p3, back::<15>(p2, carry[2])),
            _mm256_and_si256(back::<14>(p1, carry[1]), back::<13>(p0, carry[0])),
        );
        *carry = [p0, p1, p2];
        ends
    }

    /// Whether a candidate of `ends` (bucket bits of the fingerprints
    /// ending at `at..at + 32` of `text`) is a pattern.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn verify(&self, text: &[u8], at: usize, ends: __m256i) -> bool {
        let zero = _mm256_cmpeq_epi8(ends, _mm256_setzero_si256());
        let candidates = !(_mm256_movemask_epi8(zero) as u32);
        let mut bits = [0u8; BLOCK];
        // SAFETY: `bits` is 32 bytes.
        unsafe { _mm256_storeu_si256(bits.as_mut_ptr().cast(), ends) };
        self.verify_candidates(text, at, u64::from(candidates), &bits)
    }

    /// Whether a candidate is a pattern: bit `j` of `candidates` says a
    /// fingerprint of the buckets `bits[j]` ends at `at + j` of `text`.
    fn verify_candidates(&self, text: &[u8], at: usize, mut candidates: u64, bits: &[u8]) -> bool {
        while candidates != 0 {
            let j = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            // A fingerprint ending at `at + j` starts 3 bytes before (the
            // first chunk's carry is zero: none starts before the text).
            let start = (at + j).saturating_sub(FINGERPRINT - 1);
            let here = text.get(start..).unwrap_or_default();
            let Some(folded) = head(here).map(|h| h | FOLD_HEAD) else {
                break; // too near the end (or past it) for any pattern
            };
            let mut buckets = bits[j];
            while buckets != 0 {
                let b = &self.buckets[buckets.trailing_zeros() as usize];
                buckets &= buckets - 1;
                let found = (b.heads.iter().zip(&b.patterns))
                    .any(|(&h, p)| h == folded && folded_prefix(here, p));
                if found {
                    return true;
                }
            }
        }
        false
    }
}

/// `v` moved `16 − N` bytes towards its end, its first bytes taken from
/// the end of `before` (the previous chunk's): a shift across the two
/// 128-bit lanes, which `alignr` alone shifts apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn back<const N: i32>(v: __m256i, before: __m256i) -> __m256i {
    _mm256_alignr_epi8::<N>(v, _mm256_permute2x128_si256::<0x21>(before, v))
}

/// Whether `text` starts with `pattern` (folded) once folded.
fn folded_prefix(text: &[u8], pattern: &[u8]) -> bool {
    text.len() >= pattern.len() && text.iter().zip(pattern).all(|(&t, &p)| fold_byte(t) == p)
}

/// The largest byte of a register: the halves, then their halves, down
/// to one byte.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn max_byte(v: __m256i) -> u8 {
    let x = _mm_max_epu8(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let x = _mm_max_epu8(x, _mm_srli_si128::<8>(x));
    let x = _mm_max_epu8(x, _mm_srli_si128::<4>(x));
    let x = _mm_max_epu8(x, _mm_srli_si128::<2>(x));
    let x = _mm_max_epu8(x, _mm_srli_si128::<1>(x));
    _mm_cvtsi128_si32(x) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest byte of a few bytes.
    fn max_of(bytes: &[u8]) -> u8 {
        bytes.iter().copied().max().unwrap_or(0)
    }

    /// Where the search is not built: only on a CPU without AVX2 (never a
    /// silent skip where it would be used).
    fn no_avx2() {
        #[cfg(target_arch = "x86_64")]
        assert!(
            !std::arch::is_x86_feature_detected!("avx2"),
            "a CPU with AVX2 builds the search"
        );
    }

    /// The reference: fold the text, look for each pattern.
    fn naive(patterns: &[Vec<u8>], text: &[u8]) -> bool {
        let folded: Vec<u8> = text.iter().map(|&b| fold_byte(b)).collect();
        patterns
            .iter()
            .any(|p| folded.windows(p.len()).any(|w| w == &p[..]))
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn finds_exactly_what_a_folded_search_finds_at_every_place_and_case() {
        let patterns: Vec<Vec<u8>> = [
            "token",
            "akia",
            "xoxb",
            "-----begin",
            ".eyj",
            "\\u200",
            "you are now",
        ]
        .iter()
        .map(|p| p.bytes().map(fold_byte).collect())
        .collect();
        let Some(searches) = every_form(&patterns, |i| 7 - i % 8) else {
            return no_avx2(); // the fallback searcher is used instead
        };
        for search in &searches {
            finds_what_a_folded_search_finds(search, &patterns);
        }
    }

    /// The search in every form this CPU runs (the one `new` chooses and
    /// the narrower ones), so that each is tested where it can be.
    fn every_form(
        patterns: &[Vec<u8>],
        bucket: impl Fn(usize) -> usize + Copy,
    ) -> Option<Vec<FoldedLiterals>> {
        let best = FoldedLiterals::new(patterns, bucket)?.form;
        let forms = match best {
            Form::Avx2 => &[Form::Avx2][..],
            Form::Avx2Wide => &[Form::Avx2, Form::Avx2Wide],
            Form::Avx512 => &[Form::Avx2, Form::Avx2Wide, Form::Avx512],
        };
        let mut searches = Vec::new();
        for &form in forms {
            let mut s = FoldedLiterals::new(patterns, bucket)?;
            s.form = form;
            searches.push(s);
        }
        Some(searches)
    }

    fn finds_what_a_folded_search_finds(search: &FoldedLiterals, patterns: &[Vec<u8>]) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Pieces of patterns, their case changed, and bytes near them
        // (bit 5 off, high bytes, filler) make near misses common.
        let alphabet: &[u8] = b"tokenAKIAxoXB-beGIN.eyJ\\u2 yOU0@\x80\xff\x0d\x00";
        for round in 0..20_000 {
            let len = rng.below(200); // up to six chunks: both loops, and the tail
            let mut text: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            if round % 3 == 0 && len > 0 {
                // Plant a pattern in a random case at a random place.
                let p = &patterns[rng.below(patterns.len())];
                let at = rng.below(len);
                for (i, &c) in p.iter().enumerate() {
                    if let Some(t) = text.get_mut(at + i) {
                        *t = if rng.below(2) == 0 {
                            c
                        } else {
                            c.to_ascii_uppercase()
                        };
                    }
                }
            }
            let (found, top) = search.scan(&text);
            assert_eq!(
                found,
                naive(patterns, &text),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
            if !found {
                assert_eq!(top, max_of(&text), "the largest byte");
            }
        }
    }

    #[test]
    fn the_largest_byte_is_found_in_blocks_and_tail() {
        let patterns = vec![b"zzzz".to_vec()];
        let Some(searches) = every_form(&patterns, |_| 0) else {
            return no_avx2();
        };
        for search in &searches {
            the_largest_byte_of_every_text(search);
        }
    }

    fn the_largest_byte_of_every_text(search: &FoldedLiterals) {
        for len in 0..140usize {
            for at in [0, len / 2, len.saturating_sub(1)] {
                let mut text = vec![b'a'; len];
                if len > 0 {
                    text[at] = 0xE2;
                }
                assert_eq!(
                    search.scan(&text),
                    (false, max_of(&text)),
                    "len {len} at {at}"
                );
            }
        }
    }
}
