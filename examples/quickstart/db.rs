//! The key table: SQLite, keys stored by hash only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use tower_api_key::{IpNet, KeyHash, Principal, RateLimit};

/// A row of the key table, as the handlers see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiClient {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    /// The key's own policies; `None`: the layer's default
    /// (`APIKEY_DEFAULT_RATE_LIMIT`), an empty list: unlimited.
    pub rate_limits: Option<Vec<RateLimit>>,
    /// Where the key may be used from; `None`: anywhere.
    #[serde(default)]
    pub allowed_networks: Option<Vec<IpNet>>,
}

impl ApiClient {
    pub fn is_admin(&self) -> bool {
        self.has_scope("admin")
    }
}

impl Principal for ApiClient {
    /// The routes' requirements (`admin`, `reports:read`) are checked by
    /// the layer against these.
    fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    fn allowed_networks(&self) -> Option<&[IpNet]> {
        self.allowed_networks.as_deref()
    }

    fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at.map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }

    /// An admin is never limited (also one from a table kept from before
    /// rate limits, whose row says nothing).
    fn rate_limits(&self) -> Option<&[RateLimit]> {
        if self.is_admin() {
            return Some(&[]);
        }
        self.rate_limits.as_deref()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a new key's row holds besides its hash.
pub struct NewRow {
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<u64>,
    pub rate_limits: Option<Vec<RateLimit>>,
    pub allowed_networks: Option<Vec<IpNet>>,
}

/// The key table. SQLite calls are short and run on the blocking pool.
#[derive(Clone)]
pub struct Db(Arc<Mutex<Connection>>);

#[derive(Debug)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key store error: {}", self.0)
    }
}

impl std::error::Error for DbError {}

impl Db {
    pub fn open(url: Option<&str>) -> Result<Self, DbError> {
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
                revoked_at  INTEGER,
                rate_limits TEXT,
                last_used_at INTEGER,
                uses        INTEGER NOT NULL DEFAULT 0,
                allowed_networks TEXT
            );",
        )
        .map_err(|e| DbError(e.to_string()))?;
        // A table kept from before rate limits, usage or networks: add their
        // columns (NULL rate limits: the default policy; NULL networks:
        // anywhere).
        for (column, ddl) in [
            ("rate_limits", "rate_limits TEXT"),
            ("last_used_at", "last_used_at INTEGER"),
            ("uses", "uses INTEGER NOT NULL DEFAULT 0"),
            ("allowed_networks", "allowed_networks TEXT"),
        ] {
            let has = conn
                .prepare("SELECT 1 FROM pragma_table_info('api_keys') WHERE name = ?1")
                .and_then(|mut q| q.exists([column]))
                .map_err(|e| DbError(e.to_string()))?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE api_keys ADD COLUMN {ddl};"))
                    .map_err(|e| DbError(e.to_string()))?;
            }
        }
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

    pub async fn insert(&self, hash: KeyHash, key: NewRow) -> Result<i64, DbError> {
        let json = |e: serde_json::Error| DbError(e.to_string());
        let scopes = serde_json::to_string(&key.scopes).map_err(json)?;
        let rate_limits = key
            .rate_limits
            .map(|l| serde_json::to_string(&l))
            .transpose()
            .map_err(json)?;
        let networks = key
            .allowed_networks
            .map(|n| serde_json::to_string(&n))
            .transpose()
            .map_err(json)?;
        self.run(move |c| {
            c.execute(
                "INSERT INTO api_keys (name, key_hash, scopes, created_at, expires_at, rate_limits,
                                       allowed_networks)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    key.name,
                    hash.as_bytes().as_slice(),
                    scopes,
                    unix_now() as i64,
                    key.expires_at.map(|v| v as i64),
                    rate_limits,
                    networks
                ],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    pub async fn find_by_hash(&self, hash: KeyHash) -> Result<Option<ApiClient>, DbError> {
        self.run(move |c| {
            c.query_row(
                "SELECT id, name, scopes, expires_at, rate_limits, allowed_networks FROM api_keys
                 WHERE key_hash = ?1 AND revoked_at IS NULL",
                [hash.as_bytes().as_slice()],
                |row| {
                    let scopes: String = row.get(2)?;
                    let rate_limits: Option<String> = row.get(4)?;
                    let networks: Option<String> = row.get(5)?;
                    Ok(ApiClient {
                        id: row.get(0)?,
                        name: row.get(1)?,
                        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
                        expires_at: row.get::<_, Option<i64>>(3)?.map(|v| v.max(0) as u64),
                        // Unreadable limits: the default policy, not none.
                        rate_limits: rate_limits.and_then(|l| serde_json::from_str(&l).ok()),
                        // Unreadable networks: nowhere (fail closed), not anywhere.
                        allowed_networks: networks
                            .map(|n| serde_json::from_str(&n).unwrap_or_default()),
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// Records one batch of usage in one transaction: the uses added, the
    /// last use moved forward only (never back).
    pub async fn record_usage(&self, batch: Vec<(KeyHash, u64, u64)>) -> Result<(), DbError> {
        self.run(move |c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut update = tx.prepare_cached(
                    "UPDATE api_keys SET uses = uses + ?2,
                         last_used_at = MAX(COALESCE(last_used_at, 0), ?3)
                     WHERE key_hash = ?1",
                )?;
                for (hash, uses, last_used_ms) in &batch {
                    update.execute(params![
                        hash.as_bytes().as_slice(),
                        *uses as i64,
                        *last_used_ms as i64
                    ])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Keys not revoked and the uses recorded of them all, for the report.
    pub async fn totals(&self) -> Result<(u64, u64), DbError> {
        self.run(|c| {
            c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(uses), 0) FROM api_keys WHERE revoked_at IS NULL",
                [],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
            )
        })
        .await
    }

    /// Every key that is not revoked: id, name, last use (Unix ms), uses.
    pub async fn list(&self) -> Result<Vec<(i64, String, Option<u64>, u64)>, DbError> {
        self.run(|c| {
            let mut q = c.prepare(
                "SELECT id, name, last_used_at, uses FROM api_keys
                 WHERE revoked_at IS NULL ORDER BY id",
            )?;
            let rows = q.query_map([], |row| {
                let last: Option<i64> = row.get(2)?;
                let uses: i64 = row.get(3)?;
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    last.map(|v| v as u64),
                    uses as u64,
                ))
            })?;
            rows.collect()
        })
        .await
    }

    pub async fn has_admin(&self) -> Result<bool, DbError> {
        self.run(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM api_keys WHERE name = 'admin' AND revoked_at IS NULL)",
                [],
                |row| row.get(0),
            )
        })
        .await
    }

    /// Marks the key revoked (if it isn't already); returns its hash, or
    /// `None` if there is no such key.
    pub async fn revoke(&self, id: i64) -> Result<Option<KeyHash>, DbError> {
        self.run(move |c| {
            let hash: Option<Vec<u8>> = c
                .query_row("SELECT key_hash FROM api_keys WHERE id = ?1", [id], |row| {
                    row.get(0)
                })
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
