//! Redis can't mint a key: with a value secret, a verdict written into Redis
//! by hand, or a valid value copied under another key's name, is refused
//! (a degraded miss: looked up, overwritten), on the Redis cache and the
//! tiered cache. Without one, the copy is accepted: the attack is real.
#![cfg(feature = "tiered")]

mod common;

use common::redis::RedisServer;
use common::{app, status, KeyStore};
use http::StatusCode;
use tower_api_key::cache::{KeyCache, RedisCache, TieredCache};
use tower_api_key::{ApiKeyAuthLayer, KeyHash, Lookup};

const ADMIN: &str = "sk_test_sealed_admin";
const MADE_UP: &str = "sk_test_sealed_never_issued";

async fn redis(server: &RedisServer, secret: Option<&str>) -> RedisCache<common::Client> {
    let builder = RedisCache::builder(server.url());
    let builder = match secret {
        Some(secret) => builder.value_secret(secret),
        None => builder,
    };
    builder.build().await.expect("a Redis cache")
}

fn layer<C: KeyCache<Principal = common::Client>>(
    cache: C,
    store: &KeyStore,
) -> ApiKeyAuthLayer<C, impl Lookup<common::Client>> {
    ApiKeyAuthLayer::new(cache, store.lookup())
}

/// The admin key cached, then its value copied under the made-up key's
/// name, as `SET apikey:{<sha256 of the made-up key>} <the admin's value>`.
async fn copy_attack<C>(
    server: &RedisServer,
    names: &RedisCache<common::Client>,
    cache: C,
) -> (StatusCode, usize, u64)
where
    C: KeyCache<Principal = common::Client>,
{
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let layer = layer(cache, &store);
    let app = app(layer.clone());
    assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    let admin_value = server.cli(&["get", &names.redis_key(&KeyHash::of(ADMIN))]);
    let made_up = names.redis_key(&KeyHash::of(MADE_UP));
    assert_eq!(
        server
            .cli(&["set", &made_up, admin_value.trim_end()])
            .trim(),
        "OK"
    );
    let answer = status(&app, "/me", MADE_UP).await;
    // The admin key itself still answers from Redis.
    let lookups = store.lookups();
    assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(
        store.lookups(),
        lookups,
        "the admin's own entry was refused"
    );
    (answer, store.lookups(), layer.stats().cache_errors)
}

#[tokio::test]
async fn without_a_secret_a_copied_value_makes_a_made_up_key_an_admin() {
    let server = RedisServer::start();
    let cache = redis(&server, None).await;
    let (answer, lookups, _) = copy_attack(&server, &cache, cache.clone()).await;
    assert_eq!(answer, StatusCode::OK, "the attack this guards against");
    assert_eq!(lookups, 1, "the made-up key was never looked up");
}

