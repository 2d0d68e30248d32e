//! Content-defined chunking: FastCDC (2020) with a gear table derived from the
//! repository's chunker seed, so that chunk boundaries do not reveal content to
//! someone who knows the public FastCDC table.
//!
//! ```text
//! gear[i]    = u64_le(BLAKE3-XOF(key = chunker_seed, "coffer.v1.gear")[8i .. 8i+8]), i in 0..256
//! gear_ls[i] = gear[i] << 1
//! ```
//!
//! The cut-point search is the FastCDC 2020 algorithm ("rolling two bytes each
//! time", normalized chunking) with the masks of SPEC.md; a chunk boundary depends
//! only on the bytes from the chunk's start, which is what lets a large file be
//! chunked in parallel segments and re-synchronised (see the engine).

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};

/// Chunker parameters, stored in the repository config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No chunk is shorter, except the last of a file.
    pub min_size: u32,
    /// The target average.
    pub avg_size: u32,
    /// No chunk is longer.
    pub max_size: u32,
    /// FastCDC normalization level, 0 to 3.
    pub normalization: u8,
}

impl Default for ChunkerParams {
    /// 32 KiB / 128 KiB / 512 KiB, normalization level 2: chosen by measurement
    /// on volume-like data (benches/RESULTS.md). After scattered page writes to
    /// database files (5 % of a 2 GiB volume), a backup stores 1.3 times the
    /// changed bytes with these, against 2.1 (256 KiB) and 3.6 (1 MiB).
    fn default() -> Self {
        ChunkerParams {
            min_size: 32 * 1024,
            avg_size: 128 * 1024,
            max_size: 512 * 1024,
            normalization: 2,
        }
    }
}

impl ChunkerParams {
    /// The sizes around an average, as `coffer init --chunk-size` sets them:
    /// a quarter of it at least, four times it at most.
    pub fn from_average(avg_size: u32, normalization: u8) -> Self {
        ChunkerParams {
            min_size: avg_size / 4,
            avg_size,
            max_size: avg_size.saturating_mul(4),
            normalization,
        }
    }

    /// Checks the parameters against the bounds of SPEC.md.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let bad = |reason: String| Err(FormatError::malformed("chunker parameters", reason));
        if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            || !(AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            || !(MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
        {
            return bad(format!(
                "sizes {min}/{avg}/{max} outside {MINIMUM_MIN}..={MINIMUM_MAX} / {AVERAGE_MIN}..={AVERAGE_MAX} / {MAXIMUM_MIN}..={MAXIMUM_MAX}"
            ));
        }
        if min >= avg || avg >= max {
            return bad(format!("need min < avg < max, got {min}/{avg}/{max}"));
        }
        if min % 2 != 0 || avg % 2 != 0 || max % 2 != 0 {
            return bad(format!("sizes must be even, got {min}/{avg}/{max}"));
        }
        if self.normalization > 3 {
            return bad(format!(
                "normalization level {} is not 0 to 3",
                self.normalization
            ));
        }
        Ok(())
    }
}

/// A keyed FastCDC chunker.
#[derive(Clone)]
pub struct Chunker {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Chunker {
    /// A chunker for a repository's seed and parameters.
    pub fn new(seed: &[u8; 32], params: ChunkerParams) -> Result<Self> {
        params.validate()?;
        let mut xof = blake3::Hasher::new_keyed(seed);
        xof.update(b"coffer.v1.gear");
        let mut bytes = [0u8; 256 * 8];
        xof.finalize_xof().fill(&mut bytes);
        let mut gear = Box::new([0u64; 256]);
        let mut gear_ls = Box::new([0u64; 256]);
        for i in 0..256 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            gear[i] = u64::from_le_bytes(w);
            gear_ls[i] = gear[i] << 1;
        }
        let level = match params.normalization {
            0 => fastcdc::v2020::Normalization::Level0,
            1 => fastcdc::v2020::Normalization::Level1,
            2 => fastcdc::v2020::Normalization::Level2,
            _ => fastcdc::v2020::Normalization::Level3,
        };
        let (mask_s, mask_l) = fastcdc::v2020::select_masks(params.avg_size as usize, level);
        Ok(Chunker {
            gear,
            gear_ls,
            params,
            mask_s,
            mask_l,
        })
    }

