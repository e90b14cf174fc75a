//! A small real API guarded by `tower-api-key`: an embedded SQLite key table
//! (keys stored by hash only), public, optional and required routes, scopes
//! per route and networks per key checked by the layer, key creation and
//! revocation, and the layer's counters.
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
//! | `APIKEY_CACHE_BACKEND` | `memory` | `memory`, or `redis` / `tiered` (built with `--features tiered`) |
//! | `REDIS_URL` | | the Redis for `redis` and `tiered`: `redis://127.0.0.1:6379`, `redis-cluster://…` |
//! | `APIKEY_CACHE_SECRET` | none | `redis` / `tiered`: every value written to Redis carries a MAC under this secret (give every instance the same), so whoever can write to Redis can't mint a key |
//! | `APIKEY_L1_TTL_MS` | `30000` | `tiered`: longest life of an in-process entry (revocations are broadcast) |
//! | `APIKEY_REDIS_PREFIX` | `apikey:` | prefix of the Redis keys |
//! | `APIKEY_POSITIVE_TTL` | `300` | seconds a valid key stays cached |
//! | `APIKEY_NEGATIVE_TTL` | `30` | seconds an unknown key stays cached |
//! | `APIKEY_SERVE_STALE` | `0` (off) | seconds a valid key's entry is kept past its TTL, to answer with while the database fails |
//! | `APIKEY_REFRESH_AHEAD_PERCENT` | `0` (off) | a key used in the last this-many percent of its TTL is refreshed in the background |
//! | `APIKEY_RATELIMIT_BACKEND` | `memory` | where rate-limit counts live: `memory`, or `redis` (with `REDIS_URL`; `--features tiered`) |
//! | `APIKEY_RATELIMIT_MODE` | `strict` | `redis`: `strict` (one round trip per request) or `local-first` (decided here, sent every 100 ms) |
//! | `APIKEY_KEY_SECRETS` | none | comma-separated, newest first: new keys are `sk_live_…` with a keyed checksum under the first (forged keys cost no lookup); without it `sk_pub_…` with a public CRC-32. Keys of the other mode, or without either prefix, still work; to rotate, put the new secret first and keep the old ones listed (`sk_live_` keys made under a dropped secret stop working) |
//! | `APIKEY_USAGE_INTERVAL_MS` | `60000` | how often key usage (`last_used_at`, `uses` in `GET /v1/keys`) is written to the table: once per key per interval, in one batch; with `APIKEY_CACHE_BACKEND=redis` or `tiered`, once per key per interval across all instances (counts summed in Redis) |
//! | `APIKEY_DEFAULT_RATE_LIMIT` | none | `QUOTA/WINDOW_SECONDS` (`100/60`): the limit of keys created without `rate_limits` |
//! | `APIKEY_TRUSTED_PROXIES` | none | comma-separated CIDRs of your reverse proxies: from a peer in them, the client's address (for keys with `allowed_networks`) is read from `X-Forwarded-For`, right to left, past every trusted hop; otherwise the header is ignored |
//! | `QUICKSTART_LOOKUP_DELAY_MS` | `0` | added to every key lookup: watch `coalesced` rise |
//! | `QUICKSTART_LOOKUP_FAIL` | off | `1`: the key store fails; cached keys keep working, others get 503 |
//!
//! | file | what it holds |
//! | --- | --- |
//! | `main.rs` | configuration, the layer, the admin key, serving |
//! | `db.rs` | the SQLite key table (by hash) and its rows |
//! | `lookup.rs` | the key table as the layer's lookup, with the demo knobs |
//! | `cache.rs` | the cache backend the environment picks |
//! | `routes.rs` | the handlers |

mod cache;
mod db;
mod lookup;
mod routes;

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use tower_api_key::ratelimit::{RateLimitSettings, RateLimiter};
use tower_api_key::usage::{KeyUse, UsageTracker};
use tower_api_key::{ApiKeyAuthLayer, ClientAddress, IpNet, KeyFormat, Scopes};

use crate::cache::build_cache;
use crate::db::{Db, NewRow};
use crate::lookup::DbLookup;
use crate::routes::{new_secret, router, Auth};

/// The prefixes of the keys this quickstart makes, keyed and public. Neither
/// is a prefix of the other, so keys made in one mode are legacy keys in
/// the other and keep working when `APIKEY_KEY_SECRETS` is set or unset.
const KEYED_PREFIX: &str = "sk_live_";
const PUBLIC_PREFIX: &str = "sk_pub_";

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be a whole number, got {v:?}")),
        _ => Ok(default),
    }
}

