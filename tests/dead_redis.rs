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
use tower_api_key::cache::{KeyCache, RedisCache};
use tower_api_key::ratelimit::{
    Algorithm, CounterKey, CounterStore, Fallback, RateLimiter, RedisCounters,
};
use tower_api_key::{ApiKeyAuthLayer, KeyHash, RateLimit};

/// How long a request may take once Redis is known to be gone: far less
/// than the 100 ms command timeout it used to wait.
const AT_ONCE: Duration = Duration::from_millis(5);

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

/// Until the pool has seen its connections drop: a command fails with no
/// wait (polled: the order of events is what the test asserts).
async fn until_seen_down<F, Fut, T, E>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let start = Instant::now();
        if f().await.is_err() && start.elapsed() < AT_ONCE {
            return;
        }
        assert!(Instant::now() < deadline, "the drop was never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_commands_at_once_and_comes_back_by_itself() {
    let mut server = RedisServer::start();
    let cache: RedisCache<Client> = RedisCache::builder(server.url())
        .build()
        .await
        .expect("cache");
    let counters = RedisCounters::builder(server.url())
        .build()
        .await
        .expect("counters");
    let hash = KeyHash::of("sk_dead_redis");
    let limits = [RateLimit::per_minute(1_000)];
    let key = CounterKey::key(&hash);
    let hit = || counters.hit(&key, &limits, Algorithm::default(), 1);
    assert!(cache.get(&hash).await.is_ok());
    assert!(hit().await.is_ok());

    server.kill();
    until_seen_down(|| cache.get(&hash)).await;
    until_seen_down(hit).await;
    let get = slowest(50, || cache.get(&hash)).await;
    let counted = slowest(50, hit).await;
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
    assert!(
        slowest_read < AT_ONCE * 4,
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
        .build()
        .await
        .expect("cache");
    let counters = RedisCounters::builder(server.url())
        .build()
        .await
        .expect("counters");
    let limiter = RateLimiter::new(counters)
        .default_limit(RateLimit::per_minute(10_000))
        .fallback(Fallback::Open);
    // Cached only in Redis: every request reads it there.
    let auth = ApiKeyAuthLayer::new(cache, store.lookup()).rate_limits(limiter);
    let app = app(auth);
    assert_eq!(status(&app, "/me", "sk_dead_layer").await, StatusCode::OK);
    server.kill();
    // Until the drop is seen, a request may wait its command timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let start = Instant::now();
        assert_eq!(status(&app, "/me", "sk_dead_layer").await, StatusCode::OK);
        if start.elapsed() < AT_ONCE {
            break;
        }
        assert!(Instant::now() < deadline, "always waited");
    }
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let start = Instant::now();
        assert_eq!(status(&app, "/me", "sk_dead_layer").await, StatusCode::OK);
        slowest = slowest.max(start.elapsed());
    }
    assert!(slowest < AT_ONCE, "a request waited {slowest:?}");
}
