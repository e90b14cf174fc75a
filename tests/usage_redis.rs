//! Usage tracking across instances on one Redis (a private `redis-server`,
//! and a 3-master cluster): one record per key per interval in total, the
//! other instances' uses summed into it or recorded at the next claim,
//! nothing of the secret in Redis, and each instance recording alone while
//! Redis is down.
//!
//! Every batch here is one the test sends (`batches_on_timer(false)`): an
//! instance's own timer would claim a marker in the middle of the test's
//! sequence (it did, once in a full run: B's batch took A's marker as it
//! expired, and A's 5 went to a later record). Only the markers' expiry is
//! waited for, in Redis's time, always longer than it needs.
#![cfg(all(feature = "usage", feature = "redis"))]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis::{RedisCluster, RedisServer, Target};
use common::*;
use http::StatusCode;
use tower_api_key::cache::MemoryCache;
use tower_api_key::usage::{KeyUse, RedisUsage, UsageTracker};
use tower_api_key::{ApiKeyAuthLayer, BoxError, KeyHash};

/// Every recorder call of every instance: (instance, hash, uses).
type Calls = Arc<Mutex<Vec<(&'static str, Vec<(KeyHash, u64)>)>>>;

async fn instance(
    name: &'static str,
    calls: &Calls,
    url: &str,
    prefix: &str,
    interval: Duration,
) -> UsageTracker<Client> {
    failing_instance(name, calls, url, prefix, interval, 0).await
}

/// An instance whose recorder fails its first `failures` calls.
async fn failing_instance(
    name: &'static str,
    calls: &Calls,
    url: &str,
    prefix: &str,
    interval: Duration,
    failures: usize,
) -> UsageTracker<Client> {
    let calls = Arc::clone(calls);
    let tried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let redis = RedisUsage::connect(url, prefix).await.expect("redis");
    UsageTracker::builder(move |batch: Vec<KeyUse<Client>>| {
        if tried.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < failures {
            return std::future::ready(Err::<(), BoxError>("the database is down".into()));
        }
        let seen = batch.iter().map(|u| (u.hash, u.uses)).collect();
        calls.lock().unwrap().push((name, seen));
        std::future::ready(Ok::<(), BoxError>(()))
    })
    .interval(interval)
    .batches_on_timer(false)
    .shared_in(redis)
    .build()
}

async fn use_key(store: &KeyStore, usage: &UsageTracker<Client>, secret: &str, n: usize) {
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).usage(usage.clone()));
    for _ in 0..n {
        assert_eq!(status(&app, "/me", secret).await, StatusCode::OK);
    }
}

fn total(calls: &Calls) -> u64 {
    calls
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, seen)| seen.iter().map(|s| s.1))
        .sum()
}

async fn two_instances_make_one_record_per_interval(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    store.create("alice", "sk_usage_shared", None);
    let calls = Calls::default();
    // The marker lasts an interval.
    let interval = Duration::from_millis(400);
    let a = instance("a", &calls, &t.url(), prefix, interval).await;
    let b = instance("b", &calls, &t.url(), prefix, interval).await;
    use_key(&store, &a, "sk_usage_shared", 50).await;
    use_key(&store, &b, "sk_usage_shared", 30).await;
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "one record in total: {calls:?}");
        assert_eq!(calls[0].0, "a");
        assert_eq!(calls[0].1, vec![(KeyHash::of("sk_usage_shared"), 50)]);
    }
    // B's 30 wait in Redis; B claims them at its next batch once the
    // marker is free, with no new uses.
    assert_eq!(b.stats().pending, 1, "b keeps the key to claim again");
    b.flush().await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 1, "still within the interval");
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    b.flush().await.unwrap();
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[1].0, "b");
        assert_eq!(calls[1].1, vec![(KeyHash::of("sk_usage_shared"), 30)]);
    }
    assert_eq!(total(&calls), 80, "every use recorded, once");
    // All recorded: the next claim finds nothing and drops the key.
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    b.flush().await.unwrap();
    assert_eq!(b.stats().pending, 0);
    assert_eq!(calls.lock().unwrap().len(), 2);
    for tracker in [&a, &b] {
        assert_eq!(tracker.stats().shared_errors, 0);
    }
}

