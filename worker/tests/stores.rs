//! Every scheme the README promises (`file://`, `s3://`, `gs://`, `az://`) parses through
//! `Location::parse` (object_store's `parse_url_opts` with the environment) and reaches its own
//! client: a request from that client arrives at a loopback endpoint that answers 403, and the
//! error comes back from the client (not "unsupported scheme"), without leaking the secret.
//! One test in its own binary: it sets environment variables.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use mirrorplay_worker::io::Location;

const SECRET: &str = "do-not-log-this-secret";

/// A loopback HTTP endpoint answering 403 to everything; returns its URL and the request lines.
fn forbidding_endpoint() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let text = String::from_utf8_lossy(&buf);
            log.lock()
                .unwrap()
                .push(text.lines().next().unwrap_or("").to_string());
            let _ = s.write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, seen)
}

#[tokio::test]
async fn every_scheme_reaches_its_client() {
    let (endpoint, seen) = forbidding_endpoint();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "mirrorplay-test"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("GOOGLE_BASE_URL", endpoint.as_str()),
        ("GOOGLE_BEARER_TOKEN", SECRET),
        ("GOOGLE_ALLOW_HTTP", "true"),
        ("AZURE_STORAGE_ACCOUNT_NAME", "mirrorplayacct"),
        ("AZURE_STORAGE_TOKEN", SECRET),
        ("AZURE_STORAGE_ENDPOINT", endpoint.as_str()),
        ("AZURE_ALLOW_HTTP", "true"),
    ] {
        std::env::set_var(k, v);
    }
    // (URL, store, what the request line names: GCS encodes the object name).
    let cases = [
        (
            "s3://bucket/x/model.safetensors",
            "AmazonS3",
            "/bucket/x/model.safetensors",
        ),
        (
            "gs://bucket/x/model.safetensors",
            "GoogleCloudStorage",
            "/bucket/x%2Fmodel",
        ),
        (
            "az://container/x/model.safetensors",
            "MicrosoftAzure",
            "/container/x/model.safetensors",
        ),
        (
            "abfss://container@mirrorplayacct.dfs.core.windows.net/x/model.safetensors",
            "MicrosoftAzure",
            "/container/x/model.safetensors",
        ),
    ];
    for (url, store, request) in cases {
        let loc = Location::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(
            loc.store_name().contains(store),
            "{url}: {}",
            loc.store_name()
        );
        let before = seen.lock().unwrap().len();
        let err = loc.size().await.expect_err("the endpoint answers 403");
        let msg = format!("{err} / {err:?}");
        assert!(
            !msg.contains("not implemented") && !msg.contains("Unrecognised"),
            "{url}: {msg}"
        );
        assert!(!msg.contains(SECRET), "{url}: the secret leaked: {msg}");
        assert!(!format!("{loc:?} {loc}").contains(SECRET));
        let after = seen.lock().unwrap().clone();
        assert!(
            after.len() > before && after[before..].iter().any(|l| l.contains(request)),
            "{url}: no request from the client reached the endpoint ({after:?}); error: {msg}"
        );
    }
    // The account/container form the brief guessed is not one object_store knows: the host is
    // the container, so `az://account/container/x` names container `account`.
    let loc = Location::parse("az://account/container/x").unwrap();
    assert!(loc.store_name().contains("account"), "{}", loc.store_name());
    // Plain paths and file:// URLs are local.
    let tmp = tempfile::tempdir().unwrap();
    let local = Location::parse(tmp.path().to_str().unwrap()).unwrap();
    assert!(
        local.store_name().contains("LocalFileSystem"),
        "{}",
        local.store_name()
    );
}
