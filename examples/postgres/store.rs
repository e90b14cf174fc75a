//! The key table in PostgreSQL: keys stored by SHA-256 hash only, looked up
//! by one indexed `SELECT`, their usage written by one `UPDATE` per batch.
//!
//! Every statement is a runtime-checked `sqlx::query` with binds (no
//! `sqlx` macros, so building needs no database). Timestamps cross the wire
//! as integers (Unix microseconds in, milliseconds or seconds out), so no
//! date-time crate is needed either.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;
use tower_api_key::usage::{KeyUse, RecordFuture, UsageRecorder};
use tower_api_key::{KeyHash, Principal};

/// The table, created at start if it isn't there. `key_hash` is the
/// lookup's index (`UNIQUE`); `owner` has its own for owner-wide revocation.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id           bigserial   PRIMARY KEY,
    owner        text        NOT NULL,
    name         text        NOT NULL,
    key_hash     bytea       NOT NULL UNIQUE,
    scopes       text[]      NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NULL,
    revoked_at   timestamptz NULL,
    last_used_at timestamptz NULL,
    use_count    bigint      NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS api_keys_owner ON api_keys (owner);
";

/// The lookup: one index probe on `key_hash`; a revoked or expired row is
/// not found (the layer caches that as a negative entry).
const LOOKUP: &str = "
SELECT id, owner, name, scopes,
       floor(extract(epoch FROM expires_at) * 1000)::int8 AS expires_ms
FROM api_keys
WHERE key_hash = $1 AND revoked_at IS NULL
  AND (expires_at IS NULL OR expires_at > now())";

/// One batch of usage, one statement: each key's uses added, its last use
/// moved forward only (`GREATEST` ignores a `NULL` first use).
const RECORD_USAGE: &str = "
UPDATE api_keys AS k
SET last_used_at = GREATEST(k.last_used_at, timestamptz 'epoch' + u.used_us * interval '1 microsecond'),
    use_count = k.use_count + u.uses
FROM unnest($1::bytea[], $2::int8[], $3::int8[]) AS u(key_hash, used_us, uses)
WHERE k.key_hash = u.key_hash";

/// What the lookup answers for a valid key: the row, less its hash.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<SystemTime>,
}

impl Principal for ApiKey {
    /// The cache never keeps the key past its row's `expires_at`.
    fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// `invalidate_owner(owner)` drops every cached key of the owner.
    fn owner(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.owner))
    }

    /// The admin routes' requirement is checked by the layer against these.
    fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// One key as `GET /v1/keys` lists it.
#[derive(Debug, serde::Serialize)]
pub struct KeyRow {
    pub id: i64,
    pub owner: String,
    pub name: String,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub revoked: bool,
    /// RFC 3339, UTC; `null` before its first recorded use.
    pub last_used_at: Option<String>,
    pub use_count: i64,
}

/// Statements the store has run, by kind: what the cache saves is visible.
#[derive(Debug, Default)]
pub struct Queries {
    pub lookups: AtomicU64,
    pub usage_updates: AtomicU64,
}

/// The key table: a connection pool whose sessions see only `schema`.
/// Cheap to clone. As a `tower::Service<KeyHash>` it is the layer's lookup;
/// [`PgUsage`] is its usage recorder.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    queries: Arc<Queries>,
}

