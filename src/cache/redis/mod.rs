//! [`RedisCache`]: verdicts in Redis, shared by every instance (feature
//! `redis`).
//!
//! | file | what it owns |
//! | --- | --- |
//! | `mod.rs` | the cache, its token, the [`KeyCache`] impl |
//! | `builder.rs` | connecting: URL, config or pool; timeouts; reconnects |
//! | `keys.rs` | the name of every key written, from the prefix and the hash |
//! | `codec.rs` | the stored value, a versioned JSON envelope |
//! | `seal.rs` | with a secret, the MAC every value carries (Redis can't mint a verdict) |
//! | `scripts.rs` | the Lua scripts: each step that must be atomic |
//! | `command.rs` | the crate's bounded commands (`redis_pool.rs`), failing as `CacheError` |
//! | `read.rs` | the one read primitive, and [`RedisGet`] |
//! | `write.rs` | the version-checked put, and owner listings |
//! | `invalidate.rs` | invalidating a key, an owner, everything |
//! | `tier.rs` | what the tiered cache asks of its L2 (feature `tiered`) |

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::prelude::Config;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{CacheError, KeyCache, Ttl, Verdict};
use crate::{KeyHash, Principal};

mod builder;
pub(crate) mod codec;
mod command;
mod invalidate;
mod keys;
mod read;
mod scripts;
pub(crate) mod seal;
#[cfg(feature = "tiered")]
mod tier;
mod write;

pub use crate::redis_pool::{
    RedisHealth, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES, DEFAULT_COMMAND_TIMEOUT,
};
pub use builder::{RedisCacheBuilder, DEFAULT_PREFIX, MIN_VALUE_SECRET};
pub(crate) use keys::check_prefix;
pub use read::RedisGet;
#[cfg(feature = "tiered")] // the tiered cache's L2 read
pub(crate) use read::RedisRead;

use crate::redis_pool::{RedisPool, Source};
use keys::Keys;

/// The shared cache: Redis through a fred connection pool, so every instance
/// of a service sees the same verdicts (feature `redis`).
///
/// - **Keys** are the prefix plus the hex of the [`KeyHash`] in a hash tag,
///   `apikey:{3f2a…}`, never the plaintext; a key's version lives beside it,
///   `apikey:{3f2a…}:v`, in the same cluster slot.
/// - **Values** are a small versioned JSON envelope,
///   `{"v":1,"kind":"valid","principal":{…}}` or `{"v":1,"kind":"invalid"}`,
///   written with `SET … PX` so Redis expires them; the layer picks the TTL
///   (positive, negative, capped by the key's expiry). A value that doesn't
///   decode (corrupt, or from another version) is a miss: the layer counts and
///   logs it, looks the key up, and the answer overwrites it.
/// - **Revocation can't be undone by an in-flight lookup.** A hit is one
///   `GET`; a miss also reads the key's version (its [`RedisToken`]), before
///   the lookup starts;
///   [`invalidate`](KeyCache::invalidate) bumps the version and deletes the
///   entry in one script; a `put` is a script that writes only if the version
///   is still the one read. The version key expires after
///   [`version_ttl`](RedisCacheBuilder::version_ttl) (one hour), far beyond
///   any lookup. A cache-bypass route's fresh lookup reads the version
///   first too, so its answer replaces the entry.
/// - **Owner-wide invalidation.** A valid entry whose principal reports an
///   [`owner`](Principal::owner) is also listed (by hash) in the owner's set,
///   `apikey:{o:<sha256 of the owner>}`: a sorted set scored by when each
///   listing lapses (a second after its entry), pruned on every add, its TTL
///   stretched to its longest listing's, so it holds only live keys and goes
///   with the last of them. [`invalidate_owner`](KeyCache::invalidate_owner)
///   takes that set whole (read and deleted in one script) and invalidates
///   each key as `invalidate` does: no scan of the keyspace. An owners' epoch
///   (`apikey:{owners}:v`), read with every miss and moved by every
///   `invalidate_owner`, stops a lookup that was in flight from writing an
///   owned key back (the fill lists the key first and checks the epoch
///   second, so either the check fails or the sweep takes the listing).
/// - **`invalidate_all`** scans the prefix in batches (`SCAN … COUNT 500`, on
///   every master of a cluster) and `UNLINK`s each entry: Redis never blocks,
///   and reads stay one command. (A generation number in the prefix would make
///   it O(1), but every read would then need the generation first: a second
///   key, in another cluster slot, or a local copy that can be stale.) It is
///   exact against lookups in flight in this process: they carry an epoch
///   that it bumps first, and a fill that finds the epoch moved after its
///   write takes the write back. A lookup in flight on another instance at
///   that moment may still write its entry, which then lives until its TTL
///   (with [`TieredCache`](super::TieredCache) the other instances also bump
///   their epoch when the broadcast arrives, which narrows that to the
///   broadcast's flight time). To revoke one key or one owner, use
///   `invalidate` or `invalidate_owner`, which are exact everywhere.
/// - **Failures degrade.** Commands fail fast while disconnected and time out
///   after [`command_timeout`](RedisCacheBuilder::command_timeout) (100 ms);
///   the layer then answers from the lookup. The pool reconnects by itself
///   with exponential backoff (fred's default never reconnects).
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), tower_api_key::cache::CacheError> {
/// use std::time::Duration;
/// use tower_api_key::cache::RedisCache;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Client { id: u64 }
/// impl tower_api_key::Principal for Client {}
///
/// let cache: RedisCache<Client> = RedisCache::builder("redis://127.0.0.1:6379")
///     .prefix("myapp:apikey:")
///     .command_timeout(Duration::from_millis(50))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
pub struct RedisCache<P> {
    inner: Arc<Inner>,
    principal: PhantomData<fn() -> P>,
}

struct Inner {
    pool: RedisPool,
    keys: Keys,
    version_ttl: Duration,
    /// Moved by `invalidate_all`: tokens carry it, fills check it.
    epoch: AtomicU64,
    /// With a value secret: every value written is sealed, every value read
    /// is checked.
    seal: Option<seal::Seal>,
}

/// The token of [`RedisCache`]: this process's epoch, and what the miss read
/// of the key's version and the owners' epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisToken {
    epoch: u64,
    version: Version,
}

