//! The folding search 64 bytes at a time, on a CPU with AVX-512 BW and
//! VBMI: the same tables and buckets as the AVX2 form (its 16-byte nibble
//! tables repeated in each 128-bit lane), half the instructions per byte.
//! A fingerprint's earlier bytes are shifted into line across chunks by
//! one byte permute of two registers (`vpermt2b`), the candidates come
//! out as a mask register, and the text's last partial chunk is a masked
//! load (the bytes past the end read as zero, and are not read at all).

use std::arch::x86_64::{
    __m512i, _mm256_max_epu8, _mm512_and_si512, _mm512_broadcast_i32x4, _mm512_castsi512_si256,
    _mm512_extracti64x4_epi64, _mm512_loadu_si512, _mm512_maskz_loadu_epi8, _mm512_max_epu8,
    _mm512_permutex2var_epi8, _mm512_set1_epi8, _mm512_setzero_si512, _mm512_shuffle_epi8,
    _mm512_srli_epi16, _mm512_storeu_si512, _mm512_test_epi8_mask, _mm_loadu_si128,
};

use super::{max_byte, FoldedLiterals, FINGERPRINT};

/// Bytes per chunk (an AVX-512 register).
const WIDE: usize = 64;

/// Byte indices that move a register `n` bytes towards its end, its first
/// `n` bytes taken from the end of the previous chunk's (see
/// [`FoldedLiterals::scan_avx512`]).
fn shift_indices(n: u8) -> [u8; WIDE] {
    // Byte i takes byte 64 + i − n of (previous, current): the previous
    // chunk's for i < n, the current one's (i − n) after.
    std::array::from_fn(|i| WIDE as u8 + i as u8 - n)
}

/// Where a search stands between chunks: per fingerprint position, the
/// previous chunk's bucket bits (zero before the text: no fingerprint
/// starts there), and the largest byte so far at each place.
struct Carried {
    carry: [__m512i; FINGERPRINT - 1],
    top: __m512i,
}

impl FoldedLiterals {
    /// [`FoldedLiterals::scan`] 64 bytes at a time.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vbmi")]
    pub(super) fn scan_avx512(&self, text: &[u8]) -> (bool, u8) {
        let mut state = Carried {
            carry: [_mm512_setzero_si512(); FINGERPRINT - 1],
            top: _mm512_setzero_si512(),
        };
        let mut at = 0;
        // The search runs in `to_candidate_wide`, which calls nothing and so
        // keeps its tables in registers; the verifying call is here. In
        // one loop, the call (which no vector register survives) kept the
        // tables on the stack, loaded again every chunk.
        while let Some((chunk, candidates, ends)) = self.to_candidate_wide(text, at, &mut state) {
            let mut bits = [0u8; WIDE];
            // SAFETY: the store writes the 64 bytes of `bits`.
            unsafe { _mm512_storeu_si512(bits.as_mut_ptr().cast(), ends) };
            if self.verify_candidates(text, chunk, candidates, &bits) {
                return (true, 0);
            }
            at = chunk + WIDE;
        }
        let top = state.top;
        let halves = _mm256_max_epu8(
            _mm512_castsi512_si256(top),
            _mm512_extracti64x4_epi64::<1>(top),
        );
        (false, max_byte(halves))
    }

    /// Searches `text` from `at` (a chunk's start) to the next chunk with
    /// a candidate: its start, the candidates' bits and their buckets
    /// (per byte); `None` at the end of the text.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vbmi")]
    #[inline(never)]
    fn to_candidate_wide(
        &self,
        text: &[u8],
        mut at: usize,
        state: &mut Carried,
    ) -> Option<(usize, u64, __m512i)> {
        // SAFETY: every load reads the tables (16 bytes each) or 64 bytes
        // of `text`, or fewer under a mask that leaves the rest unread.
        unsafe {
            let nibble = _mm512_set1_epi8(0x0F);
            let lane = |t: &[u8; 32]| _mm512_broadcast_i32x4(_mm_loadu_si128(t.as_ptr().cast()));
            let lo: [__m512i; FINGERPRINT] = std::array::from_fn(|k| lane(&self.lo[k]));
            let hi: [__m512i; FINGERPRINT] = std::array::from_fn(|k| lane(&self.hi[k]));
            let by = |n: u8| _mm512_loadu_si512(shift_indices(n).as_ptr().cast());
            let (by1, by2, by3) = (by(1), by(2), by(3));
            let (mut carry, mut top) = (state.carry, state.top);
            let mut found = None;
            while at < text.len() {
                let here = text.as_ptr().add(at);
                let chunk = match text.len() - at {
                    rest if rest >= WIDE => _mm512_loadu_si512(here.cast()),
                    rest => _mm512_maskz_loadu_epi8((1u64 << rest) - 1, here.cast()),
                };
                top = _mm512_max_epu8(top, chunk);
                let low = _mm512_and_si512(chunk, nibble);
                let high = _mm512_and_si512(_mm512_srli_epi16::<4>(chunk), nibble);
                let p: [__m512i; FINGERPRINT] = std::array::from_fn(|k| {
                    _mm512_and_si512(
                        _mm512_shuffle_epi8(lo[k], low),
                        _mm512_shuffle_epi8(hi[k], high),
                    )
                });
                // Position k of a fingerprint ending here sits 3 − k bytes back.
                let ends = _mm512_and_si512(
                    _mm512_and_si512(p[3], _mm512_permutex2var_epi8(carry[2], by1, p[2])),
                    _mm512_and_si512(
                        _mm512_permutex2var_epi8(carry[1], by2, p[1]),
                        _mm512_permutex2var_epi8(carry[0], by3, p[0]),
                    ),
                );
                carry = [p[0], p[1], p[2]];
                let candidates = _mm512_test_epi8_mask(ends, ends);
                if candidates != 0 {
                    found = Some((at, candidates, ends));
                    break;
                }
                at += WIDE;
            }
            *state = Carried { carry, top };
            found
        }
    }
}
