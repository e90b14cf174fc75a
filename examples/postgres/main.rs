//! The quickstart's PostgreSQL counterpart: an axum API whose key table lives
//! in PostgreSQL (through `sqlx`), keys stored by SHA-256 hash only.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example postgres --all-features
//! ```
//!
//! - the lookup is one indexed `SELECT ... WHERE key_hash = $1 AND revoked_at
//!   IS NULL AND (expires_at IS NULL OR expires_at > now())`, made once per
//!   key per positive TTL (the cache answers the rest); its principal
//!   carries the row's owner and expiry, so the cache never keeps a key past
//!   `expires_at` and `invalidate_owner` reaches all of an owner's keys;
//! - `POST /v1/keys` makes a key with the crate's `KeyFormat`, stores its
//!   hash and shows the secret once;
//! - `DELETE /v1/keys/{id}` sets `revoked_at` and invalidates the key:
//!   refused on its next request; `DELETE /v1/owners/{owner}/keys` does the
//!   same for every key of an owner;
//! - usage (`last_used_at`, `use_count`) is written by one `UPDATE ... FROM
//!   unnest(...)` per interval, whatever the traffic.
//!
//! Environment (all optional):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/test` | the PostgreSQL holding the key table |
//! | `APIKEY_PG_SCHEMA` | `public` | the schema of `api_keys` (created if missing): one per app, or per test |
//! | `PORT` | `3000` | listen on `127.0.0.1:$PORT` (`0` picks a free port) |
//! | `DEMO_API_KEY` | random | the admin key's secret; a random one is printed once otherwise (none if the table has an admin key) |
//! | `APIKEY_POSITIVE_TTL` | `300` | seconds a valid key stays cached |
//! | `APIKEY_NEGATIVE_TTL` | `30` | seconds an unknown key stays cached |
//! | `APIKEY_USAGE_INTERVAL_MS` | `60000` | how often usage is written (one `UPDATE` per interval) |
//!
//! | file | what it holds |
//! | --- | --- |
//! | `main.rs` | the environment, serving |
//! | `app.rs` | the layer, the usage tracker and the admin key, put together |
//! | `store.rs` | the key table: schema, lookup, creation, revocation, the usage `UPDATE` |
//! | `routes.rs` | the handlers |

mod app;
mod routes;
mod store;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::app::{build, Settings, DEFAULT_DATABASE_URL};

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be a whole number, got {v:?}")),
        _ => Ok(default),
    }
}

fn env_string(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
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
        eprintln!("postgres example: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let port = env_u64("PORT", 3000)?;
    let port = u16::try_from(port).map_err(|_| format!("PORT out of range: {port}"))?;
    let settings = Settings {
        database_url: env_string("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
        schema: env_string("APIKEY_PG_SCHEMA").unwrap_or_else(|| "public".into()),
        positive_ttl: Duration::from_secs(env_u64("APIKEY_POSITIVE_TTL", 300)?),
        negative_ttl: Duration::from_secs(env_u64("APIKEY_NEGATIVE_TTL", 30)?),
        usage_interval: Duration::from_millis(env_u64("APIKEY_USAGE_INTERVAL_MS", 60_000)?),
        admin_key: env_string("DEMO_API_KEY"),
    };
    let said = format!(
        "schema {}, positive TTL {}s, negative TTL {}s, usage every {} ms",
        settings.schema,
        settings.positive_ttl.as_secs(),
        settings.negative_ttl.as_secs(),
        settings.usage_interval.as_millis()
    );
    let app = build(settings).await?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let base = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    println!("tower-api-key postgres example listening on {base}");
    println!("key table: PostgreSQL, {said}");
    let key = match &app.new_admin_key {
        Some(secret) => {
            println!("admin key (shown once, stored only as its hash): {secret}");
            secret.as_str()
        }
        None => "$DEMO_API_KEY",
    };
    println!(
        r#"
try:
  curl {base}/health
  curl -H "Authorization: Bearer {key}" {base}/v1/me
  curl -H "Authorization: Bearer {key}" -H "content-type: application/json" \
       -d '{{"owner":"acme","name":"ci-bot","scopes":["read"],"ttl_seconds":3600}}' {base}/v1/keys
  curl -H "Authorization: Bearer {key}" {base}/v1/keys
  curl -i -X DELETE -H "Authorization: Bearer {key}" {base}/v1/keys/2
  curl -X DELETE -H "Authorization: Bearer {key}" {base}/v1/owners/acme/keys
  curl -H "Authorization: Bearer {key}" {base}/v1/stats
"#
    );
    axum::serve(listener, app.router.clone())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())?;
    // What was used since the last batch, before the process goes.
    let flushed = app
        .usage
        .shutdown(Duration::from_secs(5))
        .await
        .map_err(|e| format!("usage not recorded at shutdown: {e}"));
    // What the cache saved: requests against statements.
    let stats = app.auth.stats();
    let queries = app.store.queries();
    println!(
        "served {} keyed requests with {} lookups and {} usage updates",
        stats.hits + stats.negative_hits + stats.misses,
        queries.lookups.load(Ordering::Relaxed),
        queries.usage_updates.load(Ordering::Relaxed),
    );
    app.store.pool().close().await;
    flushed
}
