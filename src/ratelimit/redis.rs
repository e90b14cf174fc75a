//! [`RedisCounters`]: rate-limit counters in Redis, shared by every
//! instance: one script per request, Redis's clock, one key per counter key.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::{KeysInterface, LuaInterface};
use fred::prelude::Config;
use fred::types::scripts::Script;
use fred::types::Value;
use smallvec::SmallVec;

use super::policy::{Algorithm, RateLimit};
use super::store::{Counted, CounterError, CounterKey, CounterStore};
use super::window::{self, Counts};
use crate::cache::RedisCache;
use crate::redis_pool::{Command, Failure, PoolSettings, RedisPool, Source};

/// Counts a request against a counter key's policies, all or none, on
/// Redis's clock; answers `[admitted, now_ms, (window, current, previous) for
/// each policy]`, the counts rolled to now and, when admitted, including
/// the cost. Every policy of a counter key is a field group of one hash, so
/// the script touches one key (one slot on a cluster).
///
/// KEYS: the counter key's hash. ARGV: cost; the number of policies, then
/// for each: its field (`name/window`), quota, window in ms, 1 for sliding.
///
/// The arithmetic is `window.rs`'s, operation for operation (Lua numbers are
/// doubles, as the crate's estimate is). Counts it could not have written
/// (not whole, negative, a window ahead of Redis's clock) are read as a
/// spent quota: a forged count refuses, it never admits.
const HIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local rolled = {}
local admitted = 1
local longest = 0
for i = 0, n - 1 do
  local base = 3 + i * 4
  local field = ARGV[base]
  local quota = tonumber(ARGV[base + 1])
  local w = tonumber(ARGV[base + 2])
  local sliding = ARGV[base + 3] == '1'
  local v = redis.call('HMGET', KEYS[1], field .. ':i', field .. ':c', field .. ':p')
  local idx = math.floor(now / w)
  local si, cur, prev = idx, 0, 0
  if v[1] or v[2] or v[3] then
    si, cur, prev = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
    -- Counts this script never writes (not whole, negative, a window
    -- ahead of Redis's clock): spent, never a fresh quota.
    if not (si and cur and prev) or si > idx + 1 or cur < 0 or prev < 0
        or cur ~= math.floor(cur) or prev ~= math.floor(prev) then
      si, cur, prev = idx, quota, quota
    end
  end
  if idx == si + 1 then
    prev = cur
    cur = 0
  elseif idx > si + 1 then
    prev = 0
    cur = 0
  else
    idx = si
  end
  local used = cur
  if sliding then
    used = cur + prev * (w - now % w) / w
  end
  if used + cost > quota then
    admitted = 0
  end
  rolled[i + 1] = {field, idx, cur, prev}
  if w > longest then
    longest = w
  end
end
local out = {admitted, now}
for i = 1, n do
  local r = rolled[i]
  local cur = r[3]
  if admitted == 1 then
    cur = cur + cost
  end
  redis.call('HSET', KEYS[1], r[1] .. ':i', r[2], r[1] .. ':c', cur, r[1] .. ':p', r[4])
  out[#out + 1] = r[2]
  out[#out + 1] = cur
  out[#out + 1] = r[4]
end
redis.call('PEXPIRE', KEYS[1], 2 * longest)
return out
";

/// Rate-limit counters in Redis, shared by every instance of a service
/// (feature `redis`).
///
/// - **One round trip per request**: one `EVALSHA` of a script that rolls,
///   weighs and counts every policy of the key (an `EVAL` the first time
///   the server doesn't know the script).
/// - **Redis's clock**: the script reads `TIME`, so instances whose clocks
///   disagree count in the same windows.
/// - **One key per counter key**, `prefix{<hex>}:rl` (the digest of the
///   key, or of its owner: never the plaintext), a hash with a field group
///   per policy, living twice its longest window: on a cluster a key's
///   windows share a slot, and the script never crosses slots.
/// - **Failures are errors**, never admissions: the limiter's breaker and
///   fallback decide (see [`Fallback`](super::Fallback)).
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), tower_api_key::ratelimit::CounterError> {
/// use tower_api_key::ratelimit::{RateLimiter, RedisCounters};
///
/// let counters = RedisCounters::builder("redis://127.0.0.1:6379").build().await?;
/// let limiter = RateLimiter::new(counters);
/// # let _ = limiter; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisCounters {
    inner: Arc<Inner>,
}

struct Inner {
    pool: RedisPool,
    prefix: String,
    /// The script's SHA-1, for `EVALSHA`.
    sha: String,
}

/// Builder for [`RedisCounters`].
pub struct RedisCountersBuilder {
    pool: PoolSettings,
    prefix: String,
}

impl fmt::Debug for RedisCountersBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCountersBuilder")
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool.pool_size)
            .field("command_timeout", &self.pool.command_timeout)
            .finish_non_exhaustive()
    }
}

