use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy};
use fred::types::config::Options;
use futures_util::future::join_all;
use futures_util::StreamExt;
use pin_project_lite::pin_project;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{CacheError, CacheRead, KeyCache, Principal, Verdict};
use crate::KeyHash;

/// Default per-command timeout: a hung Redis costs a request this, not seconds.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "apikey:";

/// Stores a verdict unless the key's version moved since the read.
/// KEYS: entry, version. ARGV: version seen ('' for none), value, ttl ms.
const PUT_SCRIPT: &str = r"
local seen = redis.call('GET', KEYS[2])
if (seen or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Lists a key in its owner's set, a sorted set scored by when the listing
/// lapses (Redis's clock): lapsed members are dropped on every add, and the
/// set's TTL is stretched to its longest member's, so it holds no more than
/// the owner's live keys and goes with the last of them.
/// KEYS: set. ARGV: member, ttl ms (the entry's, plus a margin).
const OWNER_ADD_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
";

/// Takes an owner's set whole: its members, and the set gone, atomically.
/// KEYS: set.
const OWNER_TAKE_SCRIPT: &str = r"
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return members
";

/// How much longer an owner's listing of a key lasts than the key's entry:
/// the listing is written first, so it must not lapse before the entry.
const OWNER_LISTING_MARGIN: Duration = Duration::from_secs(1);

/// Moves the key's version (so in-flight lookups can't write) and drops the
/// entry, atomically. KEYS: entry, version. ARGV: version ttl ms.
const INVALIDATE_SCRIPT: &str = r"
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
";

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
///   `GET`; a miss also reads the key's version, before the lookup starts;
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
///   (with `TieredCache` the other instances also
///   bump their epoch when the broadcast arrives, which narrows that to the
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
/// # async fn demo() -> Result<(), tower_api_key::CacheError> {
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
    pool: Pool,
    prefix: String,
    /// Fail fast while disconnected, one attempt. The timeout is ours
    /// (`Bounded`, a tokio `Sleep`): fred's per-command timeout costs a third of
    /// the throughput under load (measured in benches/redis_hit.rs).
    options: Options,
    timeout: Duration,
    version_ttl: Duration,
    epoch: AtomicU64,
}

/// The token of [`RedisCache`]: this process's epoch and the key's version,
/// as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisToken {
    epoch: u64,
    version: Version,
}

