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
    let cache = redis(&server, Some("cache secret")).await;
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
    let cache = redis(&server, Some("cache secret")).await;
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
async fn tiered_with_a_secret_refuses_a_copied_value_and_keeps_it_out_of_l1() {
    let server = RedisServer::start();
    let names = redis(&server, None).await;
    let cache = TieredCache::builder(server.url())
        .value_secret("cache secret")
        .build()
        .await
        .expect("a tiered cache");
    let (answer, lookups, _) = copy_attack(&server, &names, cache.clone()).await;
    assert_eq!(answer, StatusCode::UNAUTHORIZED);
    assert_eq!(lookups, 2);
}

#[tokio::test]
async fn instances_with_the_same_secret_share_sealed_verdicts() {
    let server = RedisServer::start();
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let a = app(layer(redis(&server, Some("shared")).await, &store));
    let b = app(layer(redis(&server, Some("shared")).await, &store));
    assert_eq!(status(&a, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(status(&b, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(store.lookups(), 1, "B did not read A's sealed entry");
    // Another secret can't read them: a miss, then its own entry.
    let c = app(layer(redis(&server, Some("other")).await, &store));
    assert_eq!(status(&c, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(store.lookups(), 2);
}
