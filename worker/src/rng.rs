//! Counter-based randomness (docs/architecture.md#randomness): every draw is a pure function of
//! a key built from (job seed, step, global prompt index, sample index, purpose) and a counter,
//! so no RNG state is ever saved and W workers draw exactly what one worker would.
//!
//! The generator is SplitMix64 (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number
//! generators"): output i of stream k is `mix(k + (i + 1) * GAMMA)`. Keys are derived by chaining
//! `mix` over the key fields, so distinct tuples give unrelated streams.

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser (a bijection on u64 with good avalanche).
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 53 bits of a raw draw as a uniform in [0, 1).
#[inline]
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// What a stream is used for; part of the key so that two uses never share draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    Init = 1,
    Example = 2,
    Prompt = 3,
    Sample = 4,
    Judge = 5,
    Dare = 6,
    DataOrder = 7,
    Label = 8,
    /// Which prompts a task holds out for evaluation.
    Split = 9,
    /// Synthetic preference data for training proxies (Goodhart-Digits).
    ProxyData = 10,
    /// The seed of one member of a reward-model ensemble (`reward::member`).
    RewardMember = 11,
    /// SFT examples drawn from a task's base sampler (`Task::sft_example`); kept apart from
    /// `Sample` so an SFT row and a self-play sample with the same (seed, step, index) differ.
    SftExample = 12,
}

/// A key identifying one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamKey(u64);

impl StreamKey {
    /// Key for (seed, step, prompt, sample, purpose), as docs/architecture.md#randomness tabulates.
    pub fn new(seed: u64, step: u64, prompt: u64, sample: u64, purpose: Purpose) -> Self {
        let mut k = mix(seed ^ 0x6D69_7272_6F72_706C); // "mirrorpl"
        for field in [step, prompt, sample, purpose as u64] {
            k = mix(k ^ field.wrapping_mul(GAMMA));
        }
        StreamKey(k)
    }

    /// A sub-stream (e.g. one per tensor or per position) derived from this key.
    pub fn derive(self, field: u64) -> Self {
        StreamKey(mix(self.0 ^ mix(field.wrapping_add(GAMMA))))
    }

    pub fn stream(self) -> Stream {
        Stream {
            key: self.0,
            counter: 0,
        }
    }
}

/// Sequential draws from one key. `Stream::at(key, i)` is the i-th draw, so any position can
/// be computed without the ones before it.
#[derive(Debug, Clone)]
pub struct Stream {
    key: u64,
    counter: u64,
}

impl Stream {
    /// The i-th raw draw of the stream with this key.
    #[inline]
    pub fn at(key: StreamKey, i: u64) -> u64 {
        mix(key.0.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA)))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let v = Self::at(StreamKey(self.key), self.counter);
        self.counter += 1;
        v
    }

    /// Uniform in [0, 1) with 53 bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        unit(self.next_u64())
    }

    /// The i-th draw of the stream with this key as a uniform in [0, 1) (what the i-th call
    /// of [`Stream::uniform`] returns).
    #[inline]
    pub fn uniform_at(key: StreamKey, i: u64) -> f64 {
        unit(Self::at(key, i))
    }

    /// Standard normal (Box–Muller; one of the pair is used so that draw i depends only on i).
    #[inline]
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform integer in [0, n) (Lemire's multiply-shift; n > 0).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Bernoulli(p).
    #[inline]
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Poisson(lambda) by inversion (small lambda only, as the synthetic tasks use).
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        let limit = (-lambda).exp();
        let mut k = 0;
        let mut p = self.uniform();
        while p > limit {
            k += 1;
            p *= self.uniform();
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_draws_and_fields_matter() {
        let a = StreamKey::new(7, 1, 2, 3, Purpose::Sample);
        let b = StreamKey::new(7, 1, 2, 3, Purpose::Sample);
        assert_eq!(a.stream().next_u64(), b.stream().next_u64());
        for other in [
            StreamKey::new(8, 1, 2, 3, Purpose::Sample),
            StreamKey::new(7, 2, 2, 3, Purpose::Sample),
            StreamKey::new(7, 1, 3, 3, Purpose::Sample),
            StreamKey::new(7, 1, 2, 4, Purpose::Sample),
            StreamKey::new(7, 1, 2, 3, Purpose::Judge),
        ] {
            assert_ne!(a.stream().next_u64(), other.stream().next_u64());
        }
        let mut s = a.stream();
        s.next_u64();
        assert_eq!(s.next_u64(), Stream::at(a, 1));
    }

    #[test]
    fn moments_are_right() {
        let mut s = StreamKey::new(1, 0, 0, 0, Purpose::Init).stream();
        let n = 200_000;
        let (mut m, mut v, mut u) = (0.0, 0.0, 0.0);
        for _ in 0..n {
            let x = s.normal();
            m += x;
            v += x * x;
            u += s.uniform();
        }
        let (m, v, u) = (m / n as f64, v / n as f64, u / n as f64);
        // 5 sigma bounds: sd(mean)=1/sqrt(n)=0.0022, sd(E[x^2])=sqrt(2/n)=0.0032, sd(u)=0.00065
        assert!(m.abs() < 0.011, "mean {m}");
        assert!((v - 1.0).abs() < 0.016, "var {v}");
        assert!((u - 0.5).abs() < 0.0033, "uniform mean {u}");
        let mut p = StreamKey::new(2, 0, 0, 0, Purpose::Init).stream();
        let pm: f64 = (0..n).map(|_| p.poisson(5.0) as f64).sum::<f64>() / n as f64;
        assert!(
            (pm - 5.0).abs() < 5.0 * (5.0 / n as f64).sqrt(),
            "poisson mean {pm}"
        );
    }
}