impl RedisToken {
    /// A hit's token: nothing to fill.
    fn hit(epoch: u64) -> Self {
        Self {
            epoch,
            version: Version::NotRead,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Version {
    /// Read with the miss (`None`: never invalidated, or long ago): the
    /// key's version and the owners' epoch (see `invalidate_owner`).
    Read {
        key: Option<String>,
        owners: Option<String>,
    },
    /// Not read: the read was a hit, which needs no fill. A `put` with it
    /// stores nothing.
    NotRead,
}

enum Connection {
    Url(String),
    Config(Box<Config>),
    Pool(Pool),
}

/// Builder for [`RedisCache`].
pub struct RedisCacheBuilder<P> {
    connection: Connection,
    prefix: String,
    pool_size: usize,
    command_timeout: Duration,
    connect_timeout: Duration,
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

#[derive(Serialize)]
struct EnvelopeOut<'a, P> {
    v: u8,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a P>,
}

#[derive(Deserialize)]
struct EnvelopeIn<P> {
    v: u8,
    kind: Kind,
    principal: Option<P>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Valid,
    Invalid,
}

const ENVELOPE_VERSION: u8 = 1;

fn decode<P: DeserializeOwned>(raw: &[u8]) -> Result<Verdict<P>, String> {
    let envelope: EnvelopeIn<P> = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    if envelope.v != ENVELOPE_VERSION {
        return Err(format!(
            "envelope version {} (this build reads {ENVELOPE_VERSION})",
            envelope.v
        ));
    }
    match (envelope.kind, envelope.principal) {
        (Kind::Valid, Some(p)) => Ok(Verdict::Valid(Arc::new(p))),
        (Kind::Invalid, None) => Ok(Verdict::Invalid),
        (Kind::Valid, None) => Err("a valid entry without its principal".to_owned()),
        (Kind::Invalid, Some(_)) => Err("an invalid entry with a principal".to_owned()),
    }
}

/// What a `GET` of an entry found: its verdict, or a miss, with why when the
/// value was there but didn't decode.
fn found<P: DeserializeOwned>(raw: Option<&[u8]>) -> Result<Verdict<P>, Option<CacheError>> {
    match raw.map(decode::<P>) {
        Some(Ok(verdict)) => Ok(verdict),
        Some(Err(why)) => Err(Some(CacheError::new(format!(
            "undecodable cached value: {why}"
        )))),
        None => Err(None),
    }
}

fn encode<P: Serialize>(verdict: &Verdict<P>) -> Result<String, serde_json::Error> {
    let envelope = match verdict {
        Verdict::Valid(p) => EnvelopeOut {
            v: ENVELOPE_VERSION,
            kind: "valid",
            principal: Some(&**p),
        },
        Verdict::Invalid => EnvelopeOut {
            v: ENVELOPE_VERSION,
            kind: "invalid",
            principal: None,
        },
    };
    serde_json::to_string(&envelope)
}

fn is_valid_prefix(prefix: &str) -> bool {
    // Braces would move the hash tag; glob characters would widen the SCAN.
    !prefix.contains(['{', '}', '*', '?', '[', ']', '\\'])
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl<P> RedisCacheBuilder<P> {
    fn new(connection: Connection) -> Self {
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
    pub async fn build(mut self) -> Result<RedisCache<P>, CacheError> {
        if !is_valid_prefix(&self.prefix) {
            return Err(CacheError::new(format!(
                "invalid Redis key prefix {:?}: no braces, glob characters or backslashes",
                self.prefix
            )));
        }
        let connection = std::mem::replace(&mut self.connection, Connection::Url(String::new()));
        let pool = match connection {
            Connection::Pool(pool) => pool,
            Connection::Url(url) => {
                let config = Config::from_url(&url).map_err(CacheError::new)?;
                self.build_pool(config)?
            }
            Connection::Config(config) => self.build_pool(*config)?,
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
                prefix: self.prefix,
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

    #[cfg(feature = "memory")] // for the tiered cache's subscriber
    /// The fred configuration this builder connects with (not for a pool
    /// given as it is, whose configuration isn't ours to copy).
    pub(crate) fn config(&self) -> Result<Config, CacheError> {
        match &self.connection {
            Connection::Url(url) => Config::from_url(url).map_err(CacheError::new),
            Connection::Config(config) => Ok((**config).clone()),
            Connection::Pool(_) => Err(CacheError::new(
                "a tiered cache is built from a URL or a Config, not a pool",
            )),
        }
    }

    #[cfg(feature = "memory")] // for the tiered cache's subscriber
    pub(crate) fn connect_timeout_setting(&self) -> Duration {
        self.connect_timeout
    }

    fn build_pool(&self, config: Config) -> Result<Pool, CacheError> {
        client_builder(config, self.connect_timeout)
            .build_pool(self.pool_size)
            .map_err(CacheError::new)
    }
}

/// A fred builder with this crate's connection settings: keep reconnecting
/// (also after a failed first attempt), forever, 50 ms doubling to 2 s
/// (fred's default never reconnects); bounded connection attempts.
pub(crate) fn client_builder(mut config: Config, connect_timeout: Duration) -> Builder {
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

impl<P> RedisCache<P> {
    /// A builder connecting to `url`: `redis://host:port/db`,
    /// `rediss://…` (feature `redis-tls`), or
    /// `redis-cluster://host:port?node=host:port…`.
    pub fn builder(url: impl Into<String>) -> RedisCacheBuilder<P> {
        RedisCacheBuilder::new(Connection::Url(url.into()))
    }

    /// A builder from a fred [`Config`] you already have (it gets this crate's
    /// timeouts and reconnect policy).
    pub fn from_config(config: Config) -> RedisCacheBuilder<P> {
        RedisCacheBuilder::new(Connection::Config(Box::new(config)))
    }

    /// A builder around a fred [`Pool`] you already have, as it is configured.
    /// Give it a reconnect policy and a command timeout: fred's defaults
    /// never reconnect and wait forever.
    pub fn from_pool(pool: Pool) -> RedisCacheBuilder<P> {
        RedisCacheBuilder::new(Connection::Pool(pool))
    }

    /// The underlying pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The Redis key holding `hash`'s verdict.
    pub fn redis_key(&self, hash: &KeyHash) -> String {
        self.key("", hash, "")
    }

    fn version_key(&self, hash: &KeyHash) -> String {
        self.key("", hash, ":v")
    }

    /// `prefix{taghex}suffix`, in one allocation.
    fn key(&self, tag: &str, hash: &KeyHash, suffix: &str) -> String {
        let prefix = &self.inner.prefix;
        let mut key = String::with_capacity(prefix.len() + tag.len() + 66 + suffix.len());
        key.push_str(prefix);
        key.push('{');
        key.push_str(tag);
        hash.push_hex(&mut key);
        key.push('}');
        key.push_str(suffix);
        key
    }
}

/// What a fill did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    Stored,
    /// The key (or its owner, or everything) was invalidated since the read.
    Refused,
    /// A hit's token: there was nothing to fill.
    NotRead,
}

impl<P> RedisCache<P> {
    /// The Redis key of the set of `owner`'s cached keys.
    fn owner_key(&self, owner: &str) -> String {
        self.key("o:", &KeyHash::of(owner), "")
    }

    /// The owners' epoch, moved by every `invalidate_owner`. It ends like a
    /// version key so that `invalidate_all` keeps it.
    fn owners_key(&self) -> String {
        format!("{}{{owners}}:v", self.inner.prefix)
    }

    /// Reads the key's version and the owners' epoch, bounded.
    fn read_version(&self, hash: &KeyHash) -> Command<Version> {
        let (key, owners) = (self.version_key(hash), self.owners_key());
        let client = self.inner.client();
        self.inner.bounded(move || async move {
            let (key, owners) =
                futures_util::future::try_join(client.get(key), client.get(owners)).await?;
            Ok(Version::Read { key, owners })
        })
    }

    /// Stores `verdict` unless something was invalidated since the read that
    /// produced `token`, and says which.
    pub(crate) async fn fill(
        &self,
        hash: KeyHash,
        token: RedisToken,
        verdict: &Verdict<P>,
        ttl: Duration,
    ) -> Result<Fill, CacheError>
    where
        P: Principal + Serialize,
    {
        let inner = &*self.inner;
        let Version::Read { key, owners } = token.version else {
            return Ok(Fill::NotRead);
        };
        if inner.epoch.load(Ordering::Acquire) != token.epoch {
            return Ok(Fill::Refused); // invalidate_all since the read
        }
        let value = encode(verdict).map_err(CacheError::new)?;
        let ttl_ms = millis(ttl).to_string();
        if let Verdict::Valid(principal) = verdict {
            if let Some(owner) = principal.owner() {
                // Listed first, checked second: an `invalidate_owner` that
                // bumps the epoch after this check reads the set after this
                // add, and invalidates the key (so its version refuses the
                // SET below, or its DEL removes it).
                let set = self.owner_key(&owner);
                let listed = millis(ttl.saturating_add(OWNER_LISTING_MARGIN));
                let member = vec![hash.to_hex(), listed.to_string()];
                let _: i64 = inner
                    .run(inner.client().eval(OWNER_ADD_SCRIPT, vec![set], member))
                    .await?;
                let now: Option<String> = inner.run(inner.client().get(self.owners_key())).await?;
                if now != owners {
                    return Ok(Fill::Refused);
                }
            }
        }
        let keys = vec![self.redis_key(&hash), self.version_key(&hash)];
        let args = vec![key.unwrap_or_default(), value, ttl_ms];
        let stored: i64 = inner
            .run(inner.client().eval(PUT_SCRIPT, keys, args))
            .await?;
        if stored == 1 && inner.epoch.load(Ordering::Acquire) != token.epoch {
            // An invalidate_all began while this was written, and its scan
            // may already have passed the key: take the write back.
            self.remove(hash).await?;
            return Ok(Fill::Refused);
        }
        Ok(if stored == 1 {
            Fill::Stored
        } else {
            Fill::Refused
        })
    }

    /// `invalidate_owner`: moves the owners' epoch (in-flight fills of owned
    /// keys stop), then takes the owner's set whole, then invalidates each
    /// key it listed. Taking it whole matters: a fill that lists a key after
    /// this goes into a new set, never into one being swept and emptied.
    async fn remove_owner(&self, set: String) -> Result<(), CacheError> {
        let inner = &*self.inner;
        let _: i64 = inner.run(inner.client().incr(self.owners_key())).await?;
        let no_args: Vec<String> = Vec::new();
        let members: Vec<String> = inner
            .run(inner.client().eval(OWNER_TAKE_SCRIPT, vec![set], no_args))
            .await?;
        for batch in members.chunks(256) {
            let results = join_all(
                batch
                    .iter()
                    .filter_map(|m| KeyHash::from_hex(m))
                    .map(|hash| self.remove(hash)),
            )
            .await;
            results.into_iter().collect::<Result<Vec<()>, _>>()?;
        }
        Ok(())
    }

    /// `invalidate`: bumps the key's version and deletes its entry.
    async fn remove(&self, hash: KeyHash) -> Result<(), CacheError> {
        let inner = &*self.inner;
        let keys = vec![self.redis_key(&hash), self.version_key(&hash)];
        let ttl = vec![millis(inner.version_ttl).to_string()];
        let _: i64 = inner
            .run(inner.client().eval(INVALIDATE_SCRIPT, keys, ttl))
            .await?;
        Ok(())
    }

    #[cfg(feature = "memory")] // for the tiered cache
    /// A read that also says how long the entry has left (`PTTL`, in the
    /// same round trip), for a tier in front of this one.
    pub(crate) async fn get_with_ttl(
        &self,
        hash: &KeyHash,
    ) -> Result<(CacheRead<P, RedisToken>, Option<Duration>), CacheError>
    where
        P: DeserializeOwned,
    {
        let inner = &*self.inner;
        let epoch = inner.epoch.load(Ordering::Acquire);
        let entry = self.redis_key(hash);
        let pipeline = inner.pool.next().pipeline().with_options(&inner.options);
        // Redis counts the TTL down from its reply: what is left here is
        // less by the time since the question was sent.
        let asked = std::time::Instant::now();
        let (raw, pttl): (Option<Bytes>, i64) = inner
            .run(async {
                let _: () = pipeline.get(&entry).await?;
                let _: () = pipeline.pttl(&entry).await?;
                pipeline.all().await
            })
            .await?;
        let degraded = match found::<P>(raw.as_deref()) {
            Ok(verdict) => {
                let left = u64::try_from(pttl)
                    .ok()
                    .map(|ms| Duration::from_millis(ms).saturating_sub(asked.elapsed()));
                return Ok((CacheRead::hit(verdict, RedisToken::hit(epoch)), left));
            }
            Err(degraded) => degraded,
        };
        let token = RedisToken {
            epoch,
            version: self.read_version(hash).await?,
        };
        let read = CacheRead {
            verdict: None,
            token,
            degraded,
        };
        Ok((read, None))
    }

    #[cfg(feature = "memory")] // for the tiered cache
    /// Publishes `message` on `channel`, bounded.
    pub(crate) async fn publish(&self, channel: &str, message: String) -> Result<(), CacheError> {
        use fred::interfaces::PubsubInterface;
        let inner = &*self.inner;
        let _: i64 = inner
            .run(
                inner
                    .pool
                    .next()
                    .with_options(&inner.options)
                    .publish(channel, message),
            )
            .await?;
        Ok(())
    }

    #[cfg(feature = "memory")] // for the tiered cache
    /// Makes this process's in-flight fills unable to write, as
    /// `invalidate_all` does (for another instance's `invalidate_all`).
    pub(crate) fn bump_epoch(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
    }

    #[cfg(feature = "memory")] // for the tiered cache
    /// The prefix of every key.
    pub(crate) fn prefix(&self) -> &str {
        &self.inner.prefix
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
            .field("prefix", &self.inner.prefix)
            .field("connected", &self.inner.pool.is_connected())
            .field("command_timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn client(&self) -> fred::clients::WithOptions<Pool> {
        self.pool.with_options(&self.options)
    }

    /// One command, bounded by the command timeout.
    fn run<T, F>(&self, command: F) -> Bounded<F>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        Bounded {
            command,
            deadline: None,
            timeout: self.timeout,
        }
    }

    /// One command of the read path, bounded by the command timeout, built
    /// straight into its box: fred's command futures are kilobytes, and
    /// moving them (into an async block, a timeout, a box) was the largest
    /// cost of a Redis hit (benches/redis_hit.rs).
    #[inline(always)]
    fn bounded<T, F>(&self, command: impl FnOnce() -> F) -> Command<T>
    where
        F: Future<Output = Result<T, fred::error::Error>> + Send + 'static,
    {
        let bounded: Box<Bounded<F>> = Box::write(Box::new_uninit(), self.run(command()));
        Box::into_pin(bounded)
    }
}

fn timed_out(timeout: Duration) -> CacheError {
    CacheError::new(format!("Redis command timed out after {timeout:?}"))
}

/// A boxed, bounded Redis command.
type Command<T> = Pin<Box<dyn Future<Output = Result<T, CacheError>> + Send>>;

pin_project! {
    /// A command racing its deadline (set at the first poll, so that
    /// building one needs no runtime).
    struct Bounded<F> {
        #[pin]
        command: F,
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        timeout: Duration,
    }
}

impl<T, F> Future for Bounded<F>
where
    F: Future<Output = Result<T, fred::error::Error>>,
{
    type Output = Result<T, CacheError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.command.poll(cx) {
            return Poll::Ready(result.map_err(CacheError::new));
        }
        if this.deadline.is_none() {
            this.deadline.set(Some(tokio::time::sleep(*this.timeout)));
        }
        match this.deadline.as_pin_mut().map(|deadline| deadline.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(timed_out(*this.timeout))),
            _ => Poll::Pending,
        }
    }
}

/// The `get` future of [`RedisCache`]: one `GET` for a hit; a miss also
/// reads the key's version (the fill's guard) before it answers.
pub struct RedisGet<P> {
    cache: RedisCache<P>,
    hash: KeyHash,
    epoch: u64,
    state: GetState,
}

enum GetState {
    Entry(Command<Option<Bytes>>),
    /// A miss reading the versions its fill must match; with why, when the
    /// entry was there but undecodable.
    Version(Command<Version>, Option<CacheError>),
    Done,
}

impl<P> fmt::Debug for RedisGet<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisGet")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl<P: DeserializeOwned> Future for RedisGet<P> {
    type Output = Result<CacheRead<P, RedisToken>, CacheError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                GetState::Entry(command) => {
                    let raw = match ready!(command.as_mut().poll(cx)) {
                        Ok(raw) => raw,
                        Err(error) => {
                            this.state = GetState::Done;
                            return Poll::Ready(Err(error));
                        }
                    };
                    let degraded = match found::<P>(raw.as_deref()) {
                        Ok(verdict) => {
                            this.state = GetState::Done;
                            return Poll::Ready(Ok(CacheRead::hit(
                                verdict,
                                RedisToken::hit(this.epoch),
                            )));
                        }
                        Err(degraded) => degraded,
                    };
                    // A miss goes on to a lookup: read the versions its fill
                    // must match, before the lookup starts.
                    let command = this.cache.read_version(&this.hash);
                    this.state = GetState::Version(command, degraded);
                }
                GetState::Version(command, degraded) => {
                    let version = ready!(command.as_mut().poll(cx));
                    let degraded = degraded.take();
                    this.state = GetState::Done;
                    let token = RedisToken {
                        epoch: this.epoch,
                        version: version?,
                    };
                    return Poll::Ready(Ok(CacheRead {
                        verdict: None,
                        token,
                        degraded,
                    }));
                }
                GetState::Done => return Poll::Pending,
            }
        }
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
        // Taken before the read, so an invalidate_all during it wins.
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let entry = self.redis_key(hash);
        let client = self.inner.client();
        let command = self
            .inner
            .bounded(move || async move { client.get::<Option<Bytes>, _>(entry).await });
        RedisGet {
            cache: self.clone(),
            hash: *hash,
            epoch,
            state: GetState::Entry(command),
        }
    }

    fn put(
        &self,
        hash: KeyHash,
        token: RedisToken,
        verdict: Verdict<P>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        let this = self.clone();
        async move { this.fill(hash, token, &verdict, ttl).await.map(drop) }
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

    fn invalidate(&self, hash: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        let this = self.clone();
        let hash = *hash;
        async move { this.remove(hash).await }
    }

    fn invalidate_owner(&self, owner: &str) -> impl Future<Output = Result<(), CacheError>> + Send {
        let this = self.clone();
        let set = self.owner_key(owner);
        async move { this.remove_owner(set).await }
    }

    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
        let inner = Arc::clone(&self.inner);
        async move {
            inner.epoch.fetch_add(1, Ordering::AcqRel);
            let client = inner.pool.next().clone();
            let pattern = format!("{}*", inner.prefix);
            let keys = if client.is_clustered() {
                client
                    .scan_cluster_buffered(pattern, Some(500), None)
                    .boxed()
            } else {
                client.scan_buffered(pattern, Some(500), None).boxed()
            };
            let mut batches = keys.chunks(500);
            while let Some(batch) = batches.next().await {
                let mut entries = Vec::with_capacity(batch.len());
                for key in batch {
                    let key = key.map_err(CacheError::new)?;
                    // Versions stay: they guard lookups still in flight.
                    if !key.as_bytes().ends_with(b"}:v") {
                        entries.push(key);
                    }
                }
                // One UNLINK per key: a batch spans cluster slots.
                let results = join_all(entries.into_iter().map(|key| {
                    let client = client.with_options(&inner.options);
                    let inner = &inner;
                    async move { inner.run(client.unlink::<i64, _>(key)).await }
                }))
                .await;
                for result in results {
                    result?;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct P {
        id: u32,
    }
    impl Principal for P {}

    #[test]
    fn envelopes_round_trip_and_refuse_other_versions() {
        let valid = encode(&Verdict::Valid(Arc::new(P { id: 7 }))).unwrap();
        assert_eq!(valid, r#"{"v":1,"kind":"valid","principal":{"id":7}}"#);
        assert!(matches!(decode::<P>(valid.as_bytes()), Ok(Verdict::Valid(p)) if p.id == 7));
        let invalid = encode::<P>(&Verdict::Invalid).unwrap();
        assert_eq!(invalid, r#"{"v":1,"kind":"invalid"}"#);
        assert!(matches!(
            decode::<P>(invalid.as_bytes()),
            Ok(Verdict::Invalid)
        ));
        for bad in [
            r#"{"v":2,"kind":"invalid"}"#,
            r#"{"v":1,"kind":"valid"}"#,
            r#"{"v":1,"kind":"valid","principal":{"name":"x"}}"#,
            r#"{"v":1,"kind":"maybe"}"#,
            r#"{"v":1,"kind":"invalid","principal":{"id":1}}"#,
            "not json",
            "",
        ] {
            assert!(decode::<P>(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_that_would_break_keys_are_refused() {
        assert!(is_valid_prefix("apikey:"));
        for bad in ["a{b", "a}", "a*", "a?", "a[b]", "a\\"] {
            assert!(!is_valid_prefix(bad), "{bad}");
        }
    }
}
