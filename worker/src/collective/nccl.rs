//! Collectives across GPUs with NCCL (through cudarc, as re-exported by candle-core), for a gang
//! of W ranks with one GPU each.
//!
//! An NCCL communicator is not `Send`, so one dedicated OS thread per rank creates it, owns it
//! and runs every collective on it, on its own CUDA stream; [`Nccl`] hands it work over a
//! channel (closures carrying the device tensors) and waits for the reply. The thread never
//! blocks on the GPU: it polls an event for completion and checks the cancel flag and the
//! deadline, and on either it aborts the communicator (`ncclCommAbort`, via cudarc's `Drop` of
//! `Comm`), which unblocks the kernels waiting for a dead peer, and exits: the `Nccl` is then
//! poisoned and every later call fails. The caller also gives up on its own after the timeout
//! plus a grace period (the thread may be stuck in a blocking NCCL call, e.g. the init).
//!
//! Data stays on the GPU: buckets are concatenated on the device (candle), synchronised on the
//! caller's stream, reduced by NCCL into buffers allocated on the communicator's stream, and
//! wrapped back into candle tensors on the caller's device. f64 sums all-gather the ranks'
//! vectors and add them on the host in rank order (identical bits everywhere); the barrier is
//! a one-element all-reduce.
//!
//! Must not choose devices or talk to the coordinator: the worker runtime passes the rank,
//! world size, unique id (from rank 0's [`Nccl::unique_id`]) and device ordinal.

use std::collections::BTreeMap;
use std::ffi::c_char;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};

use super::buckets::{fingerprint, plan};
use super::{Collective, CollectiveError};

/// Default bucket size for the gradient all-reduce (NCCL prefers few large calls).
pub const NCCL_BUCKET_BYTES: usize = 64 << 20;
/// How long the caller waits beyond the timeout for the communicator thread's own verdict.
const GRACE: Duration = Duration::from_secs(5);
/// Length of an NCCL unique id.
const ID_LEN: usize = 128;

/// What the communicator thread owns.
struct CommThread {
    rank: usize,
    world: usize,
    comm: Comm,
    stream: Arc<CudaStream>,
    timeout: Duration,
    cancel: Arc<AtomicBool>,
    /// Set by a job that timed out or was cancelled: the thread aborts the communicator.
    poisoned: std::cell::Cell<bool>,
}

type Job = Box<dyn FnOnce(&CommThread) + Send>;

/// A rank of an NCCL communicator.
pub struct Nccl {
    rank: usize,
    world: usize,
    timeout: Duration,
    cancel: Arc<AtomicBool>,
    bucket_bytes: usize,
    /// None once poisoned (the thread has exited or will).
    jobs: Option<mpsc::Sender<Job>>,
    /// What poisoned it.
    poisoned: Option<String>,
}

fn backend(rank: usize, op: &'static str, what: impl std::fmt::Debug) -> CollectiveError {
    CollectiveError::Backend {
        rank,
        op,
        reason: format!("{what:?}"),
    }
}

impl Nccl {
    /// A fresh NCCL unique id (128 bytes), made by rank 0 for every rendezvous and passed to
    /// every rank's [`Nccl::new`].
    pub fn unique_id() -> Result<Vec<u8>, CollectiveError> {
        let id = Id::new().map_err(|e| backend(0, "nccl unique id", e.0))?;
        Ok(id.internal().iter().map(|&c| c as u8).collect())
    }