/// `APIKEY_TRUSTED_PROXIES`: comma-separated CIDRs (a bare address is
/// its own /32 or /128).
fn trusted_proxies() -> Result<Vec<IpNet>, String> {
    let value = match std::env::var("APIKEY_TRUSTED_PROXIES") {
        Ok(value) => value,
        Err(std::env::VarError::NotPresent) => return Ok(Vec::new()),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("APIKEY_TRUSTED_PROXIES is not UTF-8".to_owned())
        }
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("APIKEY_TRUSTED_PROXIES: {s:?} is not a CIDR (10.0.0.0/8, ::1/128)")
                })
        })
        .collect()
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
    // The layer's metrics (feature `metrics`) go to whatever recorder is
    // installed; this one renders them for `GET /metrics`. Installed before
    // the layer serves its first request.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    // A recorder installed this way has no upkeep task of its own: without
    // one, histogram samples pile up between scrapes (or forever, unscraped).
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let port = env_u64("PORT", 3000)?;
    let port = u16::try_from(port).map_err(|_| format!("PORT out of range: {port}"))?;
    let positive_ttl = Duration::from_secs(env_u64("APIKEY_POSITIVE_TTL", 300)?);
    let negative_ttl = Duration::from_secs(env_u64("APIKEY_NEGATIVE_TTL", 30)?);
    let stale_for = Duration::from_secs(env_u64("APIKEY_SERVE_STALE", 0)?);
    let refresh_percent = env_u64("APIKEY_REFRESH_AHEAD_PERCENT", 0)?;
    if refresh_percent > 100 {
        return Err(format!(
            "APIKEY_REFRESH_AHEAD_PERCENT is a percentage: {refresh_percent}"
        ));
    }
    let delay = Duration::from_millis(env_u64("QUICKSTART_LOOKUP_DELAY_MS", 0)?);
    let fail = matches!(
        std::env::var("QUICKSTART_LOOKUP_FAIL").as_deref(),
        Ok("1" | "true" | "yes")
    );
    let proxies = trusted_proxies()?;
    let (cache, backend) = build_cache().await?;
    let limits = RateLimitSettings::from_env();
    let (limiter, limits_said) = match RateLimiter::from_settings_strict(limits.clone()).await {
        Ok(limiter) => {
            let mode = match limits.backend.as_str() {
                "redis" => format!(" ({})", limits.mode),
                _ => String::new(),
            };
            let default = limits.default_limit.as_deref().unwrap_or("none");
            (
                limiter,
                format!("{}{mode}, default {default}", limits.backend),
            )
        }
        // Misconfigured (redis without REDIS_URL, say): a loud error and
        // in-process counters.
        Err(e) => (
            RateLimiter::from_settings(limits).await,
            format!("memory (FALLBACK: {e})"),
        ),
    };
    let limiter = limiter.headers_on_every_response();

    // New keys are `sk_live_` + 32 random characters + a checksum; keys
    // without the prefix (a DEMO_API_KEY as given, older keys) still pass.
    let (format, format_said) = match std::env::var("APIKEY_KEY_SECRETS") {
        Ok(v) if !v.trim().is_empty() => {
            let secrets: Vec<&str> = v.split(',').map(str::trim).collect();
            let said = format!(
                "{KEYED_PREFIX}…, keyed checksum ({} secrets)",
                secrets.len()
            );
            (KeyFormat::keyed(KEYED_PREFIX, secrets), said)
        }
        _ => (
            KeyFormat::crc32(PUBLIC_PREFIX),
            format!("{PUBLIC_PREFIX}…, public CRC-32 checksum"),
        ),
    };
    let format = format
        .map_err(|e| format!("APIKEY_KEY_SECRETS: {e}"))?
        .allow_legacy(true);

    let database_url = std::env::var("DATABASE_URL").ok();
    let db = Db::open(database_url.as_deref()).map_err(|e| e.to_string())?;

    // Usage: noted per request in memory, written once per key per
    // interval in one transaction (never a write per request).
    let usage_interval = Duration::from_millis(env_u64("APIKEY_USAGE_INTERVAL_MS", 60_000)?);
    let usage_db = db.clone();
    let usage_builder = UsageTracker::builder(move |batch: Vec<KeyUse<db::ApiClient>>| {
        let db = usage_db.clone();
        let rows = batch
            .iter()
            .map(|u| {
                let ms = u
                    .last_used
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                (u.hash, u.uses, ms)
            })
            .collect();
        async move { db.record_usage(rows).await }
    })
    .interval(usage_interval);
    // Instances that share a Redis for the cache share usage there too: one
    // record per key per interval between them.
    #[cfg(feature = "tiered")]
    let (usage_builder, usage_said) = match (
        std::env::var("APIKEY_CACHE_BACKEND").as_deref(),
        std::env::var("REDIS_URL"),
    ) {
        (Ok("redis" | "tiered"), Ok(url)) if !url.trim().is_empty() => {
            let prefix =
                std::env::var("APIKEY_REDIS_PREFIX").unwrap_or_else(|_| "apikey:".to_owned());
            let redis = tower_api_key::usage::RedisUsage::connect(url.trim(), prefix)
                .await
                .map_err(|e| format!("usage in Redis: {e}"))?;
            (usage_builder.shared_in(redis), "shared in Redis")
        }
        _ => (usage_builder, "this process"),
    };
    #[cfg(not(feature = "tiered"))]
    let usage_said = "this process";
    let usage = usage_builder.build();
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
    .serve_stale(stale_for)
    .refresh_ahead(refresh_percent as f64 / 100.0)
    .public("/health")
    .public("/metrics")
    .optional("/v1/hello")
    // Scopes per route, checked by the layer before any handler (or rate
    // limit) runs: 403 insufficient_scope with an RFC 6750 challenge.
    .require_scopes("/v1/keys", Scopes::one("admin"))
    .require_scopes((Method::DELETE, "/v1/keys/{id}"), Scopes::one("admin"))
    .require_scopes("/v1/stats", Scopes::one("admin"))
    .require_scopes("/v1/reports", Scopes::any(["reports:read", "admin"]))
    // Keys with allowed_networks: the peer, or behind APIKEY_TRUSTED_PROXIES
    // the client they forwarded.
    .client_address(ClientAddress::peer().trusted_proxies(proxies.iter().copied()))
    // Key management always asks the table, not the cache.
    .bypass_cache("/v1/keys")
    .bypass_cache("/v1/keys/{id}")
    .rate_limits(limiter)
    .key_format(format.clone())
    .usage(usage.clone());

    // Seed the admin key (by hash; the secret is shown once and never stored).
    // A kept database that already has an admin key gets no new random one.
    let given = std::env::var("DEMO_API_KEY")
        .ok()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty());
    let admin_secret = match given {
        // A chosen key with the prefix would fail the checksum: say so now,
        // not with a 401 later.
        Some(k) if !format.check(&k).passes() => {
            return Err(format!(
                "DEMO_API_KEY starts with {} but is not a key this quickstart made \
                 (its checksum fails); choose one without the prefix",
                format.prefix()
            ))
        }
        Some(k) => Some((k, false)),
        None if db.has_admin().await.map_err(|e| e.to_string())? => None,
        None => Some((new_secret(&format).map_err(|e| e.to_string())?, true)),
    };
    if let Some((secret, _)) = &admin_secret {
        let hash = auth.hash_key(secret);
        if db
            .find_by_hash(hash)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            // The admin key is never limited (an empty list, not the default).
            let admin = NewRow {
                name: "admin".into(),
                scopes: vec!["admin".into()],
                expires_at: None,
                rate_limits: Some(Vec::new()),
                allowed_networks: None,
            };
            db.insert(hash, admin).await.map_err(|e| e.to_string())?;
        }
    }
    let shown = admin_secret.as_ref().is_some_and(|(_, shown)| *shown);

    let app = router(db, auth, format, metrics);

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
        "cache: {backend}, positive TTL {}s, negative TTL {}s, serve-stale {}s, refresh-ahead {refresh_percent}%",
        positive_ttl.as_secs(),
        negative_ttl.as_secs(),
        stale_for.as_secs(),
    );
    println!("rate limits: {limits_said}");
    match proxies.len() {
        0 => println!("client address: the connection's peer (X-Forwarded-For ignored)"),
        n => println!("client address: X-Forwarded-For through {n} trusted proxy networks"),
    }
    println!("keys: {format_said}, legacy keys allowed");
    println!(
        "usage: recorded every {} ms, {usage_said}",
        usage_interval.as_millis()
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
       -d '{{"name":"ci-bot","scopes":["reports:read"],"ttl_seconds":3600,
            "allowed_networks":["127.0.0.0/8","::1/128"],
            "rate_limits":[{{"name":"burst","quota":5,"window_seconds":60}}]}}' {base}/v1/keys
  curl -H "Authorization: Bearer {key}" {base}/v1/reports
  curl -H "Authorization: Bearer {key}" {base}/v1/keys
  curl -i -X DELETE -H "Authorization: Bearer {key}" {base}/v1/keys/2
  curl -H "Authorization: Bearer {key}" {base}/v1/stats
"#
    );
    // With connect info: the peer's address, for keys with allowed_networks.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| e.to_string())?;
    // What was used since the last batch, before the process goes.
    usage
        .shutdown(Duration::from_secs(5))
        .await
        .map_err(|e| format!("usage not recorded at shutdown: {e}"))
}
