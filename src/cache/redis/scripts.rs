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

/// Takes an owner's set whole: its members, and the set gone, atomically.
/// KEYS: set.
pub(super) const OWNER_TAKE: &str = r"
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return members
";
