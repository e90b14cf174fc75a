use std::fmt;
use std::future::{Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    CacheError, CacheRead, KeyCache, MemoryCache, MemoryToken, Principal, RedisCache, RedisGet,
    RedisToken, TieredCache, TieredGet, TieredToken, Verdict,
};
use crate::KeyHash;

/// A cache backend chosen at deploy time (features `memory` + `redis`): what
/// [`CacheSettings`] (and so `APIKEY_CACHE_BACKEND`: `memory`, `redis` or
/// `tiered`) selects.
///
/// ```no_run
/// # async fn demo() -> Result<(), tower_api_key::cache::BackendError> {
/// use tower_api_key::cache::{AnyCache, CacheSettings};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Client { id: u64 }
/// impl tower_api_key::Principal for Client {}
///
/// // Lenient: a Redis backend without a URL logs a loud warning and uses
/// // the in-process cache, so a misconfigured deploy still authenticates.
/// let cache: AnyCache<Client> = AnyCache::from_settings(CacheSettings::from_env()).await;
/// // Strict: the same mistake is an error at start-up.
/// let cache: AnyCache<Client> = AnyCache::from_settings_strict(CacheSettings::from_env()).await?;
/// # Ok(()) }
/// ```
pub enum AnyCache<P> {
    /// In-process.
    Memory(MemoryCache<P>),
    /// Shared through Redis.
    Redis(RedisCache<P>),
    /// In-process in front of Redis, invalidations broadcast.
    Tiered(TieredCache<P>),
}

/// Where [`AnyCache`] comes from: read from the environment, or built.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// `APIKEY_MEMORY_CAPACITY`, valid keys kept in memory (default 100,000),
    /// also the tiered cache's L1 capacity.
    pub memory_capacity: u64,
    /// `APIKEY_L1_TTL_MS`, the tiered cache's longest L1 life (default 30 s).
    pub l1_ttl: Duration,
}

/// Why [`AnyCache::from_settings_strict`] refused the settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// `APIKEY_CACHE_BACKEND` names no backend.
    #[error("APIKEY_CACHE_BACKEND={0:?} is not a cache backend (use memory, redis or tiered)")]
    UnknownBackend(String),
    /// Redis (or tiered) was asked for without `REDIS_URL`.
    #[error("APIKEY_CACHE_BACKEND=redis or tiered needs REDIS_URL")]
    MissingRedisUrl,
    /// The Redis configuration is unusable (bad URL or prefix).
    #[error("Redis cache configuration: {0}")]
    Redis(#[source] CacheError),
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            backend: "memory".to_owned(),
            redis_url: None,
            redis_prefix: super::DEFAULT_PREFIX.to_owned(),
            redis_command_timeout: super::DEFAULT_COMMAND_TIMEOUT,
            memory_capacity: 100_000,
            l1_ttl: Duration::from_secs(30),
        }
    }
}

impl CacheSettings {
    /// Reads `APIKEY_CACHE_BACKEND`, `REDIS_URL`, `APIKEY_REDIS_PREFIX`,
    /// `APIKEY_REDIS_TIMEOUT_MS`, `APIKEY_MEMORY_CAPACITY` and
    /// `APIKEY_L1_TTL_MS`; unset or unparsable numbers keep their defaults.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let defaults = Self::default();
        Self {
            backend: get("APIKEY_CACHE_BACKEND")
                .map(|b| b.to_ascii_lowercase())
                .unwrap_or(defaults.backend),
            redis_url: get("REDIS_URL"),
            redis_prefix: get("APIKEY_REDIS_PREFIX").unwrap_or(defaults.redis_prefix),
            redis_command_timeout: get("APIKEY_REDIS_TIMEOUT_MS")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(defaults.redis_command_timeout),
            memory_capacity: get("APIKEY_MEMORY_CAPACITY")
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.memory_capacity),
            l1_ttl: get("APIKEY_L1_TTL_MS")
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(defaults.l1_ttl),
        }
    }
}

