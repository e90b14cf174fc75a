//! Invalidations: one key (its version moved, its entry gone, in one
//! script), one owner (the owner's set taken whole into a sweep, each listed
//! key invalidated a chunk at a time), and everything under the prefix
//! (SCAN and UNLINK).

use std::sync::atomic::Ordering;

use fred::interfaces::{ClientLike, KeysInterface, LuaInterface};
use futures_util::future::join_all;
use futures_util::StreamExt;

use super::keys::Keys;
use super::{scripts, RedisCache};
use crate::cache::CacheError;
use crate::redis_pool::millis;
use crate::KeyHash;

/// Keys of an owner invalidated at once.
const SWEEP_CHUNK: i64 = 256;

impl<P> RedisCache<P> {
    /// Moves the key's version (tokens taken before can't fill) and deletes
    /// its entry.
    pub(super) async fn invalidate_key(&self, hash: KeyHash) -> Result<(), CacheError> {
        let inner = &*self.inner;
        let keys = vec![inner.keys.entry(&hash), inner.keys.version(&hash)];
        let ttl = vec![millis(inner.version_ttl).to_string()];
        let _: i64 = inner
            .run(inner.client().eval(scripts::INVALIDATE, keys, ttl))
            .await?;
        Ok(())
    }

    /// Moves the owners' epoch (in-flight fills of owned keys stop), then
    /// takes the owner's set whole into its sweep, then pops it
    /// [`SWEEP_CHUNK`] keys at a time and invalidates each. Taking it whole
    /// matters: a fill that lists a key after this goes into a new set,
    /// never into one being swept and emptied. Popping matters: an owner of
    /// a million keys costs a chunk of memory, not a million members; and a
    /// sweep cut short (an error) is finished by the next call.
    pub(super) async fn invalidate_owner_keys(&self, owner: &str) -> Result<(), CacheError> {
        let inner = &*self.inner;
        let _: i64 = inner.run(inner.client().incr(inner.keys.owners())).await?;
        let sweep = inner.keys.owner_sweep(owner);
        let keys = vec![inner.keys.owner(owner), sweep.clone()];
        let no_args: Vec<String> = Vec::new();
        let _held: i64 = inner
            .run(inner.client().eval(scripts::OWNER_TAKE, keys, no_args))
            .await?;
        // Each chunk leaves the sweep only once invalidated.
        let mut done: Vec<String> = Vec::new();
        loop {
            let mut args = Vec::with_capacity(1 + done.len());
            args.push(SWEEP_CHUNK.to_string());
            args.append(&mut done);
            let members: Vec<String> = inner
                .run(
                    inner
                        .client()
                        .eval(scripts::OWNER_NEXT, vec![sweep.clone()], args),
                )
                .await?;
            if members.is_empty() {
                return Ok(());
            }
            let listed = members.iter().filter_map(|m| KeyHash::from_hex(m));
            let results = join_all(listed.map(|hash| self.invalidate_key(hash))).await;
            results.into_iter().collect::<Result<Vec<()>, _>>()?;
            done = members;
        }
    }

    /// Bumps this process's epoch (its in-flight fills can't write), then
    /// scans the prefix in batches (`SCAN … COUNT 500`, on every master of a
    /// cluster) and `UNLINK`s each entry: Redis never blocks.
    pub(super) async fn invalidate_all_keys(&self) -> Result<(), CacheError> {
        let inner = &*self.inner;
        inner.epoch.fetch_add(1, Ordering::AcqRel);
        let client = inner.pool.pool().next().clone();
        let pattern = inner.keys.all();
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
                if !Keys::survives_invalidate_all(key.as_bytes()) {
                    entries.push(key);
                }
            }
            // One UNLINK per key: a batch spans cluster slots.
            let client = inner.pool.one();
            let results = join_all(
                entries
                    .into_iter()
                    .map(|key| inner.run(client.unlink::<i64, _>(key))),
            )
            .await;
            for result in results {
                result?;
            }
        }
        Ok(())
    }
}
