//! Usage tracking: one record per key per interval whatever the traffic,
//! batches that go by themselves, a failing recorder's data kept and
//! merged, the pending set bounded (drops counted), rejected requests never
//! noted, a shutdown bounded by its deadline.
#![cfg(feature = "usage")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use http::StatusCode;
use tower_api_key::cache::MemoryCache;
use tower_api_key::usage::{KeyUse, UsageTracker};
use tower_api_key::{ApiKeyAuthLayer, BoxError, KeyHash};

/// What a recorder was handed: per call, (hash, uses, last used).
type Calls = Arc<Mutex<Vec<Vec<(KeyHash, u64, SystemTime)>>>>;

/// A recorder that fails its first `failures` calls.
fn recorder(
    calls: &Calls,
    failures: usize,
) -> impl Fn(Vec<KeyUse<Client>>) -> std::future::Ready<Result<(), BoxError>> {
    let calls = Arc::clone(calls);
    let tried = Arc::new(AtomicUsize::new(0));
    move |batch: Vec<KeyUse<Client>>| {
        if tried.fetch_add(1, Ordering::SeqCst) < failures {
            return std::future::ready(Err("the database is down".into()));
        }
        let seen = batch
            .iter()
            .map(|u| (u.hash, u.uses, u.last_used))
            .collect();
        calls.lock().unwrap().push(seen);
        std::future::ready(Ok(()))
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn ten_thousand_requests_on_one_key_are_one_record() {
    let store = KeyStore::new();
    store.create("alice", "sk_usage_1", None);
    let calls = Calls::default();
    let usage = UsageTracker::builder(recorder(&calls, 0))
        .interval(HOUR)
        .build();
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).usage(usage.clone()));
    let before = SystemTime::now();
    for _ in 0..10_000 {
        assert_eq!(status(&app, "/me", "sk_usage_1").await, StatusCode::OK);
    }
    let after = SystemTime::now();
    assert!(
        calls.lock().unwrap().is_empty(),
        "nothing written on the request path"
    );
    usage.flush().await.unwrap();
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1, "one call");
    assert_eq!(calls[0].len(), 1, "one record");
    let (hash, uses, last) = calls[0][0];
    assert_eq!(hash, KeyHash::of("sk_usage_1"));
    assert_eq!(uses, 10_000);
    assert!(
        before <= last && last <= after,
        "{before:?} {last:?} {after:?}"
    );
    assert_eq!(usage.stats().recorded_keys, 1);
    assert_eq!(usage.stats().pending, 0);
}

#[tokio::test]
async fn a_recorder_that_fails_twice_then_gets_the_latest_instant_and_the_full_count() {
    let store = KeyStore::new();
    store.create("alice", "sk_usage_2", None);
    let calls = Calls::default();
    let usage = UsageTracker::builder(recorder(&calls, 2))
        .interval(HOUR)
        .build();
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).usage(usage.clone()));
    let mut last_round_began = SystemTime::now();
    for round in 0..3 {
        if round == 2 {
            last_round_began = SystemTime::now();
        }
        for _ in 0..100 {
            assert_eq!(status(&app, "/me", "sk_usage_2").await, StatusCode::OK);
        }
        let flushed = usage.flush().await;
        assert_eq!(flushed.is_ok(), round == 2, "round {round}: {flushed:?}");
    }
    let latest = SystemTime::now();
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    let (_, uses, last) = calls[0][0];
    assert_eq!(uses, 300, "nothing lost across the failures");
    assert!(
        last_round_began <= last && last <= latest,
        "the latest instant, not an earlier round's"
    );
    let stats = usage.stats();
    assert_eq!(
        (stats.failures, stats.batches, stats.dropped_uses),
        (2, 1, 0)
    );
}

#[tokio::test]
async fn batches_go_every_interval_with_each_key_once() {
    let store = KeyStore::new();
    store.create("a", "sk_usage_a", None);
    store.create("b", "sk_usage_b", None);
    let calls = Calls::default();
    let usage = UsageTracker::builder(recorder(&calls, 0))
        .interval(Duration::from_millis(100))
        .build();
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).usage(usage));
    for _ in 0..50 {
        assert_eq!(status(&app, "/me", "sk_usage_a").await, StatusCode::OK);
        assert_eq!(status(&app, "/me", "sk_usage_b").await, StatusCode::OK);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while calls.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no batch went");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = calls.lock().unwrap();
    let mut per_key = std::collections::HashMap::new();
    for call in calls.iter() {
        let mut in_this = std::collections::HashSet::new();
        for (hash, uses, _) in call {
            assert!(in_this.insert(*hash), "a key twice in one batch");
            *per_key.entry(*hash).or_insert(0) += uses;
        }
    }
    assert_eq!(per_key[&KeyHash::of("sk_usage_a")], 50);
    assert_eq!(per_key[&KeyHash::of("sk_usage_b")], 50);
}

#[tokio::test]
async fn the_pending_set_is_bounded_and_what_it_drops_is_counted() {
    let store = KeyStore::new();
    for i in 0..500 {
        store.create("k", &format!("sk_usage_many_{i}"), None);
    }
    let calls = Calls::default();
    let usage = UsageTracker::builder(recorder(&calls, 0))
        .interval(HOUR)
        .max_pending(64)
        .build();
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).usage(usage.clone()));
    for i in 0..500 {
        let key = format!("sk_usage_many_{i}");
        assert_eq!(status(&app, "/me", &key).await, StatusCode::OK);
    }
    let pending = usage.stats().pending;
    assert!((1..=64).contains(&pending), "{pending}");
    usage.flush().await.unwrap();
    let recorded: u64 = calls.lock().unwrap()[0].iter().map(|c| c.1).sum();
    let stats = usage.stats();
    assert_eq!(recorded, pending);
    assert_eq!(recorded + stats.dropped_uses, 500, "{stats:?}");
}

#[tokio::test]
async fn rejected_and_public_requests_are_not_noted() {
    let store = KeyStore::new();
    let calls = Calls::default();
    let usage = UsageTracker::builder(recorder(&calls, 0))
        .interval(HOUR)
        .build();
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup())
        .public("/health")
        .usage(usage.clone()));
    assert_eq!(
        status(&app, "/me", "sk_unknown").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(&app, "/health", "sk_unknown").await, StatusCode::OK);
    assert_eq!(usage.stats().pending, 0);
    usage.flush().await.unwrap();
    assert!(
        calls.lock().unwrap().is_empty(),
        "an empty flush calls nobody"
    );
}

#[tokio::test]
async fn shutdown_waits_at_most_its_deadline_and_a_hung_recorder_times_out() {
    let store = KeyStore::new();
    store.create("alice", "sk_usage_3", None);
    let usage = UsageTracker::builder(|_batch: Vec<KeyUse<Client>>| async {
        std::future::pending::<Result<(), BoxError>>().await
    })
    .interval(HOUR)
    .record_timeout(Duration::from_millis(300))
    .build();
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).usage(usage.clone()));
    assert_eq!(status(&app, "/me", "sk_usage_3").await, StatusCode::OK);
    let start = tokio::time::Instant::now();
    assert!(usage.shutdown(Duration::from_millis(100)).await.is_err());
    assert!(start.elapsed() < Duration::from_secs(2));
    // The batch went on in the background; the recorder's own timeout
    // fails it, and it is merged back.
    assert_eq!(usage.stats().pending, 0, "with the recorder");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = usage.stats();
    assert_eq!((stats.failures, stats.pending), (1, 1), "{stats:?}");
}