    /// Joins the communicator `id` as `rank` of `world` on GPU `device_ordinal`. Blocks until
    /// every rank has joined, at most `timeout` (then [`CollectiveError::Timeout`]; the
    /// initialising thread is left to finish or fail on its own).
    pub fn new(
        rank: usize,
        world: usize,
        id: &[u8],
        device_ordinal: usize,
        timeout: Duration,
        cancel: Arc<AtomicBool>,
    ) -> Result<Nccl, CollectiveError> {
        if world == 0 || rank >= world {
            return Err(CollectiveError::Rendezvous(format!(
                "rank {rank} is not in a gang of {world}"
            )));
        }
        let internal: [c_char; ID_LEN] = id
            .try_into()
            .map(|b: [u8; ID_LEN]| b.map(|c| c as c_char))
            .map_err(|_| {
                CollectiveError::Rendezvous(format!(
                    "an NCCL id has {ID_LEN} bytes, got {}",
                    id.len()
                ))
            })?;
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel::<Result<(), CollectiveError>>();
        let thread_cancel = cancel.clone();
        std::thread::Builder::new()
            .name(format!("nccl-rank{rank}"))
            .spawn(move || {
                let init = || -> Result<CommThread, CollectiveError> {
                    let ctx = CudaContext::new(device_ordinal)
                        .map_err(|e| backend(rank, "nccl init", e))?;
                    ctx.bind_to_thread()
                        .map_err(|e| backend(rank, "nccl init", e))?;
                    let stream = ctx
                        .new_stream()
                        .map_err(|e| backend(rank, "nccl init", e))?;
                    let comm = Comm::from_rank(stream.clone(), rank, world, Id::uninit(internal))
                        .map_err(|e| backend(rank, "nccl init", e.0))?;
                    Ok(CommThread {
                        rank,
                        world,
                        comm,
                        stream,
                        timeout,
                        cancel: thread_cancel,
                        poisoned: std::cell::Cell::new(false),
                    })
                };
                let state = match init() {
                    Ok(s) => {
                        let _ = ready.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = inbox.recv() {
                    job(&state);
                    if state.poisoned.get() {
                        break;
                    }
                }
                let CommThread { comm, rank, .. } = state;
                // Dropping the communicator aborts it (cudarc panics if the abort fails).
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(comm))).is_err() {
                    tracing::error!(rank, "ncclCommAbort failed");
                }
            })
            .map_err(|e| CollectiveError::Rendezvous(format!("spawn the NCCL thread: {e}")))?;
        let nccl = Nccl {
            rank,
            world,
            timeout,
            cancel,
            bucket_bytes: NCCL_BUCKET_BYTES,
            jobs: Some(jobs),
            poisoned: None,
        };
        nccl.await_reply(&started, "nccl init")??;
        tracing::debug!(rank, world, device_ordinal, "NCCL communicator ready");
        Ok(nccl)
    }

    /// Sets the bucket size of the gradient all-reduce.
    pub fn set_bucket_bytes(&mut self, bytes: usize) {
        self.bucket_bytes = bytes.max(4);
    }

    /// Waits for a reply, up to the timeout plus [`GRACE`], noticing the cancel flag.
    fn await_reply<T>(
        &self,
        reply: &mpsc::Receiver<T>,
        op: &'static str,
    ) -> Result<T, CollectiveError> {
        let start = Instant::now();
        let mut cancel_seen: Option<Instant> = None;
        loop {
            match reply.recv_timeout(Duration::from_millis(100)) {
                Ok(v) => return Ok(v),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(CollectiveError::Backend {
                        rank: self.rank,
                        op,
                        reason: "the NCCL thread ended without replying".into(),
                    })
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            // The thread notices a cancel within a millisecond unless it is stuck in NCCL.
            if self.cancel.load(Ordering::Relaxed) {
                let seen = *cancel_seen.get_or_insert_with(Instant::now);
                if seen.elapsed() >= Duration::from_secs(1) {
                    return Err(CollectiveError::Cancelled {
                        rank: self.rank,
                        op,
                    });
                }
            }
            if start.elapsed() >= self.timeout + GRACE {
                return Err(self.timeout_error(op));
            }
        }
    }

    fn timeout_error(&self, op: &'static str) -> CollectiveError {
        // NCCL does not say which rank stalled; name the ring predecessor as a hint.
        CollectiveError::Timeout {
            rank: self.rank,
            peer: (self.rank + self.world - 1) % self.world,
            op,
            timeout: self.timeout,
        }
    }

    /// Runs `f` on the communicator thread and returns its result; a failure poisons this
    /// communicator.
    fn call<T: Send + 'static>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&CommThread) -> Result<T, CollectiveError> + Send + 'static,
    ) -> Result<T, CollectiveError> {
        if let Some(why) = &self.poisoned {
            return Err(CollectiveError::Backend {
                rank: self.rank,
                op,
                reason: format!("the NCCL communicator is poisoned by an earlier error: {why}"),
            });
        }
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |state: &CommThread| {
            let r = f(state);
            if r.is_err() {
                state.poisoned.set(true);
            }
            let _ = tx.send(r);
        });
        let sent = self
            .jobs
            .as_ref()
            .map(|j| j.send(job).is_ok())
            .unwrap_or(false);
        let result = if sent {
            self.await_reply(&rx, op).and_then(|r| r)
        } else {
            Err(CollectiveError::Backend {
                rank: self.rank,
                op,
                reason: "the NCCL thread has exited".into(),
            })
        };
        if let Err(e) = &result {
            tracing::warn!(rank = self.rank, "NCCL communicator poisoned: {e}");
            self.poisoned = Some(e.to_string());
            // Closing the channel ends the thread (which aborts the communicator) once its
            // current job returns.
            self.jobs = None;
        }
        result
    }
}

