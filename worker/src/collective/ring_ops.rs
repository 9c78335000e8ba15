//! The ring's schedules on flat host buffers: all-reduce of f32 (reduce-scatter then all-gather,
//! Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for clusters of
//! workstations"), all-gather of bytes, and a pipelined broadcast from rank 0.
//!
//! Each step sends one block to rank r+1 while receiving another from rank r−1, on two
//! threads (a scoped sender thread and the caller), so no rank ever waits for a send to finish
//! before it reads, and the ring cannot deadlock on full socket buffers. Blocks of a few KiB
//! or less are written before reading, on one thread: they fit in the kernel's buffers.
//!
//! Must not know about tensors or names: callers flatten and bucket; this moves and adds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::ring_connect::Links;
use super::ring_link::{recv_add, recv_exact, send_all, IoCtx, IoFail};
use super::CollectiveError;

/// Sends of at most this many bytes are written before reading, without a sender thread.
const SMALL: usize = 4096;

/// What a step does with the block it receives.
enum Recv<'b> {
    /// Add the incoming f32s to these (reduce-scatter).
    Add(&'b mut [f32]),
    /// Overwrite these bytes (all-gather, broadcast).
    Copy(&'b mut [u8]),
}

/// One rank's view of a connected ring (W ≥ 2) for the duration of one call.
pub(crate) struct Ring<'a> {
    pub rank: usize,
    pub world: usize,
    pub links: &'a Links,
    pub timeout: Duration,
    pub cancel: &'a AtomicBool,
    pub op: &'static str,
    /// Receive-and-add piece (its length is the piece size).
    pub scratch: &'a mut [f32],
}

