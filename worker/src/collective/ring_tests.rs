//! In-process tests of the TCP ring: one thread per rank on loopback.

use crate::test_support::bits;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use super::ring_connect::hello_bytes;
use super::{Collective, CollectiveError, RingListener, RingOptions, TcpRing};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn options(timeout: Duration, bucket_bytes: usize) -> RingOptions {
    RingOptions {
        timeout,
        cancel: Arc::new(AtomicBool::new(false)),
        bucket_bytes,
    }
}

fn listeners(w: usize) -> (Vec<RingListener>, Vec<SocketAddr>) {
    let listeners: Vec<_> = (0..w)
        .map(|_| RingListener::bind(LOOPBACK).unwrap())
        .collect();
    let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    (listeners, addrs)
}

/// Connects a ring of `w` ranks, each with its own options from `opts(rank)` and tag.
fn connect_with(
    w: usize,
    tag: impl Fn(usize) -> u64 + Sync,
    opts: impl Fn(usize) -> RingOptions + Sync,
) -> Vec<Result<TcpRing, CollectiveError>> {
    let (listeners, addrs) = listeners(w);
    std::thread::scope(|s| {
        let handles: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                let (addrs, tag, opts) = (&addrs, &tag, &opts);
                s.spawn(move || l.connect(rank, addrs, tag(rank), opts(rank)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn ring(w: usize, bucket_bytes: usize) -> Vec<TcpRing> {
    connect_with(w, |_| 7, |_| options(Duration::from_secs(5), bucket_bytes))
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// Runs `f` on every rank, one thread each, and returns the results in rank order.
fn on_each<T: Send>(rings: &mut [TcpRing], f: impl Fn(&mut TcpRing) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = rings.iter_mut().map(|r| s.spawn(|| f(r))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Rank `rank`'s value at element `i` of tensor `t`: varied signs and magnitudes.
fn value(rank: usize, t: usize, i: usize) -> f32 {
    let x = ((rank * 7919 + t * 104_729 + i * 31) % 2003) as f32;
    (x - 1001.0) / 7.0 + 1.0 / (1.0 + (i % 13) as f32)
}

fn shapes() -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("a.weight", vec![7]),
        ("b.tiny", vec![2]),
        ("c.matrix", vec![5, 13]),
        ("d.empty", vec![0]),
        ("e.scalar", vec![]),
        ("f.long", vec![1001]),
        ("g.odd", vec![3, 3, 37]),
    ]
}

fn tensors_for(rank: usize, shapes: &[(&str, Vec<usize>)]) -> BTreeMap<String, Tensor> {
    shapes
        .iter()
        .enumerate()
        .map(|(t, (name, dims))| {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|i| value(rank, t, i)).collect();
            (
                name.to_string(),
                Tensor::from_vec(v, dims.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect()
}

fn check_all_reduce(w: usize, bucket_bytes: usize, shapes: &[(&str, Vec<usize>)]) {
    let mut rings = ring(w, bucket_bytes);
    let outs = on_each(&mut rings, |r| {
        let mut m = tensors_for(r.rank(), shapes);
        r.all_reduce_sum(&mut m).map(|()| m)
    });
    let outs: Vec<_> = outs.into_iter().map(|o| o.unwrap()).collect();
    for (t, (name, dims)) in shapes.iter().enumerate() {
        let got = &outs[0][*name];
        assert_eq!(got.dims(), dims.as_slice(), "{name}");
        let got_v = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, g) in got_v.iter().enumerate() {
            let exact: f64 = (0..w).map(|r| value(r, t, i) as f64).sum();
            let scale: f64 = (0..w).map(|r| value(r, t, i).abs() as f64).sum();
            assert!(
                (*g as f64 - exact).abs() <= 4.0 * f32::EPSILON as f64 * scale,
                "W={w} {name}[{i}]: {g} vs {exact}"
            );
        }
        for (rank, out) in outs.iter().enumerate().skip(1) {
            assert_eq!(
                bits(&out[*name]),
                bits(got),
                "W={w} rank {rank} {name} differs"
            );
        }
    }
}

#[test]
fn ring_all_reduce_sums_match_f64_and_ranks_agree_bitwise() {
    for w in [1, 2, 3] {
        // 64-byte buckets: small tensors packed, long ones split into several buckets.
        check_all_reduce(w, 64, &shapes());
        check_all_reduce(w, 1 << 20, &shapes());
    }
}

#[test]
fn ring_all_reduce_large_tensors_use_pieces_and_buckets() {
    // Chunks larger than a piece (receive-and-add in pieces), several buckets, odd sizes.
    let shapes = vec![
        ("big", vec![300_007]),
        ("mid", vec![65_537]),
        ("small", vec![3]),
    ];
    check_all_reduce(3, 512 << 10, &shapes);
    check_all_reduce(2, 4 << 20, &shapes);
}

#[test]
fn ring_all_reduce_of_nothing_is_fine() {
    let mut rings = ring(3, 1024);
    for r in on_each(&mut rings, |r| r.all_reduce_sum(&mut BTreeMap::new())) {
        r.unwrap();
    }
    // The ring still works afterwards.
    for r in on_each(&mut rings, |r| r.barrier()) {
        r.unwrap();
    }
}

#[test]
fn ring_all_reduce_refuses_other_dtypes() {
    let mut rings = ring(1, 1024);
    let mut m = BTreeMap::new();
    m.insert(
        "x".to_string(),
        Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        rings[0].all_reduce_sum(&mut m),
        Err(CollectiveError::Mismatch { .. })
    ));
}

#[test]
fn ring_broadcast_copies_rank_zero_everywhere() {
    for w in [1, 2, 3] {
        let mut rings = ring(w, 1024);
        let outs = on_each(&mut rings, |r| {
            let mut m = tensors_for(r.rank() + 10, &shapes());
            let big: Vec<f32> = (0..700_001).map(|i| (i * (r.rank() + 1)) as f32).collect();
            m.insert(
                "z.big".into(),
                Tensor::from_vec(big, 700_001, &Device::Cpu).unwrap(),
            );
            let half = Tensor::new(&[1.5f32, -2.25, r.rank() as f32], &Device::Cpu).unwrap();
            m.insert("h.bf16".into(), half.to_dtype(DType::BF16).unwrap());
            r.broadcast(&mut m).map(|()| m)
        });
        let outs: Vec<_> = outs.into_iter().map(|o| o.unwrap()).collect();
        let mut want = tensors_for(10, &shapes());
        let big: Vec<f32> = (0..700_001).map(|i| i as f32).collect();
        want.insert(
            "z.big".into(),
            Tensor::from_vec(big, 700_001, &Device::Cpu).unwrap(),
        );
        for out in &outs {
            for (name, t) in &want {
                assert_eq!(bits(&out[name]), bits(t), "W={w} {name}");
            }
            let h = out["h.bf16"]
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(out["h.bf16"].dtype(), DType::BF16);
            assert_eq!(h, vec![1.5, -2.25, 0.0]);
        }
    }
}

#[test]
fn ring_f64_sums_are_identical_on_every_rank() {
    for w in [1, 2, 3] {
        let mut rings = ring(w, 1024);
        let local = |rank: usize| vec![0.1 * (rank + 1) as f64, 1e16, -(rank as f64), 1.0 / 3.0];
        let outs = on_each(&mut rings, |r| {
            let mut v = local(r.rank());
            r.all_reduce_sum_f64(&mut v).map(|()| v)
        });
        let want: Vec<f64> = (0..4)
            .map(|i| (1..w).fold(local(0)[i], |acc, r| acc + local(r)[i]))
            .collect();
        for out in outs {
            let out = out.unwrap();
            assert_eq!(
                out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "W={w}"
            );
        }
        // An empty vector is fine too.
        for r in on_each(&mut rings, |r| r.all_reduce_sum_f64(&mut [])) {
            r.unwrap();
        }
    }
}

#[test]
fn ring_barrier_waits_for_the_last_rank() {
    let mut rings = ring(3, 1024);
    let start = Instant::now();
    let done = on_each(&mut rings, |r| {
        if r.rank() == 2 {
            std::thread::sleep(Duration::from_millis(300));
        }
        r.barrier().map(|()| start.elapsed())
    });
    for d in done {
        assert!(d.unwrap() >= Duration::from_millis(300));
    }
}

#[test]
fn ring_mismatched_calls_fail_on_both_sides() {
    let mut rings = ring(2, 1024);
    let outs = on_each(&mut rings, |r| {
        let n = 3 + r.rank();
        let mut m = BTreeMap::new();
        m.insert(
            "x".to_string(),
            Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap(),
        );
        r.all_reduce_sum(&mut m)
    });
    for o in outs {
        assert!(matches!(o, Err(CollectiveError::Mismatch { .. })), "{o:?}");
    }
    // The ring is broken for good.
    for o in on_each(&mut rings, |r| r.barrier()) {
        assert!(matches!(o, Err(CollectiveError::Peer { .. })), "{o:?}");
    }
}

#[test]
fn ring_dropped_peer_fails_the_others_within_the_timeout() {
    let timeout = Duration::from_millis(1500);
    let mut rings: Vec<_> = connect_with(3, |_| 1, |_| options(timeout, 1 << 20))
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    drop(rings.pop());
    let start = Instant::now();
    let outs = on_each(&mut rings, |r| {
        let mut m = tensors_for(r.rank(), &[("x", vec![200_000])]);
        r.all_reduce_sum(&mut m)
            .map(drop)
            .map_err(|e| (e, start.elapsed()))
    });
    for o in outs {
        match o {
            Err((CollectiveError::Peer { .. } | CollectiveError::Timeout { .. }, took)) => {
                assert!(took < timeout + Duration::from_millis(700), "took {took:?}")
            }
            other => panic!("expected a peer error or a timeout, got {other:?}"),
        }
    }
}

#[test]
fn ring_cancel_interrupts_a_rank_waiting_for_a_silent_peer() {
    let opts = options(Duration::from_secs(30), 1 << 20);
    let cancel = opts.cancel.clone();
    let mut rings: Vec<_> = connect_with(2, |_| 3, |_| opts.clone())
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let silent = rings.pop();
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        cancel.store(true, Ordering::Relaxed);
        Instant::now()
    });
    let err = rings[0].barrier().unwrap_err();
    let returned = Instant::now();
    let set = setter.join().unwrap();
    assert!(
        matches!(err, CollectiveError::Cancelled { rank: 0, .. }),
        "{err:?}"
    );
    assert!(returned.duration_since(set) < Duration::from_secs(1));
    drop(silent);
}

#[test]
fn ring_refuses_a_wrong_group_tag_and_keeps_accepting() {
    // An impostor presenting another gang's tag to rank 1 is dropped; the real ring forms.
    let (listeners, addrs) = listeners(2);
    let opts = options(Duration::from_secs(5), 1024);
    let impostor = std::thread::spawn({
        let to = addrs[1];
        move || {
            let mut s = TcpStream::connect(to).unwrap();
            s.write_all(&hello_bytes(99, 0, 2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
            let mut buf = [0u8; 24];
            // Refused: the connection is closed without an ack.
            matches!(s.read(&mut buf), Ok(0) | Err(_))
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let rings = std::thread::scope(|s| {
        let hs: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                let (addrs, opts) = (&addrs, opts.clone());
                s.spawn(move || l.connect(rank, addrs, 5, opts))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(impostor.join().unwrap(), "the impostor was acked");
    let mut rings: Vec<_> = rings.into_iter().map(|r| r.unwrap()).collect();
    for r in on_each(&mut rings, |r| r.barrier()) {
        r.unwrap();
    }

    // Two ranks with different tags never connect.
    let timeout = Duration::from_millis(800);
    let start = Instant::now();
    for r in connect_with(2, |rank| rank as u64, |_| options(timeout, 1024)) {
        assert!(
            matches!(r, Err(CollectiveError::Timeout { .. })),
            "{:?}",
            r.err()
        );
    }
    assert!(start.elapsed() < timeout + Duration::from_secs(3));
}

#[test]
fn ring_rejects_a_rank_outside_the_peers() {
    let l = RingListener::bind(LOOPBACK).unwrap();
    let addr = l.local_addr().unwrap();
    let r = l.connect(2, &[addr, addr], 1, options(Duration::from_secs(1), 1024));
    assert!(matches!(r, Err(CollectiveError::Rendezvous(_))));
}
