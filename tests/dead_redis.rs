//! A Redis that is known to be gone costs no request a timeout: once the
//! client has seen its connections drop (the server killed), every command
//! of the cache and of the counters fails at once, the breaker's probe is a
//! `PING` of the pool's own (never a request's command), and when the
//! server is back everything is by itself, no request having waited.
#![cfg(feature = "tiered")]

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use http::StatusCode;
use tower_api_key::cache::{KeyCache, RedisCache, RedisHealth};
use tower_api_key::ratelimit::{
    Algorithm, CounterKey, CounterStore, Fallback, RateLimiter, RedisCounters,
};
use tower_api_key::{ApiKeyAuthLayer, KeyHash, RateLimit};

/// The command timeout here: long, so that a command that waits it can't
/// pass for one that failed at once, however busy the machine.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request may take once Redis is known to be gone: a fifth of
/// the timeout (it takes microseconds; the margin is for a loaded machine).
const AT_ONCE: Duration = Duration::from_secs(1);

/// The slowest of `n` calls of `f`.
async fn slowest<F, Fut>(n: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
{
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let start = Instant::now();
        let _ = f().await;
        slowest = slowest.max(start.elapsed());
    }
    slowest
}

/// Until the pool has seen every connection drop (polled: the order of
/// events is what the test asserts; a command that failed fast is no proof,
/// the in-flight ones fail at once as their connection drops).
async fn until_seen_down(health: impl Fn() -> RedisHealth) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while health().connected {
        assert!(Instant::now() < deadline, "the drop was never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_commands_at_once_and_comes_back_by_itself() {
    let mut server = RedisServer::start();
    let cache: RedisCache<Client> = RedisCache::builder(server.url())
        .command_timeout(TIMEOUT)
        .build()
        .await
        .expect("cache");
    let counters = RedisCounters::builder(server.url())
        .command_timeout(TIMEOUT)
        .build()
        .await
        .expect("counters");
    let hash = KeyHash::of("sk_dead_redis");
    let limits = [RateLimit::per_minute(1_000)];
    let key = CounterKey::key(&hash);
    let hit = || counters.hit(&key, &limits, Algorithm::default(), 1);
    assert!(cache.get(&hash).await.is_ok());
    assert!(hit().await.is_ok());
    assert!(cache.health().connected && counters.health().connected);

    server.kill();
    until_seen_down(|| cache.health()).await;
    until_seen_down(|| counters.health()).await;
    let get = slowest(50, || cache.get(&hash)).await;
    let counted = slowest(50, hit).await;
    eprintln!(
        "Redis killed: the slowest of 50 cache reads {get:?}, of 50 counter hits {counted:?}"
    );
    assert!(get < AT_ONCE, "a cache read waited {get:?}");
    assert!(counted < AT_ONCE, "a counter hit waited {counted:?}");
    // The failures opened the breakers; they skip now.
    assert!(cache.health().open && cache.health().opened >= 1);
    assert!(counters.health().open);

    // Back: the pool reconnects, the breaker's PING closes it, and the
    // next reads reach Redis; no request was the probe, none waited.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut slowest_read = Duration::ZERO;
    loop {
        let start = Instant::now();
        let read = cache.get(&hash).await;
        slowest_read = slowest_read.max(start.elapsed());
        if read.is_ok() && hit().await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never back: {:?}",
            cache.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!cache.health().open, "the PING closed it");
    assert!(cache.health().connected);
    assert!(
        slowest_read < AT_ONCE,
        "a read waited {slowest_read:?} while Redis came back"
    );
}

/// The same through the layer: the tiered cache's L2 and Redis rate limits,
/// both on a killed Redis, answered from the lookup and the fallback with
/// no request waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_layer_no_request_waits_for_a_dead_redis() {
    let mut server = RedisServer::start();
    let store = KeyStore::new();
    store.create("alice", "sk_dead_layer", None);
    let cache = RedisCache::builder(server.url())
        .command_timeout(TIMEOUT)
        .build()
        .await
        .expect("cache");
    let counters = RedisCounters::builder(server.url())
        .command_timeout(TIMEOUT)
        .build()
        .await
        .expect("counters");
    let (cache_health, counters_health) = (cache.clone(), counters.clone());
    let limiter = RateLimiter::new(counters)
        .default_limit(RateLimit::per_minute(10_000))
        .fallback(Fallback::Open);
    // Cached only in Redis: every request reads it there.
    let auth = ApiKeyAuthLayer::new(cache, store.lookup()).rate_limits(limiter);
    let app = app(auth);
    assert_eq!(status(&app, "/me", "sk_dead_layer").await, StatusCode::OK);
    server.kill();
    // Until the drop is seen, a request may wait its command timeout.
    until_seen_down(|| cache_health.health()).await;
    until_seen_down(|| counters_health.health()).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let start = Instant::now();
        assert_eq!(status(&app, "/me", "sk_dead_layer").await, StatusCode::OK);
        slowest = slowest.max(start.elapsed());
    }
    eprintln!("Redis killed: the slowest of 50 requests through the layer {slowest:?}");
    assert!(slowest < AT_ONCE, "a request waited {slowest:?}");
}
