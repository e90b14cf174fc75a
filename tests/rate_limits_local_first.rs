//! Local-first rate limits (private `redis-server`s, and a 3-master
//! cluster): hot keys decided here from units leased out of Redis, no
//! admission beyond the quota across 2 and 4 instances at 2× and 10× the
//! limit (bursts and steady), leases given back (by themselves once idle,
//! all on a flush) so the quota is spent exactly, a refusal held for an
//! interval, Redis's clock whatever the instances' say, and a give-back
//! whose answer is lost applied once.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::proxy::{Fault, FaultProxy};
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

/// A local-first store whose idle leases go back only when the test
/// flushes.
async fn manual(url: &str, prefix: &str) -> LocalFirstBuilder {
    LocalFirst::builder(strict(url, prefix).await).interval(Duration::from_secs(3600))
}

/// What Redis has counted for the key, held leases included (a hit of cost
/// 0 reads it).
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

async fn a_hot_key_is_decided_here_from_its_lease(t: &Target<'_>, prefix: &str) {
    clear_of_the_hours_end(Duration::from_secs(20)).await;
    let store = manual(&t.url(), prefix).await.build();
    let redis = strict(&t.url(), prefix).await;
    assert_eq!(hits(&store, 10_000, 3_000).await, 3_000);
    let stats = store.stats();
    // Leases double while spent quickly, up to 10 % of the quota (1,000):
    // a round trip per lease.
    let local = stats.decided_locally as f64 / 3_000.0;
    assert!(local >= 0.99, "{stats:?}");
    assert_eq!(stats.decided_locally + stats.asked_redis, 3_000);
    // Redis counts what was admitted and what this instance still holds.
    let held = counted_in_redis(&redis, 10_000).await - 3_000;
    assert!(held <= 1_000, "{held} held");
    // Given back: Redis counts exactly what was admitted.
    store.flush().await.unwrap();
    assert_eq!(counted_in_redis(&redis, 10_000).await, 3_000);
}

/// `instances` stores on one key, `traffic` requests in all, sent round
/// robin, with a flush of every store every `steady` requests (`None`: a
/// burst, no flush until the end).
async fn admitted_across(
    t: &Target<'_>,
    prefix: &str,
    instances: usize,
    quota: u64,
    traffic: usize,
    steady: Option<usize>,
) -> (usize, Vec<LocalFirst>) {
    let mut stores = Vec::new();
    for _ in 0..instances {
        stores.push(manual(&t.url(), prefix).await.build());
    }
    let mut admitted = 0;
    for i in 0..traffic {
        admitted += hits(&stores[i % instances], quota, 1).await;
        if steady.is_some_and(|every| (i + 1) % every == 0) {
            for store in &stores {
                store.flush().await.unwrap();
            }
        }
    }
    (admitted, stores)
}

async fn no_instance_admits_beyond_the_quota(t: &Target<'_>, prefix: &str) {
    const QUOTA: u64 = 100;
    for instances in [2, 4] {
        for times in [2, 10] {
            for steady in [None, Some(25)] {
                clear_of_the_hours_end(Duration::from_secs(30)).await;
                let prefix = format!("{prefix}{instances}x{times}{}:", steady.is_some());
                let traffic = times * QUOTA as usize;
                let (admitted, stores) =
                    admitted_across(t, &prefix, instances, QUOTA, traffic, steady).await;
                let case = format!("{instances} instances, {times}x, steady {steady:?}");
                assert!(admitted as u64 <= QUOTA, "{case}: {admitted} admitted");
                // What leases held unspent comes back: the quota is spent
                // exactly, never more.
                let mut more = 0;
                for _ in 0..3 {
                    for store in &stores {
                        store.flush().await.unwrap();
                    }
                    for store in &stores {
                        more += hits(store, QUOTA, QUOTA as usize).await;
                    }
                }
                assert_eq!(
                    admitted + more,
                    QUOTA as usize,
                    "{case}: {admitted} + {more}"
                );
            }
        }
    }
}

async fn skewed_clocks_count_in_redis_windows(t: &Target<'_>, prefix: &str) {
    // Each instance's clock a whole window off, one ahead and one behind:
    // were they read as they are, no two would agree on the window.
    let hour = Duration::from_secs(3600);
    clear_of_the_hours_end(Duration::from_secs(15)).await;
    let ahead = manual(&t.url(), prefix)
        .await
        .lease_share(0.5)
        .clock(move || SystemTime::now() + hour)
        .build();
    let behind = manual(&t.url(), prefix)
        .await
        .lease_share(0.5)
        .clock(move || SystemTime::now() - hour)
        .build();
    let mut admitted = 0;
    for _ in 0..15 {
        for store in [&ahead, &behind] {
            let counted = store.hit(&key(), &limits(10), FIXED, 1).await.unwrap();
            if counted.admitted {
                admitted += 1;
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
        }
    }
    for store in [&ahead, &behind] {
        store.flush().await.unwrap();
    }
    admitted += hits(&ahead, 10, 10).await + hits(&behind, 10, 10).await;
    assert_eq!(admitted, 10, "one window, Redis's");
    assert!(
        ahead.stats().decided_locally > 0,
        "and decided here: {:?}",
        ahead.stats()
    );
}

/// Requests on one key at once on one instance: steps in flight together,
/// leases landing between them, and (with a short interval) rounds giving
/// back and topping up as they run; every unit leased is admitted here or
/// given back, none is lost between answers (Redis counts exactly what was
/// admitted).
async fn concurrent_steps_lose_no_lease(t: &Target<'_>, prefix: &str) {
    clear_of_the_hours_end(Duration::from_secs(30)).await;
    let shapes = [(1_000u64, 16, 50), (100, 16, 25)];
    for (interval, (quota, tasks, each)) in [3_600_000, 5]
        .into_iter()
        .flat_map(|ms| shapes.map(|shape| (Duration::from_millis(ms), shape)))
    {
        let prefix = format!("{prefix}{quota}{interval:?}:");
        let store = manual(&t.url(), &prefix).await.interval(interval).build();
        let running: Vec<_> = (0..tasks)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { hits(&store, quota, each).await })
            })
            .collect();
        let mut admitted = 0;
        for task in running {
            admitted += task.await.unwrap();
        }
        let offered = tasks * each;
        let case = format!("quota {quota}, interval {interval:?}");
        if offered < quota as usize {
            assert_eq!(admitted, offered, "{case}: refused under it");
        } else {
            assert!(admitted as u64 <= quota, "{case}: {admitted} admitted");
        }
        store.flush().await.unwrap();
        let counters = strict(&t.url(), &prefix).await;
        assert_eq!(
            counted_in_redis(&counters, quota).await,
            admitted as u64,
            "{case}: leased units lost"
        );
        // And the rest of the quota is there to spend.
        let more = hits(&store, quota, quota as usize).await;
        assert_eq!(admitted + more, quota as usize, "{case}");
    }
}

