//! The messages on the invalidations channel: `k:<hex>` for one key,
//! `o:<owner>` for one owner, `*` for everything.

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

impl Invalidation {
    pub(super) fn message(&self) -> String {
        match self {
            Self::Key(hash) => format!("k:{}", hash.to_hex()),
            Self::Owner(owner) => format!("o:{owner}"),
            Self::All => "*".to_owned(),
        }
    }

    /// `None` for a message this build can't read (from a newer version,
    /// or garbage).
    pub(super) fn parse(message: &str) -> Option<Self> {
        match message.split_once(':') {
            _ if message == "*" => Some(Self::All),
            Some(("k", hex)) => KeyHash::from_hex(hex).map(Self::Key),
            Some(("o", owner)) => Some(Self::Owner(owner.to_owned())),
            _ => None,
        }
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
        for invalidation in [
            Invalidation::Key(hash),
            Invalidation::Owner("acme:eu".to_owned()),
            Invalidation::All,
        ] {
            assert_eq!(
                Invalidation::parse(&invalidation.message()),
                Some(invalidation)
            );
        }
        for garbage in ["", "k:zz", "x:1", "**", "k", "v2:k:00"] {
            assert_eq!(Invalidation::parse(garbage), None, "{garbage}");
        }
    }
}
