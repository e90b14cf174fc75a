//! Shared test helpers: a real SQLite key table behind a counting lookup, an
//! axum app, and a one-call HTTP helper.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "redis")]
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;

use std::borrow::Cow;
use std::future::{ready, Future, Ready};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_api_key::cache::{CacheError, CacheRead, KeyCache, MemoryCache, Ttl, Verdict};
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, Authenticated, IpNet, KeyHash, Lookup, Principal};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Client {
    pub id: i64,
    pub name: String,
    pub expires_at: Option<u64>,
    /// The tenant the key belongs to, for owner-wide invalidation.
    #[serde(default)]
    pub owner: Option<String>,
    /// The key's permissions.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Where the key may be used from (`None`: anywhere).
    #[serde(default)]
    pub networks: Option<Vec<IpNet>>,
}

impl Principal for Client {
    fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    fn owner(&self) -> Option<Cow<'_, str>> {
        self.owner.as_deref().map(Cow::Borrowed)
    }

    fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    fn allowed_networks(&self) -> Option<&[IpNet]> {
        self.networks.as_deref()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A real SQLite key table (in memory), keys stored by hash only, with knobs
/// for the faults a test needs: a delay, a failure switch, and a gate that
/// holds a lookup after it has read its row.
#[derive(Clone)]
pub struct KeyStore {
    conn: Arc<Mutex<Connection>>,
    pub lookups: Arc<AtomicUsize>,
    pub fail: Arc<AtomicBool>,
    pub delay_ms: Arc<AtomicU64>,
    gate: Arc<Mutex<Option<Gate>>>,
}

/// Holds the next lookup after it has read its row until released.
#[derive(Clone)]
pub struct Gate {
    pub row_read: Arc<Notify>,
    pub release: Arc<Notify>,
}

#[derive(Debug)]
pub struct StoreDown;

impl std::fmt::Display for StoreDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("key store unavailable")
    }
}
impl std::error::Error for StoreDown {}

impl KeyStore {
    pub fn new() -> Self {
        let conn = Connection::open_in_memory().expect("sqlite");
        conn.execute_batch(
            "CREATE TABLE api_keys (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                key_hash BLOB NOT NULL UNIQUE,
                expires_at INTEGER,
                owner TEXT,
                scopes TEXT NOT NULL DEFAULT '[]',
                networks TEXT,
                revoked INTEGER NOT NULL DEFAULT 0
            );",
        )
        .expect("schema");
        Self {
            conn: Arc::new(Mutex::new(conn)),
            lookups: Arc::default(),
            fail: Arc::default(),
            delay_ms: Arc::default(),
            gate: Arc::default(),
        }
    }

    pub fn create(&self, name: &str, secret: &str, expires_at_ms: Option<u64>) -> i64 {
        self.create_hashed(name, KeyHash::of(secret), expires_at_ms)
    }

    pub fn create_hashed(&self, name: &str, hash: KeyHash, expires_at_ms: Option<u64>) -> i64 {
        self.insert(name, hash, expires_at_ms, None)
    }

    /// A key that belongs to `owner` (a tenant).
    pub fn create_owned(&self, name: &str, secret: &str, owner: &str) -> i64 {
        self.insert(name, KeyHash::of(secret), None, Some(owner))
    }

    fn insert(
        &self,
        name: &str,
        hash: KeyHash,
        expires_at_ms: Option<u64>,
        owner: Option<&str>,
    ) -> i64 {
        self.insert_row(name, hash, expires_at_ms, owner, &[], None)
    }

    /// A key with scopes and, optionally, the networks it may be used from.
    pub fn create_scoped(
        &self,
        name: &str,
        secret: &str,
        scopes: &[&str],
        networks: Option<&[&str]>,
    ) -> i64 {
        self.insert_row(name, KeyHash::of(secret), None, None, scopes, networks)
    }

    fn insert_row(
        &self,
        name: &str,
        hash: KeyHash,
        expires_at_ms: Option<u64>,
        owner: Option<&str>,
        scopes: &[&str],
        networks: Option<&[&str]>,
    ) -> i64 {
        let scopes = serde_json::to_string(scopes).expect("scopes");
        let networks = networks.map(|n| serde_json::to_string(n).expect("networks"));
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "INSERT INTO api_keys (name, key_hash, expires_at, owner, scopes, networks)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                name,
                hash.as_bytes().as_slice(),
                expires_at_ms.map(|v| v as i64),
                owner,
                scopes,
                networks
            ],
        )
        .expect("insert");
        conn.last_insert_rowid()
    }

    pub fn revoke(&self, id: i64) {
        let conn = self.conn.lock().unwrap();
        conn.execute("UPDATE api_keys SET revoked = 1 WHERE id = ?1", [id])
            .expect("revoke");
    }

    /// Revokes every key of `owner` (the tenant is suspended).
    pub fn revoke_owner(&self, owner: &str) {
        let conn = self.conn.lock().unwrap();
        conn.execute("UPDATE api_keys SET revoked = 1 WHERE owner = ?1", [owner])
            .expect("revoke owner");
    }

    pub fn find(&self, hash: &KeyHash) -> Option<Client> {
        let conn = self.conn.lock().unwrap();
        conn.query_row(
            "SELECT id, name, expires_at, owner, scopes, networks FROM api_keys
             WHERE key_hash = ?1 AND revoked = 0",
            [hash.as_bytes().as_slice()],
            |row| {
                let scopes: String = row.get(4)?;
                let networks: Option<String> = row.get(5)?;
                Ok(Client {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    expires_at: row.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                    owner: row.get(3)?,
                    scopes: serde_json::from_str(&scopes).expect("scopes"),
                    networks: networks.map(|n| serde_json::from_str(&n).expect("networks")),
                })
            },
        )
        .optional()
        .expect("query")
    }

    pub fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    /// The next lookup reads its row, signals `row_read`, and waits for
    /// `release` before answering.
    pub fn arm_gate(&self) -> Gate {
        let gate = Gate {
            row_read: Arc::new(Notify::new()),
            release: Arc::new(Notify::new()),
        };
        *self.gate.lock().unwrap() = Some(gate.clone());
        gate
    }

    pub fn lookup(&self) -> impl Lookup<Client> {
        let store = self.clone();
        lookup_fn(move |hash: KeyHash| {
            let store = store.clone();
            async move {
                store.lookups.fetch_add(1, Ordering::SeqCst);
                let delay = store.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                if store.fail.load(Ordering::SeqCst) {
                    return Err(StoreDown);
                }
                let row = store.find(&hash);
                let gate = store.gate.lock().unwrap().take();
                if let Some(gate) = gate {
                    gate.row_read.notify_one();
                    gate.release.notified().await;
                }
                Ok(row)
            }
        })
    }
}

