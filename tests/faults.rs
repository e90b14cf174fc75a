//! Faults between the layer and Redis, injected by a proxy
//! (`common/proxy.rs`) in front of a private `redis-server`: latency past the
//! command timeout, a blackhole (connections kept, nothing answered),
//! connections reset, connections cut after a few bytes. For each, on the
//! Redis cache, the tiered cache (its L2 and its subscriber) and the Redis
//! counters: every answer right, requests fast once the breaker is open,
//! and Redis in use again by itself once the fault ends.
#![cfg(feature = "tiered")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use common::proxy::{Fault, FaultProxy};
use common::redis::RedisServer;
use common::{app, status, KeyStore};
use http::StatusCode;
use tower_api_key::cache::{MemoryCache, RedisCache, RedisHealth, TieredCache};
use tower_api_key::ratelimit::{RateLimiter, RedisCounters};
use tower_api_key::{ApiKeyAuthLayer, KeyHash, RateLimit, Stats};

const VALID: &str = "sk_test_faults_valid";
const UNKNOWN: &str = "sk_test_faults_unknown";

/// A service on one of the Redis paths, behind the proxy.
struct Rig {
    app: Router,
    store: KeyStore,
    stats: Box<dyn Fn() -> Stats>,
    health: Box<dyn Fn() -> RedisHealth>,
    /// Whether a request now went through Redis (not around it).
    redis_used: fn(before: &Stats, after: &Stats, lookups: usize) -> bool,
    /// Whether requests were answered around Redis at once (a breaker).
    skipped: fn(&Stats, &RedisHealth) -> bool,
    _proxy: Arc<FaultProxy>,
    _server: RedisServer,
}

/// Positive entries for a minute; a lookup of its own per cache miss.
fn store() -> KeyStore {
    let store = KeyStore::new();
    store.create("alice", VALID, None);
    store
}

async fn proxied() -> (RedisServer, Arc<FaultProxy>) {
    let server = RedisServer::start();
    let proxy = Arc::new(FaultProxy::start(server.port).await);
    (server, proxy)
}

fn cache_answered(before: &Stats, after: &Stats, lookups: usize) -> bool {
    lookups == 0 && after.cache_errors == before.cache_errors
}

/// The connections' breaker opened, and the layer counted the skips.
fn cache_skipped(stats: &Stats, health: &RedisHealth) -> bool {
    health.opened >= 1 && health.skipped > 0 && stats.cache_skipped > 0
}

async fn redis_cache_rig() -> Rig {
    let (server, proxy) = proxied().await;
    let cache = RedisCache::builder(proxy.url())
        .build()
        .await
        .expect("a Redis cache");
    let store = store();
    let layer = ApiKeyAuthLayer::new(cache.clone(), store.lookup());
    Rig {
        app: app(layer.clone()),
        store,
        stats: Box::new(move || layer.stats()),
        health: Box::new(move || cache.health()),
        redis_used: cache_answered,
        skipped: cache_skipped,
        _proxy: proxy,
        _server: server,
    }
}

/// L1 copies of a millisecond: every request reads L2.
async fn tiered_rig() -> Rig {
    let (server, proxy) = proxied().await;
    let cache = TieredCache::builder(proxy.url())
        .l1_ttl(Duration::from_millis(1))
        .build()
        .await
        .expect("a tiered cache");
    let store = store();
    let layer = ApiKeyAuthLayer::new(cache.clone(), store.lookup());
    Rig {
        app: app(layer.clone()),
        store,
        stats: Box::new(move || layer.stats()),
        health: Box::new(move || cache.l2().health()),
        redis_used: cache_answered,
        skipped: cache_skipped,
        _proxy: proxy,
        _server: server,
    }
}

/// In-process cache, counters in Redis (strict: a round trip per request).
async fn counters_rig() -> Rig {
    let (server, proxy) = proxied().await;
    let counters = RedisCounters::builder(proxy.url())
        .build()
        .await
        .expect("Redis counters");
    let limiter = RateLimiter::new(counters.clone()).default_limit(
        RateLimit::new("minute", 1_000_000, Duration::from_secs(60)).expect("a limit"),
    );
    let store = store();
    let layer = ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).rate_limits(limiter);
    Rig {
        app: app(layer.clone()),
        store,
        stats: Box::new(move || layer.stats()),
        health: Box::new(move || counters.health()),
        redis_used: |before, after, _| {
            after.rate_limit_fallbacks == before.rate_limit_fallbacks
                && after.rate_limit_admitted > before.rate_limit_admitted
        },
        // The limiter's own breaker opens with the connections' (whichever
        // counts three first): its fallback decides.
        skipped: |stats, _| stats.rate_limit_fallbacks > 0,
        _proxy: proxy,
        _server: server,
    }
}

impl Rig {
    /// One request with the valid key and one with the unknown key: the
    /// right answers, and how long the slower took.
    async fn round(&self) -> Duration {
        let started = Instant::now();
        assert_eq!(status(&self.app, "/me", VALID).await, StatusCode::OK);
        let valid = started.elapsed();
        let started = Instant::now();
        assert_eq!(
            status(&self.app, "/me", UNKNOWN).await,
            StatusCode::UNAUTHORIZED
        );
        valid.max(started.elapsed())
    }

    /// Whether a round now went through Redis.
    async fn uses_redis(&self) -> bool {
        let (before, lookups) = ((self.stats)(), self.store.lookups());
        assert_eq!(status(&self.app, "/me", VALID).await, StatusCode::OK);
        let after = (self.stats)();
        (self.redis_used)(&before, &after, self.store.lookups() - lookups)
    }

