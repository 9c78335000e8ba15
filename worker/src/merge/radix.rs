//! Exact order statistics of f32 values seen in chunks, with bounded memory (docs/algorithms.md §5,
//! "Exact order statistics across workers"; docs/architecture.md#merge-jobs): a two-level radix
//! select on the order-preserving u32 key of each value.
//!
//! Round `High` counts the high 16 bits of every key; the coordinator picks the bucket holding
//! the wanted rank. Round `Low` counts the low 16 bits of the keys inside that bucket; the
//! wanted key is then known exactly. Only counts travel (never values), merged by addition, so
//! the result does not depend on how the values were split across chunks or workers.
//!
//! This module knows nothing about merging methods: it selects ranks of a stream of numbers.

use super::{MergeError, Result};

/// Buckets per level (16 bits).
pub const BUCKETS: usize = 1 << 16;

/// The order-preserving key of `x`: for non-NaN a, b, `a < b` implies `key(a) < key(b)`.
/// Non-negatives get their sign bit set, negatives have all bits flipped (so −0.0 sorts just
/// below +0.0, which only matters to the key, not to the value).
#[inline(always)]
pub fn key(x: f32) -> u32 {
    let bits = x.to_bits();
    // Sign bit clear: set it. Sign bit set: flip every bit. (Branch-free, so loops vectorise.)
    let flip = ((bits as i32 >> 31) as u32) | 0x8000_0000;
    bits ^ flip
}

crate::simd_fn! {
    /// keys[i] = key(xs[i]); returns the largest key (0 for an empty slice).
    fn keys_and_max(xs: &[f32], keys: &mut [u32]) -> u32 {
        let mut max = 0u32;
        for (k, &x) in keys.iter_mut().zip(xs) {
            *k = key(x);
            max = max.max(*k);
        }
        max
    }
}

/// The inverse of [`key`].
#[inline]
pub fn from_key(k: u32) -> f32 {
    if k & 0x8000_0000 != 0 {
        f32::from_bits(k & 0x7FFF_FFFF)
    } else {
        f32::from_bits(!k)
    }
}

