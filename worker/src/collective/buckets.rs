//! How a collective groups a name-ordered list of tensors into buckets of at most
//! `bucket_elems` elements: tensors that fit are packed whole, in order, into the current
//! bucket (a new one starts when the next does not fit); a larger tensor gets buckets of its
//! own, split into near-equal ranges. Every rank computes the same plan from the same shapes,
//! so buckets line up across the gang. Also the fingerprint of names, shapes and dtypes that
//! ranks compare before a call.
//!
//! Must not move data: it only plans.

use std::collections::BTreeMap;

use candle_core::Tensor;

/// Elements `start..end` of tensor number `tensor` (in name order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub tensor: usize,
    pub start: usize,
    pub end: usize,
}

impl Segment {
    pub fn len(&self) -> usize {
        self.end - self.start
    }
}

/// The buckets for tensors of `numels` elements; empty tensors are in no bucket.
pub(crate) fn plan(numels: &[usize], bucket_elems: usize) -> Vec<Vec<Segment>> {
    let cap = bucket_elems.max(1);
    let mut buckets = Vec::new();
    let mut current: Vec<Segment> = Vec::new();
    let mut filled = 0;
    for (tensor, &n) in numels.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if n > cap {
            if !current.is_empty() {
                buckets.push(std::mem::take(&mut current));
                filled = 0;
            }
            let parts = n.div_ceil(cap);
            for p in 0..parts {
                let (start, end) = (p * n / parts, (p + 1) * n / parts);
                buckets.push(vec![Segment { tensor, start, end }]);
            }
            continue;
        }
        if filled + n > cap {
            buckets.push(std::mem::take(&mut current));
            filled = 0;
        }
        current.push(Segment {
            tensor,
            start: 0,
            end: n,
        });
        filled += n;
    }
    if !current.is_empty() {
        buckets.push(current);
    }
    buckets
}

/// FNV-1a over the names, dtypes and shapes: equal on two ranks when they pass tensors that
/// line up.
pub(crate) fn fingerprint(tensors: &BTreeMap<String, Tensor>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, t) in tensors {
        eat(name.as_bytes());
        eat(&[0xff]);
        eat(t.dtype().as_str().as_bytes());
        for d in t.dims() {
            eat(&(*d as u64).to_le_bytes());
        }
        eat(&[0xfe]);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(numels: &[usize], buckets: &[Vec<Segment>]) -> Vec<usize> {
        let mut got = vec![0; numels.len()];
        for b in buckets {
            for s in b {
                assert_eq!(s.start, got[s.tensor], "segments in order, no gaps");
                got[s.tensor] = s.end;
            }
        }
        got
    }

    #[test]
    fn plan_packs_small_splits_large_and_covers_everything() {
        let numels = [3, 4, 0, 10, 2, 5, 1];
        let buckets = plan(&numels, 8);
        assert_eq!(covered(&numels, &buckets), numels.to_vec());
        for b in &buckets {
            assert!(b.iter().map(Segment::len).sum::<usize>() <= 8);
        }
        // [3,4] | 10 as [5] [5] | [2,5,1]
        assert_eq!(buckets.len(), 4);
        assert_eq!(
            buckets[1],
            vec![Segment {
                tensor: 3,
                start: 0,
                end: 5
            }]
        );
        assert!(plan(&[], 8).is_empty());
        assert!(plan(&[0, 0], 8).is_empty());
        assert_eq!(plan(&[5], 0).len(), 5);
    }
}
