//! Serve-stale (a valid key answers from its stale entry while the key store
//! is down, and never where it must not) and refresh-ahead (a hit on an
//! aging entry refreshes it in the background, through the single flight,
//! without letting a revocation be undone).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use common::{app, now_ms, status, KeyStore};
use http::StatusCode;
use tower_api_key::cache::{KeyCache, MemoryCache};
use tower_api_key::{ApiKeyAuthLayer, KeyHash, Lookup};

const SECRET: &str = "sk_test_stale";
const FRESH: Duration = Duration::from_millis(400);
/// Past the fresh time, well within the stale time.
const PAST_FRESH: Duration = Duration::from_millis(600);

/// A layer on `cache` whose valid keys are fresh for 400 ms and kept stale
/// for `stale_for`.
fn stale_layer<C: KeyCache<Principal = common::Client>>(
    cache: C,
    store: &KeyStore,
    stale_for: Duration,
) -> ApiKeyAuthLayer<C, impl Lookup<common::Client>> {
    ApiKeyAuthLayer::new(cache, store.lookup())
        .positive_ttl(FRESH)
        .negative_ttl(FRESH)
        .serve_stale(stale_for)
}

/// One key cached, its fresh time over, and the key store down.
async fn cached_then_store_down(app: &Router, store: &KeyStore) {
    assert_eq!(status(app, "/me", SECRET).await, StatusCode::OK);
    tokio::time::sleep(PAST_FRESH).await;
    store.fail.store(true, Ordering::SeqCst);
}

mod serve_stale {
    use super::*;

    async fn answers_from_a_stale_entry_while_the_store_is_down<C>(cache: C)
    where
        C: KeyCache<Principal = common::Client>,
    {
        let store = KeyStore::new();
        store.create("alice", SECRET, None);
        let layer = stale_layer(cache, &store, Duration::from_secs(60));
        let app = app(layer.clone());
        cached_then_store_down(&app, &store).await;
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        let stats = layer.stats();
        assert_eq!(stats.stale_served, 1);
        assert_eq!(stats.lookup_errors, 1, "the lookup was tried first");
        assert_eq!(store.lookups(), 2);
        // The store back: the lookup answers again, and its answer is cached.
        store.fail.store(false, Ordering::SeqCst);
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        assert_eq!(store.lookups(), 3);
        assert_eq!(layer.stats().stale_served, 1);
    }

