//! [`CacheSettings`]: which backend [`AnyCache`](super::AnyCache) builds,
//! read from the environment at deploy time.

use crate::env::{redacted, Vars};
use std::time::Duration;

use super::memory::DEFAULT_CAPACITY;
use super::redis::{DEFAULT_BREAKER_FAILURES, DEFAULT_COMMAND_TIMEOUT, DEFAULT_PREFIX};
use super::tiered::DEFAULT_L1_TTL;

/// Where [`AnyCache`](super::AnyCache) comes from: read from the environment, or built.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheSettings {
    /// `memory`, `redis` or `tiered` (`APIKEY_CACHE_BACKEND`, default
    /// `memory`).
    pub backend: String,
    /// `REDIS_URL`.
    pub redis_url: Option<String>,
    /// `APIKEY_REDIS_PREFIX` (default `apikey:`).
    pub redis_prefix: String,
    /// `APIKEY_REDIS_TIMEOUT_MS`, the per-command timeout (default 100 ms).
    pub redis_command_timeout: Duration,
    /// `APIKEY_REDIS_BREAKER_FAILURES`, failures in a row that open the
    /// circuit breaker (default 3; `0` turns it off).
    pub redis_breaker_failures: u32,
    /// `APIKEY_MEMORY_CAPACITY`, valid keys kept in memory (default 100,000),
    /// also the tiered cache's L1 capacity.
    pub memory_capacity: u64,
    /// `APIKEY_L1_TTL_MS`, the tiered cache's longest L1 life (default 30 s).
    pub l1_ttl: Duration,
    /// `APIKEY_CACHE_SECRET`: with it, every value written to Redis is sealed
    /// with a MAC and every value read is checked
    /// ([`RedisCacheBuilder::value_secret`](super::RedisCacheBuilder::value_secret));
    /// never shown by `Debug`.
    pub cache_secret: Option<String>,
}

/// The Redis URL's password, if it has one, is not shown.
impl std::fmt::Debug for CacheSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheSettings")
            .field("backend", &self.backend)
            .field("redis_url", &self.redis_url.as_deref().map(redacted))
            .field("redis_prefix", &self.redis_prefix)
            .field("redis_command_timeout", &self.redis_command_timeout)
            .field("redis_breaker_failures", &self.redis_breaker_failures)
            .field("memory_capacity", &self.memory_capacity)
            .field("l1_ttl", &self.l1_ttl)
            .field("cache_secret", &self.cache_secret.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            backend: "memory".to_owned(),
            redis_url: None,
            redis_prefix: DEFAULT_PREFIX.to_owned(),
            redis_command_timeout: DEFAULT_COMMAND_TIMEOUT,
            redis_breaker_failures: DEFAULT_BREAKER_FAILURES,
            memory_capacity: DEFAULT_CAPACITY,
            l1_ttl: DEFAULT_L1_TTL,
            cache_secret: None,
        }
    }
}

impl CacheSettings {
    /// Reads `APIKEY_CACHE_BACKEND`, `REDIS_URL`, `APIKEY_REDIS_PREFIX`,
    /// `APIKEY_REDIS_TIMEOUT_MS`, `APIKEY_REDIS_BREAKER_FAILURES`,
    /// `APIKEY_MEMORY_CAPACITY`, `APIKEY_L1_TTL_MS` and `APIKEY_CACHE_SECRET`;
    /// unset or unparsable numbers keep their defaults.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let vars = Vars(var);
        let get = |name: &str| vars.get(name);
        let defaults = Self::default();
        Self {
            backend: vars
                .name("APIKEY_CACHE_BACKEND")
                .unwrap_or(defaults.backend),
            redis_url: get("REDIS_URL"),
            redis_prefix: get("APIKEY_REDIS_PREFIX").unwrap_or(defaults.redis_prefix),
            redis_command_timeout: get("APIKEY_REDIS_TIMEOUT_MS")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(defaults.redis_command_timeout),
            redis_breaker_failures: get("APIKEY_REDIS_BREAKER_FAILURES")
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.redis_breaker_failures),
            memory_capacity: get("APIKEY_MEMORY_CAPACITY")
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.memory_capacity),
            l1_ttl: get("APIKEY_L1_TTL_MS")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(defaults.l1_ttl),
            cache_secret: get("APIKEY_CACHE_SECRET").filter(|s| !s.is_empty()),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::cache) fn vars(pairs: &[(&str, &str)]) -> CacheSettings {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CacheSettings::from_vars(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn settings_from_variables() {
        assert_eq!(vars(&[]), CacheSettings::default());
        let s = vars(&[
            ("APIKEY_CACHE_BACKEND", " Redis "),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("APIKEY_REDIS_PREFIX", "svc:"),
            ("APIKEY_REDIS_TIMEOUT_MS", "25"),
            ("APIKEY_MEMORY_CAPACITY", "nope"),
            ("APIKEY_REDIS_BREAKER_FAILURES", "5"),
            ("APIKEY_CACHE_SECRET", "hunter2"),
        ]);
        assert_eq!(s.cache_secret.as_deref(), Some("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"), "the secret in Debug");
        assert_eq!(s.redis_breaker_failures, 5);
        assert_eq!(s.backend, "redis");
        assert_eq!(s.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(s.redis_prefix, "svc:");
        assert_eq!(s.redis_command_timeout, Duration::from_millis(25));
        assert_eq!(s.memory_capacity, 100_000);
    }
}
