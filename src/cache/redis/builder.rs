//! [`RedisCacheBuilder`]: where the cache connects, and how patiently.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::config::Options;

use super::keys::Keys;
use super::{Inner, RedisCache};
use crate::cache::CacheError;

/// Default per-command timeout: a hung Redis costs a request this, not seconds.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "apikey:";

pub(super) enum Connection {
    Url(String),
    Config(Box<Config>),
    Pool(Pool),
}

/// Builder for [`RedisCache`], from [`RedisCache::builder`],
/// [`from_config`](RedisCache::from_config) or
/// [`from_pool`](RedisCache::from_pool).
pub struct RedisCacheBuilder<P> {
    pub(super) connection: Connection,
    prefix: String,
    pool_size: usize,
    command_timeout: Duration,
    pub(super) connect_timeout: Duration,
    version_ttl: Duration,
    principal: PhantomData<fn() -> P>,
}

impl<P> fmt::Debug for RedisCacheBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheBuilder")
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("version_ttl", &self.version_ttl)
            .finish_non_exhaustive()
    }
}

impl<P> RedisCacheBuilder<P> {
    pub(super) fn new(connection: Connection) -> Self {
        Self {
            connection,
            prefix: DEFAULT_PREFIX.to_owned(),
            pool_size: 4,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: Duration::from_secs(2),
            version_ttl: Duration::from_secs(3600),
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
        self.pool_size = size.max(1);
        self
    }

    /// How long one command may take before the layer gives up on Redis for
    /// that request and asks the lookup (default 100 ms). A command issued
    /// while the pool is disconnected fails at once.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long [`build`](Self::build) waits for the first connection, and
    /// the timeout of each connection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
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
        let pool = match self.connection {
            Connection::Pool(pool) => pool,
            Connection::Url(url) => {
                let config = Config::from_url(&url).map_err(CacheError::new)?;
                build_pool(config, self.connect_timeout, self.pool_size)?
            }
            Connection::Config(config) => {
                build_pool(*config, self.connect_timeout, self.pool_size)?
            }
        };
        if !pool.is_connected() {
            pool.connect_pool();
            let wait = tokio::time::timeout(self.connect_timeout, pool.wait_for_connect()).await;
            if !matches!(wait, Ok(Ok(()))) {
                tracing::warn!(
                    "Redis is not reachable yet; the API key cache answers from the lookup until it is"
                );
            }
        }
        Ok(RedisCache {
            inner: Arc::new(Inner {
                pool,
                keys,
                options: Options {
                    fail_fast: true,
                    max_attempts: Some(1),
                    ..Options::default()
                },
                timeout: self.command_timeout,
                version_ttl: self.version_ttl,
                epoch: AtomicU64::new(0),
            }),
            principal: PhantomData,
        })
    }
}

fn build_pool(config: Config, connect_timeout: Duration, size: usize) -> Result<Pool, CacheError> {
    client_builder(config, connect_timeout)
        .build_pool(size)
        .map_err(CacheError::new)
}

/// A fred builder with this crate's connection settings: keep reconnecting
/// (also after a failed first attempt), forever, 50 ms doubling to 2 s
/// (fred's default never reconnects); bounded connection attempts.
pub(super) fn client_builder(mut config: Config, connect_timeout: Duration) -> Builder {
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
            c.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    builder
}