    /// Waits until Redis answers again by itself: the breaker closed and
    /// five requests in a row through Redis. Returns how long it took.
    async fn recovers(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let mut streak = 0;
            while streak < 5 && self.uses_redis().await {
                streak += 1;
            }
            if streak == 5 && !(self.health)().open {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "Redis not in use again {within:?} after the fault ended: {:?}",
                (self.health)()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How long each fault lasts.
const FAULT_FOR: Duration = Duration::from_secs(2);

/// The common scenario: warm, the fault for two seconds of back-to-back
/// rounds, fault off, recovery. Only the first rounds (until three
/// commands failed) and one probe per breaker cooldown (1 s) may wait out
/// the command timeout: without a breaker every round would (200 ms or
/// more, so ten rounds in the two seconds).
async fn survives(rig: Rig, proxy: impl Fn(Fault), fault: Fault, bound: Duration) {
    // Warm: the valid key (and the unknown key's negative entry) in Redis.
    rig.round().await;
    assert!(rig.uses_redis().await, "not on Redis before the fault");
    proxy(fault);
    let (started, mut rounds, mut slow) = (Instant::now(), 0, Vec::new());
    while started.elapsed() < FAULT_FOR {
        let took = rig.round().await;
        rounds += 1;
        if took > bound {
            slow.push(took);
        }
    }
    assert!(
        slow.len() <= 3 + 3 && slow.iter().all(|d| *d < Duration::from_millis(450)),
        "{fault:?}: {} of {rounds} rounds slower than {bound:?}: {slow:?}",
        slow.len()
    );
    assert!(
        rounds >= 40,
        "{fault:?}: only {rounds} rounds in {FAULT_FOR:?}"
    );
    let (stats, health) = ((rig.stats)(), (rig.health)());
    assert!(
        (rig.skipped)(&stats, &health),
        "{fault:?}: Redis was never skipped: {health:?} {stats:?}"
    );
    proxy(Fault::Pass);
    let took = rig.recovers(Duration::from_secs(10)).await;
    eprintln!("{fault:?}: back on Redis {took:?} after the fault ended");
}

/// How fast a request must be once the breaker is open: no command timeout
/// (100 ms) in it, with room for a busy machine.
const FAST: Duration = Duration::from_millis(60);

macro_rules! fault_tests {
    ($($name:ident: $rig:ident, $fault:expr;)+) => {
        $(
            #[tokio::test]
            async fn $name() {
                let rig = $rig().await;
                let proxy = Arc::clone(&rig._proxy);
                survives(rig, move |f| proxy.set(f), $fault, FAST).await;
            }
        )+
    };
}

fault_tests! {
    redis_cache_blackhole: redis_cache_rig, Fault::Blackhole;
    redis_cache_latency_past_the_timeout: redis_cache_rig, Fault::Latency(Duration::from_millis(150));
    redis_cache_reset: redis_cache_rig, Fault::Reset;
    redis_cache_close_after_a_few_bytes: redis_cache_rig, Fault::CloseAfter(40);
    tiered_blackhole: tiered_rig, Fault::Blackhole;
    tiered_latency_past_the_timeout: tiered_rig, Fault::Latency(Duration::from_millis(150));
    tiered_reset: tiered_rig, Fault::Reset;
    tiered_close_after_a_few_bytes: tiered_rig, Fault::CloseAfter(40);
    counters_blackhole: counters_rig, Fault::Blackhole;
    counters_latency_past_the_timeout: counters_rig, Fault::Latency(Duration::from_millis(150));
    counters_reset: counters_rig, Fault::Reset;
    counters_close_after_a_few_bytes: counters_rig, Fault::CloseAfter(40);
}

/// Latency under the command timeout is no fault: Redis keeps answering,
/// slower, and the breaker stays closed.
#[tokio::test]
async fn latency_under_the_timeout_is_still_redis() {
    let rig = redis_cache_rig().await;
    rig.round().await;
    rig._proxy.set(Fault::Latency(Duration::from_millis(15)));
    for _ in 0..5 {
        let started = Instant::now();
        assert!(rig.uses_redis().await, "answered around Redis");
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
    assert_eq!((rig.health)().opened, 0);
}

/// The subscriber's connection goes through the proxy too: after a
/// blackhole it is noticed, replaced, and broadcasts reach the other
/// instance again.
#[tokio::test]
async fn tiered_subscriber_recovers_from_a_blackhole() {
    let (server, proxy) = proxied().await;
    let tiered = || async {
        TieredCache::builder(proxy.url())
            .build()
            .await
            .expect("a tiered cache")
    };
    let (a, b) = (tiered().await, tiered().await);
    let store = store();
    let id = store.create("bob", "sk_test_faults_bob", None);
    let layer_a = ApiKeyAuthLayer::new(a.clone(), store.lookup());
    let app_b = app(ApiKeyAuthLayer::new(b.clone(), store.lookup()));
    assert_eq!(
        status(&app_b, "/me", "sk_test_faults_bob").await,
        StatusCode::OK
    );
    proxy.set(Fault::Blackhole);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set(Fault::Pass);
    // B's subscriber is back (by itself) within its reconnect bound.
    let started = Instant::now();
    while !b.is_subscribed() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "B's subscriber did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A revocation on A reaches B.
    assert_eq!(
        status(&app_b, "/me", "sk_test_faults_bob").await,
        StatusCode::OK
    );
    store.revoke(id);
    let mut invalidated = false;
    for _ in 0..40 {
        // A's breaker may still be probing: try until Redis takes it.
        if layer_a
            .invalidate(&KeyHash::of("sk_test_faults_bob"))
            .await
            .is_ok()
        {
            invalidated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(invalidated, "A could not invalidate after the fault");
    let started = Instant::now();
    while status(&app_b, "/me", "sk_test_faults_bob").await != StatusCode::UNAUTHORIZED {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the revocation did not reach B"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(server);
}
