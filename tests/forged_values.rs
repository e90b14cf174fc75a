//! What Redis holds besides verdicts, forged by hand by someone who can
//! write to it but doesn't hold the value secret: each forgery costs a
//! lookup or a refusal, never an admission. Counts the scripts could not
//! have written read as a spent quota; a forged version refuses fills; a
//! forged owner listing invalidates more, never less; forged or replayed
//! broadcasts only drop in-process entries.
#![cfg(feature = "tiered")]

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use http::StatusCode;
use tower_api_key::cache::{RedisCache, TieredCache};
use tower_api_key::ratelimit::{Algorithm, CounterKey, CounterStore, LocalFirst, RedisCounters};
use tower_api_key::{ApiKeyAuthLayer, KeyHash, RateLimit};

const SECRET: &str = "a value secret of at least sixteen bytes";
const ALICE: &str = "sk_test_forged_alice";
const MALLORY: &str = "sk_test_forged_made_up";

fn limits() -> Vec<RateLimit> {
    vec![RateLimit::new("hour", 100, Duration::from_secs(3600)).unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_the_script_never_writes_refuse_they_never_admit() {
    let server = RedisServer::start();
    let strict = RedisCounters::builder(server.url()).build().await.unwrap();
    let local = LocalFirst::new(RedisCounters::builder(server.url()).build().await.unwrap());
    let window = |secs: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        (now / 3600 + secs).to_string()
    };
    for name in ["strict", "local-first"] {
        let hit = |key: CounterKey| {
            let (strict, local) = (strict.clone(), local.clone());
            async move {
                match name {
                    "strict" => strict.hit(&key, &limits(), Algorithm::FixedWindow, 1).await,
                    _ => local.hit(&key, &limits(), Algorithm::FixedWindow, 1).await,
                }
            }
        };
        for (i, forged) in [
            // A count reset below zero, not a number, not whole, a window
            // far ahead with nothing counted in it.
            ["hour/3600:c", "-1000000"],
            ["hour/3600:c", "nothing"],
            ["hour/3600:c", "0.5"],
            ["hour/3600:i", &window(5)],
        ]
        .iter()
        .enumerate()
        {
            let key = CounterKey::key(&KeyHash::of(format!("sk_forged_{name}_{i}")));
            assert!(hit(key).await.unwrap().admitted, "{name}: a fresh key");
            let redis_key = strict.redis_key(&key);
            assert_eq!(
                server
                    .cli(&["hset", &redis_key, forged[0], forged[1]])
                    .trim(),
                "0"
            );
            // Local-first gives back the lease it took before the forgery
            // (its own to spend): given back to forged counts, it must not
            // reopen them.
            local.flush().await.unwrap();
            let counted = hit(key).await.unwrap();
            assert!(!counted.admitted, "{name}: {forged:?} admitted {counted:?}");
            assert_eq!(counted.quotas[0].remaining, 0, "{name}: {forged:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_version_refuses_fills_it_never_admits() {
    let server = RedisServer::start();
    let cache: RedisCache<Client> = RedisCache::builder(server.url())
        .value_secret(SECRET)
        .build()
        .await
        .unwrap();
    let store = KeyStore::new();
    store.create("alice", ALICE, None);
    let auth = ApiKeyAuthLayer::new(cache.clone(), store.lookup());
    let app = app(auth.clone());
    // The version moved while each lookup ran: its fill is refused, the
    // next request looks up again, every answer is the table's.
    for (n, secret) in [ALICE, MALLORY].into_iter().enumerate() {
        let version = format!("{}:v", cache.redis_key(&KeyHash::of(secret)));
        let expected = if secret == ALICE {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        let gate = store.arm_gate();
        let request = tokio::spawn({
            let app = app.clone();
            async move { status(&app, "/me", secret).await }
        });
        gate.row_read.notified().await;
        server.cli(&["set", &version, &format!("forged{n}")]);
        gate.release.notify_one();
        assert_eq!(request.await.unwrap(), expected, "{secret}");
        let looked_up = store.lookups();
        assert_eq!(status(&app, "/me", secret).await, expected, "{secret}");
        assert_eq!(
            store.lookups(),
            looked_up + 1,
            "{secret}: the forged version let a fill in"
        );
        // With nothing moving it, the next fill holds.
        assert_eq!(status(&app, "/me", secret).await, expected, "{secret}");
        assert_eq!(store.lookups(), looked_up + 1, "{secret}");
    }
    // Nothing unsealed was written, and nothing was admitted that the
    // table doesn't know.
    for (key, value) in common::redis::dump(server.port) {
        if !key.ends_with(":v") {
            assert!(value.starts_with("s1:"), "{key}: {value}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_owner_listing_invalidates_more_never_less() {
    let server = RedisServer::start();
    let cache: RedisCache<Client> = RedisCache::builder(server.url())
        .value_secret(SECRET)
        .build()
        .await
        .unwrap();
    let store = KeyStore::new();
    store.create_owned("acme", "sk_test_forged_acme", "acme");
    store.create("bob", "sk_test_forged_bob", None);
    let auth = ApiKeyAuthLayer::new(cache.clone(), store.lookup());
    let app = app(auth.clone());
    for secret in ["sk_test_forged_acme", "sk_test_forged_bob"] {
        assert_eq!(status(&app, "/me", secret).await, StatusCode::OK);
    }
    assert_eq!(store.lookups(), 2);
    // Bob's hash written into acme's listing, and garbage with it.
    let listing = server
        .cli(&["--scan", "--pattern", "*{o:*"])
        .lines()
        .next()
        .expect("acme's listing")
        .to_owned();
    let bob = KeyHash::of("sk_test_forged_bob").to_hex();
    server.cli(&["zadd", &listing, "99999999999999", &bob]);
    server.cli(&["zadd", &listing, "99999999999999", "not a key hash"]);
    store.revoke_owner("acme");
    auth.invalidate_owner("acme").await.unwrap();
    // Acme's key is gone; Bob's was invalidated too (one more lookup),
    // and is still valid.
    assert_eq!(
        status(&app, "/me", "sk_test_forged_acme").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&app, "/me", "sk_test_forged_bob").await,
        StatusCode::OK
    );
    assert_eq!(store.lookups(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_broadcasts_only_drop_in_process_entries() {
    let server = RedisServer::start();
    let store = KeyStore::new();
    store.create("alice", ALICE, None);
    let cache = TieredCache::builder(server.url())
        .value_secret(SECRET)
        .build()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cache.is_subscribed() {
        assert!(Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let auth = ApiKeyAuthLayer::new(cache.clone(), store.lookup());
    let app = app(auth.clone());
    assert_eq!(status(&app, "/me", ALICE).await, StatusCode::OK);
    assert_eq!(status(&app, "/me", MALLORY).await, StatusCode::UNAUTHORIZED);
    let channel = "apikey:invalidations";
    let alice = KeyHash::of(ALICE).to_hex();
    for message in [
        "garbage".to_owned(),
        format!("0000000000000001/k:{alice}"),
        "0000000000000001/*".to_owned(),
        format!("0000000000000001/k:{}", KeyHash::of(MALLORY).to_hex()),
    ] {
        let heard = cache.stats().broadcasts_received;
        server.cli(&["publish", channel, &message]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.stats().broadcasts_received == heard {
            assert!(Instant::now() < deadline, "{message}: never heard");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The L1 entry may be gone; the answer is the same, from Redis or
        // the table, for the valid key and the made-up one alike.
        assert_eq!(
            status(&app, "/me", ALICE).await,
            StatusCode::OK,
            "{message}"
        );
        assert_eq!(
            status(&app, "/me", MALLORY).await,
            StatusCode::UNAUTHORIZED,
            "{message}"
        );
    }
}
