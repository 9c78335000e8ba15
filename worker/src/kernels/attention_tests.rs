//! The fused attention against a direct f64 evaluation of softmax(q·Kᵀ·scale + mask)·V:
//! grouped-query heads, strided K/V views with spare capacity (the KV cache's layout), padding
//! and causal masks, decoding one row against a longer cache; row independence; errors.

use super::attention::{attention, AttentionError, Dims, Strided};
use crate::test_support::uniform;

/// K/V stored [b, kv_heads, cap, d] with cap ≥ s (the cache's buffer), viewed as [.., s, d].
struct Cache {
    data: Vec<f32>,
    cap: usize,
}

impl Cache {
    fn new(dims: &Dims, cap: usize, seed: u64) -> Self {
        Cache {
            data: uniform(dims.b * dims.kv_heads * cap * dims.d, seed, -1.0, 1.0),
            cap,
        }
    }

    fn view(&self, dims: &Dims) -> Strided<'_> {
        Strided {
            data: &self.data,
            offset: 0,
            strides: [dims.kv_heads * self.cap * dims.d, self.cap * dims.d, dims.d],
        }
    }

    fn at(&self, dims: &Dims, bi: usize, h: usize, j: usize, e: usize) -> f64 {
        self.data[((bi * dims.kv_heads + h) * self.cap + j) * dims.d + e] as f64
    }
}

