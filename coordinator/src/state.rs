//! Durable coordinator state under `--state` (a directory or an object-store URL): a lock
//! object written with `PutMode::Create`, so two coordinators cannot share one state, and one
//! record per job (`jobs/<id>/job.pb`, the `Job` message, plus the submitted config).
//! Resuming unfinished jobs after a restart will read these records (planned, not built:
//! docs/architecture.md#planned-not-built).

use mirrorplay_proto::v1::Job;
use mirrorplay_worker::io::{IoError, Location};
use prost::Message;

pub struct StateStore {
    root: Location,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state {url} is in use by another coordinator (lock object {url}/lock: {holder}); stop it, or remove the lock if it is dead")]
    Locked { url: String, holder: String },
    #[error(transparent)]
    Io(#[from] IoError),
}

impl StateStore {
    /// Opens the state and takes its lock.
    pub async fn open(url: &str) -> Result<StateStore, StateError> {
        let root = Location::parse(url)?;
        let lock = root.join("lock");
        let holder = serde_json::json!({
            "pid": std::process::id(),
            "started": crate::now(),
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string();
        if !lock.put_create(holder.into_bytes()).await? {
            let holder = lock
                .read()
                .await
                .map(|b| String::from_utf8_lossy(&b).to_string())
                .unwrap_or_default();
            return Err(StateError::Locked {
                url: root.url().to_string(),
                holder,
            });
        }
        Ok(StateStore { root })
    }

    pub fn url(&self) -> &str {
        self.root.url()
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

    /// Releases the lock (clean shutdown).
    pub async fn release(&self) -> Result<(), StateError> {
        self.root.join("lock").delete().await?;
        Ok(())
    }
}
