//! Local-first's script in Redis: one atomic step that gives back what an
//! instance holds unspent, counts a request, and leases the instance units
//! it may then admit with no round trip; every step named by an id that
//! the key remembers, so a step sent twice (a retry after a lost answer, a
//! replay by the client on reconnect) is applied once.

use std::time::Duration;

use fred::interfaces::LuaInterface;
use fred::types::scripts::Script;
use fred::types::Value;
use futures_util::StreamExt;
use smallvec::SmallVec;

use super::super::policy::{Algorithm, RateLimit};
use super::super::redis::{failed, int, is_noscript, push_policies, Answer, RedisCounters};
use super::super::store::{CounterError, CounterKey};

/// Rolls each policy's counts (as the strict script does), gives back
/// `give` units to the windows they were leased in (the current one, or
/// the previous one if it just rolled; older ones are gone), counts `cost`
/// (all or nothing across the policies), and grants a lease of up to `ask`
/// units that every policy has room for after the cost, counted at once:
/// what is leased can't be admitted twice. A step whose id is among the
/// key's last 16 is a replay: nothing is applied, its first answer's
/// admission and grant are answered again, with the counts as they are.
///
/// KEYS: the counter key's hash. ARGV: step id (hex), cost, ask, give, the
/// number of policies, then for each: field, quota, window in ms, sliding
/// (1/0), the window index the given-back units were leased in (-1: none).
/// Answers `[admitted, now_ms, (window, current, previous) per policy,
/// granted]`.
const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local cost = tonumber(ARGV[2])
local ask = tonumber(ARGV[3])
local give = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local steps = redis.call('HGET', KEYS[1], 'steps') or ''
local replay = nil
local at = string.find(steps, id .. '=', 1, true)
if at then
  local a, g = string.match(steps, '=(%d+),(%d+)', at)
  replay = {tonumber(a), tonumber(g)}
