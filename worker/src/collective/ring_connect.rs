//! Forming the TCP ring: rank r connects to rank r+1's listener while accepting rank r−1 on its
//! own (both at once, or every rank would wait for an accept that its predecessor only does
//! after its own connect). Each new link starts with a handshake, hello then ack, carrying
//! (magic, group tag, sender rank, world size); a connection whose hello is wrong (another
//! gang, a stale epoch, another rank, garbage) is dropped and the listener keeps accepting, and
//! a connector whose hello was refused retries, both until the deadline.
//!
//! Must not send anything after the handshake: the links it returns carry only collective
//! traffic.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::ring_link::{configure, recv_exact, send_all, IoCtx, IoFail};
use super::CollectiveError;

/// "MPRING01": the first 8 bytes of every hello and ack.
const MAGIC: u64 = u64::from_le_bytes(*b"MPRING01");
/// magic u64, group tag u64, sender rank u32, world size u32 (little-endian).
const HELLO_LEN: usize = 24;
/// How long an accepted connection may take to present its hello before it is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between connection attempts, and between polls of the listener.
const RETRY: Duration = Duration::from_millis(50);
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// The two sockets of a rank: it sends to `next` (rank r+1) and receives from `prev` (r−1).
pub(crate) struct Links {
    pub next: TcpStream,
    pub prev: TcpStream,
}

/// Who this rank is and which gang it belongs to.
#[derive(Clone, Copy)]
pub(crate) struct Identity {
    pub rank: usize,
    pub world: usize,
    pub tag: u64,
}

impl Identity {
    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }
}

fn encode(tag: u64, rank: usize, world: usize) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[..8].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&tag.to_le_bytes());
    b[16..20].copy_from_slice(&(rank as u32).to_le_bytes());
    b[20..24].copy_from_slice(&(world as u32).to_le_bytes());
    b
}

/// Why a hello or ack is not the expected one, or None when it is.
fn refusal(b: &[u8; HELLO_LEN], tag: u64, rank: usize, world: usize) -> Option<String> {
    let word = |r: std::ops::Range<usize>| {
        let mut w = [0u8; 8];
        w[..r.len()].copy_from_slice(&b[r]);
        u64::from_le_bytes(w)
    };
    let (magic, got_tag, got_rank, got_world) =
        (word(0..8), word(8..16), word(16..20), word(20..24));
    if magic != MAGIC {
        Some("not a mirrorplay ring handshake".into())
    } else if got_tag != tag {
        Some(format!("group tag {got_tag:#x}, expected {tag:#x}"))
    } else if got_rank != rank as u64 || got_world != world as u64 {
        Some(format!(
            "rank {got_rank} of {got_world}, expected rank {rank} of {world}"
        ))
    } else {
        None
    }
}

/// Connects the ring links of `me`: returns once both its links have completed a handshake,
/// or fails at `deadline` ([`CollectiveError::Timeout`]), on cancel, or on a socket error of
/// the listener.
pub(crate) fn connect_ring(
    listener: TcpListener,
    me: Identity,
    next_addr: SocketAddr,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<Links, CollectiveError> {
    let abort = AtomicBool::new(false);
    let (next, prev) = std::thread::scope(|s| {
        let connector = s.spawn(|| {
            let r = connect_next(me, next_addr, deadline, cancel, &abort);
            if r.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            r
        });
        let prev = accept_prev(&listener, me, deadline, cancel, &abort);
        if prev.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        let next = connector.join().unwrap_or_else(|_| {
            Err(IoFail::Error(CollectiveError::Rendezvous(
                "the ring's connecting thread panicked".into(),
            )))
        });
        (next, prev)
    });
    match (next, prev) {
        (Ok(next), Ok(prev)) => Ok(Links { next, prev }),
        (Err(IoFail::Error(e)), _) | (_, Err(IoFail::Error(e))) => Err(e),
        _ => Err(CollectiveError::Rendezvous(
            "ring connection aborted".into(),
        )),
    }
}

fn deadline_check(
    me: Identity,
    peer: usize,
    deadline: Instant,
    timeout: Duration,
    cancel: &AtomicBool,
    abort: &AtomicBool,
) -> Result<(), IoFail> {
    if cancel.load(Ordering::Relaxed) {
        return Err(IoFail::Error(CollectiveError::Cancelled {
            rank: me.rank,
            op: "connect",
        }));
    }
    if abort.load(Ordering::Relaxed) {
        return Err(IoFail::Aborted);
    }
    if Instant::now() >= deadline {
        return Err(IoFail::Error(CollectiveError::Timeout {
            rank: me.rank,
            peer,
            op: "connect",
            timeout,
        }));
    }
    Ok(())
}

/// Dials rank r+1 until it acknowledges our hello.
fn connect_next(
    me: Identity,
    addr: SocketAddr,
    deadline: Instant,
    cancel: &AtomicBool,
    abort: &AtomicBool,
) -> Result<TcpStream, IoFail> {
    let peer = me.next();
    let timeout = deadline.saturating_duration_since(Instant::now());
    loop {
        deadline_check(me, peer, deadline, timeout, cancel, abort)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(1));
        match TcpStream::connect_timeout(&addr, attempt) {
            Ok(stream) => match handshake_out(&stream, me, peer, left, cancel, abort) {
                Ok(()) => return Ok(stream),
                Err(IoFail::Error(e @ CollectiveError::Cancelled { .. })) => {
                    return Err(IoFail::Error(e))
                }
                Err(IoFail::Aborted) => return Err(IoFail::Aborted),
                Err(IoFail::Error(e)) => {
                    tracing::debug!(rank = me.rank, peer, %addr, "ring handshake refused: {e}")
                }
            },
            Err(e) => tracing::trace!(rank = me.rank, peer, %addr, "ring connect: {e}"),
        }
        std::thread::sleep(RETRY.min(deadline.saturating_duration_since(Instant::now())));
    }
}

