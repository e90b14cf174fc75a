//! [`TieredCacheBuilder`]: the Redis tier's settings, the L1's, and the
//! subscriber that connects the two.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::subscriber::Subscriber;
use super::{Shared, Signals, TieredCache};
use crate::cache::memory::{DEFAULT_CAPACITY, DEFAULT_NEGATIVE_CAPACITY};
use crate::cache::tier::{FarTier, FarTierBuilder};
use crate::cache::{CacheError, MemoryCache, RedisCacheBuilder};
use crate::Principal;

/// Default longest life of an L1 entry.
pub(crate) const DEFAULT_L1_TTL: Duration = Duration::from_secs(30);
/// Default trust in an L1 entry while the subscriber is down.
const DEFAULT_DISCONNECTED_L1_TTL: Duration = Duration::from_secs(1);
/// Invalidation messages queued for the subscriber task before it counts as
/// having missed some (and empties L1).
const MESSAGE_BACKLOG: usize = 4096;

/// Builder for [`TieredCache`].
pub struct TieredCacheBuilder<P> {
    /// L2's settings; the subscriber shares its connection and timeout.
    redis: RedisCacheBuilder<P>,
    l1_capacity: u64,
    l1_negative_capacity: u64,
    l1_ttl: Duration,
    disconnected_l1_ttl: Duration,
}

impl<P> fmt::Debug for TieredCacheBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("redis", &self.redis)
            .field("l1_capacity", &self.l1_capacity)
            .field("l1_negative_capacity", &self.l1_negative_capacity)
            .field("l1_ttl", &self.l1_ttl)
            .field("disconnected_l1_ttl", &self.disconnected_l1_ttl)
            .finish()
    }
}

impl<P: Principal + Serialize + DeserializeOwned> TieredCacheBuilder<P> {
    pub(super) fn new(redis: RedisCacheBuilder<P>) -> Self {
        Self {
            redis,
            l1_capacity: DEFAULT_CAPACITY,
            l1_negative_capacity: DEFAULT_NEGATIVE_CAPACITY,
            l1_ttl: DEFAULT_L1_TTL,
            disconnected_l1_ttl: DEFAULT_DISCONNECTED_L1_TTL,
        }
    }

    /// The prefix of every Redis key (default `apikey:`); the pub/sub
    /// channel is this prefix followed by `invalidations`. Instances that
    /// share verdicts share the prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis = self.redis.prefix(prefix);
        self
    }

    /// Connections in the Redis pool (default 4); the subscriber has its own.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.redis = self.redis.pool_size(size);
        self
    }

    /// Seals every value written to Redis with a MAC under `secret`, as
    /// [`RedisCacheBuilder::value_secret`]: an L2 entry whose MAC fails is a
    /// miss, never copied into L1.
    pub fn value_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.redis = self.redis.value_secret(secret);
        self
    }

    /// The Redis connections' circuit breaker, as
    /// [`RedisCacheBuilder::breaker`]: while it is open L1 answers what it
    /// holds and misses go to the lookup at once.
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.redis = self.redis.breaker(failures, cooldown);
        self
    }

    /// How long one Redis command may take (default 100 ms), as
    /// [`RedisCacheBuilder::command_timeout`].
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.redis = self.redis.command_timeout(timeout);
        self
    }

    /// How long [`build`](Self::build) waits for Redis and the subscription,
    /// and the timeout of each connection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.redis = self.redis.connect_timeout(timeout);
        self
    }

    /// The most valid keys kept in L1 (default 100,000).
    pub fn l1_capacity(mut self, entries: u64) -> Self {
        self.l1_capacity = entries;
        self
    }

    /// The most negative entries kept in L1 (default 10,000).
    pub fn l1_negative_capacity(mut self, entries: u64) -> Self {
        self.l1_negative_capacity = entries;
        self
    }

    /// The longest an entry lives in L1 (default 30 s); it is also capped by
    /// the layer's TTL and by what the Redis entry has left. Revocations
    /// don't wait for it (they are broadcast); it bounds how long an
    /// instance keeps a verdict that changed in Redis without an
    /// `invalidate` (a key deleted from Redis by hand, say).
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl;
        self
    }

    /// While the subscriber is not subscribed (Redis down, connection lost or
    /// unresponsive), an L1 entry is served only if it was filled less than
    /// this long ago (default 1 s): how long, once the loss is noticed, a
    /// revocation made on another instance can go unseen here. Older entries
    /// go back to Redis or the lookup.
    pub fn disconnected_l1_ttl(mut self, ttl: Duration) -> Self {
        self.disconnected_l1_ttl = ttl;
        self
    }

    /// Connects the pool and the subscriber and returns the cache. An
    /// unreachable Redis is not an error (both keep reconnecting, and L1 plus
    /// the lookup answer meanwhile); a bad URL or prefix is.
    pub async fn build(self) -> Result<TieredCache<P>, CacheError> {
        let (client, connect_timeout) = self.redis.subscriber(MESSAGE_BACKLOG)?;
        let l2 = self.redis.build().await?;
        let l1 = MemoryCache::builder()
            .max_capacity(self.l1_capacity)
            .max_negative_capacity(self.l1_negative_capacity)
            .build();
        let signals = Arc::new(Signals::default());
        let origin = RandomState::new().hash_one(Instant::now());
        // Listening before connecting, so that no event is missed.
        let subscriber = Subscriber::new(
            client.clone(),
            l1.clone(),
            l2.clone(),
            Arc::clone(&signals),
            origin,
            connect_timeout,
        );
        let deadline = Instant::now() + connect_timeout;
        let connection = client.connect();
        // The first connection's events are no news to the first subscribe.
        let _ = tokio::time::timeout_at(deadline.into(), client.wait_for_connect()).await;
        let listener = tokio::spawn(subscriber.run());
        while !signals.subscribed.load(Ordering::Acquire) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !signals.subscribed.load(Ordering::Acquire) {
            tracing::warn!(
                channel = l2.channel(),
                "not subscribed to API key invalidations yet; L1 entries are trusted for {:?} until it is",
                self.disconnected_l1_ttl
            );
        }
        Ok(TieredCache {
            shared: Arc::new(Shared {
                l1,
                channel: l2.channel(),
                origin,
                l2,
                l1_ttl: self.l1_ttl,
                disconnected_l1_ttl: self.disconnected_l1_ttl,
                signals,
                subscriber: client,
                listener,
                connection,
            }),
        })
    }
}