impl CommThread {
    /// Waits for everything enqueued on the stream so far, polling so that a stalled peer or a
    /// cancel is noticed.
    fn wait(&self, op: &'static str) -> Result<(), CollectiveError> {
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| backend(self.rank, op, e))?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        while !event.is_complete() {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(CollectiveError::Cancelled {
                    rank: self.rank,
                    op,
                });
            }
            if start.elapsed() >= self.timeout {
                return Err(CollectiveError::Timeout {
                    rank: self.rank,
                    peer: (self.rank + self.world - 1) % self.world,
                    op,
                    timeout: self.timeout,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Checks that every rank makes the same call (operation, element count, fingerprint of
    /// names, shapes and dtypes) before any data moves: a tiny all-gather.
    fn agree(&self, op: &'static str, words: [u64; 3]) -> Result<(), CollectiveError> {
        let send = self
            .stream
            .clone_htod(words.as_slice())
            .map_err(|e| backend(self.rank, op, e))?;
        let mut recv = self.alloc::<u64>(3 * self.world, op)?;
        self.comm
            .all_gather(&send, &mut recv)
            .map_err(|e| backend(self.rank, op, e.0))?;
        self.wait(op)?;
        let all = self
            .stream
            .clone_dtoh(&recv)
            .map_err(|e| backend(self.rank, op, e))?;
        match all.chunks_exact(3).position(|theirs| theirs != words) {
            None => Ok(()),
            Some(r) => Err(CollectiveError::Mismatch {
                rank: self.rank,
                reason: format!(
                    "{op}: rank {r} passes {:?} (count, fingerprint), this rank {:?}",
                    &all[3 * r + 1..3 * r + 3],
                    &words[1..]
                ),
            }),
        }
    }

    /// A zeroed buffer of `n` elements on the communicator's stream.
    fn alloc<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
        op: &'static str,
    ) -> Result<CudaSlice<T>, CollectiveError> {
        self.stream
            .alloc_zeros::<T>(n)
            .map_err(|e| backend(self.rank, op, e))
    }
}

/// The CUDA device of `t`, or a mismatch.
fn cuda_device(rank: usize, name: &str, t: &Tensor) -> Result<CudaDevice, CollectiveError> {
    match t.device() {
        Device::Cuda(d) => Ok(d.clone()),
        other => Err(CollectiveError::Mismatch {
            rank,
            reason: format!("tensor `{name}` is on {other:?}; NCCL needs CUDA tensors"),
        }),
    }
}

/// Applies `f` to the device buffer of the contiguous tensor `t` (its elements only).
fn with_view<T: CudaDType, R>(
    t: &Tensor,
    f: impl FnOnce(&candle_core::cuda_backend::cudarc::driver::CudaView<'_, T>) -> R,
) -> Result<R, CollectiveError> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        return Err(candle_core::Error::Msg("NCCL: not a CUDA tensor".into()).into());
    };
    let slice = cs.as_cuda_slice::<T>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("NCCL: non-contiguous tensor".into()))?;
    Ok(f(&slice.slice(start..end)))
}

/// A 1-D tensor on `dev` owning `slice`.
fn wrap<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice) -> Tensor {
    let n = slice.len();
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, n, BackpropOp::none(), false)
}

/// Broadcasts the contiguous 1-D `src` from rank 0 into a new buffer.
fn broadcast_as<T>(
    state: &CommThread,
    src: &Tensor,
    dev: &CudaDevice,
) -> Result<Tensor, CollectiveError>
where
    T: CudaDType + NcclType + DeviceRepr + ValidAsZeroBits,
{
    let mut out = state.alloc::<T>(src.elem_count(), "broadcast")?;
    with_view::<T, _>(src, |view| state.comm.broadcast(Some(view), &mut out, 0))?
        .map_err(|e| backend(state.rank, "broadcast", e.0))?;
    Ok(wrap(out, dev))
}