impl PgStore {
    /// Connects to `url`, creates `schema` and the table if they aren't
    /// there, and sets every connection's `search_path` to `schema`.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, String> {
        if !is_identifier(schema) {
            return Err(format!(
                "APIKEY_PG_SCHEMA must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63, not pg_...), got {schema:?}"
            ));
        }
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| format!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
        let options = options.options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // A database that doesn't answer fails the lookup (503), soon.
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await
            .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        // Checked above: the schema's name needs no quoting.
        sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema};{SCHEMA}"))
            .execute(&pool)
            .await
            .map_err(|e| format!("cannot create the key table: {e}"))?;
        Ok(Self {
            pool,
            queries: Arc::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn queries(&self) -> &Queries {
        &self.queries
    }

    pub async fn find_by_hash(&self, hash: KeyHash) -> Result<Option<ApiKey>, sqlx::Error> {
        self.queries.lookups.fetch_add(1, Ordering::Relaxed);
        let row = sqlx::query(LOOKUP)
            .bind(hash.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let expires_ms: Option<i64> = row.try_get("expires_ms")?;
            Ok(ApiKey {
                id: row.try_get("id")?,
                owner: row.try_get("owner")?,
                name: row.try_get("name")?,
                scopes: row.try_get("scopes")?,
                expires_at: expires_ms
                    .map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)),
            })
        })
        .transpose()
    }

    /// Stores a new key by hash; `ttl` sets its expiry. Returns its id and
    /// expiry (Unix seconds).
    pub async fn insert(
        &self,
        owner: &str,
        name: &str,
        hash: KeyHash,
        scopes: &[String],
        ttl: Option<Duration>,
    ) -> Result<(i64, Option<i64>), sqlx::Error> {
        sqlx::query_as(
            "INSERT INTO api_keys (owner, name, key_hash, scopes, expires_at)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
             RETURNING id, floor(extract(epoch FROM expires_at))::int8",
        )
        .bind(owner)
        .bind(name)
        .bind(hash.as_bytes().as_slice())
        .bind(scopes)
        .bind(ttl.map(|t| t.as_secs_f64()))
        .fetch_one(&self.pool)
        .await
    }

    /// Whether a key with the admin scope is still valid.
    pub async fn has_admin(&self) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE 'admin' = ANY (scopes)
                 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))",
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Marks the key revoked, keeping the first revocation's instant;
    /// returns its hash (also for a key revoked before, so that a retry
    /// invalidates again), or `None` for no such key.
    pub async fn revoke(&self, id: i64) -> Result<Option<KeyHash>, sqlx::Error> {
        let hash: Option<Vec<u8>> = sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
             WHERE id = $1 RETURNING key_hash",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(hash.and_then(|h| <[u8; 32]>::try_from(h).ok().map(KeyHash::from_bytes)))
    }

    /// Revokes every valid key of `owner`; returns how many.
    pub async fn revoke_owner(&self, owner: &str) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE owner = $1 AND revoked_at IS NULL",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Every key, with its usage as last recorded.
    pub async fn list(&self) -> Result<Vec<KeyRow>, sqlx::Error> {
        let rows = sqlx::query(
            r#"SELECT id, owner, name, floor(extract(epoch FROM expires_at))::int8 AS expires_at,
                      revoked_at IS NOT NULL AS revoked,
                      to_char(last_used_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS last_used_at,
                      use_count
               FROM api_keys ORDER BY id"#,
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(KeyRow {
                    id: row.try_get("id")?,
                    owner: row.try_get("owner")?,
                    name: row.try_get("name")?,
                    expires_at: row.try_get("expires_at")?,
                    revoked: row.try_get("revoked")?,
                    last_used_at: row.try_get("last_used_at")?,
                    use_count: row.try_get("use_count")?,
                })
            })
            .collect()
    }

    /// Writes one batch of usage in one statement (see [`RECORD_USAGE`]).
    pub async fn record_usage(&self, batch: &[KeyUse<ApiKey>]) -> Result<u64, sqlx::Error> {
        let mut hashes = Vec::with_capacity(batch.len());
        let mut used_us = Vec::with_capacity(batch.len());
        let mut uses = Vec::with_capacity(batch.len());
        for used in batch {
            hashes.push(used.hash.as_bytes().to_vec());
            used_us.push(
                used.last_used
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            );
            uses.push(i64::try_from(used.uses).unwrap_or(i64::MAX));
        }
        self.queries.usage_updates.fetch_add(1, Ordering::Relaxed);
        let done = sqlx::query(RECORD_USAGE)
            .bind(hashes)
            .bind(used_us)
            .bind(uses)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// A schema name safe to splice into DDL unquoted (`pg_` is reserved).
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
        && !name.starts_with("pg_")
}

/// The lookup the layer calls on a cache miss.
impl tower::Service<KeyHash> for PgStore {
    type Response = Option<ApiKey>;
    type Error = sqlx::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Option<ApiKey>, sqlx::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), sqlx::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, hash: KeyHash) -> Self::Future {
        let store = self.clone();
        Box::pin(async move { store.find_by_hash(hash).await })
    }
}

/// The usage recorder: each batch the tracker hands over is one `UPDATE`.
pub struct PgUsage(pub PgStore);

impl UsageRecorder<ApiKey> for PgUsage {
    fn record(&self, batch: Vec<KeyUse<ApiKey>>) -> RecordFuture {
        let store = self.0.clone();
        Box::pin(async move {
            store.record_usage(&batch).await?;
            Ok(())
        })
    }
}
