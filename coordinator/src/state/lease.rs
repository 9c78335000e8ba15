//! The state lock as a lease (docs/architecture.md#the-state-lock). Lease objects live under
//! `STATE/lease/` as `NNNNNNNNNNNN.json`, one per generation; the highest generation is the
//! lock. A coordinator holds the lock by creating the next generation with a create-only put
//! (so of two coordinators racing for it exactly one wins), renews it by rewriting its own
//! object with a later expiry, and releases it on a clean exit by writing an expiry of 0. A new
//! coordinator refuses a lease whose expiry lies in the future and takes over one that has run
//! out (a SIGKILLed or OOM-killed coordinator) by creating the generation above it. A holder
//! that cannot renew stops serving before its own expiry, and stops at once when it sees the
//! generation above its own, so two coordinators never both run on one state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirrorplay_worker::io::{IoError, Location};
use serde::{Deserialize, Serialize};

/// What a lease object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    /// A random id drawn by the coordinator when it starts.
    owner: String,
    pid: u32,
    host: String,
    /// Unix seconds when the holder took the lock.
    started: f64,
    /// Unix milliseconds until which the lease holds; 0 once released.
    expires_ms: u64,
    lease_ms: u64,
    version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("state {url} is in use by a live coordinator (owner {owner}, pid {pid} on host {host}, lease valid for {remaining_s:.1} s more); stop it first, or, if it is dead, start again once its lease has run out")]
    Held {
        url: String,
        owner: String,
        pid: u32,
        host: String,
        remaining_s: f64,
    },
    #[error("state {url}: other coordinators kept taking the lock at the same moment; try again")]
    Contended { url: String },
    #[error("lost the state lock of {url}: {reason}")]
    Lost { url: String, reason: String },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn object_name(generation: u64) -> String {
    format!("{generation:012}.json")
}

fn generation_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    (!digits.contains('/')).then(|| digits.parse().ok())?
}

/// A held lease.
pub struct Lease {
    dir: Location,
    generation: u64,
    record: LeaseRecord,
    duration: Duration,
    /// The expiry last written (Unix ms).
    expires_ms: AtomicU64,
}

