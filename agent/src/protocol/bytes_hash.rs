//! The detectors' hash of bytes (argument strings, tool results), seeded
//! once per process: what peers send, so that colliding texts cannot be
//! searched for offline. Equal within one run, not across runs: nothing
//! made of it leaves the process.
//!
//! Where the CPU has AES-NI (every x86-64 server CPU of the last decade),
//! an XOR and one AES round per 16 bytes, in four independent lanes: two
//! instructions per 16 bytes, where foldhash takes some eight (it was the
//! detectors' third cost on prose arguments). The lanes then join in a
//! chain and three more rounds, so every text byte has passed through at
//! least three rounds (two make each output byte depend on every state
//! byte) before the 64 bits are taken. Akin to aHash's AES form (which
//! takes the text as round keys; here it enters the state, see `hash`):
//! a hash for tables and duplicates, not a MAC. Elsewhere, foldhash.

/// A hash of `b`, seeded per process (see the module).
pub fn bytes_hash(b: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if let Some(keys) = aes_keys() {
        // SAFETY: `aes_keys` is `Some` only where the CPU has AES-NI.
        return unsafe { aes::hash(b, keys) };
    }
    crate::collections::process_hash(b)
}

/// The per-process keys of the AES form, `None` without AES-NI.
#[cfg(target_arch = "x86_64")]
fn aes_keys() -> Option<&'static aes::Keys> {
    static KEYS: std::sync::OnceLock<Option<aes::Keys>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| std::arch::is_x86_feature_detected!("aes").then(aes::Keys::random))
        .as_ref()
}

#[cfg(target_arch = "x86_64")]
mod aes {
    use std::arch::x86_64::{
        __m128i, _mm_aesenc_si128, _mm_cvtsi128_si64, _mm_loadu_si128, _mm_set_epi64x,
        _mm_unpackhi_epi64, _mm_xor_si128,
    };
    use std::hash::BuildHasher;

    /// Six random 128-bit values: the four lanes' starting states (each
    /// also its lane's round key) and two round keys of the finish.
    pub struct Keys([[u64; 2]; 6]);

    impl Keys {
        /// Fresh keys, from the standard library's per-process random
        /// SipHash keys.
        pub fn random() -> Self {
            let seed = std::collections::hash_map::RandomState::new();
            let mut k = [[0; 2]; 6];
            for (i, pair) in k.iter_mut().enumerate() {
                *pair = [seed.hash_one(2 * i), seed.hash_one(2 * i + 1)];
            }
            Keys(k)
        }

        fn get(&self, i: usize) -> __m128i {
            let [lo, hi] = self.0[i];
            // SAFETY: SSE2 is in the baseline of every x86-64 target.
            unsafe { _mm_set_epi64x(hi as i64, lo as i64) }
        }
    }

    /// [`super::bytes_hash`] with AES-NI.
    ///
    /// # Safety
    /// The CPU must have AES-NI.
    #[target_feature(enable = "aes")]
    pub unsafe fn hash(b: &[u8], keys: &Keys) -> u64 {
        let n = b.len();
        // SAFETY (every call): `at + 16 <= n`, checked where it is called.
        let at = |at: usize| unsafe { _mm_loadu_si128(b.as_ptr().add(at).cast()) };
        let round = |s: __m128i, key: __m128i| _mm_aesenc_si128(s, key);
        let lanes = [keys.get(0), keys.get(1), keys.get(2), keys.get(3)];
        let mut s = lanes;
        // Text enters a lane before its round, not as the round's key: as
        // the key, the last block's bytes would meet the other lanes'
        // earlier blocks unrounded, and a changed byte in each could
        // cancel (the test below found such pairs).
        let absorb = |s: &mut [__m128i; 4], lane: usize, text: __m128i| {
            s[lane] = round(_mm_xor_si128(s[lane], text), lanes[lane]);
        };
        if n > 64 {
            // Whole blocks, then the last 64 bytes (overlapping the block
            // before them: every byte is read, the length tells lengths
            // apart).
            let mut start = 0;
            while start + 64 < n {
                for lane in 0..4 {
                    absorb(&mut s, lane, at(start + 16 * lane));
                }
                start += 64;
            }
            for lane in 0..4 {
                absorb(&mut s, lane, at(n - 64 + 16 * lane));
            }
        } else if n >= 16 {
            // The first and last 16 bytes, and the two in between once
            // they do not cover it all.
            absorb(&mut s, 0, at(0));
            absorb(&mut s, 1, at(n - 16));
            if n > 32 {
                absorb(&mut s, 2, at(16));
                absorb(&mut s, 3, at(n - 32));
            }
        } else {
            // Fewer than 16 bytes: two overlapping reads cover them all.
            let word = |i: usize, w: usize| {
                let mut x = [0u8; 8];
                x[..w].copy_from_slice(&b[i..i + w]);
                u64::from_le_bytes(x)
            };
            let (lo, hi) = match n {
                8.. => (word(0, 8), word(n - 8, 8)),
                4.. => (word(0, 4), word(n - 4, 4)),
                1.. => (word(0, 1) | word(n / 2, 1) << 8 | word(n - 1, 1) << 16, 0),
                0 => (0, 0),
            };
            absorb(&mut s, 0, _mm_set_epi64x(hi as i64, lo as i64));
        }
        // The lanes join one after another, each through one round more
        // than the next (joined side by side, `R(a) ^ R(b)`, a byte changed
        // in one lane could cancel one changed in another, as above).
        let x = round(round(round(s[0], s[1]), s[2]), s[3]);
        // The length enters as a round key after the lanes have been
        // through two rounds at least: entering a lane raw, next to its
        // text, it could cancel the text's change (texts of lengths 49 and
        // 52 collided so).
        let length = _mm_xor_si128(keys.get(4), _mm_set_epi64x(0, n as i64));
        let x = round(round(round(x, length), keys.get(5)), keys.get(4));
        (_mm_cvtsi128_si64(x) ^ _mm_cvtsi128_si64(_mm_unpackhi_epi64(x, x))) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::bytes_hash;
    use std::collections::HashSet;

    /// Texts of every length up to a few blocks, and each of them with
    /// one byte changed at every place (a low and a high bit), all hash
    /// apart; equal texts hash equal. This found lanes that could cancel
    /// each other's changes (see `hash`).
    #[test]
    fn every_byte_and_the_length_count() {
        let mut seen = HashSet::new();
        let base: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        for n in 0..=base.len() {
            let text = &base[..n];
            let copy = text.to_vec(); // equal bytes elsewhere in memory
            assert_eq!(bytes_hash(text), bytes_hash(&copy), "equal texts");
            assert!(seen.insert(bytes_hash(text)), "length {n}");
            for i in 0..n {
                for bit in [0x01, 0x80] {
                    let mut other = text.to_vec();
                    other[i] ^= bit;
                    assert!(seen.insert(bytes_hash(&other)), "length {n}, byte {i}");
                }
            }
        }
        // Runs of one byte, each with one byte changed: lengths and
        // changes once cancelled each other here (49 and 52 bytes).
        let mut seen = HashSet::new();
        for n in 0..200 {
            assert!(seen.insert(bytes_hash(&vec![b'a'; n])), "length {n}");
            for i in 0..n {
                let mut other = vec![b'a'; n];
                other[i] = 0;
                assert!(seen.insert(bytes_hash(&other)), "length {n}, byte {i}");
            }
        }
        // Zero bytes are bytes: a text and the text with a zero appended.
        assert_ne!(bytes_hash(b"a"), bytes_hash(b"a\0"));
        assert_ne!(bytes_hash(b""), bytes_hash(b"\0"));
    }
}
