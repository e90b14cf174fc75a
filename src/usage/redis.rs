//! [`RedisUsage`]: one record per key per interval across every instance.
//!
//! At each batch an instance runs one script per key it saw: its uses are
//! added to the key's pending counts in Redis (the latest instant kept),
//! and a per-key marker is taken with `SET NX PX <interval>`. The instance
//! that takes it records everything pending for the key (every instance's
//! uses since the last record) and empties it; the others record nothing
//! for that key this interval and try again at their next batch, with no
//! uses of their own if they have none, so counts never wait for traffic to
//! be recorded. Both keys share the key hash's hash tag (one slot on a
//! cluster) and are named by the hash, never the secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::interfaces::LuaInterface;
use fred::types::Value;
use futures_util::StreamExt;

use crate::cache::RedisCache;
use crate::redis_pool::{PoolSettings, RedisPool, Source};
use crate::{BoxError, KeyHash};

/// Claims sent at once in a batch.
const CLAIMS_IN_FLIGHT: usize = 64;

/// Adds uses to a key's pending counts, and takes the record if the marker
/// is free. KEYS: pending (hash), marker. ARGV: uses, last used (ms),
/// interval (ms), how long pending counts wait for a record (ms), this
/// instance's id (its own marker, from its last record, is no obstacle:
/// its batches are an interval apart, give or take the timer).
/// Answers `{uses, last}` to the instance that records, `0` when another
/// instance holds the marker, `-1` when nothing is pending (the marker let
/// go again).
const CLAIM: &str = r"
if tonumber(ARGV[1]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'n', ARGV[1])
  local last = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
  if tonumber(ARGV[2]) > last then redis.call('HSET', KEYS[1], 't', ARGV[2]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if not redis.call('SET', KEYS[2], ARGV[5], 'NX', 'PX', ARGV[3]) then
  if redis.call('GET', KEYS[2]) ~= ARGV[5] then return 0 end
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[3])
end
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local t = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
redis.call('DEL', KEYS[1])
if n == 0 then
  redis.call('DEL', KEYS[2])
  return -1
end
return {n, t}
";

/// Where a [`UsageTracker`](super::UsageTracker) meets the other
/// instances'; give it to
/// [`UsageTrackerBuilder::shared_in`](super::UsageTrackerBuilder::shared_in).
///
/// At each batch an instance runs one script per key it saw: its uses are
/// added to the key's pending counts in Redis (the latest instant kept),
/// and a per-key marker is taken with `SET NX PX <interval>`. The instance
/// that takes it records everything pending for the key and empties it;
/// the others record nothing for that key this interval and claim again at
/// their next batch (with no uses of their own if they have none), so no
/// count waits for traffic. Both keys carry the key hash as their hash tag
/// (one slot on a cluster), never the secret.
#[derive(Clone)]
pub struct RedisUsage {
    pool: RedisPool,
    prefix: String,
}

impl std::fmt::Debug for RedisUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUsage")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What the script said of one key.
pub(super) enum Claim {
    /// Record these (every instance's pending uses).
    Record { uses: u64, last_used: SystemTime },
    /// Another instance records this interval; try again next batch.
    Elsewhere,
    /// Nothing pending: every use of the key is recorded.
    Nothing,
}

impl RedisUsage {
    /// On the same connections, prefix and timeouts as `cache`.
    pub fn from_cache<P>(cache: &RedisCache<P>) -> Self {
        let (pool, prefix) = cache.connection();
        Self {
            pool: pool.clone(),
            prefix: prefix.to_owned(),
        }
    }

    /// Connects to `url` (`redis://…`, `redis-cluster://…`); its keys start
    /// with `prefix` (e.g. the cache's, `apikey:`).
    pub async fn connect(
        url: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Result<Self, BoxError> {
        let prefix = prefix.into();
        crate::cache::check_prefix(&prefix)?;
        let pool = PoolSettings::new(Source::Url(url.into()))
            .connect("usage is recorded by each instance alone")
            .await?;
        Ok(Self { pool, prefix })
    }

    fn keys(&self, hash: &KeyHash) -> (String, String) {
        let mut pending = String::with_capacity(self.prefix.len() + 72);
        pending.push_str(&self.prefix);
        pending.push('{');
        hash.push_hex(&mut pending);
        pending.push('}');
        let mut marker = pending.clone();
        pending.push_str(":use");
        marker.push_str(":usemark");
        (pending, marker)
    }

    /// Adds `uses` of each key and claims its record, one script per key on
    /// one connection, pipelined (a bounded number in flight); each answer
    /// in order (an error: Redis failed for that key).
    pub(super) async fn claim_all(
        &self,
        keys: &[(KeyHash, u64, SystemTime)],
        interval: Duration,
        instance: u64,
    ) -> Vec<Result<Claim, BoxError>> {
        let client = self.pool.one();
        let interval_ms = crate::redis_pool::millis(interval);
        // Pending counts wait ten intervals (at least a minute) for a record.
        let keep_ms = (interval_ms.saturating_mul(10)).max(60_000);
        // Made one at a time as the window moves: each command in flight
        // holds its buffers (kilobytes), so making them all first costs
        // memory in proportion to the keys in use (a flush of 2,700 keys
        // took 12 MB at once, freed between long-lived entries).
        let calls = keys.iter().copied().map(|(hash, uses, last)| {
            let (pending, marker) = self.keys(&hash);
            let last_ms = last
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let args: Vec<Value> = vec![
                uses.try_into().unwrap_or(i64::MAX).into(),
                last_ms.try_into().unwrap_or(i64::MAX).into(),
                interval_ms.try_into().unwrap_or(i64::MAX).into(),
                keep_ms.try_into().unwrap_or(i64::MAX).into(),
                instance.to_string().into(),
            ];
            let client = &client;
            // A batch's commands may take longer than a request's (up to a
            // second): an answer lost to a timeout after the script ran
            // counts uses twice, or leaves another instance's to expire.
            let bounded = self.pool.run_within(
                Duration::from_secs(1).max(self.pool.timeout()),
                async move {
                    client
                        .eval::<Value, _, _, _>(CLAIM, vec![pending, marker], args)
                        .await
                },
                |e| -> BoxError { e },
            );
            async move { bounded.await.and_then(claim) }
        });
        // At most CLAIMS_IN_FLIGHT at once, answers in order.
        futures_util::stream::iter(calls)
            .buffered(CLAIMS_IN_FLIGHT)
            .collect()
            .await
    }
}

fn claim(answer: Value) -> Result<Claim, BoxError> {
    match answer {
        Value::Integer(0) => Ok(Claim::Elsewhere),
        Value::Integer(-1) => Ok(Claim::Nothing),
        Value::Array(values) => match values.as_slice() {
            [Value::Integer(n), Value::Integer(t)] => Ok(Claim::Record {
                uses: u64::try_from(*n).unwrap_or(0),
                last_used: UNIX_EPOCH + Duration::from_millis(u64::try_from(*t).unwrap_or(0)),
            }),
            _ => Err("the usage script answered something else".into()),
        },
        _ => Err("the usage script answered something else".into()),
    }
}
