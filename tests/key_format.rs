//! Key formats with a checksum: a key that fails is refused before any cache
//! read or lookup, with the same answer as an unknown key; legacy keys pass
//! only with the switch; a flood of forged keys costs no lookup and no cache
//! entry.

mod common;

use common::*;
use http::StatusCode;
use tower_api_key::cache::MemoryCache;
use tower_api_key::{ApiKeyAuthLayer, KeyFormat, Stats};

fn keyed() -> KeyFormat {
    KeyFormat::keyed("sk_live_", ["the newest secret", "an older one"]).unwrap()
}

/// A key of the right shape whose checksum is not ours (made with another
/// secret): what a deliberate flood sends.
fn forged() -> String {
    KeyFormat::keyed("sk_live_", ["a guess"])
        .unwrap()
        .generate()
        .unwrap()
        .into_parts()
        .0
}

/// A layer with the keyed format in front of a store holding one valid key
/// (looked up once, and cached).
struct Formatted<L> {
    store: KeyStore,
    key: tower_api_key::GeneratedKey,
    cache: MemoryCache<Client>,
    auth: ApiKeyAuthLayer<MemoryCache<Client>, L>,
    app: axum::Router,
}

async fn formatted() -> Formatted<impl tower_api_key::Lookup<Client>> {
    let store = KeyStore::new();
    let format = keyed();
    let key = format.generate().unwrap();
    store.create_hashed("alice", *key.hash(), None);
    let cache = MemoryCache::new();
    let auth = ApiKeyAuthLayer::new(cache.clone(), store.lookup()).key_format(format);
    let app = app(auth.clone());
    assert_eq!(status(&app, "/me", key.secret()).await, StatusCode::OK);
    Formatted {
        store,
        key,
        cache,
        auth,
        app,
    }
}

#[tokio::test]
async fn a_generated_key_passes_and_a_forged_one_costs_nothing() {
    let Formatted {
        store, auth, app, ..
    } = formatted().await;
    assert_eq!(store.lookups(), 1);

    // Refused exactly as an unknown key is (one that reached the lookup,
    // on a layer without a format), and before any work.
    let plain = common::app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()));
    let unknown = send(plain, get_with_key("/me", "sk_test_unknown")).await;
    assert_eq!(store.lookups(), 2, "the unknown key was looked up");
    let forged_res = send(app.clone(), get_with_key("/me", &forged())).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(forged_res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        forged_res.header("www-authenticate"),
        unknown.header("www-authenticate")
    );
    assert_eq!(forged_res.json(), unknown.json());
    // A legacy key is refused by the format too: not allowed here.
    assert_eq!(
        status(&app, "/me", "sk_test_unknown").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(store.lookups(), 2);
    let mut want = Stats::default();
    want.misses = 1;
    want.lookups = 1;
    want.format_rejected = 2;
    assert_eq!(auth.stats(), want);
}

#[tokio::test]
async fn a_flood_of_forged_keys_makes_no_lookup_and_no_cache_entry() {
    let Formatted {
        store,
        key,
        cache,
        auth,
        app,
    } = formatted().await;
    let shapes = [
        forged(),
        format!("sk_live_{}", "A".repeat(43)),
        "sk_live_short".to_owned(),
    ];
    for i in 0..3_000 {
        let key = if i % 3 == 0 {
            forged()
        } else {
            shapes[i % 3].clone()
        };
        assert_eq!(status(&app, "/me", &key).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(store.lookups(), 1, "only the valid key was looked up");
    assert_eq!(cache.entry_count(), 1, "no entry for a forged key");
    assert_eq!(auth.stats().format_rejected, 3_000);
    assert_eq!(auth.stats().misses, 1);
    // The valid key still hits.
    assert_eq!(status(&app, "/me", key.secret()).await, StatusCode::OK);
    assert_eq!(auth.stats().hits, 1);
}

#[tokio::test]
async fn legacy_keys_pass_with_the_switch_but_the_prefix_still_needs_its_checksum() {
    let store = KeyStore::new();
    store.create("legacy", "old-style-key-1", None);
    let auth = ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup())
        .key_format(keyed().allow_legacy(true));
    let app = app(auth.clone());
    assert_eq!(status(&app, "/me", "old-style-key-1").await, StatusCode::OK);
    assert_eq!(
        status(&app, "/me", "old-style-unknown").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(store.lookups(), 2, "legacy keys go to the lookup");
    assert_eq!(
        status(&app, "/me", &forged()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(store.lookups(), 2, "a forged formatted key does not");
    assert_eq!(auth.stats().format_rejected, 1);
}

#[tokio::test]
async fn an_optional_route_refuses_a_forged_key_and_a_public_one_never_checks() {
    let store = KeyStore::new();
    let auth = ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup())
        .key_format(keyed())
        .public("/health")
        .optional("/hello");
    let app = app(auth.clone());
    assert_eq!(
        status(&app, "/hello", &forged()).await,
        StatusCode::UNAUTHORIZED
    );
    let anon = send(app.clone(), get_anon("/hello")).await;
    assert_eq!(anon.status, StatusCode::OK);
    assert_eq!(status(&app, "/health", &forged()).await, StatusCode::OK);
    assert_eq!(auth.stats().format_rejected, 1);
    assert_eq!(store.lookups(), 0);
}

#[tokio::test]
async fn a_public_checksum_catches_typos() {
    let store = KeyStore::new();
    let format = KeyFormat::crc32("ghp_").unwrap();
    let key = format.generate().unwrap();
    store.create_hashed("bob", *key.hash(), None);
    let auth = ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).key_format(format);
    let app = app(auth.clone());
    let mut typo = key.secret().as_bytes().to_vec();
    typo[7] = if typo[7] == b'Q' { b'R' } else { b'Q' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(status(&app, "/me", &typo).await, StatusCode::UNAUTHORIZED);
    assert_eq!(store.lookups(), 0);
    assert_eq!(status(&app, "/me", key.secret()).await, StatusCode::OK);
    assert_eq!(store.lookups(), 1);
}
