//! A small real API guarded by `tower-api-key`: an embedded SQLite key table
//! (keys stored by hash only), public, optional and required routes, key
//! creation and revocation, and the layer's counters.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! Environment (all optional):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `PORT` | `3000` | listen on `127.0.0.1:$PORT` (`0` picks a free port) |
//! | `DATABASE_URL` | in memory | SQLite file for the key table (`sqlite://path` or a path) |
//! | `DEMO_API_KEY` | random | the admin key's secret; a random one is printed once otherwise |
//! | `APIKEY_CACHE_BACKEND` | `memory` | `memory`, or `redis` / `tiered` (built with `--features redis`) |
//! | `REDIS_URL` | | the Redis for `redis` and `tiered`: `redis://127.0.0.1:6379`, `redis-cluster://…` |
//! | `APIKEY_L1_TTL_MS` | `30000` | `tiered`: longest life of an in-process entry (revocations are broadcast) |
//! | `APIKEY_REDIS_PREFIX` | `apikey:` | prefix of the Redis keys |
//! | `APIKEY_POSITIVE_TTL` | `300` | seconds a valid key stays cached |
//! | `APIKEY_NEGATIVE_TTL` | `30` | seconds an unknown key stays cached |
//! | `QUICKSTART_LOOKUP_DELAY_MS` | `0` | added to every key lookup: watch `coalesced` rise |
//! | `QUICKSTART_LOOKUP_FAIL` | off | `1`: the key store fails; cached keys keep working, others get 503 |

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use rand::distr::{Alphanumeric, SampleString};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use tower_api_key::{ApiKeyAuthLayer, Authenticated, KeyHash, Principal};

/// A row of the key table, as the handlers see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApiClient {
    id: i64,
    name: String,
    scopes: Vec<String>,
    /// Unix seconds.
    expires_at: Option<u64>,
}

impl ApiClient {
    fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s == "admin")
    }
}

impl Principal for ApiClient {
    fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key table. SQLite calls are short and run on the blocking pool.
#[derive(Clone)]
struct Db(Arc<Mutex<Connection>>);

#[derive(Debug)]
struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key store error: {}", self.0)
    }
}

impl std::error::Error for DbError {}

