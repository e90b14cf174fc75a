//! Rate limits on a private `redis-server` (started here on a free loopback
//! port):
//!
//! 1. **strict**: cached keys through the layer with `RedisCounters`, from 64
//!    tasks, against a bare fred `EVALSHA` of the same script with the same
//!    arguments from 64 tasks on a pool of the same size; rounds in pairs,
//!    the order alternating; the round trips per request counted with
//!    `INFO commandstats`. Then the same layer with `LocalFirst`.
//! 2. **local-first, under the limit**: the share of requests decided with
//!    no round trip, on one hot key and on Zipf(1.0) over 1,000 keys.
//! 3. **local-first, over the limit**: 2 and 4 instances (stores with their
//!    own connections) offered 1x to 10x a quota together, at a steady pace
//!    or in one burst; what they admitted beyond the quota, against the
//!    documented bound (none), and strict beside it.
//!
//! ```sh
//! cargo bench --bench rate_limit_redis --features redis
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::prelude::{Builder, Config};
use fred::types::Value;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_api_key::cache::MemoryCache;
use tower_api_key::ratelimit::{
    Algorithm, CounterKey, CounterStore, LocalFirst, RateLimiter, RedisCounters,
};
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Principal, RateLimit};

mod common;
use common::load::{load, median, Run, ROUND, TASKS};

const ROUNDS: usize = 8;

struct Client;
impl Principal for Client {}

/// A policy no benchmarked request reaches.
fn roomy() -> RateLimit {
    RateLimit::per_hour(1 << 50)
}

fn secret(i: usize) -> String {
    format!("sk_live_{i:08}_ratelimitbench")
}

fn request_with(i: usize) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = http::Uri::from_static("/v1/invoices");
    let header = HeaderValue::from_str(&format!("Bearer {}", secret(i))).expect("header");
    req.headers_mut().insert(AUTHORIZATION, header);
    req
}

type Op = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The layer over an in-process cache, counting in `store`, as a load
/// operation (request `n` carries key `n % TASKS`), and how many requests
/// it made.
fn layer<S: CounterStore>(
    store: S,
) -> (impl Fn() -> Op + Clone + Send + 'static, Arc<AtomicUsize>) {
    let auth = ApiKeyAuthLayer::new(
        MemoryCache::new(),
        lookup_fn(|_: KeyHash| async { Ok::<_, Infallible>(Some(Client)) }),
    )
    .rate_limits(RateLimiter::new(store).default_limit(roomy()));
    let svc =
        ServiceBuilder::new()
            .layer(auth)
            .service(service_fn(|_: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }));
    let made = Arc::new(AtomicUsize::new(0));
    let next = made.clone();
    let op = move || -> Op {
        let svc = svc.clone();
        let i = next.fetch_add(1, Ordering::Relaxed) % TASKS;
        Box::pin(async move {
            let res = svc.oneshot(request_with(i)).await.expect("infallible");
            assert_eq!(res.status(), 200);
        })
    };
    (op, made)
}