impl<P: Principal + Serialize + DeserializeOwned> AnyCache<P> {
    /// The backend the settings name; refuses a missing or bad Redis
    /// configuration and unknown backends.
    pub async fn from_settings_strict(settings: CacheSettings) -> Result<Self, BackendError> {
        match settings.backend.as_str() {
            "memory" => Ok(Self::memory(&settings)),
            "redis" => {
                let url = settings
                    .redis_url
                    .as_deref()
                    .ok_or(BackendError::MissingRedisUrl)?;
                RedisCache::builder(url)
                    .prefix(settings.redis_prefix.clone())
                    .command_timeout(settings.redis_command_timeout)
                    .build()
                    .await
                    .map(Self::Redis)
                    .map_err(BackendError::Redis)
            }
            "tiered" => {
                let url = settings
                    .redis_url
                    .as_deref()
                    .ok_or(BackendError::MissingRedisUrl)?;
                TieredCache::builder(url)
                    .prefix(settings.redis_prefix.clone())
                    .command_timeout(settings.redis_command_timeout)
                    .l1_capacity(settings.memory_capacity)
                    .l1_ttl(settings.l1_ttl)
                    .build()
                    .await
                    .map(Self::Tiered)
                    .map_err(BackendError::Redis)
            }
            other => Err(BackendError::UnknownBackend(other.to_owned())),
        }
    }

    /// The backend the settings name, or the in-process cache with a loud
    /// warning when they can't be used: a misconfigured deploy still
    /// authenticates, each instance with its own cache.
    pub async fn from_settings(settings: CacheSettings) -> Self {
        let fallback = Self::memory(&settings);
        match Self::from_settings_strict(settings).await {
            Ok(cache) => cache,
            Err(error) => {
                tracing::error!(
                    %error,
                    "API key cache misconfigured; FALLING BACK TO THE IN-PROCESS CACHE: \
                     verdicts and revocations are no longer shared between instances"
                );
                fallback
            }
        }
    }

    fn memory(settings: &CacheSettings) -> Self {
        Self::Memory(
            MemoryCache::builder()
                .max_capacity(settings.memory_capacity)
                .build(),
        )
    }

    /// `"memory"`, `"redis"` or `"tiered"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
            Self::Tiered(_) => "tiered",
        }
    }
}

impl<P> Clone for AnyCache<P> {
    fn clone(&self) -> Self {
        match self {
            Self::Memory(c) => Self::Memory(c.clone()),
            Self::Redis(c) => Self::Redis(c.clone()),
            Self::Tiered(c) => Self::Tiered(c.clone()),
        }
    }
}

impl<P> fmt::Debug for AnyCache<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(c) => f.debug_tuple("AnyCache::Memory").field(c).finish(),
            Self::Redis(c) => f.debug_tuple("AnyCache::Redis").field(c).finish(),
            Self::Tiered(c) => f.debug_tuple("AnyCache::Tiered").field(c).finish(),
        }
    }
}

/// The token of [`AnyCache`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnyToken {
    /// From the memory backend.
    Memory(MemoryToken),
    /// From the Redis backend.
    Redis(RedisToken),
    /// From the tiered backend.
    Tiered(TieredToken),
}

type Read<P, T> = Result<CacheRead<P, T>, CacheError>;

/// The `get` future of [`AnyCache`]: ready at once for memory.
pub enum AnyGet<P> {
    /// Memory: already answered.
    Memory(Ready<Read<P, MemoryToken>>),
    /// Redis: one round trip.
    Redis(RedisGet<P>),
    /// Tiered: ready at once on an L1 hit.
    Tiered(TieredGet<P>),
}

fn map_token<P, T>(read: Read<P, T>, f: impl FnOnce(T) -> AnyToken) -> Read<P, AnyToken> {
    read.map(|r| CacheRead {
        verdict: r.verdict,
        token: f(r.token),
        degraded: r.degraded,
    })
}

impl<P: DeserializeOwned> Future for AnyGet<P> {
    type Output = Read<P, AnyToken>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Memory(f) => Pin::new(f).poll(cx).map(|r| map_token(r, AnyToken::Memory)),
            Self::Redis(f) => f.poll_unpin(cx).map(|r| map_token(r, AnyToken::Redis)),
            Self::Tiered(f) => f.poll_unpin(cx).map(|r| map_token(r, AnyToken::Tiered)),
        }
    }
}

