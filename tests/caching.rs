//! The cache in front of the lookup: positive and negative entries with their
//! own TTLs (expiring for real), the key-expiry cap, per-route bypass, and
//! lookup failures that are never cached and never a 401.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tower_api_key::cache::MemoryCache;
use tower_api_key::{ApiKeyAuthLayer, KeyHash, Stats};

const SECRET: &str = "sk_test_cache_1";

#[tokio::test]
async fn a_valid_key_is_looked_up_once_then_served_from_cache() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let auth = layer(&store);
    let app = app(auth.clone());
    for _ in 0..50 {
        let res = send(app.clone(), get_with_key("/me", SECRET)).await;
        assert_eq!(res.status, StatusCode::OK);
    }
    assert_eq!(store.lookups(), 1);
    let mut want = Stats::default();
    want.hits = 49;
    want.misses = 1;
    want.lookups = 1;
    assert_eq!(auth.stats(), want);
}

#[tokio::test]
async fn positive_entries_expire_after_the_positive_ttl() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let app = app(layer(&store).positive_ttl(Duration::from_millis(200)));
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(store.lookups(), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(store.lookups(), 2, "expired entry was looked up again");
}

#[tokio::test]
async fn negative_entries_have_their_own_ttl_and_expire() {
    let store = KeyStore::new();
    let auth = layer(&store)
        .positive_ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_millis(200));
    let app = app(auth.clone());
    for _ in 0..10 {
        let res = send(app.clone(), get_with_key("/me", "sk_unknown")).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(store.lookups(), 1, "negative entry absorbed the repeats");
    assert_eq!(auth.stats().negative_hits, 9);

    // The key is created without an invalidation: the negative entry holds
    // until its TTL runs out, then the key works.
    store.create("late", "sk_unknown", None);
    assert_eq!(
        status(&app, "/me", "sk_unknown").await,
        StatusCode::UNAUTHORIZED
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(status(&app, "/me", "sk_unknown").await, StatusCode::OK);
    assert_eq!(store.lookups(), 2);
}

#[tokio::test]
async fn creating_a_key_and_invalidating_its_hash_beats_the_negative_entry() {
    let store = KeyStore::new();
    let auth = layer(&store).negative_ttl(Duration::from_secs(60));
    let app = app(auth.clone());
    assert_eq!(
        status(&app, "/me", "sk_new").await,
        StatusCode::UNAUTHORIZED
    );
    store.create("new", "sk_new", None);
    auth.invalidate(&auth.hash_key("sk_new")).await.unwrap();
    let res = send(app.clone(), get_with_key("/me", "sk_new")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body, "new");
    assert_eq!(store.lookups(), 2);
}

#[tokio::test]
async fn revocation_takes_effect_on_the_next_request() {
    let store = KeyStore::new();
    let id = store.create("alice", SECRET, None);
    let auth = layer(&store).positive_ttl(Duration::from_secs(600));
    let app = app(auth.clone());
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    store.revoke(id);
    auth.invalidate(&KeyHash::of(SECRET)).await.unwrap();
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::UNAUTHORIZED);
    assert_eq!(store.lookups(), 2);
}

#[tokio::test]
async fn invalidate_all_drops_every_entry() {
    let store = KeyStore::new();
    store.create("a", "sk_a", None);
    store.create("b", "sk_b", None);
    let auth = layer(&store);
    let app = app(auth.clone());
    for key in ["sk_a", "sk_b", "sk_c"] {
        send(app.clone(), get_with_key("/me", key)).await;
    }
    assert_eq!(store.lookups(), 3);
    auth.invalidate_all().await.unwrap();
    for key in ["sk_a", "sk_b", "sk_c"] {
        send(app.clone(), get_with_key("/me", key)).await;
    }
    assert_eq!(store.lookups(), 6);
}

#[tokio::test]
async fn a_positive_entry_never_outlives_the_keys_expiry() {
    let store = KeyStore::new();
    store.create("short-lived", SECRET, Some(now_ms() + 300));
    let app = app(layer(&store).positive_ttl(Duration::from_secs(600)));
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(store.lookups(), 1);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let res = send(app.clone(), get_with_key("/me", SECRET)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.json()["code"], "invalid_token");
    assert_eq!(
        store.lookups(),
        2,
        "the capped entry expired and the lookup said expired"
    );
    // The expired key is now a negative entry.
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::UNAUTHORIZED);
    assert_eq!(store.lookups(), 2);
}