impl Db {
    fn open(url: Option<&str>) -> Result<Self, DbError> {
        let conn = match url.map(|u| u.trim_start_matches("sqlite://")) {
            None | Some("") | Some(":memory:") => Connection::open_in_memory(),
            Some(path) => Connection::open(path),
        }
        .map_err(|e| DbError(e.to_string()))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS api_keys (
                id          INTEGER PRIMARY KEY,
                name        TEXT    NOT NULL,
                key_hash    BLOB    NOT NULL UNIQUE,
                scopes      TEXT    NOT NULL DEFAULT '[]',
                created_at  INTEGER NOT NULL,
                expires_at  INTEGER,
                revoked_at  INTEGER
            );",
        )
        .map_err(|e| DbError(e.to_string()))?;
        Ok(Self(Arc::new(Mutex::new(conn))))
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DbError> {
        let db = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db.lock().map_err(|_| DbError("lock poisoned".into()))?;
            f(&conn).map_err(|e| DbError(e.to_string()))
        })
        .await
        .map_err(|e| DbError(e.to_string()))?
    }

    async fn insert(
        &self,
        name: String,
        hash: KeyHash,
        scopes: Vec<String>,
        expires_at: Option<u64>,
    ) -> Result<i64, DbError> {
        let scopes = serde_json::to_string(&scopes).map_err(|e| DbError(e.to_string()))?;
        self.run(move |c| {
            c.execute(
                "INSERT INTO api_keys (name, key_hash, scopes, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    name,
                    hash.as_bytes().as_slice(),
                    scopes,
                    unix_now() as i64,
                    expires_at.map(|v| v as i64)
                ],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn find_by_hash(&self, hash: KeyHash) -> Result<Option<ApiClient>, DbError> {
        self.run(move |c| {
            c.query_row(
                "SELECT id, name, scopes, expires_at FROM api_keys
                 WHERE key_hash = ?1 AND revoked_at IS NULL",
                [hash.as_bytes().as_slice()],
                |row| {
                    let scopes: String = row.get(2)?;
                    Ok(ApiClient {
                        id: row.get(0)?,
                        name: row.get(1)?,
                        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
                        expires_at: row.get::<_, Option<i64>>(3)?.map(|v| v.max(0) as u64),
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn has_admin(&self) -> Result<bool, DbError> {
        self.run(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM api_keys WHERE name = 'admin' AND revoked_at IS NULL)",
                [],
                |row| row.get(0),
            )
        })
        .await
    }

    /// Marks the key revoked; returns its hash, or `None` if there is no such
    /// live key.
    async fn revoke(&self, id: i64) -> Result<Option<KeyHash>, DbError> {
        self.run(move |c| {
            let hash: Option<Vec<u8>> = c
                .query_row(
                    "SELECT key_hash FROM api_keys WHERE id = ?1 AND revoked_at IS NULL",
                    [id],
                    |row| row.get(0),
                )
                .optional()?;
            c.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, unix_now() as i64],
            )?;
            Ok(hash.and_then(|h| <[u8; 32]>::try_from(h).ok().map(KeyHash::from_bytes)))
        })
        .await
    }
}

/// The lookup the layer calls on a cache miss: a `tower::Service<KeyHash>`
/// over the key table, with the demo knobs.
#[derive(Clone)]
struct DbLookup {
    db: Db,
    delay: Duration,
    fail: bool,
}

impl tower::Service<KeyHash> for DbLookup {
    type Response = Option<ApiClient>;
    type Error = DbError;
    type Future = Pin<Box<dyn Future<Output = Result<Option<ApiClient>, DbError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DbError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, hash: KeyHash) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if !this.delay.is_zero() {
                tokio::time::sleep(this.delay).await;
            }
            if this.fail {
                return Err(DbError("QUICKSTART_LOOKUP_FAIL is set".into()));
            }
            this.db.find_by_hash(hash).await
        })
    }
}

/// The cache: memory, or (built with `--features redis`) whatever
/// `APIKEY_CACHE_BACKEND` picks.
#[cfg(feature = "redis")]
type Cache = tower_api_key::cache::AnyCache<ApiClient>;
#[cfg(not(feature = "redis"))]
type Cache = tower_api_key::cache::MemoryCache<ApiClient>;

type Auth = ApiKeyAuthLayer<Cache, DbLookup>;

#[cfg(feature = "redis")]
async fn build_cache() -> Result<(Cache, &'static str), String> {
    use tower_api_key::cache::{AnyCache, CacheSettings};
    let settings = CacheSettings::from_env();
    if !matches!(settings.backend.as_str(), "memory" | "redis" | "tiered") {
        return Err(format!(
            "APIKEY_CACHE_BACKEND={:?} is not supported; use `memory`, `redis` or `tiered`",
            settings.backend
        ));
    }
    // Redis without REDIS_URL: a loud warning and the in-process cache.
    let cache = AnyCache::from_settings(settings).await;
    let backend = cache.backend();
    Ok((cache, backend))
}

#[cfg(not(feature = "redis"))]
async fn build_cache() -> Result<(Cache, &'static str), String> {
    let backend = std::env::var("APIKEY_CACHE_BACKEND").unwrap_or_default();
    match backend.trim().to_ascii_lowercase().as_str() {
        "" | "memory" => Ok((
            tower_api_key::cache::MemoryCache::builder()
                .max_capacity(100_000)
                .build(),
            "memory",
        )),
        backend @ ("redis" | "tiered") => Err(format!(
            "APIKEY_CACHE_BACKEND={backend} needs the `redis` feature: \
             cargo run --example quickstart --features redis"
        )),
        other => Err(format!(
            "APIKEY_CACHE_BACKEND={other:?} is not supported; use `memory`, `redis` or `tiered`"
        )),
    }
}