impl<P> KeyCache for AnyCache<P>
where
    P: Principal + Serialize + DeserializeOwned,
{
    type Principal = P;
    type Token = AnyToken;
    type Get = AnyGet<P>;

    fn get(&self, hash: &KeyHash) -> Self::Get {
        match self {
            Self::Memory(c) => AnyGet::Memory(c.get(hash)),
            Self::Redis(c) => AnyGet::Redis(c.get(hash)),
            Self::Tiered(c) => AnyGet::Tiered(c.get(hash)),
        }
    }

    fn put(
        &self,
        hash: KeyHash,
        token: AnyToken,
        verdict: Verdict<P>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        match (self, token) {
            (Self::Memory(c), AnyToken::Memory(t)) => c.put(hash, t, verdict, ttl).boxed(),
            (Self::Redis(c), AnyToken::Redis(t)) => c.put(hash, t, verdict, ttl).boxed(),
            (Self::Tiered(c), AnyToken::Tiered(t)) => c.put(hash, t, verdict, ttl).boxed(),
            // A token from the other backend can't be current: store nothing.
            _ => futures_util::future::ready(Ok(())).boxed(),
        }
    }

    fn refresh_token(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<AnyToken, CacheError>> + Send {
        let (cache, hash) = (self.clone(), *hash);
        async move {
            match &cache {
                Self::Memory(c) => c.refresh_token(&hash).await.map(AnyToken::Memory),
                Self::Redis(c) => c.refresh_token(&hash).await.map(AnyToken::Redis),
                Self::Tiered(c) => c.refresh_token(&hash).await.map(AnyToken::Tiered),
            }
        }
    }

    fn invalidate(&self, hash: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        let (cache, hash) = (self.clone(), *hash);
        async move {
            match &cache {
                Self::Memory(c) => c.invalidate(&hash).await,
                Self::Redis(c) => c.invalidate(&hash).await,
                Self::Tiered(c) => c.invalidate(&hash).await,
            }
        }
    }

    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
        let cache = self.clone();
        async move {
            match &cache {
                Self::Memory(c) => c.invalidate_all().await,
                Self::Redis(c) => c.invalidate_all().await,
                Self::Tiered(c) => c.invalidate_all().await,
            }
        }
    }

    fn invalidate_owner(&self, owner: &str) -> impl Future<Output = Result<(), CacheError>> + Send {
        let (cache, owner) = (self.clone(), owner.to_owned());
        async move {
            match &cache {
                Self::Memory(c) => c.invalidate_owner(&owner).await,
                Self::Redis(c) => c.invalidate_owner(&owner).await,
                Self::Tiered(c) => c.invalidate_owner(&owner).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> CacheSettings {
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

    #[derive(serde::Serialize, serde::Deserialize)]
    struct P;
    impl Principal for P {}

    #[test]
    fn settings_from_variables() {
        assert_eq!(vars(&[]), CacheSettings::default());
        let s = vars(&[
            ("APIKEY_CACHE_BACKEND", " Redis "),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("APIKEY_REDIS_PREFIX", "svc:"),
            ("APIKEY_REDIS_TIMEOUT_MS", "25"),
            ("APIKEY_MEMORY_CAPACITY", "nope"),
        ]);
        assert_eq!(s.backend, "redis");
        assert_eq!(s.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(s.redis_prefix, "svc:");
        assert_eq!(s.redis_command_timeout, Duration::from_millis(25));
        assert_eq!(s.memory_capacity, 100_000);
    }

    #[tokio::test]
    async fn redis_without_a_url_falls_back_or_fails_strictly() {
        let s = vars(&[("APIKEY_CACHE_BACKEND", "redis")]);
        let lenient = AnyCache::<P>::from_settings(s.clone()).await;
        assert_eq!(lenient.backend(), "memory");
        let strict = AnyCache::<P>::from_settings_strict(s).await;
        assert!(matches!(strict, Err(BackendError::MissingRedisUrl)));
        let unknown =
            AnyCache::<P>::from_settings_strict(vars(&[("APIKEY_CACHE_BACKEND", "memcached")]))
                .await;
        assert!(matches!(unknown, Err(BackendError::UnknownBackend(b)) if b == "memcached"));
        let bad_url = vars(&[
            ("APIKEY_CACHE_BACKEND", "redis"),
            ("REDIS_URL", "not a url"),
        ]);
        assert!(matches!(
            AnyCache::<P>::from_settings_strict(bad_url).await,
            Err(BackendError::Redis(_))
        ));
    }
}