/// Causal over a cache whose first query sits at position `start`, with `pad[bi]` leading keys
/// of sequence bi invalid (left padding), as `KvCache::attention_mask` builds it.
fn mask(dims: &Dims, start: usize, pad: &[usize]) -> Vec<f32> {
    let mut m = vec![0f32; dims.b * dims.t * dims.s];
    for bi in 0..dims.b {
        for i in 0..dims.t {
            for j in 0..dims.s {
                let q = start + i;
                if !(j == q || (j < q && j >= pad[bi])) {
                    m[(bi * dims.t + i) * dims.s + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    m
}

fn reference(q: &[f32], k: &Cache, v: &Cache, m: &[f32], dims: &Dims, scale: f64) -> Vec<f64> {
    let Dims {
        b,
        heads,
        kv_heads,
        t,
        s,
        d,
    } = *dims;
    let g = heads / kv_heads;
    let mut out = vec![0f64; b * t * heads * d];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..t {
                let qi = &q[((bi * heads + h) * t + i) * d..][..d];
                let logits: Vec<f64> = (0..s)
                    .map(|j| {
                        let dot: f64 = (0..d)
                            .map(|e| qi[e] as f64 * k.at(dims, bi, h / g, j, e))
                            .sum();
                        dot * scale + m[(bi * t + i) * s + j] as f64
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = w.iter().sum();
                for e in 0..d {
                    out[((bi * t + i) * heads + h) * d + e] = (0..s)
                        .map(|j| w[j] / sum * v.at(dims, bi, h / g, j, e))
                        .sum();
                }
            }
        }
    }
    out
}

fn run(dims: Dims, cap: usize, start: usize, pad: &[usize]) -> (Vec<f32>, Vec<f64>) {
    let q = uniform(dims.b * dims.heads * dims.t * dims.d, 1, -1.0, 1.0);
    let (k, v) = (Cache::new(&dims, cap, 2), Cache::new(&dims, cap, 3));
    let m = mask(&dims, start, pad);
    let scale = 1.0 / (dims.d as f64).sqrt();
    let mut out = vec![f32::NAN; dims.b * dims.t * dims.heads * dims.d];
    attention(
        &q,
        k.view(&dims),
        v.view(&dims),
        &m,
        dims,
        scale as f32,
        &mut out,
    )
    .unwrap();
    (out, reference(&q, &k, &v, &m, &dims, scale))
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    for (e, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() < 2e-5,
            "{what}: element {e}: {g} vs {w}"
        );
    }
}

#[test]
fn prefill_with_grouped_heads_padding_and_spare_cache_capacity_matches_f64() {
    // 3 sequences, 6 query heads over 2 KV heads, 11 tokens (not a multiple of the row block),
    // the cache holding room for 16; sequence 1 left-padded by 3, sequence 2 by 10.
    let dims = Dims {
        b: 3,
        heads: 6,
        kv_heads: 2,
        t: 11,
        s: 11,
        d: 24,
    };
    let (got, want) = run(dims, 16, 0, &[0, 3, 10]);
    assert_close(&got, &want, "prefill");
}

#[test]
fn decoding_one_row_against_a_longer_cache_matches_f64() {
    for t in [1, 2, 5] {
        let dims = Dims {
            b: 2,
            heads: 9,
            kv_heads: 3,
            t,
            s: 37,
            d: 64,
        };
        let (got, want) = run(dims, 40, 37 - t, &[4, 0]);
        assert_close(&got, &want, &format!("decode t={t}"));
    }
}

#[test]
fn large_calls_split_over_the_pool_give_the_same_bits_as_each_sequence_alone() {
    let dims = Dims {
        b: 4,
        heads: 4,
        kv_heads: 4,
        t: 40,
        s: 40,
        d: 32,
    };
    let q = uniform(dims.b * dims.heads * dims.t * dims.d, 7, -1.0, 1.0);
    let (k, v) = (Cache::new(&dims, 48, 8), Cache::new(&dims, 48, 9));
    let m = mask(&dims, 0, &[0, 5, 0, 39]);
    let mut all = vec![0f32; dims.b * dims.t * dims.heads * dims.d];
    attention(&q, k.view(&dims), v.view(&dims), &m, dims, 0.3, &mut all).unwrap();
    let per_seq = dims.heads * dims.t * dims.d;
    for bi in 0..dims.b {
        let one = Dims { b: 1, ..dims };
        let kv_one = |c: &Cache| {
            (
                bi * dims.kv_heads * c.cap * dims.d,
                [0, c.cap * dims.d, dims.d],
            )
        };
        let (ko, ks) = kv_one(&k);
        let (vo, vs) = kv_one(&v);
        let kb = Strided {
            data: &k.data,
            offset: ko,
            strides: ks,
        };
        let vb = Strided {
            data: &v.data,
            offset: vo,
            strides: vs,
        };
        let mut out = vec![0f32; per_seq];
        let mb = &m[bi * dims.t * dims.s..(bi + 1) * dims.t * dims.s];
        attention(
            &q[bi * per_seq..(bi + 1) * per_seq],
            kb,
            vb,
            mb,
            one,
            0.3,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, all[bi * per_seq..(bi + 1) * per_seq], "sequence {bi}");
    }
}

#[test]
fn a_query_that_sees_no_key_gets_zeros() {
    let dims = Dims {
        b: 1,
        heads: 1,
        kv_heads: 1,
        t: 1,
        s: 3,
        d: 4,
    };
    let q = vec![1.0; 4];
    let kv = vec![1.0; 12];
    let view = Strided {
        data: &kv,
        offset: 0,
        strides: [12, 12, 4],
    };
    let mut out = vec![f32::NAN; 4];
    attention(&q, view, view, &[f32::NEG_INFINITY; 3], dims, 1.0, &mut out).unwrap();
    assert_eq!(out, vec![0.0; 4]);
}

#[test]
fn bad_lengths_and_heads_are_errors() {
    let dims = Dims {
        b: 1,
        heads: 3,
        kv_heads: 2,
        t: 1,
        s: 1,
        d: 2,
    };
    let kv = vec![0.0; 4];
    let view = Strided {
        data: &kv,
        offset: 0,
        strides: [4, 2, 2],
    };
    let mut out = vec![0.0; 6];
    assert!(matches!(
        attention(&[0.0; 6], view, view, &[0.0], dims, 1.0, &mut out),
        Err(AttentionError::Heads {
            heads: 3,
            kv_heads: 2
        })
    ));
    let dims = Dims { heads: 2, ..dims };
    let mut out = vec![0.0; 4];
    let e = attention(&[0.0; 3], view, view, &[0.0], dims, 1.0, &mut out).unwrap_err();
    assert!(
        e.to_string().contains("q has 3 elements, expected 4"),
        "{e}"
    );
    let short = Strided {
        data: &kv[..3],
        offset: 0,
        strides: [4, 2, 2],
    };
    let e = attention(&[0.0; 4], short, view, &[0.0], dims, 1.0, &mut out).unwrap_err();
    assert!(
        e.to_string().contains("k has 3 elements, expected 4"),
        "{e}"
    );
}

/// The kernel's arithmetic written out one element at a time, as its contract states it: the
/// scaled query (x · scale), each score one fused multiply-add chain over e in order from 0,
/// the mask added, the softmax's max, exps (`kernels::exp::exp`), sequential sum and division,
/// and each output one fused multiply-add chain over the keys in order from 0 — in f32, so the
/// register-blocked paths must give these exact bits.
fn chains(q: &[f32], k: &Cache, v: &Cache, m: &[f32], dims: &Dims, scale: f32) -> Vec<f32> {
    let Dims {
        b,
        heads,
        kv_heads,
        t,
        s,
        d,
    } = *dims;
    let g = heads / kv_heads;
    let mut out = vec![0f32; b * t * heads * d];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..t {
                let qi = &q[((bi * heads + h) * t + i) * d..][..d];
                let mut p: Vec<f32> = (0..s)
                    .map(|j| {
                        let score = (0..d).fold(0f32, |acc, e| {
                            (qi[e] * scale).mul_add(k.at(dims, bi, h / g, j, e) as f32, acc)
                        });
                        score + m[(bi * t + i) * s + j]
                    })
                    .collect();
                let max = p.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let mut sum = 0f32;
                for x in p.iter_mut() {
                    *x = crate::kernels::exp::exp(*x - max);
                    sum += *x;
                }
                for x in p.iter_mut() {
                    *x /= sum;
                }
                for e in 0..d {
                    out[((bi * t + i) * heads + h) * d + e] = (0..s).fold(0f32, |acc, j| {
                        p[j].mul_add(v.at(dims, bi, h / g, j, e) as f32, acc)
                    });
                }
            }
        }
    }
    out
}

#[test]
fn register_blocked_scores_and_outputs_keep_the_chains_bits() {
    // Head dimensions with (64) and without (32, 80) the register-held output, 1–5 and 16
    // query rows (blocks of 1–4), keys below, at and past 16 and 64 (both score blocks and
    // the sweep's tail), padding.
    for &d in &[64, 32, 80] {
        for &t in &[1, 3, 4, 5, 16] {
            for extra in [0, 15, 16, 17, 63, 64, 81] {
                let s = t + extra;
                let dims = Dims {
                    b: 2,
                    heads: 6,
                    kv_heads: 2,
                    t,
                    s,
                    d,
                };
                let q = uniform(dims.b * dims.heads * t * d, 7, -1.0, 1.0);
                let (k, v) = (Cache::new(&dims, s + 3, 8), Cache::new(&dims, s + 3, 9));
                let m = mask(&dims, s - t, &[0, 2.min(s - t)]);
                let scale = 1.0 / (d as f32).sqrt();
                let mut out = vec![f32::NAN; dims.b * t * dims.heads * d];
                attention(&q, k.view(&dims), v.view(&dims), &m, dims, scale, &mut out).unwrap();
                let want = chains(&q, &k, &v, &m, &dims, scale);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&out), bits(&want), "d {d} t {t} s {s}");
            }
        }
    }
}