impl Lease {
    /// Takes the lock of the state at `root` for `duration`, renewable.
    pub async fn acquire(root: &Location, duration: Duration) -> Result<Lease, LeaseError> {
        remove_legacy_lock(root).await?;
        let dir = root.join("lease");
        let owner = crate::random_id::random_hex(8).map_err(|e| IoError::Fs {
            path: "/dev/urandom".into(),
            source: e,
        })?;
        for _ in 0..3 {
            let generations: Vec<u64> = dir
                .list()
                .await?
                .iter()
                .filter_map(|(name, _)| generation_of(name))
                .collect();
            let next = match generations.iter().max() {
                None => 1,
                Some(&highest) => {
                    let Some(held) = read_record(&dir, highest).await? else {
                        continue; // deleted since the listing: look again
                    };
                    let now = now_ms();
                    if held.expires_ms > now {
                        return Err(LeaseError::Held {
                            url: root.url().to_string(),
                            owner: held.owner,
                            pid: held.pid,
                            host: held.host,
                            remaining_s: (held.expires_ms - now) as f64 / 1000.0,
                        });
                    }
                    if held.expires_ms > 0 {
                        tracing::warn!(
                            owner = %held.owner,
                            pid = held.pid,
                            host = %held.host,
                            expired_s_ago = (now - held.expires_ms) as f64 / 1000.0,
                            "taking over the state lock of a coordinator whose lease ran out"
                        );
                    }
                    highest + 1
                }
            };
            let record = LeaseRecord {
                owner: owner.clone(),
                pid: std::process::id(),
                host: host_name(),
                started: crate::now(),
                expires_ms: now_ms() + duration.as_millis() as u64,
                lease_ms: duration.as_millis() as u64,
                version: env!("CARGO_PKG_VERSION").into(),
            };
            let bytes = serde_json::to_vec_pretty(&record).expect("JSON");
            if dir.join(&object_name(next)).put_create(bytes).await? {
                for old in generations.into_iter().filter(|&g| g < next) {
                    // Best effort: only the highest generation counts.
                    let _ = dir.join(&object_name(old)).delete().await;
                }
                return Ok(Lease {
                    dir,
                    generation: next,
                    expires_ms: AtomicU64::new(record.expires_ms),
                    record,
                    duration,
                });
            }
            // Another coordinator created that generation first: look again (it is live).
        }
        Err(LeaseError::Contended {
            url: root.url().to_string(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.record.owner
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn lost(&self, reason: &str) -> LeaseError {
        LeaseError::Lost {
            url: self.dir.parent().url().to_string(),
            reason: reason.into(),
        }
    }

    /// Fails with `Lost` when another coordinator has taken over.
    async fn check_still_ours(&self) -> Result<(), LeaseError> {
        if self
            .dir
            .join(&object_name(self.generation + 1))
            .exists()
            .await?
        {
            return Err(self.lost("another coordinator took it over"));
        }
        Ok(())
    }

    async fn write(&self, expires_ms: u64) -> Result<(), LeaseError> {
        let record = LeaseRecord {
            expires_ms,
            ..self.record.clone()
        };
        self.dir
            .join(&object_name(self.generation))
            .put(serde_json::to_vec_pretty(&record).expect("JSON"))
            .await?;
        Ok(())
    }

    /// Extends the lease by its duration from now.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        self.check_still_ours().await?;
        let expires = now_ms() + self.duration.as_millis() as u64;
        self.write(expires).await?;
        self.expires_ms.store(expires, Ordering::Relaxed);
        Ok(())
    }

    /// Gives the lock up (clean exit): the next coordinator takes over at once.
    pub async fn release(&self) -> Result<(), LeaseError> {
        self.check_still_ours().await?;
        self.write(0).await
    }

    /// Renews the lease every third of its duration until `stop` fires (never in the middle of
    /// a write, so that a release after it is the last write). When renewing keeps failing
    /// until a sixth of the lease is left, or another coordinator has taken over, it sends why
    /// on `lost` and stops: the holder must stop serving.
    pub fn keep(
        self: &Arc<Self>,
        lost: tokio::sync::oneshot::Sender<LeaseError>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let lease = self.clone();
        tokio::spawn(async move {
            let every = lease.duration / 3;
            let margin = (lease.duration / 6).as_millis() as u64;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stop => return,
                }
                match lease.renew().await {
                    Ok(()) => {}
                    Err(e @ LeaseError::Lost { .. }) => {
                        let _ = lost.send(e);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the state lock");
                        if now_ms() + margin >= lease.expires_ms.load(Ordering::Relaxed) {
                            let _ = lost.send(
                                lease.lost(&format!("could not renew it before it ran out ({e})")),
                            );
                            return;
                        }
                    }
                }
            }
        })
    }
}

/// The record of `generation`, `None` if it is gone. A record that does not parse counts as
/// run out (lease objects are written whole, so this is not a half-written one).
async fn read_record(dir: &Location, generation: u64) -> Result<Option<LeaseRecord>, IoError> {
    let object = dir.join(&object_name(generation));
    match object.read().await {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(object = %object, error = %e, "unreadable lease object; taking it as run out");
            LeaseRecord {
                owner: "unknown".into(),
                pid: 0,
                host: "unknown".into(),
                started: 0.0,
                expires_ms: 0,
                lease_ms: 0,
                version: String::new(),
            }
        }))),
        Err(IoError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Versions before leases wrote `STATE/lock` without an expiry and left it behind when killed;
/// such a lock cannot be told from a dead one, so it is removed (with a warning).
async fn remove_legacy_lock(root: &Location) -> Result<(), IoError> {
    let legacy = root.join("lock");
    match legacy.read().await {
        Ok(bytes) => {
            tracing::warn!(
                holder = %String::from_utf8_lossy(&bytes),
                "removing the lock object of an older mirrorplay version (it has no lease)"
            );
            legacy.delete().await
        }
        Err(IoError::NotFound { .. }) => Ok(()),
        // A directory named `lock` or an unreadable object: leave it alone.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests;
