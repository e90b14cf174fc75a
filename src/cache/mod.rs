//! The cache contract, [`KeyCache`], and the backends that keep it.
//!
//! | backend | feature | where verdicts live |
//! | --- | --- | --- |
//! | `MemoryCache` | `memory` (default) | this process, bounded, per-entry TTL |
//! | `RedisCache` | `redis` | Redis, shared by every instance |
//! | `TieredCache` | `tiered` | this process (L1) in front of Redis (L2), invalidations broadcast |
//! | `AnyCache` | `tiered` | one of the three, chosen at deploy time by `CacheSettings` |
//!
//! # The contract
//!
//! A backend stores [`Verdict`]s by [`KeyHash`], each for the TTL the layer
//! gives it, and drops them when told to. It speaks of hashes, verdicts, TTLs
//! and invalidation only: no engine type (quick_cache, fred) crosses it, so a backend
//! can be swapped without touching the layer.
//!
//! A [`get`](KeyCache::get) is a [`CacheRead`]: a **hit** carries the cached
//! verdict; a **miss** carries a **token**, and the layer, once its lookup has
//! answered, hands the token back to [`put`](KeyCache::put) with the verdict
//! to store. The token is proof of when the read happened, counted in
//! invalidations, and the whole protocol is three rules:
//!
//! 1. **No stale refill.** When [`invalidate`](KeyCache::invalidate) of the
//!    hash, [`invalidate_owner`](KeyCache::invalidate_owner) of the verdict's
//!    owner or [`invalidate_all`](KeyCache::invalidate_all) happened after the
//!    token was taken, the `put` stores nothing, even when the two race. (A
//!    lookup that read the old row before a revocation can't write its stale
//!    verdict after it.)
//! 2. **Equal tokens, same moment.** Two tokens for one hash compare equal
//!    only when no invalidation of that hash happened between the reads that
//!    made them. The layer lets a request share another's in-flight lookup
//!    only when their tokens are equal, so a request that arrives after a
//!    revocation never gets the answer of a lookup that started before it.
//! 3. **Refresh.** [`refresh_token`](KeyCache::refresh_token) gives a token
//!    without reading the entry, for a cache-bypass route whose fresh lookup
//!    must replace whatever is cached; rule 1 holds for it too.
//!
//! And four guarantees beside the tokens:
//!
//! - **TTLs are the layer's.** An entry lives no longer than the [`Ttl`]
//!   its `put` gave, and storing one kind of verdict for a hash replaces the
//!   other kind. A valid verdict is a [`Hit`](CacheRead::Hit) for
//!   `ttl.fresh`, an [`Aging`](CacheRead::Aging) hit in its last
//!   `ttl.refresh`, then a miss carrying it as `stale` for `ttl.stale`; a
//!   negative one is a hit for `ttl.fresh` and nothing else.
//! - **`invalidate` returns when the entry is gone** from every tier the
//!   process controls.
//! - **Bounded.** Whatever keys arrive, memory stays within configuration.
//! - **Failures are errors, never verdicts.** A backend that can't answer
//!   returns [`CacheError`] (or a miss with its `degraded` reason); the layer
//!   counts it, logs it and asks the lookup: never a rejection, never an
//!   acceptance.
//!
//! # Checking a backend
//!
//! The conformance suite states each rule as a test. With the `test-util`
//! feature, `key_cache_conformance!` writes one `#[test]` per rule for your
//! backend, named for what it checks (see `cache::conformance`); the
//! crate's own backends run it in `tests/conformance.rs`.
//!
//! Backends' tokens are in [`token`] and their `get` futures in [`future`]:
//! plumbing that a user of the layer never names.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{KeyHash, Principal};

#[cfg(feature = "tiered")]
mod any;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;
#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "tiered")]
mod settings;
#[cfg(any(feature = "memory", feature = "redis"))]
mod tier;
#[cfg(feature = "tiered")]
mod tiered;

#[cfg(feature = "tiered")]
#[cfg_attr(docsrs, doc(cfg(feature = "tiered")))]
pub use any::{AnyCache, BackendError};
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use memory::{MemoryCache, MemoryCacheBuilder};
#[cfg(feature = "redis")]
pub(crate) use redis::check_prefix;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{
    RedisCache, RedisCacheBuilder, RedisHealth, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES,
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_PREFIX, MIN_VALUE_SECRET,
};
#[cfg(feature = "tiered")]
#[cfg_attr(docsrs, doc(cfg(feature = "tiered")))]
pub use settings::CacheSettings;
#[cfg(feature = "tiered")]
#[cfg_attr(docsrs, doc(cfg(feature = "tiered")))]
pub use tiered::{TieredCache, TieredCacheBuilder, TieredStats};

