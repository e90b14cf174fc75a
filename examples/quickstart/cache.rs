//! The cache: memory, or (built with `--features tiered`) whatever
//! `APIKEY_CACHE_BACKEND` picks.

use crate::db::ApiClient;

#[cfg(feature = "tiered")]
pub type Cache = tower_api_key::cache::AnyCache<ApiClient>;
#[cfg(not(feature = "tiered"))]
pub type Cache = tower_api_key::cache::MemoryCache<ApiClient>;

/// The cache, and what to say of it at start: the backend, and for Redis
/// whether its values are sealed (`APIKEY_CACHE_SECRET`, shared by every
/// instance).
#[cfg(feature = "tiered")]
pub async fn build_cache() -> Result<(Cache, String), String> {
    use tower_api_key::cache::{AnyCache, CacheSettings};
    let settings = CacheSettings::from_env();
    if !matches!(settings.backend.as_str(), "memory" | "redis" | "tiered") {
        return Err(format!(
            "APIKEY_CACHE_BACKEND={:?} is not supported; use `memory`, `redis` or `tiered`",
            settings.backend
        ));
    }
    let sealed = settings.cache_secret.is_some();
    // Redis without REDIS_URL: a loud warning and the in-process cache.
    let cache = AnyCache::from_settings(settings).await;
    let backend = match (cache.backend(), sealed) {
        ("memory", _) => "memory".to_owned(),
        (redis, true) => format!("{redis} (Redis values sealed with APIKEY_CACHE_SECRET)"),
        (redis, false) => format!(
            "{redis} (Redis values NOT authenticated: anyone who can write to Redis can mint a key; set APIKEY_CACHE_SECRET)"
        ),
    };
    Ok((cache, backend))
}

#[cfg(not(feature = "tiered"))]
pub async fn build_cache() -> Result<(Cache, String), String> {
    let backend = std::env::var("APIKEY_CACHE_BACKEND").unwrap_or_default();
    match backend.trim().to_ascii_lowercase().as_str() {
        "" | "memory" => Ok((
            tower_api_key::cache::MemoryCache::new(),
            "memory".to_owned(),
        )),
        backend @ ("redis" | "tiered") => Err(format!(
            "APIKEY_CACHE_BACKEND={backend} needs the `tiered` feature: \
             cargo run --example quickstart --features tiered,metrics"
        )),
        other => Err(format!(
            "APIKEY_CACHE_BACKEND={other:?} is not supported; use `memory`, `redis` or `tiered`"
        )),
    }
}

/// The tiered cache's own counters: broadcasts received, L1 flushes.
#[cfg(feature = "tiered")]
pub fn tiered_stats(cache: &Cache) -> Option<serde_json::Value> {
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

#[cfg(not(feature = "tiered"))]
pub fn tiered_stats(_: &Cache) -> Option<serde_json::Value> {
    None
}