/// Counts of 65 536 buckets (one level of the radix select). Mergeable by addition.
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Histogram(total {}, {} buckets used)",
            self.total(),
            self.nonzero().count()
        )
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket holding a wanted rank (see [`Histogram::select`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub bucket: u16,
    /// Rank of the wanted value among the values of this bucket (0-based).
    pub rank: u64,
    /// Number of counted values in lower buckets.
    pub below: u64,
    /// Number of counted values in this bucket.
    pub count: u64,
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
        }
    }

    #[inline]
    pub fn add(&mut self, bucket: u16) {
        self.counts_mut()[bucket as usize] += 1;
    }

    /// The counts as a fixed-size array, so that indexing by a u16 needs no bounds check.
    #[inline]
    fn counts_mut(&mut self) -> &mut [u64; BUCKETS] {
        (&mut self.counts[..])
            .try_into()
            .expect("a histogram has BUCKETS counts")
    }

    pub fn count(&self, bucket: u16) -> u64 {
        self.counts[bucket as usize]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other` bucket by bucket (combining the counts of two sets of chunks).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Non-zero buckets in increasing order.
    pub fn nonzero(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(b, &c)| (b as u16, c))
    }

    /// The bucket holding the value of 0-based rank `k` in ascending order, with the rank of that
    /// value inside the bucket; `None` when `k ≥ total`.
    pub fn select(&self, k: u64) -> Option<Bucket> {
        let mut below = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            if k < below + c {
                return Some(Bucket {
                    bucket: b as u16,
                    rank: k - below,
                    below,
                    count: c,
                });
            }
            below += c;
        }
        None
    }

    /// Every bucket's count, bucket 0 first (the dense form).
    pub fn dense(&self) -> &[u64] {
        &self.counts
    }

    /// Whether listing the non-zero buckets with their counts is shorter than every count in
    /// bucket order, both as protobuf varints (a high round over model weights uses a few
    /// hundred buckets; a low round over a full bucket uses most of them).
    pub fn prefers_sparse(&self) -> bool {
        let sparse: usize = self
            .nonzero()
            .map(|(b, c)| varint_len(b as u64) + varint_len(c))
            .sum();
        let dense: usize = self.counts.iter().map(|&c| varint_len(c)).sum();
        sparse < dense
    }

    /// A histogram from its non-zero buckets (strictly increasing, each below [`BUCKETS`]) and
    /// their counts.
    pub fn from_sparse(buckets: &[u32], counts: &[u64]) -> Result<Histogram> {
        if buckets.len() != counts.len() {
            return Err(MergeError::Counts(format!(
                "histogram lists {} buckets but {} counts",
                buckets.len(),
                counts.len()
            )));
        }
        let mut h = Histogram::new();
        let mut last: Option<u32> = None;
        for (&b, &c) in buckets.iter().zip(counts) {
            if b as usize >= BUCKETS {
                return Err(MergeError::Counts(format!(
                    "histogram bucket {b} ≥ {BUCKETS}"
                )));
            }
            if last.is_some_and(|l| l >= b) {
                return Err(MergeError::Counts(
                    "histogram buckets not increasing".into(),
                ));
            }
            last = Some(b);
            h.counts[b as usize] = c;
        }
        Ok(h)
    }

    /// A histogram from every bucket's count ([`BUCKETS`] of them).
    pub fn from_dense(counts: &[u64]) -> Result<Histogram> {
        if counts.len() != BUCKETS {
            return Err(MergeError::Counts(format!(
                "dense histogram has {} counts, not {BUCKETS}",
                counts.len()
            )));
        }
        Ok(Histogram {
            counts: counts.to_vec(),
        })
    }
}

/// Bytes of `v` as a LEB128 (protobuf) varint.
fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// What one counting round of a [`Selection`] needs from every value of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// Count the high 16 bits of every key (and track the maximum).
    High,
    /// Count the low 16 bits of the keys whose high 16 bits are one of these (sorted, distinct).
    Low(Vec<u16>),
}

/// A value found NaN by [`Counts::add_slice`]: its index in the slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NanAt(pub usize);

/// What workers count for one round of one [`Selection`]: a pure function of the multiset of
/// values fed, merged by addition ([`Counts::merge`]); sent as protobuf by `jobs::merge_wire`.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    round: Round,
    /// One histogram per bucket of `round` (one for `High`).
    hists: Vec<Histogram>,
    /// Largest key seen (round `High` only).
    max_key: Option<u32>,
}

impl Counts {
    /// Empty counts for `round`.
    pub fn new(round: Round) -> Self {
        let n = match &round {
            Round::High => 1,
            Round::Low(buckets) => buckets.len(),
        };
        Counts {
            round,
            hists: vec![Histogram::new(); n],
            max_key: None,
        }
    }

    pub fn round(&self) -> &Round {
        &self.round
    }

    /// Counts every value of `xs`; a NaN stops counting and is reported by index (the caller
    /// names the tensor).
    pub fn add_slice(&mut self, xs: &[f32]) -> std::result::Result<(), NanAt> {
        if let Some(i) = super::validate::first_nan(xs) {
            return Err(NanAt(i));
        }
        // Keys are computed a block at a time by a vectorised loop; the counting loop that
        // follows is scalar (a histogram scatter) but does nothing else.
        const KEYS: usize = 1024;
        let mut keys = [0u32; KEYS];
        for block in xs.chunks(KEYS) {
            let keys = &mut keys[..block.len()];
            let max = keys_and_max(block, keys);
            match &self.round {
                Round::High => {
                    self.max_key = Some(self.max_key.map_or(max, |m| m.max(max)));
                    let counts = self.hists[0].counts_mut();
                    for &k in keys.iter() {
                        counts[(k >> 16) as usize] += 1;
                    }
                }
                Round::Low(buckets) => {
                    for &k in keys.iter() {
                        let high = (k >> 16) as u16;
                        // At most a handful of buckets (one per wanted rank): a linear scan is
                        // fastest, and almost every key matches none of them.
                        if let Some(j) = buckets.iter().position(|&b| b == high) {
                            self.hists[j].add(k as u16);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds counts gathered over other chunks for the same round.
    pub fn merge(&mut self, other: &Counts) -> Result<()> {
        if self.round != other.round {
            return Err(MergeError::Counts(format!(
                "cannot merge counts of rounds {:?} and {:?}",
                self.round, other.round
            )));
        }
        for (a, b) in self.hists.iter_mut().zip(&other.hists) {
            a.merge(b);
        }
        self.max_key = match (self.max_key, other.max_key) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }

    /// Largest key seen (round `High` only; `None` before any value).
    pub fn max_key(&self) -> Option<u32> {
        self.max_key
    }

    /// One histogram per bucket of the round (one for `High`).
    pub fn histograms(&self) -> &[Histogram] {
        &self.hists
    }

    /// Counts from their parts as they travel (`jobs::merge_wire`): the number of histograms
    /// must match the round, a low round's buckets must be strictly increasing.
    pub fn from_parts(round: Round, max_key: Option<u32>, hists: Vec<Histogram>) -> Result<Counts> {
        let want = match &round {
            Round::High => 1,
            Round::Low(buckets) => {
                if buckets.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(MergeError::Counts(
                        "low-round buckets not increasing".into(),
                    ));
                }
                buckets.len()
            }
        };
        if hists.len() != want {
            return Err(MergeError::Counts(format!(
                "{} histograms for a round of {want} buckets",
                hists.len()
            )));
        }
        Ok(Counts {
            round,
            hists,
            max_key,
        })
    }
}

/// One exact order statistic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderStat {
    /// The value of the wanted rank.
    pub value: f32,
    /// How many values are strictly below it (by key).
    pub below: u64,
    /// How many values equal it (by key: −0.0 and +0.0 are counted apart).
    pub equal: u64,
}

#[derive(Debug, Clone)]
enum Stage {
    High,
    /// Per wanted rank: (bucket selected in round High).
    Low(Vec<Bucket>),
    Done(Vec<OrderStat>),
}

/// Exact values of several ranks of one stream of `n` values, found in two counting rounds
/// (plus the exact maximum, tracked in the first round). Driven by the coordinator:
/// `round()` says what to count; workers fill `Counts::new(round)` over their chunks; the
/// merged counts go to `advance`; after two rounds `stats()` holds the answers.
#[derive(Debug, Clone)]
pub struct Selection {
    n: u64,
    ranks: Vec<u64>,
    stage: Stage,
    max: Option<f32>,
}

impl Selection {
    /// Ranks are 0-based positions in ascending order; each must be `< n`.
    pub fn new(n: u64, ranks: Vec<u64>) -> Result<Self> {
        if let Some(&r) = ranks.iter().find(|&&r| r >= n) {
            return Err(MergeError::Counts(format!(
                "rank {r} out of range for {n} values"
            )));
        }
        Ok(Selection {
            n,
            ranks,
            stage: Stage::High,
            max: None,
        })
    }

    pub fn n(&self) -> u64 {
        self.n
    }

    /// What the next sweep must count, or `None` when done.
    pub fn round(&self) -> Option<Round> {
        match &self.stage {
            Stage::High => Some(Round::High),
            Stage::Low(sel) => {
                let mut b: Vec<u16> = sel.iter().map(|s| s.bucket).collect();
                b.sort_unstable();
                b.dedup();
                Some(Round::Low(b))
            }
            Stage::Done(_) => None,
        }
    }

    /// Consumes the merged counts of the current round over all `n` values.
    pub fn advance(&mut self, counts: &Counts) -> Result<()> {
        let Some(round) = self.round() else {
            return Err(MergeError::Counts("selection already finished".into()));
        };
        if counts.round != round {
            return Err(MergeError::Counts(format!(
                "counts for round {:?}, expected {:?}",
                counts.round, round
            )));
        }
        self.stage = match &self.stage {
            Stage::High => {
                let h = &counts.hists[0];
                if h.total() != self.n {
                    return Err(MergeError::Counts(format!(
                        "counted {} values, expected {}",
                        h.total(),
                        self.n
                    )));
                }
                self.max = counts.max_key.map(from_key);
                Stage::Low(
                    self.ranks
                        .iter()
                        .map(|&r| h.select(r).expect("rank < n = total"))
                        .collect(),
                )
            }
            Stage::Low(sel) => {
                let Round::Low(buckets) = &round else {
                    unreachable!()
                };
                let mut stats = Vec::with_capacity(sel.len());
                for s in sel {
                    let h = &counts.hists[buckets
                        .iter()
                        .position(|&b| b == s.bucket)
                        .expect("bucket listed")];
                    if h.total() != s.count {
                        return Err(MergeError::Counts(format!(
                            "bucket {} counted {} values in round low, {} in round high",
                            s.bucket,
                            h.total(),
                            s.count
                        )));
                    }
                    let low = h.select(s.rank).expect("rank < count");
                    let k = ((s.bucket as u32) << 16) | low.bucket as u32;
                    stats.push(OrderStat {
                        value: from_key(k),
                        below: s.below + low.below,
                        equal: low.count,
                    });
                }
                Stage::Done(stats)
            }
            Stage::Done(_) => unreachable!(),
        };
        Ok(())
    }

    /// The answers, in the order of the ranks given to `new`, once both rounds are done.
    pub fn stats(&self) -> Option<&[OrderStat]> {
        match &self.stage {
            Stage::Done(s) => Some(s),
            _ => None,
        }
    }

    /// The exact maximum, known after round `High`.
    pub fn max(&self) -> Option<f32> {
        self.max
    }
}

/// The same answers as a [`Selection`], computed directly on values held in memory (for a tensor
/// that fits one chunk). Returns the order statistics and the maximum; NaN is reported by index.
pub fn select_in_memory(
    values: &[f32],
    ranks: &[u64],
) -> std::result::Result<(Vec<OrderStat>, f32), NanAt> {
    if let Some(i) = values.iter().position(|x| x.is_nan()) {
        return Err(NanAt(i));
    }
    let mut keys: Vec<u32> = values.iter().map(|&x| key(x)).collect();
    keys.sort_unstable();
    let stats = ranks
        .iter()
        .map(|&r| {
            let k = keys[r as usize];
            let below = keys.partition_point(|&x| x < k) as u64;
            let upto = keys.partition_point(|&x| x <= k) as u64;
            OrderStat {
                value: from_key(k),
                below,
                equal: upto - below,
            }
        })
        .collect();
    Ok((
        stats,
        keys.last().map_or(f32::NEG_INFINITY, |&k| from_key(k)),
    ))
}

/// Runs a whole [`Selection`] over in-memory chunks the way a coordinator would: each chunk is
/// counted on its own, serialised, parsed and merged.
#[cfg(test)]
fn select_chunked<'a, I>(
    n: u64,
    ranks: Vec<u64>,
    chunks: impl Fn() -> I,
) -> Result<(Vec<OrderStat>, f32)>
where
    I: Iterator<Item = &'a [f32]>,
{
    let mut sel = Selection::new(n, ranks)?;
    while let Some(round) = sel.round() {
        let mut total = Counts::new(round.clone());
        for c in chunks() {
            let mut counts = Counts::new(round.clone());
            counts
                .add_slice(c)
                .map_err(|NanAt(i)| MergeError::Counts(format!("NaN at {i}")))?;
            total.merge(&counts)?;
        }
        sel.advance(&total)?;
    }
    Ok((
        sel.stats().expect("done").to_vec(),
        sel.max().unwrap_or(f32::NEG_INFINITY),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Purpose, StreamKey};

    #[test]
    fn key_orders_like_values() {
        let xs = [
            f32::NEG_INFINITY,
            -3.5,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            -0.0,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            1.0,
            2.0,
            f32::MAX,
            f32::INFINITY,
        ];
        let keys: Vec<u32> = xs.iter().map(|&x| key(x)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:x?}");
        for &x in &xs {
            assert_eq!(from_key(key(x)).to_bits(), x.to_bits());
        }
        assert_eq!(key(0.0), 0x8000_0000);
        assert_eq!(key(-0.0), 0x7FFF_FFFF);
    }

    fn random_values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = StreamKey::new(seed, 0, 0, 0, Purpose::Init).stream();
        (0..n)
            .map(|_| match s.below(6) {
                0 => 0.0,
                1 => -0.0,
                2 => (s.below(5) as f32) - 2.0, // many duplicates incl. negatives
                3 => (s.normal() * 1e-30) as f32,
                _ => (s.normal() * 3.0) as f32,
            })
            .collect()
    }

    #[test]
    fn select_equals_sort_on_random_data_across_chunk_boundaries() {
        for (seed, n, chunk) in [
            (1, 1, 1),
            (2, 17, 3),
            (3, 1000, 7),
            (4, 5000, 4096),
            (5, 777, 1000),
        ] {
            let xs = random_values(seed, n);
            let mut sorted = xs.clone();
            sorted.sort_by_key(|x| key(*x));
            let ranks: Vec<u64> = vec![0, n as u64 / 3, n as u64 / 2, n as u64 - 1];
            let (stats, max) =
                select_chunked(n as u64, ranks.clone(), || xs.chunks(chunk)).unwrap();
            let (mem, mem_max) = select_in_memory(&xs, &ranks).unwrap();
            assert_eq!(max.to_bits(), sorted[n - 1].to_bits());
            assert_eq!(mem_max.to_bits(), max.to_bits());
            for (i, &r) in ranks.iter().enumerate() {
                let v = sorted[r as usize];
                assert_eq!(
                    stats[i].value.to_bits(),
                    v.to_bits(),
                    "seed {seed} rank {r}"
                );
                let below = sorted.iter().filter(|x| key(**x) < key(v)).count() as u64;
                let equal = sorted.iter().filter(|x| key(**x) == key(v)).count() as u64;
                assert_eq!((stats[i].below, stats[i].equal), (below, equal));
                assert_eq!(mem[i], stats[i]);
            }
        }
    }

    #[test]
    fn counts_from_parts_checks_the_round() {
        let xs = random_values(9, 300);
        let mut c = Counts::new(Round::High);
        c.add_slice(&xs).unwrap();
        let again = Counts::from_parts(Round::High, c.max_key(), c.histograms().to_vec()).unwrap();
        assert_eq!(again, c);
        let mut l = Counts::new(Round::Low(vec![3, 0x8000, 0xBF80]));
        l.add_slice(&xs).unwrap();
        assert!(Counts::from_parts(l.round().clone(), None, c.histograms().to_vec()).is_err());
        assert!(
            Counts::from_parts(Round::Low(vec![5, 5]), None, vec![Histogram::new(); 2]).is_err()
        );
        assert!(c.clone().merge(&l).is_err());
        assert_eq!(c.add_slice(&[1.0, f32::NAN]), Err(NanAt(1)));
    }

    #[test]
    fn histograms_rebuild_from_sparse_and_dense_forms() {
        let mut h = Histogram::new();
        h.counts[7] = u64::MAX;
        h.counts[65_535] = 1 << 40;
        assert!(h.prefers_sparse());
        let (buckets, counts): (Vec<u32>, Vec<u64>) =
            h.nonzero().map(|(b, c)| (b as u32, c)).unzip();
        assert_eq!(Histogram::from_sparse(&buckets, &counts).unwrap(), h);
        assert_eq!(Histogram::from_dense(h.dense()).unwrap(), h);
        assert!(Histogram::from_sparse(&[9, 3], &[1, 1]).is_err());
        assert!(Histogram::from_sparse(&[70_000], &[1]).is_err());
        assert!(Histogram::from_sparse(&[1], &[]).is_err());
        assert!(Histogram::from_dense(&[0; 10]).is_err());
        // 300 000 values inside one high bucket: most low buckets are used, so dense is shorter.
        let high = (key(1.0) >> 16) as u16;
        let xs: Vec<f32> = (0..300_000u32)
            .map(|i| from_key(((high as u32) << 16) | (i.wrapping_mul(2_654_435_761) >> 16)))
            .collect();
        let mut c = Counts::new(Round::Low(vec![high]));
        c.add_slice(&xs).unwrap();
        assert!(!c.histograms()[0].prefers_sparse());
    }

    #[test]
    fn selection_rejects_inconsistent_counts() {
        let mut sel = Selection::new(3, vec![1]).unwrap();
        let mut c = Counts::new(Round::High);
        c.add_slice(&[1.0, 2.0]).unwrap();
        assert!(sel.advance(&c).is_err());
        assert!(Selection::new(3, vec![3]).is_err());
    }
}
