//! The messages on the invalidations channel: `<origin>/k:<hex>` for one
//! key, `<origin>/o:<owner>` for one owner, `<origin>/*` for everything,
//! where the origin (16 hex digits) names the instance that sent it, so that
//! it doesn't apply its own twice.

use crate::cache::tier::NearTier;
use crate::cache::MemoryCache;
use crate::{KeyHash, Principal};

/// One invalidation, as applied to an L1 and as sent on the channel.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Invalidation {
    /// `k:<hex>`
    Key(KeyHash),
    /// `o:<owner>`
    Owner(String),
    /// `*`
    All,
}

/// The instance an invalidation comes from: random for each tiered cache.
pub(super) type Origin = u64;

impl Invalidation {
    /// The message that sends it from `origin`.
    pub(super) fn message(&self, origin: Origin) -> String {
        match self {
            Self::Key(hash) => format!("{origin:016x}/k:{}", hash.to_hex()),
            Self::Owner(owner) => format!("{origin:016x}/o:{owner}"),
            Self::All => format!("{origin:016x}/*"),
        }
    }

    /// Where a message comes from and what it invalidates; `None` for one
    /// this build can't read (from a newer version, or garbage).
    pub(super) fn parse(message: &str) -> Option<(Origin, Self)> {
        let (origin, body) = message.split_once('/')?;
        if origin.len() != 16 {
            return None;
        }
        let origin = Origin::from_str_radix(origin, 16).ok()?;
        let invalidation = match body.split_once(':') {
            _ if body == "*" => Self::All,
            Some(("k", hex)) => Self::Key(KeyHash::from_hex(hex)?),
            Some(("o", owner)) => Self::Owner(owner.to_owned()),
            _ => return None,
        };
        Some((origin, invalidation))
    }

    /// Applies it to an L1.
    pub(super) fn apply<P: Principal>(&self, l1: &MemoryCache<P>) {
        match self {
            Self::Key(hash) => l1.invalidate_now(hash),
            Self::Owner(owner) => l1.invalidate_owner_now(owner),
            Self::All => l1.invalidate_all_now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_messages_round_trip_and_garbage_is_refused() {
        let hash = KeyHash::of("k");
        let origin = 0x0123_4567_89ab_cdef;
        for invalidation in [
            Invalidation::Key(hash),
            Invalidation::Owner("acme:eu/west".to_owned()),
            Invalidation::All,
        ] {
            assert_eq!(
                Invalidation::parse(&invalidation.message(origin)),
                Some((origin, invalidation))
            );
        }
        let from = |body: &str| format!("{origin:016x}/{body}");
        for garbage in [
            String::new(),
            from("k:zz"),
            from("x:1"),
            from("**"),
            from("k"),
            "*".to_owned(),
            "k:00".to_owned(),
            "0123/*".to_owned(),
            "zzzzzzzzzzzzzzzz/*".to_owned(),
        ] {
            assert_eq!(Invalidation::parse(&garbage), None, "{garbage}");
        }
    }
}