end
local rolled = {}
local admitted = 1
local room = nil
local longest = 0
for i = 0, n - 1 do
  local base = 6 + i * 5
  local field = ARGV[base]
  local quota = tonumber(ARGV[base + 1])
  local w = tonumber(ARGV[base + 2])
  local sliding = ARGV[base + 3] == '1'
  local leased = tonumber(ARGV[base + 4])
  local v = redis.call('HMGET', KEYS[1], field .. ':i', field .. ':c', field .. ':p')
  local idx = math.floor(now / w)
  local si, cur, prev = idx, 0, 0
  local forged = false
  if v[1] or v[2] or v[3] then
    si, cur, prev = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
    -- Counts this script never writes (not whole, negative, a window
    -- ahead of Redis's clock): spent, never a fresh quota, and nothing
    -- given back to them.
    if not (si and cur and prev) or si > idx + 1 or cur < 0 or prev < 0
        or cur ~= math.floor(cur) or prev ~= math.floor(prev) then
      si, cur, prev, forged = idx, quota, quota, true
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
  if replay == nil and give > 0 and not forged then
    if leased == idx then
      cur = math.max(0, cur - give)
    elseif leased + 1 == idx then
      prev = math.max(0, prev - give)
    end
  end
  local used = cur
  if sliding then
    used = cur + prev * (w - now % w) / w
  end
  if used + cost > quota then
    admitted = 0
  end
  local left = quota - used - cost
  if room == nil or left < room then
    room = left
  end
  rolled[i + 1] = {field, idx, cur, prev}
  if w > longest then
    longest = w
  end
end
local granted = 0
if replay then
  admitted = replay[1]
  granted = replay[2]
elseif admitted == 1 and ask > 0 and room ~= nil and room >= 1 then
  granted = math.min(ask, math.floor(room))
end
local out = {admitted, now}
for i = 1, n do
  local r = rolled[i]
  local cur = r[3]
  if replay == nil and admitted == 1 then
    cur = cur + cost + granted
  end
  redis.call('HSET', KEYS[1], r[1] .. ':i', r[2], r[1] .. ':c', cur, r[1] .. ':p', r[4])
  out[#out + 1] = r[2]
  out[#out + 1] = cur
  out[#out + 1] = r[4]
end
out[#out + 1] = granted
if replay == nil then
  steps = id .. '=' .. admitted .. ',' .. granted .. ' ' .. steps
  local kept, count = 0, 0
  for entry in string.gmatch(steps, '[^ ]+ ') do
    count = count + 1
    kept = kept + #entry
    if count == 16 then break end
  end
  redis.call('HSET', KEYS[1], 'steps', string.sub(steps, 1, kept))
end
redis.call('PEXPIRE', KEYS[1], 2 * longest)
return out
";

/// Steps of a batch in flight at once.
const STEPS_IN_FLIGHT: usize = 64;

/// One step: its id, what it counts, asks and gives back.
#[derive(Clone, Debug)]
pub(super) struct Step {
    /// Random, kept across retries of the same step.
    pub(super) id: u64,
    pub(super) cost: u64,
    pub(super) ask: u64,
    pub(super) give: u64,
    /// Per policy, the window the given-back units were leased in.
    pub(super) leased_in: SmallVec<[u64; 2]>,
}

/// What Redis answered of a step: the request's admission and the counts
/// (as the strict script answers them), and the units leased.
pub(super) struct Leased {
    pub(super) answer: Answer,
    pub(super) granted: u64,
}

fn arguments(step: &Step, limits: &[RateLimit], algorithm: Algorithm) -> Vec<Value> {
    let mut args = Vec::with_capacity(5 + 5 * limits.len());
    args.push(Value::from(format!("{:016x}", step.id)));
    args.push(int(step.cost));
    args.push(int(step.ask));
    args.push(int(step.give));
    args.push(Value::Integer(limits.len() as i64));
    let mut policies = Vec::with_capacity(4 * limits.len());
    push_policies(&mut policies, limits, algorithm);
    for (i, policy) in policies.chunks(4).enumerate() {
        args.extend_from_slice(policy);
        let leased = match step.leased_in.get(i) {
            Some(&window) if step.give > 0 => int(window),
            _ => Value::Integer(-1),
        };
        args.push(leased);
    }
    args
}

fn parse(answer: &[i64], policies: usize) -> Result<Leased, CounterError> {
    let (&granted, counts) = answer
        .split_last()
        .ok_or_else(|| CounterError::new("the lease script answered nothing"))?;
    Ok(Leased {
        answer: Answer::parse(counts, policies)?,
        granted: u64::try_from(granted).unwrap_or(0),
    })
}

impl RedisCounters {
    /// One step, bounded by `timeout` (a request's: the command timeout).
    pub(super) async fn step(
        &self,
        key: &CounterKey,
        limits: &[RateLimit],
        algorithm: Algorithm,
        step: &Step,
        timeout: Duration,
    ) -> Result<Leased, CounterError> {
        let pool = self.pool();
        let client = pool.client();
        let redis_key = self.redis_key(key);
        let args = arguments(step, limits, algorithm);
        let sha = lease_sha();
        let call = async move {
            match client
                .evalsha(sha, vec![redis_key.clone()], args.clone())
                .await
            {
                Err(e) if is_noscript(&e) => client.eval(LEASE, vec![redis_key], args).await,
                answer => answer,
            }
        };
        let answer: Vec<i64> = pool.run_within(timeout, call, failed).await?;
        parse(&answer, limits.len())
    }

    /// Several steps on one connection, [`STEPS_IN_FLIGHT`] at a time, each
    /// bounded and reported to the breaker on its own; answers in order.
    pub(super) async fn steps(
        &self,
        batch: Vec<(CounterKey, Vec<RateLimit>, Algorithm, Step)>,
        timeout: Duration,
    ) -> Vec<Result<Leased, CounterError>> {
        futures_util::stream::iter(batch)
            .map(|(key, limits, algorithm, step)| async move {
                self.step(&key, &limits, algorithm, &step, timeout).await
            })
            .buffered(STEPS_IN_FLIGHT)
            .collect()
            .await
    }
}

fn lease_sha() -> String {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| Script::from_lua(LEASE).sha1().to_string())
        .clone()
}
