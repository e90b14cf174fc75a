//! Single flight under concurrency, and the revocation race: a lookup that
//! was in flight when a key was revoked must not write its stale verdict
//! afterwards, nor answer requests that arrived after the revocation.

mod common;

use std::future::{ready, Future, Ready};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tower_api_key::cache::{CacheError, CacheRead, KeyCache, MemoryCache, Ttl, Verdict};
use tower_api_key::{ApiKeyAuthLayer, KeyHash};

const SECRET: &str = "sk_test_race";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_on_a_cold_key_make_one_lookup() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    store.delay_ms.store(100, Ordering::SeqCst);
    let auth = layer(&store);
    let app = app(auth.clone());
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(app, get_with_key("/me", SECRET)).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(store.lookups(), 1);
    let stats = auth.stats();
    assert_eq!(stats.lookups, 1);
    assert_eq!(stats.misses + stats.hits, 200);
    assert_eq!(stats.coalesced, stats.misses - 1);
    assert!(stats.coalesced > 100, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_keys_share_one_lookup_too() {
    let store = KeyStore::new();
    store.delay_ms.store(100, Ordering::SeqCst);
    let app = app(layer(&store));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(app, get_with_key("/me", "sk_nope")).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(store.lookups(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_finish_when_the_request_that_started_the_lookup_goes_away() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    store.delay_ms.store(300, Ordering::SeqCst);
    let app = app(layer(&store));
    let leader = tokio::spawn(send(app.clone(), get_with_key("/me", SECRET)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let followers: Vec<_> = (0..5)
        .map(|_| tokio::spawn(send(app.clone(), get_with_key("/me", SECRET))))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    for f in followers {
        assert_eq!(f.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(store.lookups(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_lookup_cannot_undo_a_revocation() {
    let race = revocation_race(MemoryCache::<Client>::new()).await;
    // The request that started before the revocation used the row it read.
    assert_eq!(race.old, StatusCode::OK);
    assert!(
        race.during_answered_before_release,
        "joined the stale lookup"
    );
    assert_eq!(race.during, StatusCode::UNAUTHORIZED);
    assert_eq!(race.after, StatusCode::UNAUTHORIZED);
    assert_eq!(race.lookups, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_race_test_catches_a_cache_with_plain_invalidate() {
    let race = revocation_race(NaiveCache::new()).await;
    assert_eq!(
        race.after,
        StatusCode::OK,
        "plain insert/invalidate lets the stale lookup re-validate the revoked key"
    );
    assert!(!race.during_answered_before_release);
    assert_eq!(
        race.during,
        StatusCode::OK,
        "and a later request shares the stale lookup"
    );
}

#[tokio::test]
async fn a_cached_principal_past_its_expiry_is_rejected_even_if_the_cache_keeps_it() {
    // NaiveCache ignores TTLs, so only the hit-path expiry check stands
    // between an expired key and the handler.
    let store = KeyStore::new();
    store.create("short", SECRET, Some(now_ms() + 200));
    let auth = ApiKeyAuthLayer::new(NaiveCache::new(), store.lookup());
    let app = app(auth.clone());
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = send(app.clone(), get_with_key("/me", SECRET)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(store.lookups(), 1, "rejected from the cached entry itself");
}

/// A cache whose reads fail: the layer must answer from the lookup.
#[derive(Clone)]
struct BrokenCache;

impl KeyCache for BrokenCache {
    type Principal = Client;
    type Token = ();
    type Get = Ready<Result<CacheRead<Client, ()>, CacheError>>;

    fn get(&self, _: &KeyHash) -> Self::Get {
        ready(Err(CacheError::new("connection refused")))
    }

    fn refresh_token(&self, _: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        ready(Err(CacheError::new("connection refused")))
    }

    fn put(
        &self,
        _: KeyHash,
        _: (),
        _: Verdict<Client>,
        _: Ttl,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        ready(Err(CacheError::new("connection refused")))
    }

    fn invalidate(&self, _: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        ready(Err(CacheError::new("connection refused")))
    }

    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
        ready(Err(CacheError::new("connection refused")))
    }
}

#[tokio::test]
async fn a_failing_cache_degrades_to_the_lookup() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let auth = ApiKeyAuthLayer::new(BrokenCache, store.lookup());
    let app = app(auth.clone());
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(
        status(&app, "/me", "sk_bad").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(store.lookups(), 3);
    assert_eq!(auth.stats().cache_errors, 3);
    assert!(auth.invalidate(&KeyHash::of(SECRET)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bypass_request_never_shares_a_lookup_that_started_before_it() {
    let store = KeyStore::new();
    let id = store.create("alice", SECRET, None);
    let app = app(layer(&store).bypass_cache("/admin/keys"));

    let gate = store.arm_gate();
    let in_flight = tokio::spawn(send(app.clone(), get_with_key("/me", SECRET)));
    gate.row_read.notified().await; // read the row while the key was valid
    store.revoke(id); // revoked in the table, not (yet) invalidated

    let bypass = tokio::spawn(send(app.clone(), get_with_key("/admin/keys", SECRET)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        bypass.is_finished(),
        "the bypass request waited on the older lookup"
    );
    assert_eq!(bypass.await.unwrap().status, StatusCode::UNAUTHORIZED);

    gate.release.notify_one();
    in_flight.await.unwrap();
    assert_eq!(store.lookups(), 2);
}