pub(super) fn failed(failure: Failure) -> CounterError {
    CounterError::new(failure)
}

impl RedisCountersBuilder {
    fn new(source: Source) -> Self {
        Self {
            pool: PoolSettings::new(source),
            prefix: crate::cache::DEFAULT_PREFIX.to_owned(),
        }
    }

    /// The prefix of every counter key (default `apikey:`), under the same
    /// rules as the cache's.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Connections in the pool (default 4).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool.pool_size = size.max(1);
        self
    }

    /// How long one hit may take before the limiter falls back (default
    /// 100 ms).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.pool.command_timeout = timeout;
        self
    }

    /// The connections' circuit breaker, as
    /// [`RedisCacheBuilder::breaker`](crate::cache::RedisCacheBuilder::breaker)
    /// (default 3 failures, 1 s): while it is open every hit fails at once
    /// and the limiter's fallback decides.
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.pool.breaker_failures = failures;
        self.pool.breaker_cooldown = cooldown;
        self
    }

    /// How long [`build`](Self::build) waits for the first connection
    /// (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.pool.connect_timeout = timeout;
        self
    }

    /// Connects. An unreachable Redis is not an error (the pool keeps
    /// reconnecting, the limiter falls back meanwhile); a bad URL or prefix
    /// is.
    pub async fn build(self) -> Result<RedisCounters, CounterError> {
        crate::cache::check_prefix(&self.prefix).map_err(CounterError::new)?;
        let pool = self
            .pool
            .connect("rate limits fall back")
            .await
            .map_err(CounterError::new)?;
        Ok(RedisCounters::on(pool, self.prefix))
    }
}

impl RedisCounters {
    /// The Lua script every hit runs (by `EVALSHA`): to read, to load ahead
    /// of time, or to measure against. KEYS: the counter key's hash
    /// ([`redis_key`](Self::redis_key)); ARGV: cost, the number of
    /// policies, then for each its field (`name/window_seconds`), quota,
    /// window in ms, and 1 for a sliding window. It answers `[admitted,
    /// now_ms, (window, current, previous) per policy]`.
    pub const SCRIPT: &'static str = HIT;

    /// A builder connecting to `url` (`redis://…`, `redis-cluster://…`).
    pub fn builder(url: impl Into<String>) -> RedisCountersBuilder {
        RedisCountersBuilder::new(Source::Url(url.into()))
    }

    /// A builder from a fred [`Config`].
    pub fn from_config(config: Config) -> RedisCountersBuilder {
        RedisCountersBuilder::new(Source::Config(Box::new(config)))
    }

    /// A builder around a fred [`Pool`], used as it is.
    pub fn from_pool(pool: Pool) -> RedisCountersBuilder {
        RedisCountersBuilder::new(Source::Pool(pool))
    }

    /// Counters on the same connections, prefix and timeouts as `cache`.
    pub fn from_cache<P>(cache: &RedisCache<P>) -> Self {
        let (pool, prefix) = cache.connection();
        Self::on(pool.clone(), prefix.to_owned())
    }

    fn on(pool: RedisPool, prefix: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                prefix,
                sha: Script::from_lua(HIT).sha1().to_string(),
            }),
        }
    }

    /// The connections, for local-first's own script.
    pub(super) fn pool(&self) -> &RedisPool {
        &self.inner.pool
    }

    /// What the connections' circuit breaker has done (the cache's, when
    /// built [`from_cache`](Self::from_cache)).
    pub fn health(&self) -> crate::cache::RedisHealth {
        self.inner.pool.health()
    }

    /// The Redis key holding `key`'s counts.
    pub fn redis_key(&self, key: &CounterKey) -> String {
        let prefix = &self.inner.prefix;
        let mut name = String::with_capacity(prefix.len() + 69);
        name.push_str(prefix);
        name.push('{');
        key.digest().push_hex(&mut name);
        name.push_str("}:rl");
        name
    }
}

impl fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCounters")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// The script's arguments for a hit.
fn arguments(limits: &[RateLimit], algorithm: Algorithm, cost: u64) -> Vec<Value> {
    let mut args = Vec::with_capacity(2 + 4 * limits.len());
    args.push(int(cost));
    args.push(Value::Integer(limits.len() as i64));
    push_policies(&mut args, limits, algorithm);
    args
}

