//! The user's kubeconfig, as kubectl reads it: `--kubeconfig FILE`, else every file of
//! `$KUBECONFIG` (merged: the first file naming a cluster, user or context wins, and the first
//! `current-context` set), else `~/.kube/config`. One context is resolved into what a client
//! needs: the API server URL, its CA, and the user's credentials (a bearer token, a token file,
//! a client certificate and key, or an `exec` credential plugin, as cloud providers' kubeconfigs
//! use). Relative file names resolve against the kubeconfig's own directory.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

/// A kubeconfig that cannot be used; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KubeconfigError(pub String);

fn err(message: impl Into<String>) -> KubeconfigError {
    KubeconfigError(message.into())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    current_context: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    item: Option<T>,
    /// Which file it came from (relative paths resolve against its directory).
    #[serde(skip)]
    dir: PathBuf,
    #[serde(skip)]
    file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: Option<String>,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    exec: Option<Exec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exec {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<ExecEnv>,
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExecEnv {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
struct Context {
    cluster: String,
    user: Option<String>,
    namespace: Option<String>,
}

/// How the client authenticates.
#[derive(Debug, Clone)]
pub enum Credentials {
    None,
    Token(String),
    /// A client certificate and its key, PEM.
    Certificate {
        cert: Vec<u8>,
        key: Vec<u8>,
    },
    /// An exec credential plugin, run for each command (`api::Api` runs it).
    Exec(Exec),
}

/// One context, resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where it was read from (for messages).
    pub source: String,
    pub context: String,
    pub server: String,
    /// The CA to trust, PEM (else the system roots).
    pub ca: Option<Vec<u8>>,
    pub insecure: bool,
    pub credentials: Credentials,
    /// The context's namespace, if it names one.
    pub namespace: Option<String>,
}

/// The files to read: `explicit`, else `$KUBECONFIG`'s, else `~/.kube/config`.
pub fn paths(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return std::env::split_paths(&v).collect();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    vec![home.join(".kube").join("config")]
}

/// Reads the kubeconfig and resolves `context` (default: its current-context).
pub fn load(explicit: Option<&Path>, context: Option<&str>) -> Result<Resolved, KubeconfigError> {
    let files = paths(explicit);
    let source = files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut merged = File::default();
    let mut read_any = false;
    for path in &files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // kubectl skips $KUBECONFIG entries that do not exist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => continue,
            Err(e) => {
                return Err(err(format!(
                    "{}: cannot read the kubeconfig: {e}",
                    path.display()
                )))
            }
        };
        read_any = true;
        let mut file: File = serde_norway::from_str(&text)
            .map_err(|e| err(format!("{}: not a kubeconfig: {e}", path.display())))?;
        mark(&mut file.clusters, path);
        mark(&mut file.users, path);
        mark(&mut file.contexts, path);
        merged.clusters.extend(file.clusters);
        merged.users.extend(file.users);
        merged.contexts.extend(file.contexts);
        if merged.current_context.as_deref().unwrap_or("").is_empty() {
            merged.current_context = file.current_context;
        }
    }
    if !read_any {
        return Err(err(format!(
            "no kubeconfig at {source}: give --kubeconfig FILE or set KUBECONFIG"
        )));
    }
    let name = match context {
        Some(c) => c.to_string(),
        None => merged
            .current_context
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| err(format!("{source}: no current-context; give --context NAME")))?,
    };
    let ctx = find(&merged.contexts, &name)
        .ok_or_else(|| err(format!("{source}: context `{name}` is not in `contexts`")))?;
    let (ctx_item, ctx_file) = (
        ctx.item
            .as_ref()
            .ok_or_else(|| err(format!("{}: context `{name}` is empty", ctx.file.display())))?,
        &ctx.file,
    );
    let cluster = find(&merged.clusters, &ctx_item.cluster).ok_or_else(|| {
        err(format!(
            "{}: context `{name}` names cluster `{}`, which is not in `clusters`",
            ctx_file.display(),
            ctx_item.cluster
        ))
    })?;
    let c = cluster.item.clone().ok_or_else(|| {
        err(format!(
            "{}: cluster `{}` is empty",
            cluster.file.display(),
            cluster.name
        ))
    })?;
    let at = |field: &str| {
        format!(
            "{}: cluster `{}`: {field}",
            cluster.file.display(),
            cluster.name
        )
    };
    let server = c
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err(at("no `server`")))?;
    let url = url::Url::parse(&server).map_err(|e| err(at(&format!("`server` {server}: {e}"))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(err(at(&format!("`server` {server} is not an http(s) URL"))));
    }
    let ca = match (&c.certificate_authority_data, &c.certificate_authority) {
        (Some(data), _) => Some(decode(data, &at("certificate-authority-data"))?),
        (None, Some(file)) => Some(read(&cluster.dir.join(file), &at("certificate-authority"))?),
        (None, None) => None,
    };
    let credentials = match &ctx_item.user {
        None => Credentials::None,
        Some(user_name) => {
            let user = find(&merged.users, user_name).ok_or_else(|| {
                err(format!(
                    "{}: context `{name}` names user `{user_name}`, which is not in `users`",
                    ctx_file.display()
                ))
            })?;
            credentials(user, user_name)?
        }
    };
    Ok(Resolved {
        source,
        context: name,
        server: server.trim_end_matches('/').to_string(),
        ca,
        insecure: c.insecure_skip_tls_verify,
        credentials,
        namespace: ctx_item.namespace.clone().filter(|n| !n.is_empty()),
    })
}

