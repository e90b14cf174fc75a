//! The app put together: the key table, the layer in front of it, the usage
//! tracker writing to it, the admin key, the routes. `main.rs` runs it from
//! the environment; `tests/postgres.rs` builds it with settings of its own.

use std::time::Duration;

use axum::Router;
use tower_api_key::cache::MemoryCache;
use tower_api_key::usage::UsageTracker;
use tower_api_key::{ApiKeyAuthLayer, KeyFormat, Scopes};

use crate::routes::{new_secret, router};
use crate::store::{ApiKey, PgStore, PgUsage};

/// The layer of this example: an in-process cache in front of the table.
pub type Auth = ApiKeyAuthLayer<MemoryCache<ApiKey>, PgStore>;

/// The prefix of the keys this example makes (with a public CRC-32
/// checksum, so a mistyped key costs no lookup).
pub const KEY_PREFIX: &str = "sk_pg_";

/// Where the example looks for PostgreSQL without `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// What the app is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    /// The schema holding `api_keys` (created if missing).
    pub schema: String,
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    /// How often usage is written: one `UPDATE` per interval.
    pub usage_interval: Duration,
    /// The admin key's secret; `None`: a random one, unless the table has
    /// an admin key already.
    pub admin_key: Option<String>,
}

/// The built app, and the handles a server (or a test) keeps.
pub struct App {
    pub router: Router,
    pub auth: Auth,
    pub store: PgStore,
    pub usage: UsageTracker<ApiKey>,
    /// A new admin key's secret, to show once: `None` when it was given or
    /// already in the table.
    pub new_admin_key: Option<String>,
}

pub async fn build(settings: Settings) -> Result<App, String> {
    let store = PgStore::connect(&settings.database_url, &settings.schema).await?;
    let format = KeyFormat::crc32(KEY_PREFIX)
        .map_err(|e| e.to_string())?
        // A DEMO_API_KEY of any shape.
        .allow_legacy(true);
    let usage = UsageTracker::builder(PgUsage(store.clone()))
        .interval(settings.usage_interval)
        .build();
    let auth: Auth = ApiKeyAuthLayer::new(MemoryCache::new(), store.clone())
        .positive_ttl(settings.positive_ttl)
        .negative_ttl(settings.negative_ttl)
        .public("/health")
        // The admin routes need the admin scope, checked by the layer
        // before any handler (or the body) is read.
        .require_scopes("/v1/keys", Scopes::one("admin"))
        .require_scopes("/v1/keys/{id}", Scopes::one("admin"))
        .require_scopes("/v1/owners/{owner}/keys", Scopes::one("admin"))
        .require_scopes("/v1/stats", Scopes::one("admin"))
        // Key management always asks the table, not the cache.
        .bypass_cache("/v1/keys")
        .bypass_cache("/v1/keys/{id}")
        .bypass_cache("/v1/owners/{owner}/keys")
        .key_format(format.clone())
        .usage(usage.clone());

    // The admin key, by hash (its secret is never stored).
    let db = |e: sqlx::Error| format!("key table: {e}");
    let (admin, new_admin_key) = match settings.admin_key {
        Some(k) if !format.check(&k).passes() => {
            return Err(format!(
                "DEMO_API_KEY starts with {KEY_PREFIX} but its checksum fails; choose one without the prefix"
            ))
        }
        Some(k) => (Some(k), None),
        None if store.has_admin().await.map_err(db)? => (None, None),
        None => {
            let k = new_secret(&format).map_err(|e| e.to_string())?;
            (Some(k.clone()), Some(k))
        }
    };
    if let Some(secret) = admin {
        let hash = auth.hash_key(&secret);
        if store.find_by_hash(hash).await.map_err(db)?.is_none() {
            store
                .insert("admin", "admin", hash, &["admin".to_owned()], None)
                .await
                .map_err(db)?;
        }
    }

    let router = router(store.clone(), auth.clone(), format, usage.clone());
    Ok(App {
        router,
        auth,
        store,
        usage,
        new_admin_key,
    })
}
