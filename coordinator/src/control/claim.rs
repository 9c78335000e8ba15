//! A job's output (docs/architecture.md#state-and-outputs): `OUTPUT/job.json` is the claim and
//! the provenance. `submit` only checks the output (another live job writing there is refused
//! whatever `overwrite` says; another job's finished outputs are refused unless `overwrite`);
//! the job claims it when it starts, after its plan succeeded, so a job that fails before
//! (a missing input) leaves nothing behind. With `overwrite`, the claim first removes the
//! files the previous job's provenance lists as its outputs, so two jobs' files never sit side
//! by side. The final provenance lists every file the job left under its output.

use std::sync::atomic::Ordering;

use mirrorplay_proto::v1::JobSpec;
use mirrorplay_worker::io::{IoError, Location};

use super::{is_terminal, kind_name, ControlError, ControlPlane, JobHandle, JobLog};
use crate::drivers::Log;

const MARKER: &str = "job.json";

/// The previous job's claim at an output.
struct Previous {
    job_id: String,
    /// Files it wrote, relative to the output (None: its provenance lists none).
    outputs: Option<Vec<String>>,
}

/// Reads the claim at `output`, if any.
async fn previous(output: &Location) -> Result<Option<Previous>, IoError> {
    let bytes = match output.join(MARKER).read().await {
        Ok(bytes) => bytes,
        Err(IoError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let value = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
    let job_id = value
        .get("job_id")
        .and_then(|j| j.as_str())
        .unwrap_or("unknown")
        .to_string();
    let outputs = value.get("outputs").and_then(|o| o.as_array()).map(|list| {
        list.iter()
            .filter_map(|f| f.as_str().map(String::from))
            .collect()
    });
    Ok(Some(Previous { job_id, outputs }))
}

/// A listed output path that stays inside the output (no `..`, not absolute, not the claim).
fn inside(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && rel != MARKER
        && rel.split('/').all(|part| !part.is_empty() && part != "..")
}

fn held_by(output: &Location, other: &str) -> ControlError {
    ControlError::FailedPrecondition(format!(
        "output {output} already holds the outputs of job `{other}`; choose another output or set `job.overwrite = true`"
    ))
}

impl ControlPlane {
    /// Refuses an output another live job of this coordinator writes to, or that holds another
    /// job's outputs (unless `overwrite`). Writes nothing.
    pub(super) async fn check_output(&self, spec: &JobSpec, id: &str) -> Result<(), ControlError> {
        let output = Location::parse(&spec.output)
            .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        let live = self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .filter(|h| h.id != id && !is_terminal(h.state()))
            .find(|h| {
                h.job()
                    .spec
                    .and_then(|s| Location::parse(&s.output).ok())
                    .is_some_and(|o| o.url() == output.url())
            })
            .map(|h| h.id.clone());
        if let Some(other) = live {
            return Err(ControlError::FailedPrecondition(format!(
                "output {output} is the output of job `{other}`, which is still running; wait for it or cancel it, or choose another output"
            )));
        }
        match previous(&output).await {
            Ok(Some(p)) if p.job_id != id && !spec.overwrite => Err(held_by(&output, &p.job_id)),
            Ok(_) => Ok(()),
            Err(e) => Err(ControlError::InvalidArgument(format!(
                "cannot use output {output}: {e}"
            ))),
        }
    }

    /// Claims the job's output as it starts: checks it again, removes the previous job's
    /// listed outputs (with `overwrite`), and writes the claim. Err: why the job fails.
    pub(super) async fn claim(&self, handle: &JobHandle, spec: &JobSpec) -> Result<(), String> {
        let output = Location::parse(&spec.output).map_err(|e| e.to_string())?;
        let previous = previous(&output)
            .await
            .map_err(|e| format!("cannot use output {output}: {e}"))?;
        let ours = previous.as_ref().is_some_and(|p| p.job_id == handle.id);
        if let Some(p) = previous.as_ref().filter(|_| !ours) {
            if !spec.overwrite {
                return Err(held_by(&output, &p.job_id).to_string());
            }
            self.remove_previous(handle, &output, p).await?;
        }
        // Files already there that are not this job's (not a rerun of it) are never listed as
        // its outputs, so that a later overwrite leaves them alone.
        if !ours {
            let there = output
                .list()
                .await
                .map_err(|e| format!("cannot use output {output}: {e}"))?;
            *handle.foreign.lock().expect("foreign lock") =
                there.into_iter().map(|(rel, _)| rel).collect();
        }
        let json = self.provenance(spec, &handle.id, "running", &[], &[], "");
        output
            .join(MARKER)
            .put(json.into_bytes())
            .await
            .map_err(|e| format!("cannot write to output {output}: {e}"))?;
        handle.claimed.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Removes the files job `p` listed as its outputs (`overwrite`).
    async fn remove_previous(
        &self,
        handle: &JobHandle,
        output: &Location,
        p: &Previous,
    ) -> Result<(), String> {
        let Some(files) = &p.outputs else {
            JobLog(handle).warn(format!(
                "overwriting the outputs of job `{}` under {output}: its job.json lists no outputs, so its files are left in place",
                p.job_id
            ));
            return Ok(());
        };
        let files: Vec<&String> = files.iter().filter(|f| inside(f)).collect();
        for file in &files {
            output
                .join(file)
                .delete()
                .await
                .map_err(|e| format!("cannot remove the previous job's output: {e}"))?;
        }
        JobLog(handle).info(format!(
            "overwrite: removed the {} file(s) job `{}` wrote under {output}",
            files.len(),
            p.job_id
        ));
        Ok(())
    }

    pub(super) fn provenance(
        &self,
        spec: &JobSpec,
        id: &str,
        state: &str,
        inputs: &[(String, u64, Option<String>)],
        outputs: &[String],
        config_toml: &str,
    ) -> String {
        let config_json = toml::from_str::<toml::Table>(config_toml)
            .ok()
            .and_then(|t| serde_json::to_value(t).ok());
        let value = serde_json::json!({
            "job_id": id,
            "name": spec.name,
            "kind": kind_name(spec),
            "state": state,
            "output": spec.output,
            "mirrorplay_version": env!("CARGO_PKG_VERSION"),
            "git_hash": env!("MIRRORPLAY_GIT_HASH"),
            "config_toml": config_toml,
            "config": config_json,
            "inputs": inputs.iter().map(|(url, size, etag)| serde_json::json!({"url": url, "size": size, "etag": etag})).collect::<Vec<_>>(),
            "outputs": outputs,
            "time": crate::now(),
        });
        let mut text = serde_json::to_string_pretty(&value).expect("JSON");
        text.push('\n');
        text
    }

    /// Rewrites the claim with the job's final state, its inputs and the files it left under
    /// its output; a job that never claimed its output (it failed or was cancelled before)
    /// writes nothing there.
    pub(super) async fn write_final_provenance(&self, handle: &JobHandle, state: &str) {
        if !handle.claimed.load(Ordering::Relaxed) {
            return;
        }
        let spec = handle.job().spec.unwrap_or_default();
        let inputs = handle
            .driver
            .try_lock()
            .ok()
            .and_then(|d| d.as_ref().map(|d| d.inputs()))
            .unwrap_or_default();
        let foreign = handle.foreign.lock().expect("foreign lock").clone();
        let written = async {
            let output = Location::parse(&spec.output)?;
            let outputs: Vec<String> = output
                .list()
                .await?
                .into_iter()
                .map(|(rel, _)| rel)
                .filter(|rel| rel != MARKER && !foreign.contains(rel))
                .collect();
            let text = self.provenance(
                &spec,
                &handle.id,
                state,
                &inputs,
                &outputs,
                &handle.config_toml,
            );
            output.join(MARKER).put(text.into_bytes()).await
        }
        .await;
        if let Err(e) = written {
            tracing::error!(job_id = %handle.id, error = %e, "cannot write job.json");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inside;

    #[test]
    fn only_paths_inside_the_output_are_removed() {
        for ok in ["model/model.safetensors", "metrics/part-1.jsonl", "a"] {
            assert!(inside(ok), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "a//b", "job.json"] {
            assert!(!inside(bad), "{bad}");
        }
    }
}