#[derive(Clone)]
struct AppState {
    db: Db,
    auth: Auth,
}

/// Errors of the demo's own handlers, as problem+json.
struct ApiError(StatusCode, &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.0.canonical_reason().unwrap_or("Error"),
            "status": self.0.as_u16(),
            "detail": self.1,
        });
        (
            self.0,
            [("content-type", "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        tracing::error!(error = %e, "key store failed");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the key store is unavailable",
        )
    }
}

fn require_admin(client: &ApiClient) -> Result<(), ApiError> {
    if client.is_admin() {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            "this endpoint needs the admin scope",
        ))
    }
}

fn new_secret() -> String {
    format!("sk_{}", Alphanumeric.sample_string(&mut rand::rng(), 32))
}

async fn health() -> &'static str {
    "ok"
}

async fn hello(client: Option<Authenticated<ApiClient>>) -> Json<serde_json::Value> {
    Json(match client {
        Some(c) => serde_json::json!({ "message": format!("hello, {}", c.name) }),
        None => {
            serde_json::json!({ "message": "hello, anonymous caller; send a key to be greeted by name" })
        }
    })
}

async fn me(Authenticated(client): Authenticated<ApiClient>) -> Json<ApiClient> {
    Json((*client).clone())
}

#[derive(Deserialize)]
struct NewKey {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    ttl_seconds: Option<u64>,
}

#[derive(Serialize)]
struct CreatedKey {
    id: i64,
    secret: String,
    expires_at: Option<u64>,
}

async fn create_key(
    State(state): State<AppState>,
    Authenticated(client): Authenticated<ApiClient>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    // Authorisation before the body: a non-admin learns nothing from it.
    require_admin(&client)?;
    let Json(new) = body.map_err(|_| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected JSON {\"name\": string, \"scopes\"?: [string], \"ttl_seconds\"?: number}",
        )
    })?;
    let name = new.name.trim().to_owned();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must be 1 to 100 characters",
        ));
    }
    if new.scopes.len() > 32 || new.scopes.iter().any(|s| s.is_empty() || s.len() > 64) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "scopes must be up to 32 names of 1 to 64 characters",
        ));
    }
    let expires_at = match new.ttl_seconds {
        None => None,
        Some(0) => {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ttl_seconds must be positive",
            ))
        }
        Some(ttl) => Some(unix_now().saturating_add(ttl)),
    };
    let secret = new_secret();
    let hash = state.auth.hash_key(&secret);
    let id = state.db.insert(name, hash, new.scopes, expires_at).await?;
    // A negative entry cached before this key existed must not block it.
    if let Err(e) = state.auth.invalidate(&hash).await {
        tracing::warn!(error = %e, "could not invalidate the new key's hash");
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id,
            secret,
            expires_at,
        }),
    ))
}

async fn revoke_key(
    State(state): State<AppState>,
    Authenticated(client): Authenticated<ApiClient>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    require_admin(&client)?;
    let Some(hash) = state.db.revoke(id).await? else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no live key with this id"));
    };
    // Revoked in the table; now gone from the cache, effective on the next request.
    state.auth.invalidate(&hash).await.map_err(|e| {
        tracing::error!(error = %e, "revoked in the table but the cache could not be invalidated");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "revoked, but the cache could not be invalidated; retry",
        )
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(
    State(state): State<AppState>,
    Authenticated(client): Authenticated<ApiClient>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&client)?;
    let mut body = serde_json::to_value(state.auth.stats()).unwrap_or_default();
    if let Some(tiered) = tiered_stats(state.auth.cache()) {
        body["tiered"] = tiered;
    }
    Ok(Json(body))
}

/// The tiered cache's own counters: broadcasts received, L1 flushes.
#[cfg(feature = "redis")]
fn tiered_stats(cache: &Cache) -> Option<serde_json::Value> {
    let tower_api_key::cache::AnyCache::Tiered(cache) = cache else {
        return None;
    };
    let s = cache.stats();
    Some(serde_json::json!({
        "l2_hits": s.l2_hits,
        "broadcasts_received": s.broadcasts_received,
        "l1_flushes": s.l1_flushes,
        "subscribed": s.subscribed,
    }))
}

