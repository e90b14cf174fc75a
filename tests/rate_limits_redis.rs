//! Rate limits on Redis counters (private `redis-server`s, and a 3-master
//! cluster): exact across instances, one round trip per request, the
//! fallbacks when Redis dies or hangs, and counters that survive the
//! cache's `invalidate_all`.
#![cfg(feature = "redis")]

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use common::redis::{RedisCluster, RedisServer, Target};
use common::{get_with_key, send};
use http::StatusCode;
use tower_api_key::cache::{KeyCache, MemoryCache, RedisCache};
use tower_api_key::ratelimit::{
    Algorithm, CounterKey, CounterStore, Fallback, MemoryCounters, RateLimiter, RedisCounters,
};
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Lookup, Principal, RateLimit};

const KEY: &str = "sk_live_RATELIMITSECRET_1";

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Client {
    limits: Vec<RateLimit>,
}

impl Principal for Client {
    fn rate_limits(&self) -> Option<&[RateLimit]> {
        Some(&self.limits)
    }
}

fn lookup(quota: u64) -> impl Lookup<Client> {
    lookup_fn(move |hash: KeyHash| async move {
        Ok::<_, Infallible>((hash == KeyHash::of(KEY)).then(|| Client {
            limits: vec![RateLimit::new("minute", quota, Duration::from_secs(60)).unwrap()],
        }))
    })
}

async fn counters(url: &str, prefix: &str) -> RedisCounters {
    RedisCounters::builder(url)
        .prefix(prefix)
        .build()
        .await
        .expect("counters")
}

/// One instance: its own in-process cache, counters in the shared Redis.
fn instance(
    counters: RedisCounters,
    quota: u64,
    fallback: Fallback,
) -> (
    Router,
    ApiKeyAuthLayer<MemoryCache<Client>, impl Lookup<Client>>,
) {
    let auth = ApiKeyAuthLayer::new(MemoryCache::new(), lookup(quota)).rate_limits(
        RateLimiter::new(counters)
            .algorithm(Algorithm::FixedWindow)
            .fallback(fallback)
            .breaker(3, Duration::from_millis(300)),
    );
    let app = Router::new()
        .route("/me", get(|| async { "ok" }))
        .layer(auth.clone());
    (app, auth)
}

async fn admitted_of(apps: &[Router], n: usize) -> (usize, Vec<u16>) {
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(send(apps[i % apps.len()].clone(), get_with_key("/me", KEY))))
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status.as_u16());
    }
    (statuses.iter().filter(|s| **s == 200).count(), statuses)
}