/// An integer argument.
pub(super) fn int(v: u64) -> Value {
    Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Each policy's four arguments: field, quota, window in ms, sliding.
pub(super) fn push_policies(args: &mut Vec<Value>, limits: &[RateLimit], algorithm: Algorithm) {
    let sliding = i64::from(algorithm == Algorithm::SlidingWindow);
    for limit in limits {
        args.push(Value::from(format!(
            "{}/{}",
            limit.name(),
            limit.window().as_secs()
        )));
        args.push(Value::Integer(
            i64::try_from(limit.quota()).unwrap_or(i64::MAX),
        ));
        args.push(Value::Integer(
            i64::try_from(limit.window_ms()).unwrap_or(i64::MAX),
        ));
        args.push(Value::Integer(sliding));
    }
}

/// The script's answer: whether it admitted the request, Redis's time, and
/// each policy's counts rolled to it (including the cost when admitted).
pub(crate) struct Answer {
    pub(crate) admitted: bool,
    pub(crate) now_ms: u64,
    pub(crate) counts: SmallVec<[Counts; 2]>,
}

impl Answer {
    pub(super) fn parse(answer: &[i64], policies: usize) -> Result<Self, CounterError> {
        let malformed = || CounterError::new("the counter script answered something else");
        let (&admitted, rest) = answer.split_first().ok_or_else(malformed)?;
        let (&now, counts) = rest.split_first().ok_or_else(malformed)?;
        if counts.len() != 3 * policies {
            return Err(malformed());
        }
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Self {
            admitted: admitted == 1,
            now_ms: u64::try_from(now).map_err(|_| malformed())?,
            counts: counts
                .chunks_exact(3)
                .map(|c| Counts {
                    window: count(c[0]),
                    current: count(c[1]),
                    previous: count(c[2]),
                })
                .collect(),
        })
    }

    /// Reads the counts the way the in-process store reads its own.
    pub(crate) fn counted(&self, limits: &[RateLimit], algorithm: Algorithm, cost: u64) -> Counted {
        let (admitted, now) = (self.admitted, self.now_ms);
        let quotas = limits
            .iter()
            .zip(&self.counts)
            .map(|(limit, &counts)| {
                // Refused: the counts are before the cost; say which refused.
                let refused = !admitted && !window::admits(counts, limit, algorithm, now, cost);
                window::quota(counts, limit, algorithm, now, cost, refused)
            })
            .collect();
        Counted { admitted, quotas }
    }
}

/// The future of a Redis hit: the script's round trip, then its reading.
pub struct RedisHit {
    command: Command<Vec<i64>, CounterError>,
    limits: Vec<RateLimit>,
    algorithm: Algorithm,
    cost: u64,
}

impl fmt::Debug for RedisHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHit").finish_non_exhaustive()
    }
}

impl Future for RedisHit {
    type Output = Result<Counted, CounterError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.command.as_mut().poll(cx).map(|answer| {
            let answer = Answer::parse(&answer?, self.limits.len())?;
            Ok(answer.counted(&self.limits, self.algorithm, self.cost))
        })
    }
}

impl RedisCounters {
    /// One hit's round trip: the script by its SHA (sent whole the first
    /// time the server doesn't know it).
    fn count(
        &self,
        key: &CounterKey,
        limits: &[RateLimit],
        algorithm: Algorithm,
        cost: u64,
    ) -> RedisHit {
        let inner = &*self.inner;
        let redis_key = self.redis_key(key);
        let args = arguments(limits, algorithm, cost);
        let client = inner.pool.client();
        let sha = inner.sha.clone();
        let command = inner.pool.boxed(
            move || async move {
                match client
                    .evalsha(sha, vec![redis_key.clone()], args.clone())
                    .await
                {
                    // The server doesn't know the script (yet, or any more):
                    // send it whole, which it then keeps.
                    Err(e) if is_noscript(&e) => client.eval(HIT, vec![redis_key], args).await,
                    answer => answer,
                }
            },
            failed,
        );
        RedisHit {
            command,
            limits: limits.to_vec(),
            algorithm,
            cost,
        }
    }
}

pub(super) fn is_noscript(e: &fred::error::Error) -> bool {
    e.details().starts_with("NOSCRIPT")
}

impl CounterStore for RedisCounters {
    type Hit = RedisHit;

    fn hit(
        &self,
        key: &CounterKey,
        limits: &[RateLimit],
        algorithm: Algorithm,
        cost: u64,
    ) -> RedisHit {
        self.count(key, limits, algorithm, cost)
    }

    fn reset(&self, key: &CounterKey) -> impl Future<Output = Result<(), CounterError>> + Send {
        let inner = &*self.inner;
        let unlink = inner.pool.client();
        let redis_key = self.redis_key(key);
        async move {
            inner
                .pool
                .run(unlink.unlink::<i64, _>(redis_key), failed)
                .await
                .map(drop)
        }
    }
}
