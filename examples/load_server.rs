//! The app `scripts/load-matrix` drives: one axum route, `GET /v1/work`,
//! behind the layer or not, with `LOAD_KEYS` keys (`sk_load_0`...) in an
//! in-memory key table. `LOAD_AUTH` picks what stands in front:
//!
//! | `LOAD_AUTH` | the layer |
//! | --- | --- |
//! | `none` | no layer: the baseline |
//! | `memory` | `MemoryCache` |
//! | `redis` | `RedisCache` (`REDIS_URL`) |
//! | `tiered` | `TieredCache` (`REDIS_URL`) |
//! | `ratelimit` | `MemoryCache` and a rate limit per key on Redis counters, never reached |
//!
//! ```sh
//! LOAD_AUTH=tiered REDIS_URL=redis://127.0.0.1:6379 PORT=3100 \
//!     cargo run --release --example load_server --features tiered
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tower_api_key::cache::{MemoryCache, RedisCache, TieredCache};
use tower_api_key::ratelimit::{RateLimiter, RedisCounters};
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Principal, RateLimit};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Client {
    id: u64,
}

impl Principal for Client {}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let auth = env("LOAD_AUTH", "memory");
    let port: u16 = env("PORT", "3100")
        .parse()
        .map_err(|e| format!("PORT: {e}"))?;
    let keys: u64 = env("LOAD_KEYS", "1000")
        .parse()
        .map_err(|e| format!("LOAD_KEYS: {e}"))?;
    let redis = env("REDIS_URL", "redis://127.0.0.1:6379");
    let table: Arc<HashMap<KeyHash, Client>> = Arc::new(
        (0..keys)
            .map(|id| (KeyHash::of(format!("sk_load_{id}")), Client { id }))
            .collect(),
    );
    let lookup = lookup_fn(move |hash: KeyHash| {
        let found = table.get(&hash).cloned();
        std::future::ready(Ok::<_, Infallible>(found))
    });
    let routes = Router::new().route("/v1/work", get(|| async { "{\"done\":true}" }));
    let redis_error = |e: tower_api_key::cache::CacheError| format!("Redis: {e}");
    let app = match auth.as_str() {
        "none" => routes,
        "memory" => routes.layer(ApiKeyAuthLayer::new(MemoryCache::new(), lookup)),
        "redis" => {
            let cache = RedisCache::builder(&redis)
                .build()
                .await
                .map_err(redis_error)?;
            routes.layer(ApiKeyAuthLayer::new(cache, lookup))
        }
        "tiered" => {
            let cache = TieredCache::builder(&redis)
                .build()
                .await
                .map_err(redis_error)?;
            routes.layer(ApiKeyAuthLayer::new(cache, lookup))
        }
        "ratelimit" => {
            let counters = RedisCounters::builder(&redis)
                .build()
                .await
                .map_err(|e| format!("Redis counters: {e}"))?;
            let limit = RateLimit::new("load", 1_000_000_000, Duration::from_secs(3600))
                .map_err(|e| e.to_string())?;
            let limiter = RateLimiter::new(counters).default_limit(limit);
            routes.layer(ApiKeyAuthLayer::new(MemoryCache::new(), lookup).rate_limits(limiter))
        }
        other => {
            return Err(format!(
                "LOAD_AUTH={other:?}: none, memory, redis, tiered, ratelimit"
            ))
        }
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
    println!("load_server: {auth} on 127.0.0.1:{port}, {keys} keys");
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}
