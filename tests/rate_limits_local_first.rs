//! Local-first rate limits (private `redis-server`s, and a 3-master
//! cluster): hot keys decided with no round trip, their counts reaching
//! Redis in batches, exact near the limit, over-admission across instances
//! within the documented bound, Redis's clock whatever the instances' say,
//! batches kept while Redis is down.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::redis::{RedisCluster, RedisServer, Target};
use tower_api_key::ratelimit::{
    Algorithm, CounterKey, CounterStore, LocalFirst, LocalFirstBuilder, RedisCounters,
};
use tower_api_key::{KeyHash, RateLimit};

const FIXED: Algorithm = Algorithm::FixedWindow;

/// An hour's window: no test runs across its edge but by chance.
fn limits(quota: u64) -> Vec<RateLimit> {
    vec![RateLimit::new("hour", quota, Duration::from_secs(3600)).unwrap()]
}

/// Seconds to the end of the hour's window on the real clock (Redis's, on
/// loopback).
fn to_the_hours_end() -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    3600 - now.as_secs() % 3600
}

/// Past the hour's edge first when it is this close: a test that counts
/// a whole quota in one window must not straddle two.
async fn clear_of_the_hours_end(needs: Duration) {
    let left = to_the_hours_end();
    if left <= needs.as_secs() {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

fn key() -> CounterKey {
    CounterKey::key(&KeyHash::of("sk_live_LOCALFIRSTSECRET"))
}

async fn strict(url: &str, prefix: &str) -> RedisCounters {
    RedisCounters::builder(url)
        .prefix(prefix)
        .build()
        .await
        .expect("counters")
}

/// A local-first store whose batches only go when the test flushes.
async fn manual(url: &str, prefix: &str) -> LocalFirstBuilder {
    LocalFirst::builder(strict(url, prefix).await).interval(Duration::from_secs(3600))
}

/// What Redis has counted for the key (a hit of cost 0 reads it).
async fn counted_in_redis(counters: &RedisCounters, quota: u64) -> u64 {
    let read = counters
        .hit(&key(), &limits(quota), FIXED, 0)
        .await
        .unwrap();
    quota - read.quotas[0].remaining
}

async fn hits(store: &LocalFirst, quota: u64, n: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        let counted = store.hit(&key(), &limits(quota), FIXED, 1).await.unwrap();
        admitted += usize::from(counted.admitted);
    }
    admitted
}

async fn a_hot_key_is_decided_here_and_its_counts_reach_redis(t: &Target<'_>, prefix: &str) {
    clear_of_the_hours_end(Duration::from_secs(20)).await;
    let store = manual(&t.url(), prefix).await.build();
    let redis = strict(&t.url(), prefix).await;
    assert_eq!(hits(&store, 1_000, 300).await, 300);
    let stats = store.stats();
    assert_eq!(
        (stats.asked_redis, stats.decided_locally),
        (1, 299),
        "{stats:?}"
    );
    assert_eq!(counted_in_redis(&redis, 1_000).await, 1, "not sent yet");
    store.flush().await.unwrap();
    assert_eq!(counted_in_redis(&redis, 1_000).await, 300);
    assert_eq!(store.stats().batches, 1);
}

async fn near_the_limit_every_request_asks_and_one_instance_is_exact(t: &Target<'_>, prefix: &str) {
    clear_of_the_hours_end(Duration::from_secs(20)).await;
    let store = manual(&t.url(), prefix).await.build();
    assert_eq!(hits(&store, 100, 150).await, 100, "exact on one instance");
    let stats = store.stats();
    // The first asks; 2..=90 are decided here (90 % of 100); from then on
    // each asks, the first of them carrying the 89 admitted here.
    assert_eq!(stats.decided_locally, 89, "{stats:?}");
    assert_eq!(stats.asked_redis, 61, "{stats:?}");
    let redis = strict(&t.url(), prefix).await;
    assert_eq!(counted_in_redis(&redis, 100).await, 100);
}

async fn two_instances_over_admit_at_most_one_interval(t: &Target<'_>, prefix: &str) {
    clear_of_the_hours_end(Duration::from_secs(20)).await;
    // Two instances at twice the limit: 10 requests each per interval.
    const QUOTA: u64 = 100;
    const PER_INTERVAL: usize = 10;
    let a = manual(&t.url(), prefix).await.build();
    let b = manual(&t.url(), prefix).await.build();
    let mut admitted = 0;
    for _ in 0..(2 * QUOTA as usize / (2 * PER_INTERVAL)) {
        for _ in 0..PER_INTERVAL {
            admitted += hits(&a, QUOTA, 1).await + hits(&b, QUOTA, 1).await;
        }
        a.flush().await.unwrap();
        b.flush().await.unwrap();
    }
    let bound = QUOTA as usize + 2 * PER_INTERVAL;
    assert!(
        (QUOTA as usize..=bound).contains(&admitted),
        "{admitted} admitted: the quota, and at most one interval's traffic more ({bound})"
    );
    // Once spent, every further request is refused, on either instance.
    assert_eq!(hits(&a, QUOTA, 5).await + hits(&b, QUOTA, 5).await, 0);
}

async fn skewed_clocks_count_in_redis_windows(t: &Target<'_>, prefix: &str) {
    // Each instance's clock a whole window off, one ahead and one behind:
    // were they read as they are, no two would agree on the window.
    let hour = Duration::from_secs(3600);
    clear_of_the_hours_end(Duration::from_secs(15)).await;
    let ahead = manual(&t.url(), prefix)
        .await
        .clock(move || SystemTime::now() + hour)
        .build();
    let behind = manual(&t.url(), prefix)
        .await
        .clock(move || SystemTime::now() - hour)
        .build();
    let mut admitted = 0;
    for _ in 0..15 {
        for store in [&ahead, &behind] {
            let counted = store.hit(&key(), &limits(10), FIXED, 1).await.unwrap();
            if counted.admitted {
                admitted += 1;
                // Counted in Redis's window: what remains is the quota less
                // what both admitted (but the other's last, not yet heard).
                let remaining = counted.quotas[0].remaining;
                assert!(
                    (10 - admitted..=11 - admitted).contains(&remaining),
                    "{remaining} left after {admitted}"
                );
                // Reset at the end of Redis's hour, not a skewed clock's
                // idea of it (give or take a second on each side).
                let reset = counted.quotas[0].reset;
                let expected = to_the_hours_end();
                assert!(
                    reset + 2 >= expected && reset <= expected + 2,
                    "{:?}, {expected} s to the hour's end",
                    counted.quotas
                );
            }
            store.flush().await.unwrap();
        }
    }
    assert_eq!(admitted, 10, "one window, Redis's");
    let stats = ahead.stats();
    assert!(stats.decided_locally > 0, "and decided here: {stats:?}");
}

on_each_target!(
    a_hot_key_is_decided_here_and_its_counts_reach_redis,
    near_the_limit_every_request_asks_and_one_instance_is_exact,
    two_instances_over_admit_at_most_one_interval,
    skewed_clocks_count_in_redis_windows,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_go_by_themselves_every_interval() {
    clear_of_the_hours_end(Duration::from_secs(20)).await;
    let server = RedisServer::start();
    let store = LocalFirst::builder(strict(&server.url(), "auto:").await)
        .interval(Duration::from_millis(50))
        .build();
    assert_eq!(hits(&store, 1_000, 50).await, 50);
    let redis = strict(&server.url(), "auto:").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while counted_in_redis(&redis, 1_000).await != 50 {
        assert!(Instant::now() < deadline, "never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.stats().batches >= 1);
    assert_eq!(store.stats().asked_redis, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_kept_until_redis_is_back() {
    clear_of_the_hours_end(Duration::from_secs(40)).await;
    let mut server = RedisServer::start();
    let store = manual(&server.url(), "down:").await.build();
    assert_eq!(hits(&store, 1_000, 21).await, 21);
    server.kill(); // and back empty, later: the one count Redis had is gone.
    assert!(store.flush().await.is_err(), "Redis is down");
    assert_eq!(store.stats().batch_failures, 1);
    // Decided here still (the store heard from Redis recently).
    assert_eq!(hits(&store, 1_000, 4).await, 4);
    server.restart();
    // Up before the first retry, so that few retries (none, mostly) fail:
    // each one that does may be replayed, and widens what is allowed below.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.cli(&["ping"]).trim() != "PONG" {
        assert!(
            Instant::now() < deadline,
            "the restarted server never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut failed_retries = 0;
    while store.flush().await.is_err() {
        failed_retries += 1;
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let redis = strict(&server.url(), "down:").await;
    // The 20 kept and the 4 since, at least once: a batch given up while
    // the connection was dropping (the 20 before the restart, or the 24 of
    // a retry while it reconnected) may also be replayed by the client once
    // it reconnects (at least once, by design), and nothing else.
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut counted = counted_in_redis(&redis, 1_000).await;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        counted = counted_in_redis(&redis, 1_000).await;
    }
    let replays = |extra: u64| {
        (0..=1).any(|first: u64| {
            (0..=failed_retries).any(|retries: u64| first * 20 + retries * 24 == extra)
        })
    };
    assert!(
        counted >= 24 && replays(counted - 24),
        "the 20 kept and the 4 since, and only whole batches replayed \
         ({failed_retries} retries failed): {counted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_forgets_the_counts_here_and_in_redis() {
    let server = RedisServer::start();
    let store = manual(&server.url(), "reset:").await.build();
    assert_eq!(hits(&store, 5, 8).await, 5);
    store.reset(&key()).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(hits(&store, 5, 8).await, 5, "a fresh quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_picks_the_mode() {
    use tower_api_key::ratelimit::{RateLimitSettings, RateLimiter};
    let server = RedisServer::start();
    let url = server.url();
    for mode in ["strict", "local-first"] {
        let settings = RateLimitSettings::from_vars(|name| match name {
            "APIKEY_RATELIMIT_BACKEND" => Some("redis".to_owned()),
            "APIKEY_RATELIMIT_MODE" => Some(mode.to_owned()),
            "REDIS_URL" => Some(url.clone()),
            _ => None,
        });
        let limiter = RateLimiter::from_settings_strict(settings)
            .await
            .expect("redis settings");
        let store = if mode == "strict" {
            "RedisCounters"
        } else {
            "LocalFirst"
        };
        assert!(
            format!("{limiter:?}").contains(store),
            "{mode}: {limiter:?}"
        );
    }
}
