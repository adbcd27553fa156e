//! Deterministic random streams.
//!
//! Every random decision of the generator draws from a [`Stream`]: a ChaCha8 generator keyed by
//! `(seed, purpose, split, index)` through SplitMix64. Streams are independent of each other, so
//! adding train images, changing the number of questions per image or switching region features
//! off leaves every other output byte-identical. The samplers below are written out (instead of
//! `rand`'s distributions) so that the bytes do not depend on the `rand` version.
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a stream is used for (the second component of its key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Scene layout: object count, attributes, positions.
    Scene = 1,
    /// Pixel noise of the renderer.
    Pixels = 2,
    /// Captions.
    Captions = 3,
    /// VQA questions and annotator answers.
    Vqa = 4,
    /// SNLI-VE hypotheses.
    Ve = 5,
    /// NLVR2 pairs and statements.
    Nlvr2 = 6,
    /// Region boxes and features.
    Regions = 7,
    /// The fixed projection of region codes to features (one per data set).
    Projection = 8,
    /// Background colour of an image (`light_backgrounds`).
    Background = 9,
    /// Region descriptions (`pretrain_regions.json`).
    RegionTexts = 10,
}

/// One deterministic random stream.
#[derive(Clone, Debug)]
pub struct Stream {
    rng: ChaCha8Rng,
    spare: Option<f64>,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Stream {
    /// The stream keyed by `(seed, purpose, split, index)`.
    pub fn new(seed: u64, purpose: Purpose, split: u64, index: u64) -> Stream {
        let mut state = seed;
        let mut key = [0u8; 32];
        let mix = [purpose as u64, split, index, 0x5348_4150_4553];
        for (chunk, m) in key.chunks_mut(8).zip(mix) {
            state ^= m.wrapping_mul(0xD6E8_FEB8_6659_FD93);
            chunk.copy_from_slice(&splitmix(&mut state).to_le_bytes());
        }
        Stream {
            rng: ChaCha8Rng::from_seed(key),
            spare: None,
        }
    }

    /// 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Uniform integer in `0..n` (`n > 0`), by widening multiplication.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Stream::below(0)");
        ((self.bits() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform integer in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform float in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.bits() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform float in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal draw (Box–Muller; the second value of a pair is kept for the next call).
    pub fn normal(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }

    /// Adds zero-mean noise of standard deviation `std` to every value: uniform on
    /// `[-√3·std, √3·std]`, four 16-bit draws per 64 random bits (fast, for large feature
    /// vectors).
    pub fn add_uniform_noise(&mut self, values: &mut [f32], std: f32) {
        let scale = std * 3f32.sqrt() * 2.0 / 65536.0;
        let offset = std * 3f32.sqrt();
        for chunk in values.chunks_mut(4) {
            let mut bits = self.bits();
            for v in chunk {
                *v += (bits & 0xFFFF) as f32 * scale - offset;
                bits >>= 16;
            }
        }
    }

    /// A uniformly chosen element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Index drawn with probability proportional to `weights` (not all zero).
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_keyed() {
        let a: Vec<u64> = (0..4)
            .map(|_| Stream::new(1, Purpose::Scene, 0, 0).bits())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let b = Stream::new(1, Purpose::Scene, 0, 1).bits();
        let c = Stream::new(1, Purpose::Pixels, 0, 0).bits();
        let d = Stream::new(2, Purpose::Scene, 0, 0).bits();
        assert!(a[0] != b && a[0] != c && a[0] != d && b != c);
        let mut s = Stream::new(0, Purpose::Vqa, 0, 0);
        for _ in 0..1000 {
            assert!(s.below(7) < 7);
            let u = s.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
