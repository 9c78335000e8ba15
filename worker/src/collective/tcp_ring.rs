//! A ring of TCP links between the ranks of a gang on CPUs: rank r sends to rank r+1 and
//! receives from rank r−1 (mod W). All-reduce is reduce-scatter then all-gather over W chunks
//! of each bucket (Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for clusters
//! of workstations"), sending and receiving at once: each rank sends and receives
//! 2(W−1)/W of the data, whatever W.
//!
//! Every call starts by exchanging a header with the neighbours (operation, call number,
//! element count, fingerprint of names, shapes and dtypes), so ranks that disagree fail with
//! [`CollectiveError::Mismatch`] instead of exchanging garbage. After any error the ring is
//! broken: its sockets are shut down (the neighbours notice at once) and every later call
//! fails; the gang is re-formed by the coordinator.
//!
//! Data travels in the host's byte order: a gang's ranks run the same binary on the same
//! architecture. Must not know about models or the coordinator; the socket I/O is in
//! `ring_link`, the handshake in `ring_connect`, the schedules in `ring_ops`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use super::buckets::{fingerprint, plan, Segment};
use super::ring_connect::{connect_ring, Identity, Links};
use super::ring_ops::Ring;
use super::{Collective, CollectiveError};

/// Received f32s are added in pieces of this many bytes (overlapping the adds with the
/// network); tuned with `benches/ring_allreduce.rs`.
pub const PIECE_BYTES: usize = 64 << 10;
/// A middle rank of a broadcast forwards in pieces of this many bytes.
const BROADCAST_PIECE_BYTES: usize = 1 << 20;

/// What every call on the ring obeys.
#[derive(Debug, Clone)]
pub struct RingOptions {
    /// A call that makes no progress for this long fails with [`CollectiveError::Timeout`].
    pub timeout: Duration,
    /// Set by the worker runtime when the gang is ended; calls notice it within ~100 ms.
    pub cancel: Arc<AtomicBool>,
    /// Gradients are flattened into buckets of at most this many bytes.
    pub bucket_bytes: usize,
}

/// The listening half of a rank's ring link, bound before the rendezvous so that its address
/// can be announced to the other ranks.
pub struct RingListener {
    listener: TcpListener,
}