impl Collective for Nccl {
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
        let rank = self.rank;
        let mut device = None;
        for (name, t) in tensors.iter() {
            super::require_f32(rank, name, t)?;
            device = Some(cuda_device(rank, name, t)?);
        }
        let Some(device) = device else {
            return Ok(());
        };
        let names: Vec<String> = tensors.keys().cloned().collect();
        let flat: Vec<Tensor> = tensors
            .values()
            .map(|t| t.flatten_all())
            .collect::<Result<_, _>>()?;
        let numels: Vec<usize> = flat.iter().map(|t| t.elem_count()).collect();
        let buckets = plan(&numels, (self.bucket_bytes / 4).max(1));
        let inputs = buckets
            .iter()
            .map(|segments| {
                let parts = segments
                    .iter()
                    .map(|s| flat[s.tensor].narrow(0, s.start, s.len()))
                    .collect::<Result<Vec<_>, _>>()?;
                Tensor::cat(&parts, 0)?.contiguous()
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The communicator's stream must see the buckets written.
        Device::Cuda(device.clone()).synchronize()?;
        let dev = device.clone();
        let words = [1, numels.iter().sum::<usize>() as u64, fingerprint(tensors)];
        let outputs = self.call("all_reduce_sum", move |state| {
            state.agree("all_reduce_sum", words)?;
            let mut outs = Vec::with_capacity(inputs.len());
            for b in &inputs {
                let mut out = state.alloc::<f32>(b.elem_count(), "all_reduce_sum")?;
                with_view::<f32, _>(b, |view| {
                    state.comm.all_reduce(view, &mut out, &ReduceOp::Sum)
                })?
                .map_err(|e| backend(state.rank, "all_reduce_sum", e.0))?;
                outs.push(out);
            }
            state.wait("all_reduce_sum")?;
            drop(inputs);
            Ok(outs.into_iter().map(|o| wrap(o, &dev)).collect::<Vec<_>>())
        })?;
        // Reassemble each tensor from its segments (a view when it sits in one bucket).
        let mut pieces: Vec<Vec<Tensor>> = vec![Vec::new(); names.len()];
        for (segments, out) in buckets.iter().zip(&outputs) {
            let mut at = 0;
            for s in segments {
                pieces[s.tensor].push(out.narrow(0, at, s.len())?);
                at += s.len();
            }
        }
        for ((name, parts), numel) in names.iter().zip(pieces).zip(numels) {
            if numel == 0 {
                continue;
            }
            if let Some(t) = tensors.get_mut(name) {
                *t = Tensor::cat(&parts, 0)?.reshape(t.shape())?;
            }
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        if self.world == 1 || values.is_empty() {
            return Ok(());
        }
        let (n, w) = (values.len(), self.world);
        let local = values.to_vec();
        let all = self.call("all_reduce_sum_f64", move |state| {
            let op = "all_reduce_sum_f64";
            state.agree(op, [3, n as u64, 0])?;
            let send = state
                .stream
                .clone_htod(local.as_slice())
                .map_err(|e| backend(state.rank, op, e))?;
            let mut recv = state.alloc::<f64>(n * w, op)?;
            state
                .comm
                .all_gather(&send, &mut recv)
                .map_err(|e| backend(state.rank, op, e.0))?;
            state.wait(op)?;
            state
                .stream
                .clone_dtoh(&recv)
                .map_err(|e| backend(state.rank, op, e))
        })?;
        // Rank order on every rank: the same bits everywhere.
        for (i, v) in values.iter_mut().enumerate() {
            *v = (1..w).fold(all[i], |acc, r| acc + all[r * n + i]);
        }
        Ok(())
    }

    fn broadcast(&mut self, tensors: &mut BTreeMap<String, Tensor>) -> Result<(), CollectiveError> {
        let rank = self.rank;
        let mut device = None;
        for (name, t) in tensors.iter() {
            device = Some(cuda_device(rank, name, t)?);
        }
        let Some(device) = device else {
            return Ok(());
        };
        let names: Vec<String> = tensors.keys().cloned().collect();
        let flat: Vec<Tensor> = tensors
            .values()
            .map(|t| t.flatten_all()?.contiguous())
            .collect::<Result<_, _>>()?;
        Device::Cuda(device.clone()).synchronize()?;
        let dev = device.clone();
        let count = flat.iter().map(|t| t.elem_count() as u64).sum();
        let words = [2, count, fingerprint(tensors)];
        let outputs = self.call("broadcast", move |state| {
            state.agree("broadcast", words)?;
            let mut outs = Vec::with_capacity(flat.len());
            for t in &flat {
                let out = match t.dtype() {
                    DType::F32 => broadcast_as::<f32>(state, t, &dev)?,
                    DType::F64 => broadcast_as::<f64>(state, t, &dev)?,
                    DType::BF16 => broadcast_as::<half::bf16>(state, t, &dev)?,
                    DType::F16 => broadcast_as::<half::f16>(state, t, &dev)?,
                    DType::U8 => broadcast_as::<u8>(state, t, &dev)?,
                    DType::U32 => broadcast_as::<u32>(state, t, &dev)?,
                    DType::I64 => broadcast_as::<i64>(state, t, &dev)?,
                    other => {
                        return Err(CollectiveError::Mismatch {
                            rank: state.rank,
                            reason: format!("NCCL broadcast of {other:?} is not supported"),
                        })
                    }
                };
                outs.push(out);
            }
            state.wait("broadcast")?;
            drop(flat);
            Ok(outs)
        })?;
        for (name, out) in names.iter().zip(outputs) {
            if let Some(t) = tensors.get_mut(name) {
                *t = out.reshape(t.shape())?;
            }
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        if self.world == 1 {
            return Ok(());
        }
        self.call("barrier", |state| {
            let mut one = state.alloc::<f32>(1, "barrier")?;
            state
                .comm
                .all_reduce_in_place(&mut one, &ReduceOp::Sum)
                .map_err(|e| backend(state.rank, "barrier", e.0))?;
            state.wait("barrier")
        })
    }
}