/// `INFO commandstats`: how many times the server ran `cmd`.
fn calls(url: &str, cmd: &str) -> u64 {
    let port = url.rsplit(':').next().expect("port");
    let out = std::process::Command::new("redis-cli")
        .args(["-p", port, "info", "commandstats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn summary(runs: &[Run]) -> (f64, f64) {
    (
        median(runs.iter().map(|r| r.ops_per_sec).collect()),
        median(runs.iter().map(|r| r.p99.as_secs_f64() * 1e6).collect()),
    )
}

async fn strict_against_bare(url: &str) {
    let counters = RedisCounters::builder(url)
        .prefix("bench:")
        .build()
        .await
        .expect("counters");
    let keys: Vec<String> = (0..TASKS)
        .map(|i| counters.redis_key(&CounterKey::key(&KeyHash::of(secret(i)))))
        .collect();
    let (strict, strict_requests) = layer(counters.clone());
    let (local_first, _) = layer(LocalFirst::new(
        RedisCounters::builder(url)
            .prefix("bench-lf:")
            .build()
            .await
            .expect("counters"),
    ));

    // The bare baseline: a pool like the counters' (4 connections), the
    // script's EVALSHA with a hit's arguments.
    let pool = Builder::from_config(Config::from_url(url).expect("url"))
        .build_pool(4)
        .expect("pool");
    pool.init().await.expect("connect");
    let sha: String = pool
        .next()
        .script_load(RedisCounters::SCRIPT)
        .await
        .expect("load");
    // cost 1, one policy: its field, quota, window (ms), sliding.
    let args: Vec<Value> = vec![
        1.into(),
        1.into(),
        "hour/3600".into(),
        Value::Integer(1 << 50),
        3_600_000.into(),
        1.into(),
    ];
    let bare = {
        let (pool, sha, keys, args) = (Arc::new(pool), sha, Arc::new(keys), args);
        let next = Arc::new(AtomicUsize::new(0));
        move || {
            let (pool, sha, keys, args) = (pool.clone(), sha.clone(), keys.clone(), args.clone());
            let i = next.fetch_add(1, Ordering::Relaxed) % TASKS;
            async move {
                let answer: Vec<i64> = pool
                    .evalsha(sha, vec![keys[i].as_str()], args)
                    .await
                    .expect("EVALSHA");
                assert_eq!(answer[0], 1);
            }
        }
    };

    let scripts = || calls(url, "evalsha") + calls(url, "eval");
    let (mut b, mut s, mut l) = (Vec::new(), Vec::new(), Vec::new());
    let mut strict_scripts = 0;
    for round in 0..ROUNDS {
        if round % 2 == 1 {
            b.push(load(bare.clone()).await);
        }
        let before = scripts();
        s.push(load(strict.clone()).await);
        strict_scripts += scripts() - before;
        if round % 2 == 0 {
            b.push(load(bare.clone()).await);
        }
    }
    let requests = strict_requests.load(Ordering::Relaxed) as f64;
    for _ in 0..ROUNDS / 2 {
        l.push(load(local_first.clone()).await);
    }
    let ((b_ops, b_p99), (s_ops, s_p99), (l_ops, l_p99)) = (summary(&b), summary(&s), summary(&l));
    let paired = median(
        b.iter()
            .zip(&s)
            .map(|(b, s)| s.ops_per_sec / b.ops_per_sec)
            .collect(),
    );
    println!("{TASKS} tasks, {ROUNDS} pairs of {ROUND:?} rounds (order alternating), medians:");
    println!("bare EVALSHA of the script:      {b_ops:>9.0} ops/s  p99 {b_p99:>7.1} µs");
    println!("layer, RedisCounters (strict):   {s_ops:>9.0} ops/s  p99 {s_p99:>7.1} µs");
    println!("layer, LocalFirst:               {l_ops:>9.0} ops/s  p99 {l_p99:>7.1} µs");
    println!("strict/bare throughput: {paired:.2} (median of the pairs' ratios; target >= 0.80)");
    println!(
        "strict: {:.4} script calls per request ({strict_scripts} counted by Redis for {requests:.0} requests)",
        strict_scripts as f64 / requests
    );
}

async fn local_first_under_the_limit(url: &str) {
    let key_count = 1_000;
    let mut cumulative = Vec::with_capacity(key_count);
    let mut total = 0.0;
    for rank in 1..=key_count {
        total += 1.0 / rank as f64;
        cumulative.push(total);
    }
    let mut rng = StdRng::seed_from_u64(11);
    for (name, zipf) in [("hot key", false), ("zipf over 1,000 keys", true)] {
        let store = LocalFirst::new(
            RedisCounters::builder(url)
                .prefix(format!("under-{zipf}:"))
                .build()
                .await
                .expect("counters"),
        );
        let limits = [RateLimit::per_hour(10_000_000)];
        let n = 200_000;
        let started = Instant::now();
        for _ in 0..n {
            let k = if zipf {
                let u = rng.random::<f64>() * total;
                cumulative.partition_point(|&c| c < u).min(key_count - 1)
            } else {
                0
            };
            let key = CounterKey::key(&KeyHash::of(secret(k)));
            let counted = store
                .hit(&key, &limits, Algorithm::SlidingWindow, 1)
                .await
                .expect("hit");
            assert!(counted.admitted);
        }
        let secs = started.elapsed().as_secs_f64();
        let s = store.stats();
        println!(
            "local-first, {name}: {:.2} % of {n} requests decided here ({} asked Redis; {} give-back rounds), {:.0} ops/s on one task",
            100.0 * s.decided_locally as f64 / n as f64,
            s.asked_redis,
            s.batches,
            n as f64 / secs
        );
    }
}

/// `stores.len()` instances, each offered `each` requests over `spread`
/// (as fast as it can when zero) for one key: what they admitted together.
async fn instances<S: CounterStore + Clone>(
    stores: Vec<S>,
    quota: u64,
    each: u64,
    spread: Duration,
) -> u64 {
    let limits = [RateLimit::new("hour", quota, Duration::from_secs(3600)).expect("limit")];
    let key = CounterKey::key(&KeyHash::of("sk_live_overadmission"));
    let gap = spread / u32::try_from(each).expect("requests");
    let tasks: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let limits = limits.clone();
            tokio::spawn(async move {
                let mut tick = (!gap.is_zero()).then(|| tokio::time::interval(gap));
                let mut admitted = 0;
                for _ in 0..each {
                    if let Some(tick) = tick.as_mut() {
                        tick.tick().await;
                    }
                    let counted = store
                        .hit(&key, &limits, Algorithm::FixedWindow, 1)
                        .await
                        .expect("hit");
                    admitted += u64::from(counted.admitted);
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.expect("task");
    }
    admitted
}

async fn local_first_over_the_limit(url: &str) {
    // Steady (paced over the spread) and bursts (every instance as fast as
    // it can), on 2 and 4 instances, from 2x to 10x the quota; the issue's
    // own measurement is the two bursts of 400 requests on a quota of 100.
    let shapes = [
        ("steady", 2, 2_000u64, 2_000u64, Duration::from_secs(4)),
        ("steady", 2, 400, 200, Duration::from_millis(800)),
        ("steady", 4, 400, 1_000, Duration::from_millis(800)),
        ("burst", 2, 100, 200, Duration::ZERO),
        ("burst", 4, 100, 100, Duration::ZERO),
        ("burst", 4, 100, 250, Duration::ZERO),
    ];
    for (run, (shape, count, quota, each, spread)) in shapes.into_iter().enumerate() {
        let offered = count * each;
        let prefix = format!("over-{run}:");
        let mut local = Vec::new();
        let mut strict = Vec::new();
        for _ in 0..count {
            let counters = |prefix: String| async move {
                RedisCounters::builder(url)
                    .prefix(prefix)
                    .build()
                    .await
                    .expect("counters")
            };
            local.push(LocalFirst::new(counters(prefix.clone()).await));
            strict.push(counters(format!("strict-{prefix}")).await);
        }
        let admitted = instances(local, quota, each, spread).await;
        let exact = instances(strict, quota, each, spread).await;
        println!(
            "{shape}, {count} instances offered {offered} ({:.0}x the quota of {quota}) over {spread:?}: local-first admitted {admitted} ({:+}; bound +0), strict {exact}",
            offered as f64 / quota as f64,
            admitted as i64 - quota as i64
        );
    }
}

fn main() {
    common::on_private_redis(|url| async move {
        strict_against_bare(&url).await;
        local_first_under_the_limit(&url).await;
        local_first_over_the_limit(&url).await;
    });
}
