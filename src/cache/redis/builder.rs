//! [`RedisCacheBuilder`]: where the cache connects, and how patiently.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::keys::Keys;
use super::seal::Seal;
use super::{Inner, RedisCache};
use crate::cache::CacheError;
use crate::redis_pool::{PoolSettings, Source};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "apikey:";

/// The shortest value secret [`RedisCacheBuilder::value_secret`] takes, in
/// bytes (128 bits: as long as the MAC it keys is kept).
pub const MIN_VALUE_SECRET: usize = 16;

/// Builder for [`RedisCache`], from [`RedisCache::builder`],
/// [`from_config`](RedisCache::from_config) or
/// [`from_pool`](RedisCache::from_pool).
pub struct RedisCacheBuilder<P> {
    pub(super) pool: PoolSettings,
    prefix: String,
    version_ttl: Duration,
    /// The seal, or the length of a secret too short for one.
    seal: Option<Result<Seal, usize>>,
    principal: PhantomData<fn() -> P>,
}

impl<P> fmt::Debug for RedisCacheBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheBuilder")
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool.pool_size)
            .field("command_timeout", &self.pool.command_timeout)
            .field("connect_timeout", &self.pool.connect_timeout)
            .field("version_ttl", &self.version_ttl)
            .field("sealed", &self.seal.is_some())
            .finish_non_exhaustive()
    }
}

impl<P> RedisCacheBuilder<P> {
    pub(super) fn new(source: Source) -> Self {
        Self {
            pool: PoolSettings::new(source),
            prefix: DEFAULT_PREFIX.to_owned(),
            version_ttl: Duration::from_secs(3600),
            seal: None,
            principal: PhantomData,
        }
    }

    /// The prefix of every key (default `apikey:`). It may not contain
    /// braces, glob characters or backslashes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Connections in the pool (default 4). Ignored for [`RedisCache::from_pool`].
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool.pool_size = size.max(1);
        self
    }

    /// How long one command may take before the layer gives up on Redis for
    /// that request and asks the lookup (default 100 ms). A command issued
    /// while the pool is disconnected fails at once.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.pool.command_timeout = timeout;
        self
    }

    /// The connections' circuit breaker: after `failures` timeouts or
    /// connection failures in a row (default 3) it opens, and commands skip
    /// Redis at once (the layer answers from the lookup, as for a Redis that
    /// refuses connections) instead of each waiting out the command timeout;
    /// a `PING` of the pool's own every `cooldown` (default 1 s; no request is
    /// the probe) checks on Redis, and
    /// its answer closes it. Error replies don't count. `failures = 0`
    /// switches it off (every command waits its timeout). See
    /// [`RedisCache::health`].
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.pool.breaker_failures = failures;
        self.pool.breaker_cooldown = cooldown;
        self
    }

    /// How long [`build`](Self::build) waits for the first connection, and
    /// the timeout of each connection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.pool.connect_timeout = timeout;
        self
    }

    /// Seals every value with a MAC under `secret` (give every instance the
    /// same one): each entry written carries an HMAC-SHA256 over the Redis
    /// key it is stored under and its contents, and an entry read whose MAC
    /// fails (written by hand, copied from another key, written without the
    /// secret) is a degraded miss: counted in
    /// [`Stats::cache_errors`](crate::Stats::cache_errors), logged, looked
    /// up, overwritten; never an acceptance. So whoever can write to Redis
    /// can't mint a key. Without a secret (the default) values are trusted
    /// as Redis holds them. Versions, owner listings and broadcast messages
    /// are not sealed: forging one can only drop entries or refuse fills,
    /// never accept a key.
    ///
    /// To switch it on across running instances, set the secret everywhere
    /// at once or accept a wave of misses: entries written before it are
    /// refused (and rewritten) by the sealed instances; an instance without
    /// a secret reads sealed values without checking them.
    ///
    /// Every value also carries its own end (its TTL from when it was
    /// written), under the MAC: a sealed value saved from Redis and written
    /// back later is refused once that end has passed, so a replay after a
    /// revocation lasts at most what the entry had left, never longer.
    ///
    /// The secret must be at least [`MIN_VALUE_SECRET`] bytes:
    /// [`build`](Self::build) refuses a shorter one.
    pub fn value_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref();
        self.seal = Some(if secret.len() < MIN_VALUE_SECRET {
            Err(secret.len())
        } else {
            Ok(Seal::new(secret))
        });
        self
    }

    /// How long a key's version outlives its last invalidation (default one
    /// hour): longer than any lookup can take.
    pub fn version_ttl(mut self, ttl: Duration) -> Self {
        self.version_ttl = ttl;
        self
    }

    /// Connects and returns the cache. An unreachable Redis is not an error:
    /// the pool keeps reconnecting in the background and the layer answers
    /// from the lookup meanwhile (a warning is logged). Errors are for a bad
    /// URL or configuration.
    pub async fn build(self) -> Result<RedisCache<P>, CacheError> {
        let keys = Keys::new(self.prefix).map_err(CacheError::new)?;
        let seal = self.seal.transpose().map_err(|len| {
            CacheError::new(format!(
                "the value secret is {len} bytes: at least {MIN_VALUE_SECRET} are needed"
            ))
        })?;
        let pool = self
            .pool
            .connect("the API key cache answers from the lookup")
            .await
            .map_err(CacheError::new)?;
        Ok(RedisCache {
            inner: Arc::new(Inner {
                pool,
                keys,
                version_ttl: self.version_ttl,
                epoch: AtomicU64::new(0),
                seal,
            }),
            principal: PhantomData,
        })
    }
}