impl Ring<'_> {
    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Sends `send` to rank r+1 while receiving exactly `recv.len()` bytes from rank r−1.
    pub fn exchange(&mut self, send: &[u8], recv: &mut [u8]) -> Result<(), CollectiveError> {
        self.step(nonempty(send), nonempty_copy(recv))
    }

    /// Sends `send` to rank r+1 (if any) while receiving into `recv` from rank r−1 (if any).
    fn step(&mut self, send: Option<&[u8]>, recv: Option<Recv<'_>>) -> Result<(), CollectiveError> {
        let abort = AtomicBool::new(false);
        let (rank, op, timeout, cancel) = (self.rank, self.op, self.timeout, self.cancel);
        let ctx = |peer, abort| IoCtx {
            rank,
            peer,
            op,
            timeout,
            cancel,
            abort,
        };
        let send_ctx = ctx(self.next(), &abort);
        let recv_ctx = ctx(self.prev(), &abort);
        let links = self.links;
        let scratch = &mut *self.scratch;
        let mut receive = |recv: Option<Recv<'_>>| match recv {
            None => Ok(()),
            Some(Recv::Add(dst)) => recv_add(&links.prev, dst, scratch, &recv_ctx),
            Some(Recv::Copy(dst)) => recv_exact(&links.prev, dst, &recv_ctx),
        };
        let (sent, received) = match send {
            None => (Ok(()), receive(recv)),
            Some(bytes) if bytes.len() <= SMALL || recv.is_none() => {
                let sent = send_all(&links.next, bytes, &send_ctx);
                let received = if sent.is_ok() { receive(recv) } else { Ok(()) };
                (sent, received)
            }
            Some(bytes) => std::thread::scope(|s| {
                let sender = s.spawn(|| {
                    let r = send_all(&links.next, bytes, &send_ctx);
                    if r.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    r
                });
                let received = receive(recv);
                if received.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                let sent = sender.join().unwrap_or_else(|_| {
                    Err(IoFail::Error(CollectiveError::Mismatch {
                        rank,
                        reason: "the ring's sender thread panicked".into(),
                    }))
                });
                (sent, received)
            }),
        };
        match (sent, received) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(IoFail::Error(e)), _) | (_, Err(IoFail::Error(e))) => Err(e),
            // Only the half that failed sets the abort flag, so one of them holds an error.
            _ => Err(CollectiveError::Mismatch {
                rank,
                reason: "ring step aborted without an error".into(),
            }),
        }
    }

    /// Sums `data` over the ranks in place; afterwards every rank holds the same bits (each
    /// chunk's sum is computed on one rank and copied to the others).
    pub fn all_reduce(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        let w = self.world;
        let n = data.len();
        let bounds = |i: usize| (i * n / w, (i + 1) * n / w);
        let r = self.rank;
        // Reduce-scatter: at step s send chunk r−s, receive and add chunk r−s−1; afterwards
        // chunk r+1 holds the full sum.
        for s in 0..w - 1 {
            let (send, recv) = two_chunks(
                data,
                bounds((r + w - s) % w),
                bounds((r + 2 * w - s - 1) % w),
            );
            self.step(nonempty(bytemuck::cast_slice(send)), nonempty_add(recv))?;
        }
        // All-gather: at step s send chunk r+1−s, receive chunk r−s.
        for s in 0..w - 1 {
            let (send, recv) =
                two_chunks(data, bounds((r + 1 + w - s) % w), bounds((r + w - s) % w));
            self.step(
                nonempty(bytemuck::cast_slice(send)),
                nonempty_copy(bytemuck::cast_slice_mut(recv)),
            )?;
        }
        Ok(())
    }

    /// Gathers every rank's `block` (all the same length) into `out` (`world` blocks, in rank
    /// order).
    pub fn all_gather(&mut self, block: &[u8], out: &mut [u8]) -> Result<(), CollectiveError> {
        let (w, r, len) = (self.world, self.rank, block.len());
        let bounds = |i: usize| (i * len, (i + 1) * len);
        out[r * len..(r + 1) * len].copy_from_slice(block);
        // At step s send block r−s (ours, then the ones received), receive block r−s−1.
        for s in 0..w - 1 {
            let (send, recv) = two_chunks(
                out,
                bounds((r + w - s) % w),
                bounds((r + 2 * w - s - 1) % w),
            );
            self.step(nonempty(send), nonempty_copy(recv))?;
        }
        Ok(())
    }

    /// Replaces `data` by rank 0's along the chain 0 → 1 → … → W−1, pipelined in pieces of
    /// `piece` bytes: a middle rank forwards piece k−1 while receiving piece k.
    pub fn broadcast(&mut self, data: &mut [u8], piece: usize) -> Result<(), CollectiveError> {
        let (w, r) = (self.world, self.rank);
        if data.is_empty() {
            return Ok(());
        }
        if r == 0 {
            return self.step(Some(data), None);
        }
        if r == w - 1 {
            return self.step(None, Some(Recv::Copy(data)));
        }
        let piece = piece.max(1);
        let pieces = data.len().div_ceil(piece);
        let len = data.len();
        let bounds = |k: usize| (k * piece, ((k + 1) * piece).min(len));
        for k in 0..=pieces {
            if k == 0 {
                let (a, b) = bounds(0);
                self.step(None, Some(Recv::Copy(&mut data[a..b])))?;
            } else if k == pieces {
                let (a, b) = bounds(k - 1);
                self.step(Some(&data[a..b]), None)?;
            } else {
                let (send, recv) = two_chunks(data, bounds(k - 1), bounds(k));
                self.step(Some(send), Some(Recv::Copy(recv)))?;
            }
        }
        Ok(())
    }
}

fn nonempty(b: &[u8]) -> Option<&[u8]> {
    (!b.is_empty()).then_some(b)
}

fn nonempty_add(b: &mut [f32]) -> Option<Recv<'_>> {
    (!b.is_empty()).then_some(Recv::Add(b))
}

fn nonempty_copy(b: &mut [u8]) -> Option<Recv<'_>> {
    (!b.is_empty()).then_some(Recv::Copy(b))
}

/// The disjoint ranges `a` (shared) and `b` (mutable) of `data`.
fn two_chunks<T>(data: &mut [T], a: (usize, usize), b: (usize, usize)) -> (&[T], &mut [T]) {
    if a.1 <= b.0 {
        let (lo, hi) = data.split_at_mut(b.0);
        (&lo[a.0..a.1], &mut hi[..b.1 - b.0])
    } else {
        let (lo, hi) = data.split_at_mut(a.0);
        (&hi[..a.1 - a.0], &mut lo[b.0..b.1])
    }
}