/// The tokens of the crate's backends: what their reads hand the layer and
/// their `put`s take back (see the [token protocol](self#the-contract)).
pub mod token {
    #[cfg(feature = "tiered")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tiered")))]
    pub use super::any::AnyToken;
    #[cfg(feature = "memory")]
    #[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
    pub use super::memory::MemoryToken;
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub use super::redis::RedisToken;
    #[cfg(feature = "tiered")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tiered")))]
    pub use super::tiered::TieredToken;
}

/// The `get` futures of the crate's backends (`MemoryCache`'s is
/// [`std::future::Ready`]).
pub mod future {
    #[cfg(feature = "tiered")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tiered")))]
    pub use super::any::AnyGet;
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub use super::redis::RedisGet;
    #[cfg(feature = "tiered")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tiered")))]
    pub use super::tiered::TieredGet;
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

/// How long a [`put`](KeyCache::put)'s entry serves, from the moment it is
/// stored: a hit for `fresh`; for a valid verdict, an [`Aging`] hit in the
/// last `refresh` of that (refresh-ahead), then a miss that still carries
/// the principal for `stale` more (serve-stale). A negative verdict uses
/// `fresh` only.
///
/// The layer gives `refresh` and `stale` only when they are switched on
/// ([`refresh_ahead`], [`serve_stale`]); otherwise both are zero and an
/// entry is a hit for `fresh`, then gone.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::cache::Ttl;
///
/// let ttl = Ttl::fresh(Duration::from_secs(300));
/// assert_eq!(ttl.stale, Duration::ZERO);
/// assert_eq!(ttl.total(), Duration::from_secs(300));
/// // A copy that may live 60 s at most keeps the refresh point where it
/// // was: 30 s before the end of 300 s is past the copy's end, so it has none.
/// let ttl = Ttl { refresh: Duration::from_secs(30), ..ttl };
/// assert_eq!(ttl.cap(Duration::from_secs(60)).refresh, Duration::ZERO);
/// assert_eq!(ttl.cap(Duration::from_secs(280)).refresh, Duration::from_secs(10));
/// ```
///
/// [`Aging`]: CacheRead::Aging
/// [`refresh_ahead`]: crate::ApiKeyAuthLayer::refresh_ahead
/// [`serve_stale`]: crate::ApiKeyAuthLayer::serve_stale
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl {
    /// How long the verdict is a hit.
    pub fresh: Duration,
    /// The last part of `fresh` in which a valid verdict's hit is
    /// [`Aging`](CacheRead::Aging); zero: never.
    pub refresh: Duration,
    /// How long after `fresh` a valid verdict is kept for a miss to carry;
    /// zero: not kept.
    pub stale: Duration,
}

impl Ttl {
    /// Fresh for `ttl`, no refresh point, nothing kept after.
    pub const fn fresh(ttl: Duration) -> Self {
        Self {
            fresh: ttl,
            refresh: Duration::ZERO,
            stale: Duration::ZERO,
        }
    }

    /// How long the entry is kept at all: `fresh` and then `stale`.
    pub fn total(&self) -> Duration {
        self.fresh.saturating_add(self.stale)
    }

    /// The same entry for a tier that may hold it `max_fresh` at most: the
    /// refresh point stays where it was (and is dropped when the copy
    /// lapses first); what is kept after is unchanged.
    pub fn cap(self, max_fresh: Duration) -> Self {
        let cut = self.fresh.saturating_sub(max_fresh);
        Self {
            fresh: self.fresh - cut,
            refresh: self.refresh.saturating_sub(cut),
            stale: self.stale,
        }
    }
}

/// What [`KeyCache::get`] found.
#[derive(Debug)]
pub enum CacheRead<P, T> {
    /// A cached verdict. Nothing will be stored for this read, so it carries
    /// no token.
    Hit(Verdict<P>),
    /// A valid verdict in the last [`refresh`](Ttl::refresh) part of its
    /// fresh time: the layer answers with it as with a hit and refreshes the
    /// entry in the background.
    Aging(Arc<P>),
    /// Nothing usable cached: the layer looks the key up and stores the
    /// answer with `token` (see the [token protocol](self#the-contract)).
    Miss {
        /// Taken at the read: a `put` with it stores nothing once the hash
        /// has been invalidated since.
        token: T,
        /// Why an entry that was there could not be used (a value that did
        /// not decode, say), if that is why this is a miss: the layer counts
        /// it in [`Stats::cache_errors`](crate::Stats::cache_errors) and logs
        /// it, and the lookup's answer overwrites the entry.
        degraded: Option<CacheError>,
        /// A valid verdict past its fresh time and within its
        /// [`stale`](Ttl::stale) time: what the layer may answer with if the
        /// lookup fails (serve-stale). Never after an invalidation, never a
        /// negative verdict.
        stale: Option<Arc<P>>,
    },
}

impl<P, T> CacheRead<P, T> {
    /// A miss whose answer is stored with `token`.
    pub fn miss(token: T) -> Self {
        Self::Miss {
            token,
            degraded: None,
            stale: None,
        }
    }

