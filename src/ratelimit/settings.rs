//! [`RateLimitSettings`]: where a [`RateLimiter`] counts, read from the
//! environment at deploy time (as [`CacheSettings`](crate::cache) are).

use super::policy::{InvalidRateLimit, RateLimit};
#[cfg(feature = "redis")]
use super::store::CounterError;
use super::{MemoryCounters, RateLimiter};
use crate::env::{redacted, Vars};

/// Where [`RateLimiter::from_settings`] counts: read from the environment,
/// or built.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitSettings {
    /// `memory` or `redis` (`APIKEY_RATELIMIT_BACKEND`, default `memory`).
    pub backend: String,
    /// `REDIS_URL`.
    pub redis_url: Option<String>,
    /// `APIKEY_REDIS_PREFIX` (default `apikey:`, the cache's).
    pub redis_prefix: String,
    /// `strict` (one round trip per request) or `local-first` (decided in
    /// this process, counts sent in batches) (`APIKEY_RATELIMIT_MODE`,
    /// default `strict`).
    pub mode: String,
    /// `APIKEY_DEFAULT_RATE_LIMIT`, `QUOTA/WINDOW_SECONDS` (`100/60`): the
    /// policy of keys that report none. Unset: such keys are unlimited.
    pub default_limit: Option<String>,
}

/// Why [`RateLimiter::from_settings_strict`] refused the settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitSettingsError {
    /// `APIKEY_RATELIMIT_BACKEND` names no backend.
    #[error("APIKEY_RATELIMIT_BACKEND={0:?} is not a counter backend (use memory or redis)")]
    UnknownBackend(String),
    /// `APIKEY_RATELIMIT_MODE` names no mode.
    #[error("APIKEY_RATELIMIT_MODE={0:?} is not a mode (use strict or local-first)")]
    UnknownMode(String),
    /// Redis was asked for without `REDIS_URL` (or this build has no `redis`
    /// feature).
    #[error("APIKEY_RATELIMIT_BACKEND=redis needs REDIS_URL and the `redis` feature")]
    MissingRedis,
    /// `APIKEY_DEFAULT_RATE_LIMIT` is not `QUOTA/WINDOW_SECONDS`.
    #[error("APIKEY_DEFAULT_RATE_LIMIT: {0}")]
    DefaultLimit(#[source] InvalidRateLimit),
    /// The Redis configuration is unusable (bad URL or prefix).
    #[cfg(feature = "redis")]
    #[error("Redis counters: {0}")]
    Redis(#[source] CounterError),
}

/// The Redis URL's password, if it has one, is not shown.
impl std::fmt::Debug for RateLimitSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitSettings")
            .field("backend", &self.backend)
            .field("redis_url", &self.redis_url.as_deref().map(redacted))
            .field("redis_prefix", &self.redis_prefix)
            .field("mode", &self.mode)
            .field("default_limit", &self.default_limit)
            .finish()
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            backend: "memory".to_owned(),
            redis_url: None,
            redis_prefix: "apikey:".to_owned(),
            mode: "strict".to_owned(),
            default_limit: None,
        }
    }
}

impl RateLimitSettings {
    /// Reads `APIKEY_RATELIMIT_BACKEND`, `REDIS_URL`, `APIKEY_REDIS_PREFIX`,
    /// `APIKEY_RATELIMIT_MODE` and `APIKEY_DEFAULT_RATE_LIMIT`.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let vars = Vars(var);
        let defaults = Self::default();
        Self {
            backend: vars
                .name("APIKEY_RATELIMIT_BACKEND")
                .unwrap_or(defaults.backend),
            redis_url: vars.get("REDIS_URL"),
            redis_prefix: vars
                .get("APIKEY_REDIS_PREFIX")
                .unwrap_or(defaults.redis_prefix),
            mode: vars.name("APIKEY_RATELIMIT_MODE").unwrap_or(defaults.mode),
            default_limit: vars.get("APIKEY_DEFAULT_RATE_LIMIT"),
        }
    }
}

impl RateLimiter {
    /// The limiter the settings describe; refuses a missing or bad Redis
    /// configuration, unknown backends and modes, and a bad default policy.
    pub async fn from_settings_strict(
        settings: RateLimitSettings,
    ) -> Result<Self, RateLimitSettingsError> {
        let default = settings
            .default_limit
            .as_deref()
            .map(str::parse::<RateLimit>)
            .transpose()
            .map_err(RateLimitSettingsError::DefaultLimit)?;
        if !matches!(settings.mode.as_str(), "strict" | "local-first") {
            return Err(RateLimitSettingsError::UnknownMode(settings.mode));
        }
        let limiter = match settings.backend.as_str() {
            "memory" => RateLimiter::new(MemoryCounters::new()),
            "redis" => redis(&settings).await?,
            other => return Err(RateLimitSettingsError::UnknownBackend(other.to_owned())),
        };
        Ok(match default {
            Some(limit) => limiter.default_limit(limit),
            None => limiter,
        })
    }

