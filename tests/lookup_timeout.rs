//! A lookup that hangs answers 503 + `Retry-After` after the lookup timeout,
//! to every request waiting on it at once, and is never cached.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{app, get_with_key, send, KeyStore};
use http::StatusCode;
use tower_api_key::cache::MemoryCache;
use tower_api_key::{ApiKeyAuthLayer, DEFAULT_LOOKUP_TIMEOUT};

const SECRET: &str = "sk_test_timeout";

#[tokio::test]
async fn a_hung_lookup_answers_every_waiter_503_at_the_timeout_and_is_not_cached() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    store.delay_ms.store(60_000, Ordering::SeqCst);
    let layer = ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup())
        .lookup_timeout(Duration::from_millis(300));
    let app = app(layer.clone());
    let started = Instant::now();
    let waiters = (0..8).map(|_| {
        let app = app.clone();
        tokio::spawn(async move {
            let res = send(app, get_with_key("/me", SECRET)).await;
            (res, started.elapsed())
        })
    });
    let answers = futures_util::future::join_all(waiters).await;
    for answer in answers {
        let (res, after) = answer.expect("request task");
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.header("retry-after"), Some("5"));
        assert_eq!(res.json()["code"], "lookup_unavailable");
        assert!(
            after >= Duration::from_millis(300) && after < Duration::from_secs(3),
            "answered after {after:?}"
        );
    }
    let stats = layer.stats();
    assert_eq!(store.lookups(), 1, "the waiters shared one lookup");
    assert_eq!((stats.lookup_timeouts, stats.lookup_errors), (1, 1));
    // Not cached: once the store answers, the key works.
    store.delay_ms.store(0, Ordering::SeqCst);
    let res = send(app, get_with_key("/me", SECRET)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(store.lookups(), 2);
}

#[tokio::test]
async fn the_default_is_five_seconds_and_a_prompt_lookup_never_meets_it() {
    assert_eq!(DEFAULT_LOOKUP_TIMEOUT, Duration::from_secs(5));
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    store.delay_ms.store(50, Ordering::SeqCst);
    let layer = ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup());
    let app = app(layer.clone());
    let res = send(app, get_with_key("/me", SECRET)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(layer.stats().lookup_timeouts, 0);
}