on_each_target!(
    a_hot_key_is_decided_here_from_its_lease,
    concurrent_steps_lose_no_lease,
    no_instance_admits_beyond_the_quota,
    skewed_clocks_count_in_redis_windows,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_holds_here_for_an_interval() {
    clear_of_the_hours_end(Duration::from_secs(20)).await;
    let server = RedisServer::start();
    let store = LocalFirst::builder(strict(&server.url(), "refused:").await)
        .interval(Duration::from_millis(300))
        .build();
    assert_eq!(hits(&store, 5, 5).await, 5);
    let asked = store.stats().asked_redis;
    // The sixth asks and is refused; the next ones are refused here.
    assert_eq!(hits(&store, 5, 50).await, 0);
    let stats = store.stats();
    assert_eq!(stats.asked_redis, asked + 1, "{stats:?}");
    let refused = store.hit(&key(), &limits(5), FIXED, 1).await.unwrap();
    assert!(!refused.admitted && refused.quotas[0].retry_after.is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(hits(&store, 5, 1).await, 0);
    assert_eq!(store.stats().asked_redis, asked + 2, "asked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_leases_go_back_by_themselves() {
    clear_of_the_hours_end(Duration::from_secs(20)).await;
    let server = RedisServer::start();
    let store = LocalFirst::builder(strict(&server.url(), "idle:").await)
        .interval(Duration::from_millis(50))
        .build();
    assert_eq!(hits(&store, 1_000, 50).await, 50);
    let redis = strict(&server.url(), "idle:").await;
    // Leased (held beyond the 50) and, once idle, given back by the store's
    // own task: polled, not raced.
    let deadline = Instant::now() + Duration::from_secs(5);
    while counted_in_redis(&redis, 1_000).await != 50 {
        assert!(Instant::now() < deadline, "never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        store.stats().batches >= 1,
        "given back: {:?}",
        store.stats()
    );
    assert!(
        store.stats().decided_locally > 0,
        "from a lease: {:?}",
        store.stats()
    );
}

/// A give-back reaches Redis and its answer is lost with its connection:
/// sent again with the same id, it is not applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_whose_answer_is_lost_is_applied_once() {
    clear_of_the_hours_end(Duration::from_secs(30)).await;
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port).await;
    let store = manual(&proxy.url(), "once:").await.build();
    let redis = strict(&server.url(), "once:").await;
    assert_eq!(hits(&store, 1_000, 100).await, 100);
    let with_lease = counted_in_redis(&redis, 1_000).await;
    assert!(with_lease > 100, "a lease held: {with_lease}");
    proxy.set(Fault::DropReplies);
    assert!(store.flush().await.is_err(), "the answer never came");
    // Redis applied it: what it counts is what was admitted.
    assert_eq!(counted_in_redis(&redis, 1_000).await, 100);
    proxy.set(Fault::Pass);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.flush().await.is_err() {
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sent again, with its id: not applied again (it would have taken the
    // lease off the 100 admitted).
    assert_eq!(counted_in_redis(&redis, 1_000).await, 100);
    assert!(store.stats().batch_failures >= 1);
}

/// Redis killed with a give-back owed, and back empty: the give-back goes
/// once it is up (to counts that are gone: never below zero), and the
/// store counts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_owed_while_redis_is_down_goes_when_it_is_back() {
    clear_of_the_hours_end(Duration::from_secs(40)).await;
    let mut server = RedisServer::start();
    let store = manual(&server.url(), "down:").await.build();
    assert_eq!(hits(&store, 1_000, 30).await, 30);
    server.kill();
    assert!(store.flush().await.is_err(), "Redis is down");
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.flush().await.is_err() {
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let redis = strict(&server.url(), "down:").await;
    assert_eq!(
        counted_in_redis(&redis, 1_000).await,
        0,
        "the server came back empty"
    );
    assert_eq!(hits(&store, 1_000, 20).await, 20);
    store.flush().await.unwrap();
    assert_eq!(counted_in_redis(&redis, 1_000).await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_forgets_the_counts_here_and_in_redis() {
    let server = RedisServer::start();
    let store = manual(&server.url(), "reset:").await.build();
    assert_eq!(hits(&store, 5, 8).await, 5);
    store.reset(&key()).await.unwrap();
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