    /// The limiter the settings describe, as leniently as it can be: a bad
    /// default policy is dropped and an unknown mode is strict (each said
    /// loudly), and when the backend can't be used (Redis asked for without
    /// `REDIS_URL`, say) the limiter counts in process, with a loud error: a
    /// misconfigured deploy still limits, each instance alone.
    pub async fn from_settings(mut settings: RateLimitSettings) -> Self {
        if let Some(Err(error)) = settings
            .default_limit
            .as_deref()
            .map(str::parse::<RateLimit>)
        {
            tracing::error!(%error, "APIKEY_DEFAULT_RATE_LIMIT dropped: keys that report no limits are unlimited");
            settings.default_limit = None;
        }
        if !matches!(settings.mode.as_str(), "strict" | "local-first") {
            tracing::error!(mode = %settings.mode, "APIKEY_RATELIMIT_MODE is not strict or local-first: strict");
            settings.mode = "strict".to_owned();
        }
        let default = settings.default_limit.clone();
        match Self::from_settings_strict(settings).await {
            Ok(limiter) => limiter,
            Err(error) => {
                tracing::error!(
                    %error,
                    "rate limits misconfigured; FALLING BACK TO IN-PROCESS COUNTERS: \
                     each instance enforces the limits alone"
                );
                let limiter = RateLimiter::new(MemoryCounters::new());
                match default.as_deref().map(str::parse::<RateLimit>) {
                    Some(Ok(limit)) => limiter.default_limit(limit),
                    _ => limiter,
                }
            }
        }
    }
}

#[cfg(feature = "redis")]
async fn redis(settings: &RateLimitSettings) -> Result<RateLimiter, RateLimitSettingsError> {
    let url = settings
        .redis_url
        .as_deref()
        .ok_or(RateLimitSettingsError::MissingRedis)?;
    let counters = super::RedisCounters::builder(url)
        .prefix(settings.redis_prefix.clone())
        .build()
        .await
        .map_err(RateLimitSettingsError::Redis)?;
    Ok(match settings.mode.as_str() {
        "local-first" => RateLimiter::new(super::LocalFirst::new(counters)),
        _ => RateLimiter::new(counters),
    })
}

#[cfg(not(feature = "redis"))]
async fn redis(_: &RateLimitSettings) -> Result<RateLimiter, RateLimitSettingsError> {
    Err(RateLimitSettingsError::MissingRedis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> RateLimitSettings {
        RateLimitSettings::from_vars(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn settings_from_variables() {
        assert_eq!(vars(&[]), RateLimitSettings::default());
        let s = vars(&[
            ("APIKEY_RATELIMIT_BACKEND", " Redis "),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("APIKEY_RATELIMIT_MODE", "LOCAL-FIRST"),
            ("APIKEY_DEFAULT_RATE_LIMIT", "100/60"),
        ]);
        assert_eq!(s.backend, "redis");
        assert_eq!(s.mode, "local-first");
        assert_eq!(s.default_limit.as_deref(), Some("100/60"));
    }

    #[tokio::test]
    async fn bad_settings_fail_strictly_and_fall_back_leniently() {
        for (bad, what) in [
            (
                vars(&[("APIKEY_RATELIMIT_BACKEND", "memcached")]),
                "backend",
            ),
            (vars(&[("APIKEY_RATELIMIT_BACKEND", "redis")]), "redis"),
            (vars(&[("APIKEY_RATELIMIT_MODE", "eventually")]), "mode"),
            (vars(&[("APIKEY_DEFAULT_RATE_LIMIT", "lots")]), "default"),
        ] {
            assert!(
                RateLimiter::from_settings_strict(bad.clone())
                    .await
                    .is_err(),
                "{what}"
            );
            let lenient = RateLimiter::from_settings(bad).await;
            assert!(
                format!("{lenient:?}").contains("MemoryCounters"),
                "{what}: {lenient:?}"
            );
            assert_eq!(lenient.limits(None), None, "{what}: no default");
        }
        let ok = RateLimiter::from_settings_strict(vars(&[("APIKEY_DEFAULT_RATE_LIMIT", "5/60")]))
            .await
            .unwrap();
        assert_eq!(ok.limits(None).map(<[_]>::len), Some(1));
    }
}
