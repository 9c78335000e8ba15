//! Object storage over the S3 protocol: a real S3 server (s3s-fs, serving a temporary
//! directory) on loopback; the local cluster reads the models from and writes the merge to
//! `s3://` URLs, with credentials and endpoint from the environment.

mod common;

use std::path::Path;

use common::s3::*;
use common::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn merge_reads_and_writes_s3_urls() {
    let root = tempfile::tempdir().unwrap();
    let bucket = root.path().join("models");
    for m in ["base", "task-a", "task-b"] {
        copy_dir(
            &repo_root().join("examples").join(m),
            &bucket.join("examples").join(m),
        );
    }
    let addr = start_s3(root.path());
    let endpoint = format!("http://{addr}");
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let o = run_env(
        &[
            "local",
            "configs/merge-task-arithmetic.toml",
            "--workers",
            "2",
            "--set",
            "job.output=s3://models/out",
            "--set",
            "merge.base=s3://models/examples/base",
            "--set",
            "merge.models=[\"s3://models/examples/task-a\", \"s3://models/examples/task-b\"]",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = bucket.join("out/model");
    let want = expected_example_merge();
    assert_models_close(&read_model(&out), &want, 1e-6);
    assert!(out.join("tokenizer.json").exists() && bucket.join("out/job.json").exists());

    // The same merge to a local directory writes the same bytes.
    let local = root.path().join("local-out");
    let o = run(&[
        "local",
        "configs/merge-task-arithmetic.toml",
        "--set",
        &format!("job.output={}", local.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        files_of(&local.join("model")) == files_of(&out),
        "S3 and local outputs differ"
    );
}
