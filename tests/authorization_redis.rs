//! A principal's scopes and networks survive Redis: written by one instance
//! (through the codec, and sealed with a value secret), read by another
//! whose own key table knows nothing, on the Redis cache and the tiered
//! cache. The second instance never asks its lookup, and still refuses a
//! key its scope or network doesn't allow.
#![cfg(feature = "tiered")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Body;
use common::redis::RedisServer;
use common::*;
use http::{Request, StatusCode};
use tower::{service_fn, ServiceBuilder};
use tower_api_key::cache::{KeyCache, RedisCache, TieredCache};
use tower_api_key::{ApiKeyAuthLayer, PeerAddr, Scopes};

const ADMIN: &str = "sk_test_redis_authz_admin";
const READER: &str = "sk_test_redis_authz_reader";
const OFFICE: &str = "sk_test_redis_authz_office";
const SECRET: &str = "a value secret of at least sixteen bytes";

type Svc = tower::util::BoxCloneService<Request<Body>, axum::response::Response, Infallible>;

/// `/admin` requires `admin`, `/reports` `reports:read` or `admin`; every
/// request comes from `PeerAddr`.
fn instance<C: KeyCache<Principal = Client>>(cache: C, store: &KeyStore) -> Svc {
    let inner = service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(axum::response::Response::new(Body::from("ok")))
    });
    let auth = ApiKeyAuthLayer::new(cache, store.lookup())
        .require_scopes("/admin", Scopes::one("admin"))
        .require_scopes("/reports", Scopes::any(["reports:read", "admin"]));
    tower::util::BoxCloneService::new(ServiceBuilder::new().layer(auth).service(inner))
}

fn request(path: &str, key: &str, peer: &str) -> Request<Body> {
    let mut req = get_with_key(path, key);
    let peer: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(PeerAddr(peer));
    req
}

/// Fills Redis through `a` (which knows the keys), then asks `b` (whose
/// table is empty) the same questions: the answers must be the same.
async fn survives(a: Svc, b: Svc, b_store: &KeyStore) {
    let cases = [
        ("/admin", ADMIN, "127.0.0.1:1", StatusCode::OK),
        ("/reports", ADMIN, "127.0.0.1:1", StatusCode::OK),
        ("/reports", READER, "127.0.0.1:1", StatusCode::OK),
        ("/admin", READER, "127.0.0.1:1", StatusCode::FORBIDDEN),
        ("/reports", OFFICE, "203.0.113.5:1", StatusCode::OK),
        ("/reports", OFFICE, "[2001:db8::5]:1", StatusCode::OK),
        ("/reports", OFFICE, "198.51.100.1:1", StatusCode::FORBIDDEN),
        ("/reports", OFFICE, "[::ffff:203.0.113.9]:1", StatusCode::OK),
    ];
    for (path, key, peer, status) in cases {
        let res = send(a.clone(), request(path, key, peer)).await;
        assert_eq!(res.status, status, "A: {path} {key} from {peer}");
    }
    for (path, key, peer, status) in cases {
        let res = send(b.clone(), request(path, key, peer)).await;
        assert_eq!(res.status, status, "B: {path} {key} from {peer}");
        if status == StatusCode::FORBIDDEN {
            let code = res.json()["code"].clone();
            assert!(
                code == "insufficient_scope" || code == "address_not_allowed",
                "{code}"
            );
        }
    }
    assert_eq!(b_store.lookups(), 0, "B answered from Redis alone");
}

fn stores() -> (KeyStore, KeyStore) {
    let store = KeyStore::new();
    store.create_scoped("admin", ADMIN, &["admin"], None);
    store.create_scoped("reader", READER, &["reports:read"], None);
    store.create_scoped(
        "office",
        OFFICE,
        &["reports:read"],
        Some(&["203.0.113.0/24", "2001:db8::/32"]),
    );
    (store, KeyStore::new())
}

#[tokio::test]
async fn scopes_and_networks_survive_a_sealed_redis_cache() {
    let server = RedisServer::start();
    let (store, empty) = stores();
    let cache = || async {
        RedisCache::builder(server.url())
            .value_secret(SECRET)
            .build()
            .await
            .expect("a Redis cache")
    };
    let a = instance(cache().await, &store);
    let b = instance(cache().await, &empty);
    survives(a, b, &empty).await;
    // The seal holds the scopes: the reader's entry rewritten by hand to
    // carry `admin` is refused (a degraded miss, then C's table, which has
    // no such key: 401), never an admission to /admin.
    let names = cache().await;
    let reader = names.redis_key(&tower_api_key::KeyHash::of(READER));
    let value = server.cli(&["get", &reader]);
    assert!(value.contains("reports:read"), "{value}");
    let forged = value.trim_end().replacen("reports:read", "admin", 1);
    assert_eq!(
        server.cli(&["set", &reader, &forged, "keepttl"]).trim(),
        "OK"
    );
    let c = instance(cache().await, &empty);
    let res = send(c, request("/admin", READER, "127.0.0.1:1")).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{}", res.body);
    assert_eq!(empty.lookups(), 1, "the forged entry sent C to its table");
    let dump = common::redis::dump(server.port);
    assert!(
        !dump.iter().any(|(_, v)| v.contains(OFFICE)),
        "no plaintext key"
    );
}

#[tokio::test]
async fn scopes_and_networks_survive_the_tiered_cache() {
    let server = RedisServer::start();
    let (store, empty) = stores();
    let cache = || async {
        let cache = TieredCache::builder(server.url())
            .value_secret(SECRET)
            .build()
            .await
            .expect("a tiered cache");
        // B's L1 is empty: its first reads are Redis's.
        cache
    };
    let a = instance(cache().await, &store);
    let b = instance(cache().await, &empty);
    survives(a, b, &empty).await;
}