impl RingListener {
    /// Binds an ephemeral port on `ip` (use the address the other ranks can reach).
    pub fn bind(ip: IpAddr) -> std::io::Result<Self> {
        Ok(RingListener {
            listener: TcpListener::bind(SocketAddr::new(ip, 0))?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connects rank `rank` to the ring of `peers` (indexed by rank; `peers[rank]` is this
    /// listener's announced address). `group_tag` identifies the gang and its epoch: a peer
    /// that presents another tag is refused. Connecting is retried until `opts.timeout`.
    pub fn connect(
        self,
        rank: usize,
        peers: &[SocketAddr],
        group_tag: u64,
        opts: RingOptions,
    ) -> Result<TcpRing, CollectiveError> {
        let world = peers.len();
        if world == 0 || rank >= world || world > u32::MAX as usize {
            return Err(CollectiveError::Rendezvous(format!(
                "rank {rank} is not in a ring of {world} peers"
            )));
        }
        let links = if world == 1 {
            None
        } else {
            let me = Identity {
                rank,
                world,
                tag: group_tag,
            };
            let deadline = Instant::now() + opts.timeout;
            let next = peers[(rank + 1) % world];
            let links = connect_ring(self.listener, me, next, deadline, &opts.cancel)?;
            tracing::debug!(rank, world, %next, "ring connected");
            Some(links)
        };
        Ok(TcpRing {
            rank,
            world,
            links,
            scratch: vec![0.0; PIECE_BYTES / 4],
            bucket: Vec::new(),
            seq: 0,
            broken: None,
            opts,
        })
    }
}

/// A connected ring.
pub struct TcpRing {
    rank: usize,
    world: usize,
    opts: RingOptions,
    /// None when the world size is 1.
    links: Option<Links>,
    /// The receive-and-add piece, reused by every call.
    scratch: Vec<f32>,
    /// Small tensors are packed here (reused by every call).
    bucket: Vec<f32>,
    /// Calls made so far: part of every header, so a rank that skipped a call is caught.
    seq: u64,
    /// The operation that broke the ring, if any.
    broken: Option<&'static str>,
}

/// The operations, as numbered in headers.
#[derive(Clone, Copy)]
enum Op {
    AllReduce = 1,
    AllReduceF64 = 2,
    Broadcast = 3,
    Barrier = 4,
    Raw = 5,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all_reduce_sum",
            Op::AllReduceF64 => "all_reduce_sum_f64",
            Op::Broadcast => "broadcast",
            Op::Barrier => "barrier",
            Op::Raw => "all_reduce_slice",
        }
    }
}

impl TcpRing {
    /// The ring for one call (None when alone), after checking that it is not broken.
    fn ring(&mut self, op: Op) -> Result<Option<Ring<'_>>, CollectiveError> {
        if let Some(earlier) = self.broken {
            return Err(CollectiveError::Peer {
                rank: self.rank,
                peer: (self.rank + 1) % self.world,
                op: op.name(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!("the ring broke during an earlier {earlier}"),
                ),
            });
        }
        Ok(self.links.as_ref().map(|links| Ring {
            rank: self.rank,
            world: self.world,
            links,
            timeout: self.opts.timeout,
            cancel: &self.opts.cancel,
            op: op.name(),
            scratch: &mut self.scratch,
        }))
    }

    /// Runs `body` on the ring after the header exchange; any error breaks the ring.
    fn call<T>(
        &mut self,
        op: Op,
        count: u64,
        print: u64,
        body: impl FnOnce(&mut Ring<'_>, &mut Vec<f32>) -> Result<T, CollectiveError>,
    ) -> Result<Option<T>, CollectiveError> {
        self.seq += 1;
        let (rank, seq) = (self.rank, self.seq);
        let mut bucket = std::mem::take(&mut self.bucket);
        let result = match self.ring(op)? {
            None => Ok(None),
            Some(mut ring) => check_header(&mut ring, rank, [op as u64, seq, count, print])
                .and_then(|()| body(&mut ring, &mut bucket).map(Some)),
        };
        self.bucket = bucket;
        if let Err(e) = &result {
            self.break_ring(op, e);
        }
        result
    }

    fn break_ring(&mut self, op: Op, e: &CollectiveError) {
        tracing::warn!(rank = self.rank, world = self.world, "ring broken: {e}");
        self.broken = Some(op.name());
        if let Some(links) = &self.links {
            let _ = links.next.shutdown(Shutdown::Both);
            let _ = links.prev.shutdown(Shutdown::Both);
        }
    }

    /// Sets the receive-and-add piece size (default [`PIECE_BYTES`]; for tuning).
    pub fn set_piece_bytes(&mut self, bytes: usize) {
        self.scratch = vec![0.0; (bytes / 4).max(1)];
    }

    /// Sums a flat f32 buffer over the ranks in place (the all-reduce of one bucket, without
    /// tensors; the benchmark's entry point).
    pub fn all_reduce_slice(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        let bucket_elems = (self.opts.bucket_bytes / 4).max(1);
        self.call(Op::Raw, data.len() as u64, 0, |ring, _| {
            for part in data.chunks_mut(bucket_elems) {
                ring.all_reduce(part)?;
            }
            Ok(())
        })
        .map(drop)
    }
}

/// Sends this rank's header to rank r+1 and checks rank r−1's against it.
fn check_header(ring: &mut Ring<'_>, rank: usize, header: [u64; 4]) -> Result<(), CollectiveError> {
    let mut mine = [0u8; 32];
    for (b, v) in mine.chunks_exact_mut(8).zip(header) {
        b.copy_from_slice(&v.to_le_bytes());
    }
    let mut theirs = [0u8; 32];
    ring.exchange(&mine, &mut theirs)?;
    if mine == theirs {
        return Ok(());
    }
    let field = |b: &[u8; 32], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    let [op, seq, count, print] = [0, 1, 2, 3].map(|i| field(&theirs, i));
    Err(CollectiveError::Mismatch {
        rank,
        reason: format!(
            "the previous rank's call differs: op {op} call {seq} count {count} \
             fingerprint {print:#x}, here op {} call {} count {} fingerprint {:#x}",
            header[0], header[1], header[2], header[3]
        ),
    })
}

/// Reduces one bucket: in place when it is one range of one tensor, else packed into `packed`.
fn reduce_bucket(
    ring: &mut Ring<'_>,
    host: &mut [Vec<f32>],
    segments: &[Segment],
    packed: &mut Vec<f32>,
) -> Result<(), CollectiveError> {
    if let [s] = segments {
        return ring.all_reduce(&mut host[s.tensor][s.start..s.end]);
    }
    packed.clear();
    for s in segments {
        packed.extend_from_slice(&host[s.tensor][s.start..s.end]);
    }
    ring.all_reduce(packed)?;
    let mut at = 0;
    for s in segments {
        host[s.tensor][s.start..s.end].copy_from_slice(&packed[at..at + s.len()]);
        at += s.len();
    }
    Ok(())
}

impl Collective for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(
        &mut self,
        tensors: &mut BTreeMap<String, Tensor>,
    ) -> Result<(), CollectiveError> {
        for (name, t) in tensors.iter() {
            super::require_f32(self.rank, name, t)?;
        }
        if self.world == 1 {
            return Ok(());
        }
        let numels: Vec<usize> = tensors.values().map(|t| t.elem_count()).collect();
        let total: usize = numels.iter().sum();
        let print = fingerprint(tensors);
        let buckets = plan(&numels, (self.opts.bucket_bytes / 4).max(1));
        let mut host = tensors
            .values()
            .map(|t| t.flatten_all()?.to_vec1::<f32>())
            .collect::<Result<Vec<_>, _>>()?;
        self.call(Op::AllReduce, total as u64, print, |ring, packed| {
            for segments in &buckets {
                reduce_bucket(ring, &mut host, segments, packed)?;
            }
            Ok(())
        })?;
        for (t, v) in tensors.values_mut().zip(host) {
            *t = Tensor::from_vec(v, t.shape(), t.device())?;
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        let (n, w) = (values.len(), self.world);
        let gathered = self.call(Op::AllReduceF64, n as u64, 0, |ring, _| {
            let mut all = vec![0f64; n * w];
            ring.all_gather(
                bytemuck::cast_slice(values),
                bytemuck::cast_slice_mut(&mut all),
            )?;
            Ok(all)
        })?;
        if let Some(all) = gathered {
            // Rank order on every rank: the same bits everywhere.
            for (i, v) in values.iter_mut().enumerate() {
                *v = (1..w).fold(all[i], |acc, r| acc + all[r * n + i]);
            }
        }
        Ok(())
    }

    fn broadcast(&mut self, tensors: &mut BTreeMap<String, Tensor>) -> Result<(), CollectiveError> {
        for (name, t) in tensors.iter() {
            broadcast_dtype(self.rank, name, t)?;
        }
        if self.world == 1 {
            return Ok(());
        }
        let total: usize = tensors.values().map(|t| t.elem_count()).sum();
        let print = fingerprint(tensors);
        let rank = self.rank;
        self.call(Op::Broadcast, total as u64, print, |ring, _| {
            for (name, t) in tensors.iter_mut() {
                broadcast_tensor(ring, rank, name, t)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        let w = self.world;
        self.call(Op::Barrier, 0, 0, |ring, _| {
            // A token from every rank has reached every rank once the all-gather is done.
            let mut all = vec![0u8; w];
            ring.all_gather(&[1], &mut all)
        })?;
        Ok(())
    }
}

/// Fails unless `broadcast_tensor` takes `t`'s dtype.
fn broadcast_dtype(rank: usize, name: &str, t: &Tensor) -> Result<(), CollectiveError> {
    match t.dtype() {
        DType::F32 | DType::F64 | DType::BF16 | DType::F16 | DType::U8 | DType::U32 => Ok(()),
        other => Err(CollectiveError::Mismatch {
            rank,
            reason: format!("tensor `{name}` is {other:?}; broadcast takes float, u8 or u32"),
        }),
    }
}

/// Replaces `t` by rank 0's: f32 and f64 travel as they are, the other dtypes whose values
/// f64 represents exactly (bf16, f16, u8, u32) as f64.
fn broadcast_tensor(
    ring: &mut Ring<'_>,
    rank: usize,
    name: &str,
    t: &mut Tensor,
) -> Result<(), CollectiveError> {
    let piece = BROADCAST_PIECE_BYTES;
    match t.dtype() {
        DType::F32 => {
            let mut v = t.flatten_all()?.to_vec1::<f32>()?;
            ring.broadcast(bytemuck::cast_slice_mut(&mut v), piece)?;
            if rank != 0 {
                *t = Tensor::from_vec(v, t.shape(), t.device())?;
            }
        }
        DType::F64 | DType::BF16 | DType::F16 | DType::U8 | DType::U32 => {
            let dtype = t.dtype();
            let mut v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            ring.broadcast(bytemuck::cast_slice_mut(&mut v), piece)?;
            if rank != 0 {
                *t = Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(dtype)?;
            }
        }
        _ => broadcast_dtype(rank, name, t)?,
    }
    Ok(())
}