/// What a fill must still find: the key's version and the owners' epoch as
/// read (`None`: never moved, or long ago).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    key: Option<String>,
    owners: Option<String>,
}

impl<P> RedisCache<P> {
    /// A builder connecting to `url`: `redis://host:port/db`,
    /// `rediss://…` (feature `redis-tls`), or
    /// `redis-cluster://host:port?node=host:port…`.
    pub fn builder(url: impl Into<String>) -> RedisCacheBuilder<P> {
        RedisCacheBuilder::new(Source::Url(url.into()))
    }

    /// A builder from a fred [`Config`] you already have (it gets this crate's
    /// timeouts and reconnect policy).
    pub fn from_config(config: Config) -> RedisCacheBuilder<P> {
        RedisCacheBuilder::new(Source::Config(Box::new(config)))
    }

    /// A builder around a fred [`Pool`] you already have, as it is configured.
    /// Give it a reconnect policy and a command timeout: fred's defaults
    /// never reconnect and wait forever. A pool connected before it is
    /// given here keeps the connection tasks it has: the crate starts again
    /// only the tasks it starts (fred 10.1 ends one on a cluster's `ASK`
    /// when the command has no attempt left).
    pub fn from_pool(pool: Pool) -> RedisCacheBuilder<P> {
        RedisCacheBuilder::new(Source::Pool(pool))
    }

    /// The underlying pool.
    pub fn pool(&self) -> &Pool {
        self.inner.pool.pool()
    }

    /// What the connections' circuit breaker has done (shared with the
    /// counters and usage built [`from_cache`](crate::ratelimit::RedisCounters::from_cache)).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tower_api_key::cache::CacheError> {
    /// use tower_api_key::cache::RedisCache;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Client;
    /// # impl tower_api_key::Principal for Client {}
    /// let cache: RedisCache<Client> = RedisCache::builder("redis://127.0.0.1:6379").build().await?;
    /// let health = cache.health();
    /// println!("breaker open: {}, skipped: {}", health.open, health.skipped);
    /// # Ok(()) }
    /// ```
    pub fn health(&self) -> RedisHealth {
        self.inner.pool.health()
    }

    /// The Redis key holding `hash`'s verdict.
    pub fn redis_key(&self, hash: &KeyHash) -> String {
        self.inner.keys.entry(hash)
    }

    /// The cache's connections and prefix, for counters that share them.
    pub(crate) fn connection(&self) -> (&RedisPool, &str) {
        (&self.inner.pool, self.inner.keys.prefix())
    }
}

impl<P> Clone for RedisCache<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            principal: PhantomData,
        }
    }
}

impl<P> fmt::Debug for RedisCache<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.inner.keys.prefix())
            .field("connected", &self.inner.pool.pool().is_connected())
            .field("command_timeout", &self.inner.pool.timeout())
            .finish_non_exhaustive()
    }
}

impl<P> KeyCache for RedisCache<P>
where
    P: Principal + Serialize + DeserializeOwned,
{
    type Principal = P;
    type Token = RedisToken;
    type Get = RedisGet<P>;

    fn get(&self, hash: &KeyHash) -> Self::Get {
        RedisGet(self.read(hash, false))
    }

    fn refresh_token(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<RedisToken, CacheError>> + Send {
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let version = self.read_version(hash);
        async move {
            Ok(RedisToken {
                epoch,
                version: version.await?,
            })
        }
    }

    fn put(
        &self,
        hash: KeyHash,
        token: RedisToken,
        verdict: Verdict<P>,
        ttl: Ttl,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        let this = self.clone();
        async move { this.put_checked(hash, token, &verdict, ttl).await.map(drop) }
    }

    fn invalidate(&self, hash: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.invalidate_key(*hash)
    }

    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.invalidate_all_keys()
    }

    fn invalidate_owner(&self, owner: &str) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.invalidate_owner_keys(owner)
    }
}
