//! Key naming: every Redis key the cache writes, from its prefix and a
//! [`KeyHash`], never from the plaintext.
//!
//! | key | holds |
//! | --- | --- |
//! | `prefix{<hex>}` | the entry (a [codec](super::codec) envelope) |
//! | `prefix{<hex>}:v` | the key's version, moved by every invalidation |
//! | `prefix{o:<sha256 of the owner>}` | the owner's set of cached keys |
//! | `prefix{owners}:v` | the owners' epoch, moved by every owner invalidation |
//!
//! The hash tag (`{…}`) puts a key's entry and version in one cluster slot,
//! so the scripts that touch both never cross slots. Version keys end in
//! `}:v` and the rate-limit counters' (`prefix{<hex>}:rl`, see
//! `ratelimit/redis.rs`) in `}:rl`, which is how `invalidate_all` knows to
//! keep them.

use crate::KeyHash;

/// Refuses a prefix with braces (they would move the hash tag), glob
/// characters (they would widen `invalidate_all`'s SCAN) or backslashes.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.contains(['{', '}', '*', '?', '[', ']', '\\']) {
        return Err(format!(
            "invalid Redis key prefix {prefix:?}: no braces, glob characters or backslashes"
        ));
    }
    Ok(())
}

/// The key names of one prefix.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    /// Names keys under `prefix`, if [`check_prefix`] accepts it.
    pub(super) fn new(prefix: String) -> Result<Self, String> {
        check_prefix(&prefix)?;
        Ok(Self { prefix })
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The entry holding `hash`'s verdict.
    pub(super) fn entry(&self, hash: &KeyHash) -> String {
        self.tagged("", hash, "")
    }

    /// `hash`'s version.
    pub(super) fn version(&self, hash: &KeyHash) -> String {
        self.tagged("", hash, ":v")
    }

    /// The set of `owner`'s cached keys.
    pub(super) fn owner(&self, owner: &str) -> String {
        self.tagged("o:", &KeyHash::of(owner), "")
    }

    /// The owners' epoch (ends like a version key, so `invalidate_all`
    /// keeps it).
    /// An owner's listing being swept by `invalidate_owner` (the set's
    /// hash tag: one slot with it).
    pub(super) fn owner_sweep(&self, owner: &str) -> String {
        self.tagged("o:", &KeyHash::of(owner), ":sweep")
    }

    pub(super) fn owners(&self) -> String {
        format!("{}{{owners}}:v", self.prefix)
    }

    /// The SCAN pattern of every key under the prefix.
    pub(super) fn all(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// Whether a scanned key stays through `invalidate_all`: a version (it
    /// guards lookups still in flight), or the rate-limit counters that
    /// share the prefix (`prefix{…}:rl`), which aren't verdicts.
    pub(super) fn survives_invalidate_all(key: &[u8]) -> bool {
        key.ends_with(b"}:v") || key.ends_with(b"}:rl")
    }

    /// The pub/sub channel of the tiered cache's invalidations.
    #[cfg(feature = "tiered")]
    pub(super) fn channel(&self) -> String {
        format!("{}invalidations", self.prefix)
    }

    /// `prefix{taghex}suffix`, in one allocation (it is built on every read).
    fn tagged(&self, tag: &str, hash: &KeyHash, suffix: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + tag.len() + 66 + suffix.len());
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(tag);
        hash.push_hex(&mut key);
        key.push('}');
        key.push_str(suffix);
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_that_would_break_keys_are_refused() {
        assert!(Keys::new("apikey:".into()).is_ok());
        for bad in ["a{b", "a}", "a*", "a?", "a[b]", "a\\"] {
            assert!(Keys::new(bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn entry_and_version_share_a_hash_tag() {
        let keys = Keys::new("p:".into()).unwrap();
        let hash = KeyHash::of("k");
        let hex = hash.to_hex();
        assert_eq!(keys.entry(&hash), format!("p:{{{hex}}}"));
        assert_eq!(keys.version(&hash), format!("p:{{{hex}}}:v"));
        assert!(Keys::survives_invalidate_all(
            keys.version(&hash).as_bytes()
        ));
        assert!(Keys::survives_invalidate_all(keys.owners().as_bytes()));
        assert!(!Keys::survives_invalidate_all(keys.entry(&hash).as_bytes()));
        assert!(!keys.owner("acme").contains("acme"));
    }
}
