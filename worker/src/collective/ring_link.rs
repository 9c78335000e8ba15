//! Blocking socket I/O for the TCP ring that never blocks for long: every read and write runs
//! under a short socket timeout ([`POLL`]) in a loop that checks the gang's cancel flag, a
//! per-step abort flag (set when the other half of a step failed) and a deadline that restarts
//! whenever bytes move. EOF and socket errors become [`CollectiveError::Peer`], a silent peer
//! [`CollectiveError::Timeout`], a set cancel flag [`CollectiveError::Cancelled`].
//!
//! Must not know about tensors, buckets or the ring's schedule: it moves bytes (and adds f32s
//! as they arrive) on one socket.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::CollectiveError;

/// The socket timeout of every blocking read or write: how quickly a blocked call notices the
/// cancel and abort flags.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// Sets the options every ring socket gets: no Nagle delay, [`POLL`] timeouts both ways, and
/// large kernel buffers (best effort: a refused size only costs bandwidth).
pub(crate) fn configure(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(POLL))?;
    Ok(())
}

/// Who is doing what on which link: the context of every error, and the flags and deadline
/// that bound a blocking call.
#[derive(Clone, Copy)]
pub(crate) struct IoCtx<'a> {
    pub rank: usize,
    /// The rank at the other end of the socket.
    pub peer: usize,
    pub op: &'static str,
    /// A call fails once no byte has moved for this long.
    pub timeout: Duration,
    /// The gang's cancel flag.
    pub cancel: &'a AtomicBool,
    /// Set when the other half of the current step failed; this half then stops quietly.
    pub abort: &'a AtomicBool,
}

/// How a blocking call ended when it did not succeed.
pub(crate) enum IoFail {
    /// A real error to report.
    Error(CollectiveError),
    /// The abort flag was set: the other half of the step has the error to report.
    Aborted,
}

impl From<CollectiveError> for IoFail {
    fn from(e: CollectiveError) -> Self {
        IoFail::Error(e)
    }
}

impl IoCtx<'_> {
    fn peer_error(&self, source: std::io::Error) -> IoFail {
        IoFail::Error(CollectiveError::Peer {
            rank: self.rank,
            peer: self.peer,
            op: self.op,
            source,
        })
    }

    /// After a timed-out poll: fails if cancelled, aborted or past the progress deadline.
    fn check(&self, last_progress: Instant) -> Result<(), IoFail> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(IoFail::Error(CollectiveError::Cancelled {
                rank: self.rank,
                op: self.op,
            }));
        }
        if self.abort.load(Ordering::Relaxed) {
            return Err(IoFail::Aborted);
        }
        if last_progress.elapsed() >= self.timeout {
            return Err(IoFail::Error(CollectiveError::Timeout {
                rank: self.rank,
                peer: self.peer,
                op: self.op,
                timeout: self.timeout,
            }));
        }
        Ok(())
    }

    /// Classifies an I/O error: `Ok` to retry (a poll timeout or an interrupt), else the
    /// failure.
    fn retry_or_fail(&self, e: std::io::Error, last_progress: Instant) -> Result<(), IoFail> {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => self.check(last_progress),
            ErrorKind::Interrupted => Ok(()),
            _ => Err(self.peer_error(e)),
        }
    }
}

/// Writes all of `bytes`.
pub(crate) fn send_all(
    mut stream: &TcpStream,
    mut bytes: &[u8],
    ctx: &IoCtx,
) -> Result<(), IoFail> {
    let mut last_progress = Instant::now();
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => {
                return Err(ctx.peer_error(std::io::Error::new(
                    ErrorKind::WriteZero,
                    "the socket accepted no bytes",
                )))
            }
            Ok(n) => {
                bytes = &bytes[n..];
                last_progress = Instant::now();
            }
            Err(e) => ctx.retry_or_fail(e, last_progress)?,
        }
    }
    Ok(())
}

/// Fills all of `buf`.
pub(crate) fn recv_exact(
    mut stream: &TcpStream,
    buf: &mut [u8],
    ctx: &IoCtx,
) -> Result<(), IoFail> {
    let mut filled = 0;
    let mut last_progress = Instant::now();
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(ctx.peer_error(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "the peer closed the link with {} of {} bytes outstanding",
                        buf.len() - filled,
                        buf.len()
                    ),
                )))
            }
            Ok(n) => {
                filled += n;
                last_progress = Instant::now();
            }
            Err(e) => ctx.retry_or_fail(e, last_progress)?,
        }
    }
    Ok(())
}

/// Receives `dst.len()` f32s (native byte order) and adds them to `dst`, piece by piece
/// through `scratch` (whose length is the piece size, at least 1), so that adding overlaps the
/// network.
pub(crate) fn recv_add(
    stream: &TcpStream,
    dst: &mut [f32],
    scratch: &mut [f32],
    ctx: &IoCtx,
) -> Result<(), IoFail> {
    if scratch.is_empty() && !dst.is_empty() {
        return Err(IoFail::Error(CollectiveError::Mismatch {
            rank: ctx.rank,
            reason: "the ring's receive buffer is empty".into(),
        }));
    }
    for out in dst.chunks_mut(scratch.len().max(1)) {
        let buf = &mut scratch[..out.len()];
        recv_exact(stream, bytemuck::cast_slice_mut(buf), ctx)?;
        add_assign(out, buf);
    }
    Ok(())
}

/// `dst[i] += src[i]`, written so that the compiler vectorises it.
#[inline]
pub(crate) fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}