/// Records which file each entry came from.
fn mark<T>(items: &mut [Named<T>], path: &Path) {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    for x in items {
        x.dir = dir.clone();
        x.file = path.to_path_buf();
    }
}

fn find<'a, T>(items: &'a [Named<T>], name: &str) -> Option<&'a Named<T>> {
    items.iter().find(|x| x.name == name)
}

fn credentials(user: &Named<User>, name: &str) -> Result<Credentials, KubeconfigError> {
    let u = user.item.clone().unwrap_or_default();
    let at = |field: &str| format!("{}: user `{name}`: {field}", user.file.display());
    if let Some(t) = u.token.filter(|t| !t.is_empty()) {
        return Ok(Credentials::Token(t));
    }
    if let Some(f) = u.token_file {
        let t = read(&user.dir.join(f), &at("tokenFile"))?;
        return Ok(Credentials::Token(
            String::from_utf8_lossy(&t).trim().to_string(),
        ));
    }
    let cert = match (&u.client_certificate_data, &u.client_certificate) {
        (Some(d), _) => Some(decode(d, &at("client-certificate-data"))?),
        (None, Some(f)) => Some(read(&user.dir.join(f), &at("client-certificate"))?),
        _ => None,
    };
    let key = match (&u.client_key_data, &u.client_key) {
        (Some(d), _) => Some(decode(d, &at("client-key-data"))?),
        (None, Some(f)) => Some(read(&user.dir.join(f), &at("client-key"))?),
        _ => None,
    };
    match (cert, key) {
        (Some(cert), Some(key)) => return Ok(Credentials::Certificate { cert, key }),
        (Some(_), None) => return Err(err(at("a client certificate without a client key"))),
        (None, Some(_)) => return Err(err(at("a client key without a client certificate"))),
        (None, None) => {}
    }
    if let Some(exec) = u.exec {
        return Ok(Credentials::Exec(exec));
    }
    Ok(Credentials::None)
}

fn decode(data: &str, what: &str) -> Result<Vec<u8>, KubeconfigError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| err(format!("{what}: not base64: {e}")))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, KubeconfigError> {
    std::fs::read(path).map_err(|e| err(format!("{what}: cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_token_context_resolves_and_relative_files_are_the_kubeconfigs() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("ca.pem"), "PEM").unwrap();
        let p = write(
            tmp.path(),
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: c\n  cluster:\n    server: https://k.example:6443/\n    certificate-authority: ca.pem\nusers:\n- name: u\n  user:\n    token: t0k\ncontexts:\n- name: a\n  context:\n    cluster: c\n    user: u\n    namespace: ml\n",
        );
        let r = load(Some(&p), None).unwrap();
        assert_eq!(r.server, "https://k.example:6443");
        assert_eq!(r.ca.as_deref(), Some(&b"PEM"[..]));
        assert_eq!(r.namespace.as_deref(), Some("ml"));
        assert!(matches!(r.credentials, Credentials::Token(ref t) if t == "t0k"));
    }

    #[test]
    fn broken_kubeconfigs_name_the_file_and_the_field() {
        let tmp = tempfile::tempdir().unwrap();
        let base = "clusters:\n- name: c\n  cluster:\n    server: https://k:6443\ncontexts:\n- name: a\n  context:\n    cluster: c\n    user: nobody\n";
        let p = write(tmp.path(), base);
        let e = load(Some(&p), Some("a")).unwrap_err().to_string();
        assert!(e.contains("config") && e.contains("user `nobody`"), "{e}");
        let e = load(Some(&p), None).unwrap_err().to_string();
        assert!(e.contains("current-context"), "{e}");
        let e = load(Some(&p), Some("zzz")).unwrap_err().to_string();
        assert!(e.contains("context `zzz`"), "{e}");
        let p = write(tmp.path(), "clusters: 7\n");
        let e = load(Some(&p), Some("a")).unwrap_err().to_string();
        assert!(e.contains("not a kubeconfig"), "{e}");
        let e = load(Some(&tmp.path().join("missing")), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