    #[tokio::test]
    async fn memory() {
        answers_from_a_stale_entry_while_the_store_is_down(MemoryCache::new()).await;
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis() {
        use tower_api_key::cache::RedisCache;
        let server = common::redis::RedisServer::start();
        let cache = RedisCache::builder(server.url()).build().await.unwrap();
        answers_from_a_stale_entry_while_the_store_is_down(cache).await;
    }

    #[cfg(feature = "tiered")]
    #[tokio::test]
    async fn tiered() {
        use tower_api_key::cache::TieredCache;
        let server = common::redis::RedisServer::start();
        let cache = TieredCache::builder(server.url()).build().await.unwrap();
        answers_from_a_stale_entry_while_the_store_is_down(cache).await;
    }

    /// Redis down as well: the stale entry comes from L1, and only while L1
    /// trusts an entry cut off from the broadcasts (1 s after its fill).
    #[cfg(feature = "tiered")]
    #[tokio::test]
    async fn tiered_with_redis_down_too_serves_l1_within_its_disconnected_bound() {
        use tower_api_key::cache::TieredCache;
        let mut server = common::redis::RedisServer::start();
        let cache = TieredCache::builder(server.url()).build().await.unwrap();
        let store = KeyStore::new();
        store.create("alice", SECRET, None);
        let layer = stale_layer(cache, &store, Duration::from_secs(60));
        let app = app(layer.clone());
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        server.kill();
        tokio::time::sleep(PAST_FRESH).await;
        store.fail.store(true, Ordering::SeqCst);
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        assert_eq!(layer.stats().stale_served, 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            status(&app, "/me", SECRET).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "L1 trusted past its disconnected bound"
        );
    }

    #[tokio::test]
    async fn off_by_default() {
        let store = KeyStore::new();
        store.create("alice", SECRET, None);
        let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).positive_ttl(FRESH));
        cached_then_store_down(&app, &store).await;
        assert_eq!(
            status(&app, "/me", SECRET).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn never_past_stale_for() {
        let store = KeyStore::new();
        store.create("alice", SECRET, None);
        let layer = stale_layer(MemoryCache::new(), &store, Duration::from_millis(300));
        let app = app(layer.clone());
        cached_then_store_down(&app, &store).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            status(&app, "/me", SECRET).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(layer.stats().stale_served, 0);
    }

    #[tokio::test]
    async fn never_for_an_invalidated_key() {
        let store = KeyStore::new();
        let id = store.create("alice", SECRET, None);
        let layer = stale_layer(MemoryCache::new(), &store, Duration::from_secs(60));
        let app = app(layer.clone());
        cached_then_store_down(&app, &store).await;
        store.revoke(id);
        layer.invalidate(&KeyHash::of(SECRET)).await.unwrap();
        assert_eq!(
            status(&app, "/me", SECRET).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(layer.stats().stale_served, 0);
    }

    #[tokio::test]
    async fn never_for_a_key_of_an_invalidated_owner() {
        let store = KeyStore::new();
        store.create_owned("alice", SECRET, "acme");
        let layer = stale_layer(MemoryCache::new(), &store, Duration::from_secs(60));
        let app = app(layer.clone());
        cached_then_store_down(&app, &store).await;
        layer.invalidate_owner("acme").await.unwrap();
        assert_eq!(
            status(&app, "/me", SECRET).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn never_from_a_negative_entry() {
        let store = KeyStore::new();
        let layer = stale_layer(MemoryCache::new(), &store, Duration::from_secs(60));
        let app = app(layer.clone());
        // Unknown: cached negative; its time over; the store down.
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::UNAUTHORIZED);
        tokio::time::sleep(PAST_FRESH).await;
        store.fail.store(true, Ordering::SeqCst);
        assert_eq!(
            status(&app, "/me", SECRET).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(layer.stats().stale_served, 0);
    }

    #[tokio::test]
    async fn never_past_the_keys_own_expiry() {
        let store = KeyStore::new();
        // Expires 1.5 s from now: past its 400 ms fresh time, before the
        // stale time ends.
        store.create("alice", SECRET, Some(now_ms() + 1_500));
        let layer = stale_layer(MemoryCache::new(), &store, Duration::from_secs(60));
        let app = app(layer.clone());
        cached_then_store_down(&app, &store).await;
        // 600 ms in: stale and not yet expired.
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(
            status(&app, "/me", SECRET).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "served past its own expiry"
        );
        assert_eq!(layer.stats().stale_served, 1);
    }

    #[tokio::test]
    async fn never_for_a_key_invalidated_while_its_lookup_failed() {
        let store = KeyStore::new();
        let id = store.create("alice", SECRET, None);
        let layer = stale_layer(MemoryCache::new(), &store, Duration::from_secs(60));
        let app = app(layer.clone());
        cached_then_store_down(&app, &store).await;
        // The lookup takes 300 ms to fail; the key is revoked meanwhile.
        store.delay_ms.store(300, Ordering::SeqCst);
        let request = tokio::spawn({
            let app = app.clone();
            async move { status(&app, "/me", SECRET).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.revoke(id);
        layer.invalidate(&KeyHash::of(SECRET)).await.unwrap();
        assert_eq!(
            request.await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE,
            "the entry read before the invalidation answered"
        );
        assert_eq!(layer.stats().stale_served, 0);
    }

    #[tokio::test]
    async fn never_while_the_lookup_answers() {
        let store = KeyStore::new();
        let id = store.create("alice", SECRET, None);
        let layer = stale_layer(MemoryCache::new(), &store, Duration::from_secs(60));
        let app = app(layer.clone());
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        tokio::time::sleep(PAST_FRESH).await;
        // Revoked in the store, not invalidated: the lookup says so, and
        // the stale entry is not what answers.
        store.revoke(id);
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::UNAUTHORIZED);
        assert_eq!(layer.stats().stale_served, 0);
    }
}

#[cfg(feature = "tokio")]
mod refresh_ahead {
    use super::*;

    /// Fresh for a second; a hit in its last half refreshes.
    fn refreshing(
        store: &KeyStore,
    ) -> ApiKeyAuthLayer<MemoryCache<common::Client>, impl Lookup<common::Client>> {
        ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup())
            .positive_ttl(Duration::from_secs(1))
            .refresh_ahead(0.5)
    }

    #[tokio::test]
    async fn a_hit_on_an_aging_entry_answers_at_once_and_refreshes_it_once() {
        let store = KeyStore::new();
        store.create("alice", SECRET, None);
        // Fresh for 2 s, aging in the last 0.6 s.
        let layer = ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup())
            .positive_ttl(Duration::from_secs(2))
            .refresh_ahead(0.3);
        let app = app(layer.clone());
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        assert_eq!(layer.stats().refreshes, 0, "refreshed while young");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        // The refresh's lookup is held: requests on the aging entry don't
        // wait for it, and start no second one.
        let gate = store.arm_gate();
        for _ in 0..10 {
            assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        }
        gate.row_read.notified().await;
        assert_eq!(layer.stats().refreshes, 1);
        assert_eq!(store.lookups(), 2);
        gate.release.notify_one();
        // 2.2 s after the first fill: that entry is gone, the refreshed one
        // (filled at 1.5 s, aging from 2.9 s) answers.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        assert_eq!(store.lookups(), 2, "a request waited for a lookup");
        let stats = layer.stats();
        assert_eq!((stats.misses, stats.refreshes), (1, 1));
    }

    #[tokio::test]
    async fn an_invalidation_during_a_refresh_wins() {
        let store = KeyStore::new();
        let id = store.create("alice", SECRET, None);
        let layer = refreshing(&store);
        let app = app(layer.clone());
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let gate = store.arm_gate();
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        // The refresh has read the row (still valid); now the key is revoked.
        gate.row_read.notified().await;
        store.revoke(id);
        layer.invalidate(&KeyHash::of(SECRET)).await.unwrap();
        gate.release.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            status(&app, "/me", SECRET).await,
            StatusCode::UNAUTHORIZED,
            "the refresh's stale answer undid the revocation"
        );
        assert_eq!(store.lookups(), 3);
    }

    #[tokio::test]
    async fn a_failed_refresh_backs_off_and_the_entry_lives_out_its_ttl() {
        let store = KeyStore::new();
        store.create("alice", SECRET, None);
        let layer = refreshing(&store);
        let app = app(layer.clone());
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(600)).await;
        store.fail.store(true, Ordering::SeqCst);
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(layer.stats().lookup_errors, 1);
        // Still the old entry, until its TTL ends; and its hits don't each
        // start a refresh against the failing store.
        for _ in 0..20 {
            assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        }
        assert_eq!(
            store.lookups(),
            2,
            "a refresh per hit while the store fails"
        );
        assert_eq!(layer.stats().refreshes, 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            status(&app, "/me", SECRET).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn a_key_whose_own_expiry_ends_its_entry_is_not_refreshed() {
        let store = KeyStore::new();
        // Its 2 s TTL cut to 1.8 s by its expiry: with a refresh point it
        // would age from 0.8 s.
        store.create("alice", SECRET, Some(now_ms() + 1_800));
        let layer = ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup())
            .positive_ttl(Duration::from_secs(2))
            .refresh_ahead(0.5);
        let app = app(layer.clone());
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        assert_eq!(layer.stats().refreshes, 0);
    }

    #[test]
    #[should_panic(expected = "within 0.0..1.0")]
    fn a_part_outside_the_ttl_is_a_configuration_error() {
        let store = KeyStore::new();
        let _ = ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).refresh_ahead(1.0);
    }
}
