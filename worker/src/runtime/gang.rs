//! A gang rank's start: the rendezvous through the coordinator's `JoinGroup` and the collective
//! it yields. On CPUs (and CUDA builds without NCCL) each rank binds a TCP listener, announces
//! "ip:port" and joins the ring of every rank's address; with NCCL on a CUDA device rank 0
//! announces a fresh unique id and every rank builds its communicator from it. A fresh
//! listener or id per epoch means a stale rank can never join a new gang.
//! Must not know what the task computes.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use mirrorplay_proto::v1::{JoinGroupRequest, JoinGroupResponse, Task};

use crate::collective::tcp_ring::{RingListener, RingOptions};
use crate::collective::{Collective, CollectiveError};
use crate::connect::CoordinatorRpc;

/// Gradients are flattened into ring buckets of at most this many bytes.
const BUCKET_BYTES: usize = 32 << 20;

/// Who this rank is and how to reach the coordinator.
pub struct GangContext<'a> {
    pub client: CoordinatorRpc,
    pub worker_id: &'a str,
    pub task: &'a Task,
    /// The address other ranks reach this worker's ring listener on.
    pub ring_ip: IpAddr,
    pub timeout: Duration,
    pub cancel: Arc<AtomicBool>,
}

/// Joins the gang of `ctx.task` and returns this rank's collective.
pub async fn join(
    ctx: GangContext<'_>,
    device: &candle_core::Device,
) -> Result<Box<dyn Collective>, CollectiveError> {
    #[cfg(feature = "nccl")]
    if device.is_cuda() {
        return join_nccl(ctx, device).await;
    }
    let _ = device;
    join_ring(ctx).await
}

async fn join_ring(mut ctx: GangContext<'_>) -> Result<Box<dyn Collective>, CollectiveError> {
    let listener = RingListener::bind(ctx.ring_ip)
        .map_err(|e| CollectiveError::Rendezvous(format!("cannot bind {}: {e}", ctx.ring_ip)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CollectiveError::Rendezvous(e.to_string()))?;
    let group = rendezvous(&mut ctx, addr.to_string().into_bytes()).await?;
    let peers = group
        .members
        .iter()
        .map(|m| {
            String::from_utf8_lossy(&m.endpoint)
                .parse::<SocketAddr>()
                .map_err(|e| {
                    CollectiveError::Rendezvous(format!(
                        "rank {} announced a bad ring address {:?}: {e}",
                        m.rank,
                        String::from_utf8_lossy(&m.endpoint)
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rank = ctx.task.rank as usize;
    let opts = RingOptions {
        timeout: ctx.timeout,
        cancel: ctx.cancel.clone(),
        bucket_bytes: BUCKET_BYTES,
    };
    let tag = group_tag(&ctx.task.task_id, group.epoch);
    let ring = tokio::task::spawn_blocking(move || listener.connect(rank, &peers, tag, opts))
        .await
        .map_err(|e| CollectiveError::Rendezvous(format!("ring connect panicked: {e}")))??;
    tracing::info!(
        rank,
        world_size = group.world_size,
        epoch = group.epoch,
        "joined the ring"
    );
    Ok(Box::new(ring))
}

#[cfg(feature = "nccl")]
async fn join_nccl(
    mut ctx: GangContext<'_>,
    device: &candle_core::Device,
) -> Result<Box<dyn Collective>, CollectiveError> {
    use crate::collective::nccl::Nccl;
    let endpoint = if ctx.task.rank == 0 {
        Nccl::unique_id()?
    } else {
        vec![]
    };
    let group = rendezvous(&mut ctx, endpoint).await?;
    let id = group
        .members
        .first()
        .map(|m| m.endpoint.clone())
        .unwrap_or_default();
    let ordinal = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
        other => {
            return Err(CollectiveError::Rendezvous(format!(
                "NCCL needs a CUDA device, found {other:?}"
            )))
        }
    };
    let nccl = Nccl::new(
        ctx.task.rank as usize,
        group.world_size as usize,
        &id,
        ordinal,
        ctx.timeout,
        ctx.cancel.clone(),
    )?;
    tracing::info!(
        rank = ctx.task.rank,
        world_size = group.world_size,
        epoch = group.epoch,
        "joined the NCCL group"
    );
    Ok(Box::new(nccl))
}

/// Announces this rank's endpoint and waits for the whole gang.
async fn rendezvous(
    ctx: &mut GangContext<'_>,
    endpoint: Vec<u8>,
) -> Result<JoinGroupResponse, CollectiveError> {
    let request = JoinGroupRequest {
        worker_id: ctx.worker_id.to_string(),
        task_id: ctx.task.task_id.clone(),
        attempt: ctx.task.attempt,
        rank: ctx.task.rank,
        endpoint,
        wait_ms: ctx.timeout.as_millis() as u64,
    };
    let group = ctx
        .client
        .join_group(request)
        .await
        .map_err(|s| CollectiveError::Rendezvous(s.message().to_string()))?
        .into_inner();
    if group.members.len() != group.world_size as usize || group.world_size != ctx.task.group_size {
        return Err(CollectiveError::Rendezvous(format!(
            "the coordinator returned {} members for a gang of {}",
            group.members.len(),
            ctx.task.group_size
        )));
    }
    Ok(group)
}

/// Identifies one epoch of one gang on the wire (FNV-1a of the task id, mixed with the epoch).
pub fn group_tag(task_id: &str, epoch: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task_id.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    crate::rng::mix(h ^ (epoch as u64).rotate_left(32))
}

/// The local address the coordinator sees this worker on: the source address of a route to
/// the coordinator's host (no packet is sent), so that other ranks can reach the ring
/// listener. Loopback when the coordinator is local or cannot be resolved.
pub async fn ring_ip_for(coordinator: &str) -> IpAddr {
    let fallback = IpAddr::from([127, 0, 0, 1]);
    let Ok(url) = url::Url::parse(coordinator) else {
        return fallback;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return fallback;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(mut addrs) = tokio::net::lookup_host((host, port)).await else {
        return fallback;
    };
    let Some(target) = addrs.next() else {
        return fallback;
    };
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    std::net::UdpSocket::bind(bind)
        .and_then(|s| {
            s.connect(target)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_by_task_and_epoch() {
        let a = group_tag("job/train", 1);
        assert_ne!(a, group_tag("job/train", 2));
        assert_ne!(a, group_tag("job/other", 1));
        assert_eq!(a, group_tag("job/train", 1));
    }

    #[tokio::test]
    async fn a_local_coordinator_gives_a_loopback_ring_address() {
        assert!(ring_ip_for("http://127.0.0.1:50051").await.is_loopback());
        assert!(ring_ip_for("not a url").await.is_loopback());
    }
}
