//! Writes: the version-checked put, and the owner listing that a put of an
//! owned key makes first.

use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::interfaces::{KeysInterface, LuaInterface};
use serde::Serialize;

use super::{codec, scripts, RedisCache, RedisToken};
use crate::cache::tier::Put;
use crate::cache::{CacheError, KeyCache, Ttl, Verdict};
use crate::redis_pool::millis;
use crate::{KeyHash, Principal};

/// How much longer an owner's listing of a key lasts than the key's entry:
/// the listing is written first, so it must not lapse before the entry.
const OWNER_LISTING_MARGIN: Duration = Duration::from_secs(1);

/// The longest `PX` written (a hundred years): Redis refuses one past what
/// its clock can add.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

impl<P> RedisCache<P>
where
    P: Principal + Serialize + serde::de::DeserializeOwned,
{
    /// Stores `verdict` unless something was invalidated since `token` was
    /// taken, and says which.
    pub(super) async fn put_checked(
        &self,
        hash: KeyHash,
        token: RedisToken,
        verdict: &Verdict<P>,
        ttl: Ttl,
    ) -> Result<Put, CacheError> {
        let inner = &*self.inner;
        if inner.epoch.load(Ordering::Acquire) != token.epoch {
            return Ok(Put::Refused); // invalidate_all since the read
        }
        let entry = inner.keys.entry(&hash);
        let value = codec::encode(verdict, ttl, codec::now_ms())?;
        let value = match &inner.seal {
            Some(seal) => seal.seal(&entry, &value),
            None => value,
        };
        // Kept for its stale time too (a valid entry's only).
        let ttl = match verdict {
            Verdict::Valid(_) => ttl.total(),
            Verdict::Invalid => ttl.fresh,
        };
        if let Verdict::Valid(principal) = verdict {
            if let Some(owner) = principal.owner() {
                // Listed first, checked second: an `invalidate_owner` that
                // bumps the epoch after this check reads the set after this
                // add, and invalidates the key (so its version refuses the
                // SET below, or its DEL removes it).
                let set = inner.keys.owner(&owner);
                let listed = millis(ttl.min(MAX_TTL).saturating_add(OWNER_LISTING_MARGIN));
                let member = vec![hash.to_hex(), listed.to_string()];
                let _: i64 = inner
                    .run(inner.client().eval(scripts::OWNER_ADD, vec![set], member))
                    .await?;
                let now: Option<String> =
                    inner.run(inner.client().get(inner.keys.owners())).await?;
                if now != token.version.owners {
                    return Ok(Put::Refused);
                }
            }
        }
        let keys = vec![entry, inner.keys.version(&hash)];
        let seen = token.version.key.unwrap_or_default();
        let args = vec![seen, value, millis(ttl.min(MAX_TTL)).to_string()];
        let stored: i64 = inner
            .run(inner.client().eval(scripts::PUT, keys, args))
            .await?;
        if stored != 1 {
            return Ok(Put::Refused);
        }
        if inner.epoch.load(Ordering::Acquire) != token.epoch {
            // An invalidate_all began while this was written, and its scan
            // may already have passed the key: take the write back.
            self.invalidate(&hash).await?;
            return Ok(Put::Refused);
        }
        Ok(Put::Stored)
    }
}
