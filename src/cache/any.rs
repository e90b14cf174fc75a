//! [`AnyCache`]: one of the three backends, chosen at deploy time, behind one
//! type. Every operation dispatches the same way: the [`dispatch!`] macro
//! calls the chosen backend, and a [`Dispatch`] future (a pin-projected enum,
//! as tower's `Either`) polls its future where it lies, with no box and no
//! clone.

use std::fmt;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::{Either, MapOk};
use futures_util::TryFutureExt;
use pin_project_lite::pin_project;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::future::{RedisGet, TieredGet};
use super::token::{MemoryToken, RedisToken, TieredToken};
use super::{
    CacheError, CacheRead, CacheSettings, KeyCache, MemoryCache, RedisCache, TieredCache, Ttl,
    Verdict, DEFAULT_BREAKER_COOLDOWN,
};
use crate::{KeyHash, Principal};

/// A cache backend chosen at deploy time (feature `tiered`): what
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
                let mut builder = RedisCache::builder(url)
                    .prefix(settings.redis_prefix.clone())
                    .command_timeout(settings.redis_command_timeout)
                    .breaker(settings.redis_breaker_failures, DEFAULT_BREAKER_COOLDOWN);
                if let Some(secret) = &settings.cache_secret {
                    builder = builder.value_secret(secret);
                }
                builder
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
                let mut builder = TieredCache::builder(url)
                    .prefix(settings.redis_prefix.clone())
                    .command_timeout(settings.redis_command_timeout)
                    .breaker(settings.redis_breaker_failures, DEFAULT_BREAKER_COOLDOWN)
                    .l1_capacity(settings.memory_capacity)
                    .l1_ttl(settings.l1_ttl);
                if let Some(secret) = &settings.cache_secret {
                    builder = builder.value_secret(secret);
                }
                builder
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

/// The token of [`AnyCache`]: the chosen backend's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnyToken {
    /// From the memory backend.
    Memory(MemoryToken),
    /// From the Redis backend.
    Redis(RedisToken),
    /// From the tiered backend.
    Tiered(TieredToken),
}

impl AnyToken {
    fn backend(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
            Self::Tiered(_) => "tiered",
        }
    }
}

pin_project! {
    /// A future of the backend an [`AnyCache`] chose. Every arm answers the
    /// same type.
    #[project = DispatchProj]
    enum Dispatch<M, R, T> {
        /// The memory backend's future.
        Memory {
            #[pin]
            future: M,
        },
        /// The Redis backend's future.
        Redis {
            #[pin]
            future: R,
        },
        /// The tiered backend's future.
        Tiered {
            #[pin]
            future: T },
    }
}

impl<M, R, T> Future for Dispatch<M, R, T>
where
    M: Future,
    R: Future<Output = M::Output>,
    T: Future<Output = M::Output>,
{
    type Output = M::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<M::Output> {
        match self.project() {
            DispatchProj::Memory { future } => future.poll(cx),
            DispatchProj::Redis { future } => future.poll(cx),
            DispatchProj::Tiered { future } => future.poll(cx),
        }
    }
}

/// Calls `$call` on the backend `$cache` holds, bound to `$backend`, and
/// wraps its future in the matching [`Dispatch`] arm.
macro_rules! dispatch {
    ($cache:expr, $backend:ident => $call:expr) => {
        match $cache {
            AnyCache::Memory($backend) => Dispatch::Memory { future: $call },
            AnyCache::Redis($backend) => Dispatch::Redis { future: $call },
            AnyCache::Tiered($backend) => Dispatch::Tiered { future: $call },
        }
    };
}

/// A backend's read, its token wrapped in [`AnyToken`].
type ToAny<P, T> = fn(CacheRead<P, T>) -> CacheRead<P, AnyToken>;

/// The `get` future of [`AnyCache`]: ready at once for memory, and for
/// tiered on an L1 hit.
pub struct AnyGet<P>(AnyRead<P>);

type AnyRead<P> = Dispatch<
    Mapped<MemoryGet<P>, P, MemoryToken>,
    Mapped<RedisGet<P>, P, RedisToken>,
    Mapped<TieredGet<P>, P, TieredToken>,
>;

type MemoryGet<P> = Ready<Result<CacheRead<P, MemoryToken>, CacheError>>;
/// A backend's `get`, its token wrapped in [`AnyToken`].
type Mapped<F, P, T> = MapOk<F, ToAny<P, T>>;

impl<P> fmt::Debug for AnyGet<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.0 {
            Dispatch::Memory { .. } => "memory",
            Dispatch::Redis { .. } => "redis",
            Dispatch::Tiered { .. } => "tiered",
        };
        f.debug_tuple("AnyGet").field(&backend).finish()
    }
}

impl<P> Future for AnyGet<P>
where
    P: Principal + Serialize + DeserializeOwned,
{
    type Output = Result<CacheRead<P, AnyToken>, CacheError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl From<MemoryToken> for AnyToken {
    fn from(token: MemoryToken) -> Self {
        Self::Memory(token)
    }
}

impl From<RedisToken> for AnyToken {
    fn from(token: RedisToken) -> Self {
        Self::Redis(token)
    }
}

impl From<TieredToken> for AnyToken {
    fn from(token: TieredToken) -> Self {
        Self::Tiered(token)
    }
}

fn to_any<P, T: Into<AnyToken>>(read: CacheRead<P, T>) -> CacheRead<P, AnyToken> {
    read.map_token(Into::into)
}

impl<P> KeyCache for AnyCache<P>
where
    P: Principal + Serialize + DeserializeOwned,
{
    type Principal = P;
    type Token = AnyToken;
    type Get = AnyGet<P>;

    fn get(&self, hash: &KeyHash) -> Self::Get {
        AnyGet(dispatch!(self, c => c.get(hash).map_ok(to_any as ToAny<P, _>)))
    }

    fn refresh_token(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<AnyToken, CacheError>> + Send {
        dispatch!(self, c => c.refresh_token(hash).map_ok(AnyToken::from))
    }

    fn put(
        &self,
        hash: KeyHash,
        token: AnyToken,
        verdict: Verdict<P>,
        ttl: Ttl,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        let put = match (self, token) {
            (Self::Memory(c), AnyToken::Memory(t)) => Dispatch::Memory {
                future: c.put(hash, t, verdict, ttl),
            },
            (Self::Redis(c), AnyToken::Redis(t)) => Dispatch::Redis {
                future: c.put(hash, t, verdict, ttl),
            },
            (Self::Tiered(c), AnyToken::Tiered(t)) => Dispatch::Tiered {
                future: c.put(hash, t, verdict, ttl),
            },
            // Only another AnyCache can have made it: say so.
            (cache, token) => {
                return Either::Right(ready(Err(CacheError::new(format!(
                    "a {} token given to the {} backend: nothing stored",
                    token.backend(),
                    cache.backend()
                )))))
            }
        };
        Either::Left(put)
    }

    fn invalidate(&self, hash: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        dispatch!(self, c => c.invalidate(hash))
    }

    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
        dispatch!(self, c => c.invalidate_all())
    }

    fn invalidate_owner(&self, owner: &str) -> impl Future<Output = Result<(), CacheError>> + Send {
        dispatch!(self, c => c.invalidate_owner(owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::settings::tests::vars;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct P;
    impl Principal for P {}

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