    /// The parameters.
    pub fn params(&self) -> &ChunkerParams {
        &self.params
    }

    /// The length of the chunk that starts at `data[0]`.
    ///
    /// `data` must hold at least `max_size` bytes unless it is the end of the
    /// stream; the result is then at most `data.len()`. Returns 0 only for empty `data`.
    pub fn cut(&self, data: &[u8]) -> usize {
        let p = &self.params;
        let (_, len) = fastcdc::v2020::cut_gear(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear[..],
            &self.gear_ls[..],
        );
        len
    }

    /// The chunk lengths of a whole buffer, in order.
    pub fn chunks<'a>(&'a self, data: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
        let mut pos = 0;
        std::iter::from_fn(move || {
            if pos >= data.len() {
                return None;
            }
            let len = self.cut(&data[pos..]);
            pos += len;
            Some(len)
        })
    }
}

/// Whether every byte of `data` is zero; vectorises well.
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u8;
        for b in c {
            acc |= *b;
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_an_average_are_a_quarter_and_four_times_it() {
        let p = ChunkerParams::from_average(1 << 20, 1);
        assert_eq!(
            (p.min_size, p.avg_size, p.max_size),
            (256 << 10, 1 << 20, 4 << 20)
        );
        p.validate().unwrap();
        let d = ChunkerParams::default();
        assert_eq!(ChunkerParams::from_average(d.avg_size, d.normalization), d);
    }

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            normalization: 1,
        }
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_input_within_bounds() {
        let c = Chunker::new(&[3; 32], small()).unwrap();
        let data = pseudo_random(1 << 20, 42);
        let lens: Vec<usize> = c.chunks(&data).collect();
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        for l in &lens[..lens.len() - 1] {
            assert!((1024..=16384).contains(l), "{l}");
        }
        let avg = data.len() / lens.len();
        assert!((2048..=8192).contains(&avg), "average {avg}");
    }

    #[test]
    fn the_seed_changes_the_boundaries() {
        let data = pseudo_random(1 << 20, 7);
        let a: Vec<usize> = Chunker::new(&[1; 32], small())
            .unwrap()
            .chunks(&data)
            .collect();
        let b: Vec<usize> = Chunker::new(&[2; 32], small())
            .unwrap()
            .chunks(&data)
            .collect();
        assert_ne!(a, b);
    }

    #[test]
    fn boundaries_resynchronise_after_an_insertion() {
        let c = Chunker::new(&[5; 32], small()).unwrap();
        let data = pseudo_random(1 << 20, 9);
        let mut shifted = vec![0xEE];
        shifted.extend_from_slice(&data);
        let ends = |d: &[u8], off: usize| {
            let mut pos = 0;
            c.chunks(d)
                .map(|l| {
                    pos += l;
                    pos - off
                })
                .collect::<std::collections::HashSet<_>>()
        };
        let a = ends(&data, 0);
        let b = ends(&shifted, 1);
        let common = a.intersection(&b).count();
        assert!(common + 3 >= a.len(), "{common} of {}", a.len());
    }

    #[test]
    fn invalid_parameters_are_refused() {
        let mut p = small();
        p.min_size = 5000;
        assert!(p.validate().is_err());
        let mut p = small();
        p.max_size = 16385;
        assert!(p.validate().is_err());
        let mut p = small();
        p.normalization = 4;
        assert!(Chunker::new(&[0; 32], p).is_err());
        assert!(ChunkerParams::default().validate().is_ok());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 1000]));
        assert!(is_zero(&[]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_zero(&v));
        v[999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
