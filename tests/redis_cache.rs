//! `RedisCache` against real `redis-server` processes that the tests start:
//! shared verdicts, TTLs read back with `PTTL`, no plaintext in Redis, corrupt
//! values, the revocation race, `invalidate_all` (each on a single server and
//! on a 3-master cluster), Redis killed and restarted under load, a hung
//! Redis.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{dump, RedisCluster, RedisServer, Target};
use common::*;
use http::StatusCode;
use tower_api_key::cache::RedisCache;
use tower_api_key::{ApiKeyAuthLayer, KeyHash, Lookup};

const SECRET: &str = "sk_live_REDISSECRET_7d1e";

async fn cache(url: &str, prefix: &str) -> RedisCache<Client> {
    RedisCache::builder(url)
        .prefix(prefix)
        .pool_size(2)
        .build()
        .await
        .expect("redis cache")
}

async fn redis_layer(
    url: &str,
    prefix: &str,
    store: &KeyStore,
) -> ApiKeyAuthLayer<RedisCache<Client>, impl Lookup<Client>> {
    ApiKeyAuthLayer::new(cache(url, prefix).await, store.lookup())
}

async fn shared_verdicts(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let a = app(redis_layer(&t.url(), prefix, &store).await);
    let b = app(redis_layer(&t.url(), prefix, &store).await);
    assert_eq!(status(&a, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(status(&b, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(
        status(&a, "/me", "sk_unknown").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&b, "/me", "sk_unknown").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        store.lookups(),
        2,
        "each key looked up once across both instances"
    );
}

async fn ttls_are_set_in_redis(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    store.create("short", "sk_short_lived", Some(now_ms() + 5_000));
    let auth = redis_layer(&t.url(), prefix, &store)
        .await
        .positive_ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(10));
    let app = app(auth.clone());
    for key in [SECRET, "sk_unknown", "sk_short_lived"] {
        send(app.clone(), get_with_key("/me", key)).await;
    }
    let pttl = |k: &str| t.pttl(&auth.cache().redis_key(&KeyHash::of(k)));
    let positive = pttl(SECRET);
    assert!(
        (55_000..=60_000).contains(&positive),
        "positive PTTL {positive}"
    );
    let negative = pttl("sk_unknown");
    assert!(
        (5_000..=10_000).contains(&negative),
        "negative PTTL {negative}"
    );
    let capped = pttl("sk_short_lived");
    assert!((1..=5_000).contains(&capped), "capped PTTL {capped}");
}

async fn no_plaintext_in_redis(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let auth = redis_layer(&t.url(), prefix, &store).await;
    let app = app(auth.clone());
    send(app.clone(), get_with_key("/me", SECRET)).await;
    send(
        app.clone(),
        get_with_key("/me", &format!("{SECRET}_unknown")),
    )
    .await;
    auth.invalidate(&KeyHash::of(SECRET)).await.unwrap();
    send(app.clone(), get_with_key("/me", SECRET)).await;
    let all = t.dump();
    assert!(all.iter().any(|(k, _)| k.starts_with(prefix)), "{all:?}");
    for (k, v) in &all {
        assert!(
            !k.contains("REDISSECRET") && !v.contains("REDISSECRET"),
            "{k} = {v}"
        );
    }
}

async fn corrupt_values_are_misses_and_overwritten(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let auth = redis_layer(&t.url(), prefix, &store).await;
    let app = app(auth.clone());
    let key = auth.cache().redis_key(&KeyHash::of(SECRET));
    for garbage in ["{not json", r#"{"v":99,"kind":"valid","principal":{}}"#] {
        t.set(&key, garbage);
        let before = store.lookups();
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        assert_eq!(store.lookups(), before + 1);
        let stored = t
            .dump()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v);
        assert!(
            stored
                .as_deref()
                .is_some_and(|v| v.starts_with(r#"{"v":1,"kind":"valid""#)),
            "{stored:?}"
        );
        assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
        assert_eq!(
            store.lookups(),
            before + 1,
            "the overwritten entry is a hit"
        );
    }
    assert!(auth.stats().cache_errors >= 2);
}

async fn revocation_race_is_closed(t: &Target<'_>, prefix: &str) {
    let race = revocation_race(cache(&t.url(), prefix).await).await;
    assert_eq!(race.old, StatusCode::OK);
    assert!(race.during_answered_before_release);
    assert_eq!(race.during, StatusCode::UNAUTHORIZED);
    assert_eq!(
        race.after,
        StatusCode::UNAUTHORIZED,
        "the stale lookup wrote after the revocation"
    );
    assert_eq!(race.lookups, 2);
}

async fn revocation_reaches_the_other_instance(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    let id = store.create("alice", SECRET, None);
    let a_auth = redis_layer(&t.url(), prefix, &store).await;
    let a = app(a_auth.clone());
    let b = app(redis_layer(&t.url(), prefix, &store).await);
    assert_eq!(status(&b, "/me", SECRET).await, StatusCode::OK);
    store.revoke(id);
    a_auth.invalidate(&KeyHash::of(SECRET)).await.unwrap();
    assert_eq!(status(&b, "/me", SECRET).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&a, "/me", SECRET).await, StatusCode::UNAUTHORIZED);
}

async fn invalidate_all_empties_only_its_prefix(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    let keys: Vec<String> = (0..300).map(|i| format!("sk_many_{i}")).collect();
    for k in keys.iter().take(100) {
        store.create(k, k, None);
    }
    let auth = redis_layer(&t.url(), prefix, &store).await;
    let other = redis_layer(&t.url(), &format!("other{prefix}"), &store).await;
    let app = app(auth.clone());
    let other_app = common::app(other.clone());
    for k in &keys {
        send(app.clone(), get_with_key("/me", k)).await;
    }
    send(other_app.clone(), get_with_key("/me", &keys[0])).await;
    let ours = |all: &[(String, String)]| {
        all.iter()
            .filter(|(k, _)| k.starts_with(prefix) && !k.ends_with(":v"))
            .count()
    };
    assert_eq!(ours(&t.dump()), 300);
    auth.invalidate_all().await.unwrap();
    let all = t.dump();
    assert_eq!(ours(&all), 0, "{all:?}");
    assert!(all
        .iter()
        .any(|(k, _)| k.starts_with(&format!("other{prefix}"))));
    let before = store.lookups();
    send(app.clone(), get_with_key("/me", &keys[0])).await;
    assert_eq!(store.lookups(), before + 1);
}

// The behaviours above, each a test on a single server and on a cluster.
on_each_target!(
    shared_verdicts,
    ttls_are_set_in_redis,
    no_plaintext_in_redis,
    corrupt_values_are_misses_and_overwritten,
    revocation_race_is_closed,
    revocation_reaches_the_other_instance,
    invalidate_all_empties_only_its_prefix,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() {
    let mut server = RedisServer::start();
    let store = KeyStore::new();
    let valid: Vec<String> = (0..8).map(|i| format!("sk_load_{i}")).collect();
    for k in &valid {
        store.create(k, k, None);
    }
    let auth = redis_layer(&server.url(), "load:", &store).await;
    let app = app(auth.clone());
    let wrong = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + Duration::from_millis(2_500);
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (app, valid) = (app.clone(), valid.clone());
            let (wrong, errors, served) = (wrong.clone(), errors.clone(), served.clone());
            tokio::spawn(async move {
                let mut i = w;
                while Instant::now() < stop {
                    let (key, expect) = if i % 3 == 0 {
                        (format!("sk_bogus_{}", i % 5), StatusCode::UNAUTHORIZED)
                    } else {
                        (valid[i % valid.len()].clone(), StatusCode::OK)
                    };
                    let got = status(&app, "/me", &key).await;
                    if got.is_server_error() {
                        errors.fetch_add(1, Ordering::SeqCst);
                    } else if got != expect {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    server.restart();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(wrong.load(Ordering::SeqCst), 0, "wrong answers");
    assert_eq!(errors.load(Ordering::SeqCst), 0, "5xx answers");
    assert!(served.load(Ordering::SeqCst) > 500);
    assert!(auth.stats().cache_errors > 0, "the outage was noticed");

    // Back without a restart of ours: once refilled, the lookup count stops.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for k in &valid {
            status(&app, "/me", k).await;
        }
        let before = store.lookups();
        for _ in 0..3 {
            for k in &valid {
                assert_eq!(status(&app, "/me", k).await, StatusCode::OK);
            }
        }
        if store.lookups() == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache never came back into use"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !dump(server.port).is_empty(),
        "entries are written to the new server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_the_command_timeout_not_its_hang() {
    let server = RedisServer::start();
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let cache = RedisCache::builder(server.url())
        .prefix("hung:")
        .command_timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let app = app(ApiKeyAuthLayer::new(cache, store.lookup()));
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    let port = server.port;
    let sleeper = std::thread::spawn(move || common::redis::cli(port, &["debug", "sleep", "3"]));
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(
        status(&app, "/me", "sk_unknown").await,
        StatusCode::UNAUTHORIZED
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "two requests took {took:?} against a 3 s hang"
    );
    sleeper.join().unwrap();
}

#[tokio::test]
async fn an_unreachable_redis_at_start_still_authenticates() {
    let server = RedisServer::start();
    let url = server.url();
    drop(server);
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let cache = RedisCache::builder(url)
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("an outage is not a configuration error");
    let auth = ApiKeyAuthLayer::new(cache, store.lookup());
    let app = app(auth.clone());
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(
        status(&app, "/me", "sk_unknown").await,
        StatusCode::UNAUTHORIZED
    );
    assert!(auth.stats().cache_errors >= 2);
    assert!(RedisCache::<Client>::builder("redis://127.0.0.1:1")
        .prefix("bad{prefix}")
        .build()
        .await
        .is_err());
}
