//! A small client of the Kubernetes API: what `k8s submit|status|logs|delete` need (server-side
//! apply, get, list by label, delete, pod logs), over the HTTP client already in the tree
//! (reqwest with rustls, which the object-store client brings). kube-rs would have done the
//! same, but adding it (with k8s-openapi) rebuilt most of the dependency tree and took more
//! than 20 minutes on the project's 2-core machines; these few JSON requests do not need its
//! typed API.

use std::time::Duration;

use serde_json::Value;

use super::kubeconfig::{Credentials, Exec, Resolved};

/// The field manager of mirrorplay's server-side applies.
pub const FIELD_MANAGER: &str = "mirrorplay";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Credentials or TLS settings that cannot be used (a usage error).
    #[error("{0}")]
    Config(String),
    /// The API server answered with an error status.
    #[error("{method} {path}: {code} {reason}: {message}")]
    Status {
        method: String,
        path: String,
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer (connection refused, TLS failure, ...).
    #[error("{method} {path}: {message}")]
    Transport {
        method: String,
        path: String,
        message: String,
    },
}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { code: 404, .. })
    }
}

pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    /// A client of the resolved kubeconfig context (an exec credential plugin is run now).
    pub async fn connect(cfg: &Resolved) -> Result<Api, ApiError> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(ca) = &cfg.ca {
            let certs = reqwest::Certificate::from_pem_bundle(ca).map_err(|e| {
                ApiError::Config(format!(
                    "{}: the cluster's certificate authority is not PEM: {e}",
                    cfg.source
                ))
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if cfg.insecure {
            tracing::warn!(context = %cfg.context, "insecure-skip-tls-verify: the API server's certificate is not checked");
            builder = builder.danger_accept_invalid_certs(true);
        }
        let credentials = match &cfg.credentials {
            Credentials::Exec(exec) => run_exec(exec, &cfg.source).await?,
            other => other.clone(),
        };
        let mut token = None;
        match credentials {
            Credentials::Token(t) => token = Some(t),
            Credentials::Certificate { cert, key } => {
                let mut pem = cert;
                pem.push(b'\n');
                pem.extend_from_slice(&key);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    ApiError::Config(format!(
                        "{}: the client certificate or key is not usable: {e}",
                        cfg.source
                    ))
                })?;
                builder = builder.identity(identity);
            }
            Credentials::None | Credentials::Exec(_) => {}
        }
        let http = builder
            .build()
            .map_err(|e| ApiError::Config(format!("cannot make an HTTP client: {e}")))?;
        Ok(Api {
            base: cfg.server.clone(),
            http,
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<reqwest::Response, ApiError> {
        let mut r = self
            .request(method.clone(), path)
            .header("Accept", "application/json");
        if let Some((content_type, bytes)) = body {
            r = r.header("Content-Type", content_type).body(bytes);
        }
        let response = r.send().await.map_err(|e| ApiError::Transport {
            method: method.to_string(),
            path: path.to_string(),
            message: error_chain(&e),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        // The API server's errors are `Status` objects: {"reason": "...", "message": "..."}.
        let status: Value = serde_json::from_str(&text).unwrap_or_default();
        Err(ApiError::Status {
            method: method.to_string(),
            path: path.to_string(),
            code,
            reason: status["reason"].as_str().unwrap_or("").to_string(),
            message: status["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| text.trim().chars().take(300).collect()),
        })
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, ApiError> {
        let m = method.to_string();
        let response = self.send(method, path, body).await?;
        read_json(response, &m, path).await
    }

    /// Server-side apply of one object (`PATCH` as `application/apply-patch+yaml`, JSON
    /// being YAML), taking over fields other managers set (`force`).
    pub async fn apply(&self, object: &Value) -> Result<Value, ApiError> {
        let path = format!(
            "{}?fieldManager={FIELD_MANAGER}&force=true",
            object_path(object)?
        );
        let body = serde_json::to_vec(object).expect("JSON");
        self.json(
            reqwest::Method::PATCH,
            &path,
            Some(("application/apply-patch+yaml", body)),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.json(reqwest::Method::GET, path, None).await
    }

    /// Deletes an object; its dependents (a JobSet's Jobs and pods) are deleted in the
    /// background.
    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }))
        .expect("JSON");
        self.json(
            reqwest::Method::DELETE,
            path,
            Some(("application/json", body)),
        )
        .await
        .map(|_| ())
    }

    /// A pod container's log as a stream of chunks (`follow`: until the container ends).
    /// A container's log, followed, each line after its timestamp (`timestamps=true`), from
    /// `since_time` (RFC 3339, whole seconds) when given.
    pub async fn follow_logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        since_time: Option<&str>,
    ) -> Result<reqwest::Response, ApiError> {
        let mut path = format!(
            "/api/v1/namespaces/{namespace}/pods/{pod}/log?container={container}&follow=true&timestamps=true"
        );
        if let Some(since) = since_time {
            path.push_str(&format!("&sinceTime={}", since.replace('+', "%2B")));
        }
        self.send(reqwest::Method::GET, &path, None).await
    }

    pub async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ApiError> {
        let path = format!(
            "/api/v1/namespaces/{namespace}/pods/{pod}/log?container={container}{}",
            if follow { "&follow=true" } else { "" }
        );
        self.send(reqwest::Method::GET, &path, None).await
    }
}

async fn read_json(
    response: reqwest::Response,
    method: &str,
    path: &str,
) -> Result<Value, ApiError> {
    let bytes = response.bytes().await.map_err(|e| ApiError::Transport {
        method: method.into(),
        path: path.into(),
        message: error_chain(&e),
    })?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Transport {
        method: method.into(),
        path: path.into(),
        message: format!("the answer is not JSON: {e}"),
    })
}

/// The REST path of a namespaced object: `/api/v1/...` for the core group, else
/// `/apis/GROUP/VERSION/...`.
pub fn object_path(object: &Value) -> Result<String, ApiError> {
    let api = object["apiVersion"].as_str().unwrap_or("");
    let kind = object["kind"].as_str().unwrap_or("");
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    Ok(format!("{}/{name}", collection_path(api, kind, ns)?))
}

/// The REST path of a kind's objects in a namespace.
pub fn collection_path(api_version: &str, kind: &str, namespace: &str) -> Result<String, ApiError> {
    let plural = match kind {
        "ServiceAccount" => "serviceaccounts",
        "ConfigMap" => "configmaps",
        "PersistentVolumeClaim" => "persistentvolumeclaims",
        "Pod" => "pods",
        "JobSet" => "jobsets",
        other => {
            return Err(ApiError::Config(format!(
                "no REST path known for kind `{other}`"
            )))
        }
    };
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    Ok(format!("{prefix}/namespaces/{namespace}/{plural}"))
}

/// Runs an exec credential plugin and reads its ExecCredential: a token, or a client
/// certificate and key.
async fn run_exec(exec: &Exec, source: &str) -> Result<Credentials, ApiError> {
    let api_version = exec
        .api_version
        .clone()
        .unwrap_or_else(|| "client.authentication.k8s.io/v1".into());
    let info = serde_json::json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": false},
    });
    let mut cmd = tokio::process::Command::new(&exec.command);
    cmd.args(&exec.args)
        .env("KUBERNETES_EXEC_INFO", info.to_string())
        .stdin(std::process::Stdio::null());
    for e in &exec.env {
        cmd.env(&e.name, &e.value);
    }
    let bad = |why: String| {
        ApiError::Config(format!(
            "{source}: the exec credential plugin `{}`: {why}",
            exec.command
        ))
    };
    let out = cmd.output().await.map_err(|e| bad(e.to_string()))?;
    if !out.status.success() {
        return Err(bad(format!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let cred: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| bad(format!("not an ExecCredential: {e}")))?;
    let status = &cred["status"];
    if let Some(t) = status["token"].as_str() {
        return Ok(Credentials::Token(t.to_string()));
    }
    match (
        status["clientCertificateData"].as_str(),
        status["clientKeyData"].as_str(),
    ) {
        (Some(c), Some(k)) => Ok(Credentials::Certificate {
            cert: c.as_bytes().to_vec(),
            key: k.as_bytes().to_vec(),
        }),
        _ => Err(bad(
            "its status holds neither a token nor a client certificate and key".into(),
        )),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_core_and_group_kinds() {
        let jobset = serde_json::json!({"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "j", "namespace": "ml"}});
        assert_eq!(
            object_path(&jobset).unwrap(),
            "/apis/jobset.x-k8s.io/v1alpha2/namespaces/ml/jobsets/j"
        );
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ml"}});
        assert_eq!(
            object_path(&cm).unwrap(),
            "/api/v1/namespaces/ml/configmaps/c"
        );
        let e = collection_path("v1", "Widget", "ml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Widget"), "{e}");
    }
}
