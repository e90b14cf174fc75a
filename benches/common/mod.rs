//! What the benches share: the key and the request that carries it, a
//! private `redis-server`, calling a service whose future is ready at once,
//! and interleaved timing.
#![allow(dead_code)] // each bench uses its part

pub mod load;
pub mod traffic;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header::AUTHORIZATION, HeaderValue, Request};
use http_body_util::Full;
use tower::Service;

pub const SECRET: &str = "sk_live_51HxBenchmarkKey0123456789abcdef";

/// `GET /v1/invoices` with `SECRET` as a bearer token.
pub fn request() -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = http::Uri::from_static("/v1/invoices");
    req.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer sk_live_51HxBenchmarkKey0123456789abcdef"),
    );
    req
}

/// A private `redis-server` on a free loopback port, stopped on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// On a free port; with `cpu`, pinned to that CPU (`taskset`).
    pub fn start(cpu: Option<usize>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), "redis-server"]);
                c
            }
            None => Command::new("redis-server"),
        };
        let child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        std::thread::sleep(Duration::from_millis(300));
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a load script: a private `redis-server`, a 2-worker tokio runtime,
/// and `script(url)` on it. Does nothing for `--test`/`--list` (the probes of
/// `cargo bench --no-run` and `cargo test --benches`).
///
/// With `REDIS_BENCH_PINNED=1`, redis-server runs on CPU 0 and this process
/// (one worker) on CPU 1, so that neither takes the other's core: what is
/// measured is the client's own work. [`pinned_too`] runs a script both
/// ways.
pub fn on_private_redis<F, Fut>(script: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let pinned = std::env::var_os("REDIS_BENCH_PINNED").is_some();
    let server = RedisServer::start(pinned.then_some(0));
    if pinned {
        let me = std::process::id().to_string();
        let status = Command::new("taskset")
            .args(["-acp", "1", &me])
            .stdout(Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "taskset -acp 1 {me}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if pinned { 1 } else { 2 })
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(script(server.url()));
}

/// After an unpinned run of this bench, runs it again pinned (see
/// [`on_private_redis`]) in a child process, whose report follows.
pub fn pinned_too() {
    if std::env::var_os("REDIS_BENCH_PINNED").is_some()
        || std::env::args().any(|a| a == "--test" || a == "--list")
    {
        return;
    }
    println!();
    println!("pinned: redis-server on CPU 0, the client on CPU 1 (one worker):");
    let status = Command::new(std::env::current_exe().expect("this bench"))
        .args(std::env::args().skip(1))
        .env("REDIS_BENCH_PINNED", "1")
        .status()
        .expect("the pinned run");
    assert!(status.success(), "the pinned run failed");
}

/// Calls a service whose future is ready at once (an in-process cache hit),
/// without an executor's overhead in the measurement.
pub fn call_now<S, B>(svc: &mut S, req: Request<B>) -> S::Response
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(svc.poll_ready(&mut cx).is_ready());
    svc.call(req)
        .now_or_never()
        .expect("an in-process hit answers on the first poll")
        .expect("infallible")
}

/// Times `N` things in alternating rounds of `iters` calls each (rotating
/// which goes first), so that a noisy neighbour or a frequency change hits
/// all alike; `run(i)` makes one call of thing `i`. Returns the median ns per
/// call of each.
pub fn interleaved<const N: usize>(
    rounds: usize,
    iters: u32,
    mut run: impl FnMut(usize),
) -> [f64; N] {
    let mut samples: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(rounds));
    for round in 0..rounds {
        for k in 0..N {
            let which = (round + k) % N;
            let start = Instant::now();
            for _ in 0..iters {
                run(which);
            }
            samples[which].push(start.elapsed().as_nanos() as f64 / f64::from(iters));
        }
    }
    samples.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    })
}
