//! A ring of TCP links between the ranks of a gang on CPUs: rank r sends to rank r+1 and
//! receives from rank r−1 (mod W). All-reduce is reduce-scatter then all-gather over W chunks
//! of each bucket (Patarasuk & Yuan 2009), sending and receiving at once.
//!
//! Placeholder: the implementation lands with the data-parallel work.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::CollectiveError;

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
    /// that presents another tag is refused.
    pub fn connect(
        self,
        rank: usize,
        peers: &[SocketAddr],
        group_tag: u64,
        opts: RingOptions,
    ) -> Result<TcpRing, CollectiveError> {
        let _ = (rank, peers, group_tag, opts);
        Err(CollectiveError::Rendezvous(
            "the TCP ring is not implemented yet".into(),
        ))
    }
}

/// A connected ring.
pub struct TcpRing {
    _private: (),
}

impl super::Collective for TcpRing {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(
        &mut self,
        _: &mut std::collections::BTreeMap<String, candle_core::Tensor>,
    ) -> Result<(), CollectiveError> {
        Err(CollectiveError::Rendezvous("not implemented".into()))
    }
    fn all_reduce_sum_f64(&mut self, _: &mut [f64]) -> Result<(), CollectiveError> {
        Err(CollectiveError::Rendezvous("not implemented".into()))
    }
    fn broadcast(
        &mut self,
        _: &mut std::collections::BTreeMap<String, candle_core::Tensor>,
    ) -> Result<(), CollectiveError> {
        Err(CollectiveError::Rendezvous("not implemented".into()))
    }
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        Err(CollectiveError::Rendezvous("not implemented".into()))
    }
}