    /// A miss because what was cached could not be used.
    pub fn degraded(token: T, error: CacheError) -> Self {
        Self::Miss {
            token,
            degraded: Some(error),
            stale: None,
        }
    }

    /// A miss that carries a stale valid verdict.
    pub fn stale(token: T, principal: Arc<P>) -> Self {
        Self::Miss {
            token,
            degraded: None,
            stale: Some(principal),
        }
    }

    /// Whether a verdict was cached and is fresh ([`Hit`](Self::Hit) or
    /// [`Aging`](Self::Aging)).
    pub fn is_hit(&self) -> bool {
        !matches!(self, Self::Miss { .. })
    }

    /// The same read with its token converted: for a backend that wraps
    /// another.
    pub fn map_token<U>(self, f: impl FnOnce(T) -> U) -> CacheRead<P, U> {
        match self {
            Self::Hit(verdict) => CacheRead::Hit(verdict),
            Self::Aging(principal) => CacheRead::Aging(principal),
            Self::Miss {
                token,
                degraded,
                stale,
            } => CacheRead::Miss {
                token: f(token),
                degraded,
                stale,
            },
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

    /// The backend was not asked: its circuit breaker is open after
    /// repeated failures. The layer counts these in
    /// [`Stats::cache_skipped`](crate::Stats::cache_skipped) and logs nothing
    /// per request (the breaker logs when it opens and closes).
    pub fn skipped() -> Self {
        Self::new(crate::breaker::Skipped)
    }

    /// Whether this is [`skipped`](Self::skipped).
    pub fn is_skipped(&self) -> bool {
        self.source.is::<crate::breaker::Skipped>()
    }
}

/// The backend contract: verdicts by key hash, with TTLs and invalidation.
/// The rules a backend keeps are stated once, in the [module
/// docs](self#the-contract), and checked by the conformance suite.
///
/// `get` is on every request's path: its future is a named associated type,
/// so that an in-process backend can answer with [`std::future::Ready`] and
/// no allocation, and `Unpin`, so that the layer polls it where it lies (a
/// backend whose read is a state machine boxes its inner futures, as
/// `RedisCache` does).
pub trait KeyCache: Send + Sync + 'static {
    /// The principal type cached for valid keys.
    type Principal: Principal;
    /// Proof of when a miss was read, in invalidations.
    type Token: Clone + Eq + Send + Sync + 'static;
    /// The future returned by [`get`](Self::get).
    type Get: Future<Output = Result<CacheRead<Self::Principal, Self::Token>, CacheError>>
        + Unpin
        + Send
        + 'static;

    /// Reads the verdict cached for `hash`.
    fn get(&self, hash: &KeyHash) -> Self::Get;

    /// A token for a fill that must replace whatever is cached for `hash`
    /// (a cache-bypass route's fresh lookup), taken before that lookup
    /// starts, without reading the entry.
    fn refresh_token(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<Self::Token, CacheError>> + Send;

    /// Stores `verdict` for `ttl` (see [`Ttl`]), unless `hash` was
    /// invalidated since `token` was taken. Storing one kind of verdict
    /// replaces the other.
    fn put(
        &self,
        hash: KeyHash,
        token: Self::Token,
        verdict: Verdict<Self::Principal>,
        ttl: Ttl,
    ) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Drops whatever is cached for `hash` (positive or negative), and makes
    /// tokens taken before unable to fill it.
    fn invalidate(&self, hash: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Drops every entry, and makes every token taken before unable to fill.
    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Drops every valid key whose principal reports this
    /// [`owner`](Principal::owner), and makes tokens taken before unable to
    /// fill one back. A backend that can't answers with an error (the
    /// default).
    fn invalidate_owner(&self, owner: &str) -> impl Future<Output = Result<(), CacheError>> + Send {
        let _ = owner;
        std::future::ready(Err(CacheError::new(
            "this cache backend can't invalidate by owner",
        )))
    }
}
