//! The cache contract, [`KeyCache`], and its backends.
//!
//! A backend stores [`Verdict`]s by [`KeyHash`] with a time to live, drops
//! them on [`invalidate`](KeyCache::invalidate), and hands out a
//! [`Token`](KeyCache::Token) with every read so that a lookup which was
//! already in flight when an invalidation landed can't write its stale verdict
//! afterwards. No backend type (moka, fred) crosses this contract, so a backend
//! can be swapped without touching the layer.
//!
//! - [`MemoryCache`]: in-process, on moka (feature `memory`, on by default).
//! - `RedisCache`: shared by every instance, on fred (feature `redis`).
//! - `TieredCache`: moka in front of Redis, invalidations broadcast to every
//!   instance over Redis pub/sub (features `memory` + `redis`).
//! - `AnyCache`: one of the three, picked at deploy time from `CacheSettings`
//!   (`APIKEY_CACHE_BACKEND`, `REDIS_URL`).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::KeyHash;

#[cfg(all(feature = "memory", feature = "redis"))]
mod any;
#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(all(feature = "memory", feature = "redis"))]
mod tiered;
#[cfg(all(feature = "memory", feature = "redis"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "memory", feature = "redis"))))]
pub use any::{AnyCache, AnyGet, AnyToken, BackendError, CacheSettings};
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use memory::{MemoryCache, MemoryCacheBuilder, MemoryToken};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{
    RedisCache, RedisCacheBuilder, RedisGet, RedisToken, DEFAULT_COMMAND_TIMEOUT, DEFAULT_PREFIX,
};
#[cfg(all(feature = "memory", feature = "redis"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "memory", feature = "redis"))))]
pub use tiered::{TieredCache, TieredCacheBuilder, TieredGet, TieredStats, TieredToken};

