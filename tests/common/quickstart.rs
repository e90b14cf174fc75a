//! The quickstart binary, started and driven over HTTP: shared by the
//! quickstart's test files.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub const ADMIN: &str = "sk_quickstart_admin_key";

/// The example binary, built by `cargo test`/`cargo nextest` beside the
/// tests (or built here if it isn't).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test> -> target/<profile>/examples/quickstart
        let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        let bin = profile_dir.join("examples").join("quickstart");
        if !bin.exists() {
            // With the features this test was built with: a quickstart
            // without `tiered` can't use Redis.
            let features = if cfg!(feature = "tiered") {
                "memory,axum,usage,metrics,tiered"
            } else {
                "memory,axum,usage,metrics"
            };
            let status = Command::new(env!("CARGO"))
                .args(["build", "--example", "quickstart", "--features", features])
                .status()
                .expect("cargo build");
            assert!(status.success(), "building the quickstart failed");
        }
        bin
    })
    .clone()
}

pub struct Quickstart {
    pub child: Child,
    pub base: String,
    pub stdout: Vec<String>,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(envs: &[(&str, &str)]) -> Quickstart {
    let mut cmd = Command::new(binary());
    cmd.env_clear()
        .env("PORT", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn quickstart");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let base = loop {
        let line = lines
            .next()
            .expect("quickstart exited before listening (built without the features this test needs? cargo build --example quickstart --all-features)")
            .expect("read stdout");
        seen.push(line.clone());
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.trim().to_owned();
        }
    };
    // Read the banner up to its last curl command.
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        let last = line.contains("/v1/stats");
        seen.push(line);
        if last {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Quickstart {
        child,
        base,
        stdout: seen,
    }
}

pub async fn call(
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, _, body) = call_with_headers(method, url, key, body).await;
    (status, body)
}

/// A request's status, headers, and body (JSON, or the text as a string).
pub async fn call_with_headers(
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The status of a `GET`, with a bearer key or none.
pub async fn get_status(url: &str, key: Option<&str>) -> u16 {
    call(reqwest::Method::GET, url, key, None).await.0
}
