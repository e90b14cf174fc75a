//! The tier API: what [`TieredCache`](super::TieredCache) needs from the two
//! backends it stacks, beyond [`KeyCache`]. Declared here, implemented beside
//! each backend's own code ([`MemoryCache`](super::MemoryCache) in
//! `memory.rs`, [`RedisCache`](super::RedisCache) in `redis/tier.rs`), and
//! spoken in the trait's words: `get`, `put`, `invalidate`...

#[cfg(feature = "tiered")]
use std::future::Future;
#[cfg(feature = "tiered")]
use std::time::Duration;
#[cfg(feature = "memory")]
use std::time::Instant;

#[cfg(feature = "tiered")]
use super::CacheError;
#[cfg(feature = "memory")]
use super::Ttl;
#[cfg(feature = "memory")]
use super::{CacheRead, KeyCache, Verdict};
#[cfg(feature = "memory")]
use crate::KeyHash;

/// A tier in front (L1): in-process, so every operation is done by the time
/// it returns. These are `MemoryCache`'s operations themselves: its
/// [`KeyCache`] impl wraps each in a ready future.
#[cfg(feature = "memory")]
pub(crate) trait NearTier: KeyCache {
    /// [`get`](KeyCache::get), at once. An entry filled before
    /// `filled_since` counts as a miss (the tiered cache's bound on L1 while
    /// its subscriber may be missing invalidations).
    fn get_now(
        &self,
        hash: &KeyHash,
        filled_since: Option<Instant>,
    ) -> CacheRead<Self::Principal, Self::Token>;

    /// [`refresh_token`](KeyCache::refresh_token), at once.
    fn refresh_token_now(&self, hash: &KeyHash) -> Self::Token;

    /// [`put`](KeyCache::put), at once.
    fn put_now(
        &self,
        hash: KeyHash,
        token: Self::Token,
        verdict: Verdict<Self::Principal>,
        ttl: Ttl,
    );

    /// [`invalidate`](KeyCache::invalidate), at once.
    fn invalidate_now(&self, hash: &KeyHash);

    /// [`invalidate_all`](KeyCache::invalidate_all), at once.
    fn invalidate_all_now(&self);

    /// [`invalidate_owner`](KeyCache::invalidate_owner), at once.
    fn invalidate_owner_now(&self, owner: &str);
}

/// What a far tier's `put` did (Redis's own `put` is this, without the
/// answer).
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Put {
    Stored,
    /// The token was stale: an invalidation came between it and the put.
    Refused,
}

/// A read of the far tier: what [`get`](KeyCache::get) found, and for a hit
/// what its entry has left.
#[cfg(feature = "tiered")]
pub(crate) type FarRead<P, T> = (CacheRead<P, T>, Option<Ttl>);

/// A tier behind (L2): shared by every instance, and the channel they hear
/// each other's invalidations on.
#[cfg(feature = "tiered")]
pub(crate) trait FarTier: KeyCache {
    /// The future of [`get_with_ttl`](Self::get_with_ttl).
    type GetWithTtl: Future<Output = Result<FarRead<Self::Principal, Self::Token>, CacheError>>
        + Unpin
        + Send
        + 'static;

    /// [`get`](KeyCache::get), also saying how long a hit's entry has left,
    /// in the same round trip: an L1 copy must not outlive it.
    fn get_with_ttl(&self, hash: &KeyHash) -> Self::GetWithTtl;

    /// [`put`](KeyCache::put), saying whether it stored: the L1 copy of a
    /// verdict the far tier refused would undo the invalidation it refused
    /// for.
    fn put_checked(
        &self,
        hash: KeyHash,
        token: Self::Token,
        verdict: &Verdict<Self::Principal>,
        ttl: Ttl,
    ) -> impl Future<Output = Result<Put, CacheError>> + Send;

    /// What [`invalidate_all`](KeyCache::invalidate_all) does to this
    /// process's tokens, and nothing else: for another instance's
    /// `invalidate_all`, heard on the channel.
    fn invalidate_all_tokens(&self);

    /// The channel every instance's invalidations are broadcast on.
    fn channel(&self) -> String;

    /// Publishes `message` on the [`channel`](Self::channel).
    fn publish(&self, message: String) -> impl Future<Output = Result<(), CacheError>> + Send;
}

/// The builder side of a far tier: the tiered cache's subscriber connects
/// where, and as, the tier's own connections do.
#[cfg(feature = "tiered")]
pub(crate) trait FarTierBuilder {
    /// A client for the subscriber, set up as the tier's own connections
    /// are, queueing up to `backlog` messages; and how long it may take to
    /// connect.
    fn subscriber(&self, backlog: usize) -> Result<(fred::clients::Client, Duration), CacheError>;
}