pub fn layer(store: &KeyStore) -> ApiKeyAuthLayer<MemoryCache<Client>, impl Lookup<Client>> {
    ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup())
}

/// An axum app with one route of each kind.
pub fn app<C, L>(layer: ApiKeyAuthLayer<C, L>) -> Router
where
    C: tower_api_key::cache::KeyCache<Principal = Client>,
    L: Lookup<Client>,
{
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/hello",
            get(|c: Option<Authenticated<Client>>| async move {
                match c {
                    Some(c) => format!("hello, {}", c.name),
                    None => "hello, stranger".to_owned(),
                }
            }),
        )
        .route(
            "/me",
            get(|Authenticated(c): Authenticated<Client>| async move { c.name.clone() }),
        )
        .route(
            "/admin/keys",
            get(|Authenticated(c): Authenticated<Client>| async move { c.name.clone() }),
        )
        .layer(layer)
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("json body")
    }
}

pub async fn send<S>(svc: S, req: Request<Body>) -> Resp
where
    S: tower::Service<Request<Body>, Response = axum::response::Response> + Clone,
    S::Error: std::fmt::Debug,
    S::Future: Future,
{
    let res = svc.oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// The status of `GET path` with `key` as a bearer token.
pub async fn status(app: &Router, path: &str, key: &str) -> StatusCode {
    send(app.clone(), get_with_key(path, key)).await.status
}

pub fn get_with_key(path: &str, key: &str) -> Request<Body> {
    Request::get(path)
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

pub fn get_anon(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// The race, step by step: a lookup reads the (still valid) row, the key is
/// revoked and invalidated, a new request arrives, then the old lookup
/// returns.
pub async fn revocation_race<C>(cache: C) -> Race
where
    C: tower_api_key::cache::KeyCache<Principal = Client>,
{
    let secret = "sk_test_race";
    let store = KeyStore::new();
    let id = store.create("alice", secret, None);
    let auth = ApiKeyAuthLayer::new(cache, store.lookup()).positive_ttl(Duration::from_secs(600));
    let app = app(auth.clone());

    let gate = store.arm_gate();
    let in_flight = tokio::spawn(send(app.clone(), get_with_key("/me", secret)));
    gate.row_read.notified().await; // the lookup has read the valid row

    store.revoke(id);
    auth.invalidate(&KeyHash::of(secret)).await.unwrap();

    // Arrives after the revocation while the stale lookup is still out: it
    // must not share it (and so must not wait for it).
    let during = tokio::spawn(send(app.clone(), get_with_key("/me", secret)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during_answered_before_release = during.is_finished();

    gate.release.notify_one(); // the stale lookup returns "valid"
    let old = in_flight.await.unwrap().status;
    let during = during.await.unwrap().status;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = status(&app, "/me", secret).await;
    Race {
        old,
        during,
        during_answered_before_release,
        after,
        lookups: store.lookups(),
    }
}

pub struct Race {
    pub old: StatusCode,
    pub during: StatusCode,
    pub during_answered_before_release: bool,
    pub after: StatusCode,
    pub lookups: usize,
}

/// A cache that uses a map's plain `insert` and `remove`, ignoring the
/// token and the TTL: the naive implementation the race test and the conformance suite must
/// catch.
pub struct NaiveCache<P>(quick_cache::sync::Cache<KeyHash, Verdict<P>>);

impl<P: Principal> NaiveCache<P> {
    pub fn new() -> Self {
        Self(quick_cache::sync::Cache::new(1_000))
    }
}

impl<P: Principal> KeyCache for NaiveCache<P> {
    type Principal = P;
    type Token = ();
    type Get = Ready<Result<CacheRead<P, ()>, CacheError>>;

    fn get(&self, hash: &KeyHash) -> Self::Get {
        ready(Ok(match self.0.get(hash) {
            Some(verdict) => CacheRead::Hit(verdict),
            None => CacheRead::miss(()),
        }))
    }

    fn refresh_token(&self, _: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        ready(Ok(()))
    }

    fn put(
        &self,
        hash: KeyHash,
        _: (),
        verdict: Verdict<P>,
        _: Ttl,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.0.insert(hash, verdict);
        ready(Ok(()))
    }

    fn invalidate(&self, hash: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.0.remove(hash);
        ready(Ok(()))
    }

    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.0.clear();
        ready(Ok(()))
    }
}
