//! TLS on loopback with certificates made here (`rcgen`): the CLI and a worker reach an
//! https:// coordinator with `--tls-ca`, a client without the CA is refused (and the server
//! keeps serving), and with `--tls-client-ca` (mTLS) only clients presenting a certificate of
//! that CA get in; a worker with one runs a job.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::cluster::*;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate for `names` signed by `ca`, written as NAME.pem and NAME.key.
fn leaf(
    dir: &Path,
    file: &str,
    names: &[&str],
    ca: &CertifiedIssuer<KeyPair>,
) -> (PathBuf, PathBuf) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let (c, k) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn pki(dir: &Path) -> Pki {
    let ca = new_ca("mirrorplay test CA");
    let client_ca = new_ca("mirrorplay test worker CA");
    let (server_cert, server_key) = leaf(dir, "server", &["localhost", "127.0.0.1"], &ca);
    let (client_cert, client_key) = leaf(dir, "worker", &["worker-0"], &client_ca);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("client-ca.pem"), client_ca.pem()).unwrap();
    Pki {
        ca: dir.join("ca.pem"),
        server_cert,
        server_key,
        client_ca: dir.join("client-ca.pem"),
        client_cert,
        client_key,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A merge job through `url` with a worker started with `worker_tls` arguments; asserts it
/// succeeds.
fn run_job(dir: &Path, url: &str, client_env: &[(&str, &str)], worker_tls: &[&str]) {
    let _worker = Killed(
        Command::new(worker_bin())
            .args([
                "--coordinator",
                url,
                "--name",
                "tls-worker",
                "--grace-secs",
                "0",
            ])
            .args(worker_tls)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = dir.join("out");
    let config = repo_root().join("configs/merge-task-arithmetic.toml");
    let set = format!("job.output={}", out.display());
    let submitted = run_env(
        &["submit", s(&config), "--set", &set, "--coordinator", url],
        client_env,
    );
    assert!(submitted.status.success(), "{}", stderr(&submitted));
    let job = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .to_string();
    let watched = run_env(&["watch", &job, "--coordinator", url], client_env);
    assert!(watched.status.success(), "{}", stderr(&watched));
    assert!(out.join("model/model.safetensors.index.json").exists());
}

#[test]
fn an_https_coordinator_is_reached_with_its_ca_and_refuses_clients_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let url = format!("https://127.0.0.1:{}", free_port());
    let with_ca = [("MIRRORPLAY_TLS_CA", s(&pki.ca))];
    let _coordinator = spawn_coordinator_with(
        tmp.path(),
        &url,
        &[
            "--tls-cert",
            s(&pki.server_cert),
            "--tls-key",
            s(&pki.server_key),
        ],
        &with_ca,
        None,
    );
    // Without the CA (the system's roots do not know it): the handshake fails, exit 1.
    let o = run(&["status", "--coordinator", &url]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot reach the coordinator"),
        "{}",
        stderr(&o)
    );
    // Another CA's certificate is no better.
    let o = run(&[
        "status",
        "--coordinator",
        &url,
        "--tls-ca",
        s(&pki.client_ca),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // Plain HTTP to a TLS port fails too.
    let plain = url.replace("https://", "http://");
    let o = run(&["status", "--coordinator", &plain]);
    assert!(!o.status.success());
    // TLS options with an http:// URL are a usage error.
    let o = run(&["status", "--coordinator", &plain, "--tls-ca", s(&pki.ca)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("need an https://"), "{}", stderr(&o));
    // The server kept serving through the failed handshakes.
    let o = run_env(&["status", "--coordinator", &url], &with_ca);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn with_a_client_ca_only_clients_with_its_certificates_get_in_and_a_worker_runs_a_job() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let url = format!("https://127.0.0.1:{}", free_port());
    let client_env = [
        ("MIRRORPLAY_TLS_CA", s(&pki.ca)),
        ("MIRRORPLAY_TLS_CERT", s(&pki.client_cert)),
        ("MIRRORPLAY_TLS_KEY", s(&pki.client_key)),
    ];
    let _coordinator = spawn_coordinator_with(
        tmp.path(),
        &url,
        &[
            "--tls-cert",
            s(&pki.server_cert),
            "--tls-key",
            s(&pki.server_key),
            "--tls-client-ca",
            s(&pki.client_ca),
        ],
        &client_env,
        None,
    );
    // The CA but no client certificate: refused.
    let o = run_env(&["status", "--coordinator", &url], &client_env[..1]);
    assert!(!o.status.success(), "a client without a certificate got in");
    // A client certificate of another CA (the server's): refused.
    let (other_cert, other_key) = (pki.server_cert.clone(), pki.server_key.clone());
    let o = run_env(
        &["status", "--coordinator", &url],
        &[
            ("MIRRORPLAY_TLS_CA", s(&pki.ca)),
            ("MIRRORPLAY_TLS_CERT", s(&other_cert)),
            ("MIRRORPLAY_TLS_KEY", s(&other_key)),
        ],
    );
    assert!(!o.status.success(), "a certificate of another CA got in");
    run_job(
        tmp.path(),
        &url,
        &client_env,
        &[
            "--tls-ca",
            s(&pki.ca),
            "--tls-cert",
            s(&pki.client_cert),
            "--tls-key",
            s(&pki.client_key),
        ],
    );
}