/// What the layer knows about a principal, the value your lookup returns for
/// a valid key (a client, an account, a service identity).
///
/// The only required knowledge is optional: a key that expires says when, and
/// the cache never keeps it past that instant (its positive TTL is capped),
/// and a cached principal whose expiry has passed is rejected even before the
/// cache drops it.
///
/// ```
/// use std::time::SystemTime;
/// use tower_api_key::Principal;
///
/// struct Client { id: u64, expires_at: Option<SystemTime> }
///
/// impl Principal for Client {
///     fn expires_at(&self) -> Option<SystemTime> {
///         self.expires_at
///     }
/// }
/// # let _ = Client { id: 1, expires_at: None }.id;
/// ```
pub trait Principal: Send + Sync + 'static {
    /// When the key stops being valid, if it ever does.
    fn expires_at(&self) -> Option<SystemTime> {
        None
    }

    /// Who owns the key (a tenant, an organisation, a user), if anyone:
    /// [`KeyCache::invalidate_owner`] drops every cached key of one owner at
    /// once, on every instance with the tiered cache.
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use tower_api_key::Principal;
    ///
    /// struct Client { org: String }
    ///
    /// impl Principal for Client {
    ///     fn owner(&self) -> Option<Cow<'_, str>> {
    ///         Some(Cow::Borrowed(&self.org))
    ///     }
    /// }
    /// # let _ = Client { org: "acme".into() }.owner();
    /// ```
    fn owner(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// A cached answer for one key hash.
#[derive(Debug)]
pub enum Verdict<P> {
    /// The key is valid and belongs to this principal.
    Valid(Arc<P>),
    /// The key is unknown, revoked or expired (a negative entry).
    Invalid,
}

impl<P> Clone for Verdict<P> {
    fn clone(&self) -> Self {
        match self {
            Self::Valid(p) => Self::Valid(Arc::clone(p)),
            Self::Invalid => Self::Invalid,
        }
    }
}

/// The result of [`KeyCache::get`]: the cached verdict, if any, and the token
/// a later [`put`](KeyCache::put) for the same hash must present.
#[derive(Debug)]
pub struct CacheRead<P, T> {
    /// `None` on a miss.
    pub verdict: Option<Verdict<P>>,
    /// Taken at the read: an invalidation after this point makes a `put`
    /// with this token a no-op.
    pub token: T,
    /// The backend answered, but something was wrong with what it held (a
    /// value it could not decode, say): the layer counts it in
    /// [`Stats::cache_errors`](crate::Stats::cache_errors) and logs it, and the
    /// read counts as the miss it is, so the lookup's answer overwrites it.
    pub degraded: Option<CacheError>,
}

impl<P, T> CacheRead<P, T> {
    /// A cached verdict.
    pub fn hit(verdict: Verdict<P>, token: T) -> Self {
        Self {
            verdict: Some(verdict),
            token,
            degraded: None,
        }
    }

    /// Nothing cached.
    pub fn miss(token: T) -> Self {
        Self {
            verdict: None,
            token,
            degraded: None,
        }
    }

    /// Nothing usable cached, because of `error`.
    pub fn degraded_miss(token: T, error: CacheError) -> Self {
        Self {
            verdict: None,
            token,
            degraded: Some(error),
        }
    }
}

/// A cache backend failed (unreachable, timed out, returned garbage).
///
/// The layer never turns this into a rejection or an acceptance: it counts
/// it in [`Stats::cache_errors`](crate::Stats::cache_errors), logs it, and
/// asks the lookup instead.
#[derive(Debug, thiserror::Error)]
#[error("API key cache error: {source}")]
pub struct CacheError {
    #[source]
    source: Box<dyn StdError + Send + Sync>,
}

impl CacheError {
    /// Wraps a backend's error.
    pub fn new(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

/// The backend contract: verdicts by key hash, with TTLs and invalidation.
///
/// # Invariants a backend must keep
///
/// - **No stale refill.** [`get`](Self::get) returns a token with every read,
///   and the layer passes that token back to [`put`](Self::put) when its
///   lookup finishes. If [`invalidate`](Self::invalidate) (for that hash) or
///   [`invalidate_all`](Self::invalidate_all) happened after the read, the
///   `put` must not store anything, even when it races the invalidation.
/// - **`invalidate` returns only when the entry is gone** from every tier the
///   process controls.
/// - **Tokens compare equal** only when no invalidation of the hash happened
///   between the reads that produced them: the layer lets a request share
///   another's in-flight lookup only when their tokens are equal.
/// - **Bounded.** Whatever keys arrive, memory stays within configuration.
///
/// `get` is on every request's path: its future is a named associated type so
/// an in-process backend can answer with [`std::future::Ready`] and no
/// allocation.
pub trait KeyCache: Send + Sync + 'static {
    /// The principal type cached for valid keys.
    type Principal: Principal;
    /// Proof of when a read happened, see the invariants above.
    type Token: Clone + Eq + Send + Sync + 'static;
    /// The future returned by [`get`](Self::get).
    type Get: Future<Output = Result<CacheRead<Self::Principal, Self::Token>, CacheError>>
        + Send
        + 'static;

    /// Reads the verdict cached for `hash`.
    fn get(&self, hash: &KeyHash) -> Self::Get;

    /// Stores `verdict` for `ttl`, unless `hash` was invalidated since the
    /// read that produced `token`. Storing one kind of verdict replaces the
    /// other kind.
    fn put(
        &self,
        hash: KeyHash,
        token: Self::Token,
        verdict: Verdict<Self::Principal>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// A token for a fill that must replace whatever is cached for `hash`:
    /// a cache-bypass route's fresh lookup. Taken before that lookup starts,
    /// with the same guarantee as [`get`](Self::get)'s: an invalidation
    /// after it makes the fill a no-op. The default reads the cache for its
    /// token, which suits a backend whose every token can fill; one whose
    /// hit tokens can't (Redis reads a key's version only on a miss)
    /// overrides it.
    fn refresh_token(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<Self::Token, CacheError>> + Send {
        let read = self.get(hash);
        async move { read.await.map(|read| read.token) }
    }

    /// Drops whatever is cached for `hash` (positive or negative), and makes
    /// in-flight lookups for it unable to write.
    fn invalidate(&self, hash: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Drops every entry.
    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Drops every valid key whose principal reports this
    /// [`owner`](Principal::owner), and makes in-flight lookups unable to
    /// write one back. Backends that can't answer with an error (the default).
    fn invalidate_owner(&self, owner: &str) -> impl Future<Output = Result<(), CacheError>> + Send {
        let _ = owner;
        std::future::ready(Err(CacheError::new(
            "this cache backend can't invalidate by owner",
        )))
    }
}