fn handshake_out(
    stream: &TcpStream,
    me: Identity,
    peer: usize,
    left: Duration,
    cancel: &AtomicBool,
    abort: &AtomicBool,
) -> Result<(), IoFail> {
    configure(stream).map_err(|source| {
        IoFail::Error(CollectiveError::Peer {
            rank: me.rank,
            peer,
            op: "connect",
            source,
        })
    })?;
    let ctx = IoCtx {
        rank: me.rank,
        peer,
        op: "connect",
        timeout: left,
        cancel,
        abort,
    };
    send_all(stream, &encode(me.tag, me.rank, me.world), &ctx)?;
    let mut ack = [0u8; HELLO_LEN];
    recv_exact(stream, &mut ack, &ctx)?;
    match refusal(&ack, me.tag, peer, me.world) {
        None => Ok(()),
        Some(why) => Err(IoFail::Error(CollectiveError::Mismatch {
            rank: me.rank,
            reason: format!("ring ack from rank {peer}: {why}"),
        })),
    }
}

/// Accepts connections until one presents the hello of rank r−1 of this gang, and acks it.
fn accept_prev(
    listener: &TcpListener,
    me: Identity,
    deadline: Instant,
    cancel: &AtomicBool,
    abort: &AtomicBool,
) -> Result<TcpStream, IoFail> {
    let peer = me.prev();
    let timeout = deadline.saturating_duration_since(Instant::now());
    let listen_error = |source| {
        IoFail::Error(CollectiveError::Peer {
            rank: me.rank,
            peer,
            op: "accept",
            source,
        })
    };
    listener.set_nonblocking(true).map_err(listen_error)?;
    loop {
        deadline_check(me, peer, deadline, timeout, cancel, abort)?;
        match listener.accept() {
            Ok((stream, from)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match handshake_in(&stream, me, peer, left.min(HELLO_TIMEOUT), cancel, abort) {
                    Ok(()) => return Ok(stream),
                    Err(IoFail::Error(e @ CollectiveError::Cancelled { .. })) => {
                        return Err(IoFail::Error(e))
                    }
                    Err(IoFail::Aborted) => return Err(IoFail::Aborted),
                    Err(IoFail::Error(e)) => {
                        tracing::warn!(rank = me.rank, %from, "ring refused a connection: {e}")
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Per-connection failures (ECONNABORTED, EMFILE) are transient: keep going.
                tracing::warn!(rank = me.rank, "ring accept: {e}");
                std::thread::sleep(RETRY);
            }
        }
    }
}

fn handshake_in(
    stream: &TcpStream,
    me: Identity,
    peer: usize,
    timeout: Duration,
    cancel: &AtomicBool,
    abort: &AtomicBool,
) -> Result<(), IoFail> {
    let peer_error = |source| {
        IoFail::Error(CollectiveError::Peer {
            rank: me.rank,
            peer,
            op: "accept",
            source,
        })
    };
    // Accepted sockets do not inherit the listener's non-blocking mode on Linux, but other
    // systems differ: make it explicit.
    stream.set_nonblocking(false).map_err(peer_error)?;
    configure(stream).map_err(peer_error)?;
    let ctx = IoCtx {
        rank: me.rank,
        peer,
        op: "accept",
        timeout,
        cancel,
        abort,
    };
    let mut hello = [0u8; HELLO_LEN];
    recv_exact(stream, &mut hello, &ctx)?;
    if let Some(why) = refusal(&hello, me.tag, peer, me.world) {
        return Err(IoFail::Error(CollectiveError::Mismatch {
            rank: me.rank,
            reason: format!("ring hello: {why}"),
        }));
    }
    send_all(stream, &encode(me.tag, me.rank, me.world), &ctx)
}

#[cfg(test)]
pub(crate) fn hello_bytes(tag: u64, rank: usize, world: usize) -> [u8; HELLO_LEN] {
    encode(tag, rank, world)
}