async fn two_instances_admit_exactly_the_quota_together(t: &Target<'_>, prefix: &str) {
    let (a, auth_a) = instance(counters(&t.url(), prefix).await, 10, Fallback::Memory);
    let (b, auth_b) = instance(counters(&t.url(), prefix).await, 10, Fallback::Memory);
    let (admitted, statuses) = admitted_of(&[a, b], 60).await;
    assert_eq!(admitted, 10, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let (sa, sb) = (auth_a.stats(), auth_b.stats());
    assert_eq!(sa.rate_limit_admitted + sb.rate_limit_admitted, 10);
    assert_eq!(sa.rate_limited + sb.rate_limited, 50);
    assert_eq!(
        sa.rate_limit_store_errors + sb.rate_limit_store_errors,
        0,
        "no CROSSSLOT, no error"
    );
    assert_eq!(sa.rate_limit_fallbacks + sb.rate_limit_fallbacks, 0);
}

async fn counter_keys_carry_no_plaintext_and_expire(t: &Target<'_>, prefix: &str) {
    let c = counters(&t.url(), prefix).await;
    let redis_key = c.redis_key(&CounterKey::key(&KeyHash::of(KEY)));
    let (app, _) = instance(c, 5, Fallback::Memory);
    assert_eq!(
        send(app.clone(), get_with_key("/me", KEY)).await.status,
        StatusCode::OK
    );
    assert!(t.holds(&redis_key), "{redis_key}");
    let ttl = t.pttl(&redis_key);
    assert!(ttl > 60_000 && ttl <= 120_000, "twice the window: {ttl}");
    for (k, v) in t.dump() {
        assert!(
            !k.contains("RATELIMITSECRET") && !v.contains("RATELIMITSECRET"),
            "{k} = {v}"
        );
    }
}

// Each behaviour a test on a single server and on a cluster.
on_each_target!(
    two_instances_admit_exactly_the_quota_together,
    counter_keys_carry_no_plaintext_and_expire,
);

/// `INFO commandstats`: how many times the server ran `cmd`.
fn calls(server: &RedisServer, cmd: &str) -> u64 {
    server
        .cli(&["info", "commandstats"])
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_per_limited_request() {
    let server = RedisServer::start();
    let (app, _) = instance(
        counters(&server.url(), "rt:").await,
        1_000,
        Fallback::Memory,
    );
    // The first hit teaches the server the script (EVALSHA refused, EVAL).
    assert_eq!(
        send(app.clone(), get_with_key("/me", KEY)).await.status,
        200
    );
    server.cli(&["config", "resetstat"]);
    for _ in 0..50 {
        assert_eq!(
            send(app.clone(), get_with_key("/me", KEY)).await.status,
            200
        );
    }
    assert_eq!(calls(&server, "evalsha"), 50);
    assert_eq!(calls(&server, "eval"), 0);
    // commandstats also counts what scripts call: the script's own three,
    // once per hit, and no other command from the client.
    for inside in ["hmget", "hset", "pexpire"] {
        assert_eq!(calls(&server, inside), 50, "{inside}");
    }
    let other: u64 = ["get", "set", "incr", "ping", "time"]
        .iter()
        .map(|c| calls(&server, c))
        .sum();
    assert_eq!(
        other, 50,
        "only the script's TIME: nothing else reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_window_falls_back_to_memory_without_a_5xx_and_recovers() {
    let mut server = RedisServer::start();
    let (app, auth) = instance(
        counters(&server.url(), "kill:").await,
        1_000,
        Fallback::Memory,
    );
    for _ in 0..5 {
        assert_eq!(
            send(app.clone(), get_with_key("/me", KEY)).await.status,
            200
        );
    }
    server.kill();
    let started = Instant::now();
    for _ in 0..50 {
        let s = send(app.clone(), get_with_key("/me", KEY)).await.status;
        assert_eq!(s, 200, "a counter outage is never a refusal or a 5xx here");
    }
    let stats = auth.stats();
    assert_eq!(stats.rate_limit_fallbacks, 50);
    assert!(
        stats.rate_limit_store_errors >= 1 && stats.rate_limit_store_errors <= 3,
        "the breaker opened: {stats:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an outage costs no request a timeout: {:?}",
        started.elapsed()
    );
    server.restart();
    // The breaker probes again and closes; Redis counts again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = auth.stats().rate_limit_fallbacks;
        let s = send(app.clone(), get_with_key("/me", KEY)).await.status;
        assert_eq!(s, 200);
        if auth.stats().rate_limit_fallbacks == before {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_costs_bounded_latency() {
    let server = RedisServer::start();
    let (app, auth) = instance(
        counters(&server.url(), "pause:").await,
        1_000,
        Fallback::Memory,
    );
    assert_eq!(
        send(app.clone(), get_with_key("/me", KEY)).await.status,
        200
    );
    server.cli(&["client", "pause", "3000", "all"]);
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let t = Instant::now();
        assert_eq!(
            send(app.clone(), get_with_key("/me", KEY)).await.status,
            200
        );
        slowest = slowest.max(t.elapsed());
    }
    // Each of the first few waits the 100 ms command timeout; then the
    // breaker is open and none waits.
    assert!(slowest < Duration::from_millis(600), "{slowest:?}");
    assert!(
        auth.stats().rate_limit_store_errors <= 4,
        "{:?}",
        auth.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_and_fail_open_admits() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let (closed, _) = instance(counters(&url, "fc:").await, 5, Fallback::Closed);
    let res = send(closed.clone(), get_with_key("/me", KEY)).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.header("retry-after").is_some());
    assert_eq!(res.json()["code"], "rate_limiter_unavailable");
    let (open, _) = instance(counters(&url, "fo:").await, 1, Fallback::Open);
    for _ in 0..5 {
        assert_eq!(
            send(open.clone(), get_with_key("/me", KEY)).await.status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_share_a_caches_connection_and_survive_its_invalidate_all() {
    let server = RedisServer::start();
    let cache: RedisCache<Client> = RedisCache::builder(server.url())
        .prefix("shared:")
        .build()
        .await
        .unwrap();
    let counters = RedisCounters::from_cache(&cache);
    let redis_key = counters.redis_key(&CounterKey::key(&KeyHash::of(KEY)));
    let auth = ApiKeyAuthLayer::new(cache.clone(), lookup(3))
        .rate_limits(RateLimiter::new(counters).algorithm(Algorithm::FixedWindow));
    let app = Router::new()
        .route("/me", get(|| async { "ok" }))
        .layer(auth.clone());
    for _ in 0..2 {
        assert_eq!(
            send(app.clone(), get_with_key("/me", KEY)).await.status,
            200
        );
    }
    cache.invalidate_all().await.unwrap();
    assert!(
        server.cli(&["exists", &redis_key]).trim() == "1",
        "invalidate_all wiped the counters"
    );
    assert_eq!(
        send(app.clone(), get_with_key("/me", KEY)).await.status,
        200
    );
    assert_eq!(
        send(app.clone(), get_with_key("/me", KEY)).await.status,
        429
    );
    auth.reset_rate_limits(&KeyHash::of(KEY)).await.unwrap();
    assert_eq!(server.cli(&["exists", &redis_key]).trim(), "0");
    assert_eq!(
        send(app.clone(), get_with_key("/me", KEY)).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_decides_as_the_in_process_store_does() {
    // The same sequence of hits through Redis and through memory, sliding
    // window, a burst and its fade: the same admissions, the same
    // remaining counts. (Both read their own clock, so the hits are
    // spaced to be far from where a window's edge could fall between them.)
    let server = RedisServer::start();
    let redis = RedisCounters::builder(server.url()).build().await.unwrap();
    let memory = MemoryCounters::new();
    let limits = [RateLimit::new("w", 7, Duration::from_secs(3600)).unwrap()];
    let key = CounterKey::key(&KeyHash::of("k"));
    for cost in [1, 2, 1, 3, 1, 1, 2] {
        let r = redis
            .hit(&key, &limits, Algorithm::SlidingWindow, cost)
            .await
            .unwrap();
        let m = memory
            .hit(&key, &limits, Algorithm::SlidingWindow, cost)
            .await
            .unwrap();
        assert_eq!(r.admitted, m.admitted, "cost {cost}");
        assert_eq!(r.quotas[0].remaining, m.quotas[0].remaining, "cost {cost}");
    }
}
