//! Durable coordinator state under `--state` (a directory or an object-store URL): the lock, a
//! renewed lease (`lease`), and one record per job (`jobs/<id>/job.pb`, the `Job` message, plus
//! the submitted config), read back when a coordinator starts so that it resumes unfinished
//! jobs (docs/architecture.md#state-and-outputs).

mod lease;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorplay_proto::v1::Job;
use mirrorplay_worker::io::{IoError, Location};
use prost::Message;

use lease::Lease;
pub use lease::LeaseError;

pub struct StateStore {
    root: Location,
    lease: Arc<Lease>,
    /// The renewing task and what stops it.
    renewer: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("job record {url} does not decode: {reason}")]
    BadRecord { url: String, reason: String },
}

/// A job read back from the state.
pub struct StoredJob {
    pub job: Job,
    pub config_toml: String,
}

impl StateStore {
    /// Opens the state and takes its lock for `lease` (renewed by `keep_lease`).
    pub async fn open(url: &str, lease: Duration) -> Result<StateStore, StateError> {
        let root = Location::parse(url)?;
        let lease = Lease::acquire(&root, lease).await?;
        tracing::info!(state = %root, owner = lease.owner(), generation = lease.generation(), "took the state lock");
        Ok(StateStore {
            root,
            lease: Arc::new(lease),
            renewer: Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        self.root.url()
    }

    /// Renews the lock in the background; `lost` gets why if it cannot be kept (the
    /// coordinator must then stop).
    pub fn keep_lease(&self, lost: tokio::sync::oneshot::Sender<LeaseError>) {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let handle = self.lease.keep(lost, stopped);
        let old = self
            .renewer
            .lock()
            .expect("renewer lock")
            .replace((stop, handle));
        if let Some((stop, _)) = old {
            let _ = stop.send(());
        }
    }

    pub async fn save_job(&self, job: &Job) -> Result<(), StateError> {
        self.root
            .join(&format!("jobs/{}/job.pb", job.job_id))
            .put(job.encode_to_vec())
            .await?;
        Ok(())
    }

    pub async fn save_config(&self, job_id: &str, config_toml: &str) -> Result<(), StateError> {
        self.root
            .join(&format!("jobs/{job_id}/config.toml"))
            .put(config_toml.as_bytes().to_vec())
            .await?;
        Ok(())
    }

    /// Every job record under the state, in job-id order. A job whose config was not written
    /// (a coordinator killed between the two writes) has an empty config.
    pub async fn load_jobs(&self) -> Result<Vec<StoredJob>, StateError> {
        let jobs = self.root.join("jobs");
        let mut out = Vec::new();
        for (name, _) in jobs.list().await? {
            let Some(id) = name.strip_suffix("/job.pb") else {
                continue;
            };
            let record = jobs.join(&name);
            let job = Job::decode(record.read().await?).map_err(|e| StateError::BadRecord {
                url: record.url().to_string(),
                reason: e.to_string(),
            })?;
            let config_toml = match jobs.join(&format!("{id}/config.toml")).read().await {
                Ok(bytes) => String::from_utf8_lossy(&bytes).to_string(),
                Err(IoError::NotFound { .. }) => String::new(),
                Err(e) => return Err(e.into()),
            };
            out.push(StoredJob { job, config_toml });
        }
        Ok(out)
    }

    /// Stops renewing and releases the lock (clean shutdown).
    pub async fn release(&self) -> Result<(), StateError> {
        let renewer = self.renewer.lock().expect("renewer lock").take();
        if let Some((stop, handle)) = renewer {
            let _ = stop.send(());
            let _ = handle.await;
        }
        self.lease.release().await?;
        Ok(())
    }
}