#[cfg(not(feature = "redis"))]
fn tiered_stats(_: &Cache) -> Option<serde_json::Value> {
    None
}

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be a whole number, got {v:?}")),
        _ => Ok(default),
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_api_key=info".into()),
        )
        .init();
    if let Err(e) = run().await {
        eprintln!("quickstart: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let port = env_u64("PORT", 3000)?;
    let port = u16::try_from(port).map_err(|_| format!("PORT out of range: {port}"))?;
    let positive_ttl = Duration::from_secs(env_u64("APIKEY_POSITIVE_TTL", 300)?);
    let negative_ttl = Duration::from_secs(env_u64("APIKEY_NEGATIVE_TTL", 30)?);
    let delay = Duration::from_millis(env_u64("QUICKSTART_LOOKUP_DELAY_MS", 0)?);
    let fail = matches!(
        std::env::var("QUICKSTART_LOOKUP_FAIL").as_deref(),
        Ok("1" | "true" | "yes")
    );
    let (cache, backend) = build_cache().await?;

    let database_url = std::env::var("DATABASE_URL").ok();
    let db = Db::open(database_url.as_deref()).map_err(|e| e.to_string())?;
    let auth: Auth = ApiKeyAuthLayer::new(
        cache,
        DbLookup {
            db: db.clone(),
            delay,
            fail,
        },
    )
    .positive_ttl(positive_ttl)
    .negative_ttl(negative_ttl)
    .public("/health")
    .optional("/v1/hello")
    // Key management always asks the table, not the cache.
    .bypass_cache("/v1/keys")
    .bypass_cache("/v1/keys/{id}");

    // Seed the admin key (by hash; the secret is shown once and never stored).
    // A kept database that already has an admin key gets no new random one.
    let given = std::env::var("DEMO_API_KEY")
        .ok()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty());
    let admin_secret = match given {
        Some(k) => Some((k, false)),
        None if db.has_admin().await.map_err(|e| e.to_string())? => None,
        None => Some((new_secret(), true)),
    };
    if let Some((secret, _)) = &admin_secret {
        let hash = auth.hash_key(secret);
        if db
            .find_by_hash(hash)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            db.insert("admin".into(), hash, vec!["admin".into()], None)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let shown = admin_secret.as_ref().is_some_and(|(_, shown)| *shown);

    let state = AppState {
        db,
        auth: auth.clone(),
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/hello", get(hello))
        .route("/v1/me", get(me))
        .route("/v1/keys", post(create_key))
        .route("/v1/keys/{id}", delete(revoke_key))
        .route("/v1/stats", get(stats))
        .layer(auth)
        .with_state(state);

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let base = format!("http://{addr}");
    let key = match &admin_secret {
        Some((secret, true)) => secret.as_str(),
        _ => "$DEMO_API_KEY",
    };
    println!("tower-api-key quickstart listening on {base}");
    println!(
        "cache: {backend}, positive TTL {}s, negative TTL {}s",
        positive_ttl.as_secs(),
        negative_ttl.as_secs()
    );
    if shown {
        println!("admin key (shown once, stored only as its hash): {key}");
    } else if admin_secret.is_none() {
        println!("admin key: the one made when this database was first used (set DEMO_API_KEY to add one)");
    }
    println!(
        r#"
try:
  curl {base}/health
  curl {base}/v1/hello
  curl -H "Authorization: Bearer {key}" {base}/v1/hello
  curl -i {base}/v1/me
  curl -H "Authorization: Bearer {key}" {base}/v1/me
  curl -H "Authorization: Bearer {key}" -H "content-type: application/json" \
       -d '{{"name":"ci-bot","scopes":["read"],"ttl_seconds":3600}}' {base}/v1/keys
  curl -i -X DELETE -H "Authorization: Bearer {key}" {base}/v1/keys/2
  curl -H "Authorization: Bearer {key}" {base}/v1/stats
"#
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}
