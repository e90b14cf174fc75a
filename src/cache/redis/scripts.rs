//! The Lua scripts: each protocol step that must be atomic in Redis.

/// Stores a verdict unless the key's version moved since the read.
/// KEYS: entry, version. ARGV: version seen ('' for none), value, ttl ms.
pub(super) const PUT: &str = r"
local seen = redis.call('GET', KEYS[2])
if (seen or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Moves the key's version (so in-flight lookups can't write) and drops the
/// entry, atomically. KEYS: entry, version. ARGV: version ttl ms.
pub(super) const INVALIDATE: &str = r"
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
";

/// Lists a key in its owner's set, a sorted set scored by when the listing
/// lapses (Redis's clock): lapsed members are dropped on every add, and the
/// set's TTL is stretched to its longest member's, so it holds no more than
/// the owner's live keys and goes with the last of them.
/// KEYS: set. ARGV: member, ttl ms (the entry's, plus a margin).
pub(super) const OWNER_ADD: &str = r"
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

/// Takes an owner's set whole, atomically, into its sweep (merged with
/// what an interrupted sweep left there, which lasts as long as either),
/// and answers how many keys the sweep holds; they are then popped a chunk
/// at a time. KEYS: set, sweep.
pub(super) const OWNER_TAKE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    local ttl = math.max(redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2]))
    redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[1], 'AGGREGATE', 'MAX')
    redis.call('DEL', KEYS[1])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  else
    redis.call('RENAME', KEYS[1], KEYS[2])
  end
end
return redis.call('ZCARD', KEYS[2])
";

/// Drops from an owner's sweep the keys just invalidated (ARGV: their
/// members), then answers the next ARGV[1] members (none: the sweep is
/// done and gone). KEYS: sweep. ARGV: chunk, members done…
pub(super) const OWNER_NEXT: &str = r"
if #ARGV > 1 then redis.call('ZREM', KEYS[1], unpack(ARGV, 2)) end
return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
";