#[tokio::test]
async fn an_already_expired_key_is_rejected() {
    let store = KeyStore::new();
    store.create("stale", SECRET, Some(now_ms() - 1_000));
    let app = app(layer(&store));
    assert_eq!(
        send(app, get_with_key("/me", SECRET)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_lookup_error_is_503_with_retry_after_and_never_cached() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let auth = layer(&store).retry_after(Duration::from_secs(7));
    let app = app(auth.clone());
    store.fail.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let res = send(app.clone(), get_with_key("/me", SECRET)).await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.header("retry-after"), Some("7"));
        assert_eq!(res.json()["code"], "lookup_unavailable");
        assert!(res.header("www-authenticate").is_none());
    }
    assert_eq!(store.lookups(), 3, "errors are not cached");
    assert_eq!(auth.stats().lookup_errors, 3);
    store.fail.store(false, Ordering::SeqCst);
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_store_is_down() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let app = app(layer(&store));
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(
        status(&app, "/me", "sk_bad").await,
        StatusCode::UNAUTHORIZED
    );
    store.fail.store(true, Ordering::SeqCst);
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(
        status(&app, "/me", "sk_bad").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&app, "/me", "sk_uncached").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn bypass_routes_always_ask_the_lookup_and_refresh_the_cache() {
    let store = KeyStore::new();
    let id = store.create("alice", SECRET, None);
    let auth = layer(&store).bypass_cache("/admin/keys");
    let app = app(auth.clone());
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(status(&app, "/admin/keys", SECRET).await, StatusCode::OK);
    }
    assert_eq!(store.lookups(), 4);
    // Revoked in the table but not invalidated: the bypass route sees it at
    // once, and its answer replaces the cached positive entry.
    store.revoke(id);
    assert_eq!(
        status(&app, "/admin/keys", SECRET).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::UNAUTHORIZED);
    assert_eq!(store.lookups(), 5);
}

#[tokio::test]
async fn zero_ttls_disable_caching() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let app = app(layer(&store)
        .positive_ttl(Duration::ZERO)
        .negative_ttl(Duration::ZERO));
    for _ in 0..3 {
        send(app.clone(), get_with_key("/me", SECRET)).await;
        send(app.clone(), get_with_key("/me", "sk_bad")).await;
    }
    assert_eq!(store.lookups(), 6);
}

#[tokio::test]
async fn a_flood_of_unknown_keys_does_not_evict_valid_ones() {
    let store = KeyStore::new();
    let valid: Vec<String> = (0..50).map(|i| format!("sk_valid_{i}")).collect();
    for k in &valid {
        store.create(k, k, None);
    }
    let cache = MemoryCache::builder()
        .max_capacity(100)
        .max_negative_capacity(100)
        .build();
    let auth = ApiKeyAuthLayer::new(cache, store.lookup());
    let app = app(auth.clone());
    for k in &valid {
        assert_eq!(status(&app, "/me", k).await, StatusCode::OK);
    }
    for i in 0..2_000 {
        send(app.clone(), get_with_key("/me", &format!("sk_random_{i}"))).await;
    }
    assert!(
        auth.cache().negative_count() <= 100,
        "{}",
        auth.cache().negative_count()
    );
    assert_eq!(auth.cache().positive_count(), 50);
    let before = store.lookups();
    for k in &valid {
        assert_eq!(status(&app, "/me", k).await, StatusCode::OK);
    }
    assert_eq!(store.lookups(), before, "every valid key was still cached");
}

/// A million made-up keys, each missed and cached as negative, leave every
/// valid key cached and the negative entries within their bound.
#[tokio::test]
async fn a_flood_of_a_million_random_keys_leaves_every_valid_key_cached() {
    use futures_util::FutureExt;
    use tower_api_key::cache::{CacheRead, KeyCache, Ttl, Verdict};

    let cache = MemoryCache::<Client>::builder()
        .max_capacity(10_000)
        .max_negative_capacity(1_000)
        .build();
    fn now<F: std::future::Future>(f: F) -> F::Output {
        f.now_or_never()
            .expect("an in-process cache answers at once")
    }
    let valid: Vec<KeyHash> = (0..1_000)
        .map(|i| KeyHash::of(format!("sk_valid_{i}")))
        .collect();
    for (i, hash) in valid.iter().enumerate() {
        let token = now(cache.refresh_token(hash)).expect("token");
        let client = Client {
            id: i as i64,
            name: format!("c{i}"),
            expires_at: None,
            owner: None,
            scopes: Vec::new(),
            networks: None,
        };
        let verdict = Verdict::Valid(std::sync::Arc::new(client));
        now(cache.put(*hash, token, verdict, Ttl::fresh(Duration::from_secs(600)))).expect("put");
    }
    for i in 0..1_000_000u32 {
        // Random enough, and cheap: the flood's keys need not be secrets.
        let hash = KeyHash::from_bytes({
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            b[4..12].copy_from_slice(
                &u64::from(i)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .to_le_bytes(),
            );
            b
        });
        if let CacheRead::Miss { token, .. } = now(cache.get(&hash)).expect("get") {
            now(cache.put(
                hash,
                token,
                Verdict::Invalid,
                Ttl::fresh(Duration::from_secs(30)),
            ))
            .expect("put");
        }
    }
    assert!(
        cache.negative_count() <= 1_000,
        "{}",
        cache.negative_count()
    );
    for (i, hash) in valid.iter().enumerate() {
        let read = now(cache.get(hash)).expect("get");
        assert!(
            matches!(read, CacheRead::Hit(Verdict::Valid(ref c)) if c.id == i as i64),
            "valid key {i} was pushed out"
        );
    }
    assert_eq!(cache.positive_count(), 1_000);
}