#[tokio::test]
async fn with_a_secret_a_copied_value_is_refused_looked_up_and_overwritten() {
    let server = RedisServer::start();
    let cache = redis(&server, Some("the cache secret, 32 bytes long")).await;
    let (answer, lookups, cache_errors) = copy_attack(&server, &cache, cache.clone()).await;
    assert_eq!(answer, StatusCode::UNAUTHORIZED);
    assert_eq!(lookups, 2, "the made-up key was looked up");
    assert_eq!(cache_errors, 1, "the forged value counted");
    // Overwritten: now a sealed negative entry.
    let value = server.cli(&["get", &cache.redis_key(&KeyHash::of(MADE_UP))]);
    assert!(
        value.starts_with("s1:") && value.contains(r#""kind":"invalid""#),
        "{value}"
    );
}

#[tokio::test]
async fn with_a_secret_a_verdict_written_by_hand_is_refused() {
    let server = RedisServer::start();
    let cache = redis(&server, Some("the cache secret, 32 bytes long")).await;
    let store = KeyStore::new();
    let app = app(layer(cache.clone(), &store));
    let forged = r#"{"v":1,"kind":"valid","principal":{"id":1,"name":"root","expires_at":null,"owner":null}}"#;
    let name = cache.redis_key(&KeyHash::of(MADE_UP));
    for value in [
        forged.to_owned(),
        // With a tag of the right shape, made without the secret.
        format!("s1:{}:{forged}", "0".repeat(32)),
    ] {
        server.cli(&["set", &name, &value]);
        assert_eq!(
            status(&app, "/me", MADE_UP).await,
            StatusCode::UNAUTHORIZED,
            "{value}"
        );
    }
    assert_eq!(store.lookups(), 2);
}

#[tokio::test]
async fn tiered_with_a_secret_refuses_a_copied_value_and_l1_keeps_the_lookups_verdict() {
    let server = RedisServer::start();
    let names = redis(&server, None).await;
    let cache = TieredCache::builder(server.url())
        .value_secret("the cache secret, 32 bytes long")
        .build()
        .await
        .expect("a tiered cache");
    let (answer, lookups, _) = copy_attack(&server, &names, cache.clone()).await;
    assert_eq!(answer, StatusCode::UNAUTHORIZED);
    assert_eq!(lookups, 2);
    // L1 holds the lookup's verdict, not the forged one: with Redis
    // emptied, the made-up key is still refused, from L1, with no lookup.
    server.cli(&["flushall"]);
    let store = KeyStore::new();
    let app = app(layer(cache, &store));
    assert_eq!(status(&app, "/me", MADE_UP).await, StatusCode::UNAUTHORIZED);
    assert_eq!(store.lookups(), 0, "answered by L1's negative entry");
}

#[tokio::test]
async fn instances_with_the_same_secret_share_sealed_verdicts() {
    let server = RedisServer::start();
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let a = app(layer(
        redis(&server, Some("a secret shared by A and B")).await,
        &store,
    ));
    let b = app(layer(
        redis(&server, Some("a secret shared by A and B")).await,
        &store,
    ));
    assert_eq!(status(&a, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(status(&b, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(store.lookups(), 1, "B did not read A's sealed entry");
    // Another secret can't read them: a miss, then its own entry.
    let c = app(layer(
        redis(&server, Some("another instance's secret")).await,
        &store,
    ));
    assert_eq!(status(&c, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(store.lookups(), 2);
}

/// A replay: the admin's sealed value saved from Redis, the key revoked,
/// the value written back (with no `PX`, so Redis would keep it forever).
/// Within what the entry had left it is still a valid seal (the limit the
/// README states); past the end the value carries, it is refused, looked
/// up, and the revocation holds.
#[tokio::test]
async fn with_a_secret_a_replayed_value_dies_with_the_entry_it_was() {
    let server = RedisServer::start();
    let cache = redis(&server, Some("the cache secret, 32 bytes long")).await;
    let store = KeyStore::new();
    let id = store.create("admin", ADMIN, None);
    let layer = layer(cache.clone(), &store).positive_ttl(std::time::Duration::from_millis(400));
    let app = app(layer.clone());
    assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    let name = cache.redis_key(&KeyHash::of(ADMIN));
    let saved = server.cli(&["get", &name]);
    assert!(saved.contains(r#""until":"#), "{saved}");
    store.revoke(id);
    layer
        .invalidate(&layer.hash_key(ADMIN))
        .await
        .expect("invalidated");
    // Past the saved value's own end.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(server.cli(&["set", &name, saved.trim_end()]).trim(), "OK");
    assert_eq!(server.cli(&["pttl", &name]).trim(), "-1", "kept forever");
    let lookups = store.lookups();
    assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        store.lookups(),
        lookups + 1,
        "the replayed value was not trusted"
    );
}

#[tokio::test]
async fn a_value_secret_shorter_than_16_bytes_is_refused() {
    let server = RedisServer::start();
    for secret in ["", "short secret"] {
        let built = RedisCache::<common::Client>::builder(server.url())
            .value_secret(secret)
            .build()
            .await;
        let error = built.expect_err("refused").to_string();
        assert!(error.contains("at least 16"), "{error}");
    }
    let tiered = TieredCache::<common::Client>::builder(server.url())
        .value_secret("15 bytes secret")
        .build()
        .await;
    assert!(tiered.is_err());
}