async fn uses_noted_before_the_claim_are_summed_into_it(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    store.create("bob", "sk_usage_summed", None);
    let calls = Calls::default();
    let interval = Duration::from_millis(400);
    let a = instance("a", &calls, &t.url(), prefix, interval).await;
    let b = instance("b", &calls, &t.url(), prefix, interval).await;
    // A takes the marker first with its 10; B's 20 and then A's next 5
    // meet in Redis and go in one record at the next claim.
    use_key(&store, &a, "sk_usage_summed", 10).await;
    a.flush().await.unwrap();
    use_key(&store, &b, "sk_usage_summed", 20).await;
    b.flush().await.unwrap();
    use_key(&store, &a, "sk_usage_summed", 5).await;
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    a.flush().await.unwrap();
    let calls = calls.lock().unwrap();
    let per_call: Vec<u64> = calls.iter().map(|c| c.1[0].1).collect();
    assert_eq!(per_call, vec![10, 25], "{calls:?}");
}

/// The claimer's recorder fails: the uses it took from Redis are kept
/// and recorded at its next batch (its own marker is no obstacle).
async fn a_failed_record_keeps_the_uses_it_claimed(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    store.create("dan", "sk_usage_retry", None);
    let calls = Calls::default();
    let interval = Duration::from_millis(300);
    let a = failing_instance("a", &calls, &t.url(), prefix, interval, 1).await;
    let b = instance("b", &calls, &t.url(), prefix, interval).await;
    use_key(&store, &b, "sk_usage_retry", 20).await;
    b.flush().await.unwrap();
    use_key(&store, &a, "sk_usage_retry", 50).await;
    // b holds the marker: a's 50 wait in Redis.
    a.flush().await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 1);
    // Once b's marker is gone a claims them; its record fails, the next
    // carries the same 50 (its own marker is no obstacle).
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    assert!(a.flush().await.is_err(), "the first record fails");
    a.flush().await.unwrap();
    assert_eq!(a.stats().failures, 1);
    let calls = calls.lock().unwrap();
    let records: Vec<(&str, u64)> = calls.iter().map(|c| (c.0, c.1[0].1)).collect();
    assert_eq!(records, vec![("b", 20), ("a", 50)], "{calls:?}");
}

on_each_target!(
    two_instances_make_one_record_per_interval,
    uses_noted_before_the_claim_are_summed_into_it,
    a_failed_record_keeps_the_uses_it_claimed,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_hashes_only_and_down_each_instance_records_alone() {
    let mut server = RedisServer::start();
    let store = KeyStore::new();
    store.create("carol", "sk_usage_SECRETVALUE", None);
    let calls = Calls::default();
    let a = instance("a", &calls, &server.url(), "u:", Duration::from_secs(3600)).await;
    let b = instance("b", &calls, &server.url(), "u:", Duration::from_secs(3600)).await;
    use_key(&store, &b, "sk_usage_SECRETVALUE", 3).await;
    b.flush().await.unwrap();
    let keys = server.cli(&["--scan"]);
    assert!(!keys.contains("SECRETVALUE"), "{keys}");
    assert!(
        keys.contains(&KeyHash::of("sk_usage_SECRETVALUE").to_hex()),
        "{keys}"
    );
    server.kill();
    use_key(&store, &a, "sk_usage_SECRETVALUE", 4).await;
    a.flush().await.unwrap();
    let calls_now = calls.lock().unwrap().clone();
    assert_eq!(calls_now.len(), 2, "{calls_now:?}");
    assert_eq!(
        calls_now[1],
        ("a", vec![(KeyHash::of("sk_usage_SECRETVALUE"), 4)])
    );
    assert_eq!(a.stats().shared_errors, 1);
}
