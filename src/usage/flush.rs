//! The batches: every interval the pending uses are taken, met with the
//! other instances' in Redis (with [`RedisUsage`](super::RedisUsage)), and
//! handed to the recorder [`BATCH_KEYS`] keys at a time; a batch that fails
//! is merged back for the next interval. Nothing here grows with the keys
//! in use: the pending maps are moved, not copied, and each batch, its
//! claims and its copy for the merge-back are bounded by [`BATCH_KEYS`].

use std::collections::HashMap;
use std::mem;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::{lock, room, KeyUse, Pending, Shared};
use crate::{BoxError, KeyHash};

/// The most keys in one recorder call (and one round of claims in Redis).
pub const BATCH_KEYS: usize = 1_000;

/// Every interval, a batch; ends when the last tracker is dropped.
pub(super) async fn batches<P: Send + Sync + 'static>(shared: Weak<Shared<P>>, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(error) = flush(&shared).await {
            if let Some(suppressed) = shared.warnings.allow() {
                tracing::warn!(%error, suppressed, "usage recorder failed; its batch is kept for the next");
            }
        }
    }
}

/// Takes everything pending and sends it, [`BATCH_KEYS`] keys at a time;
/// the first error, if any (the other batches are sent all the same).
pub(super) async fn flush<P: Send + Sync + 'static>(shared: &Shared<P>) -> Result<(), BoxError> {
    let _one_at_a_time = shared.flushing.lock().await;
    let mut taken = Taken {
        shared,
        maps: Vec::with_capacity(shared.shards.len()),
    };
    for shard in &shared.shards {
        let map = {
            let mut pending = lock(shard);
            let fresh = HashMap::with_hasher(pending.hasher().clone());
            mem::replace(&mut *pending, fresh)
        };
        shared.pending_keys.fetch_sub(map.len(), Ordering::Relaxed);
        if !map.is_empty() {
            taken.maps.push(map.into_iter());
        }
    }
    let mut first_error = None;
    while let Some(batch) = taken.next_batch() {
        if let Err(error) = send(shared, batch).await {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The pending maps, moved out of the shards: handed out a batch at a time,
/// and merged back whole if the flush ends first (a runtime shutting down).
struct Taken<'a, P> {
    shared: &'a Shared<P>,
    maps: Vec<std::collections::hash_map::IntoIter<KeyHash, Pending<P>>>,
}

impl<P> Taken<'_, P> {
    fn next_batch(&mut self) -> Option<Vec<KeyUse<P>>> {
        let mut batch = Vec::new();
        while batch.len() < BATCH_KEYS {
            let Some(map) = self.maps.last_mut() else {
                break;
            };
            let Some((hash, p)) = map.next() else {
                self.maps.pop();
                continue;
            };
            if batch.is_empty() {
                batch.reserve(BATCH_KEYS);
            }
            batch.push(KeyUse {
                hash,
                principal: p.principal,
                last_used: p.last_used,
                uses: p.uses,
            });
        }
        (!batch.is_empty()).then_some(batch)
    }
}

impl<P> Drop for Taken<'_, P> {
    fn drop(&mut self) {
        for map in self.maps.drain(..) {
            for (hash, p) in map {
                keep(self.shared, hash, p.last_used, p.uses, p.principal);
            }
        }
    }
}

/// One batch: met with the other instances' in Redis, then recorded; put
/// back unless the recorder succeeds.
async fn send<P: Send + Sync + 'static>(
    shared: &Shared<P>,
    batch: Vec<KeyUse<P>>,
) -> Result<(), BoxError> {
    // Ours is put back unless the recorder succeeds (an error, or this
    // future dropped: a shutdown's deadline passed).
    let mut kept = Restore {
        shared,
        records: records_of(&batch),
    };
    #[cfg(feature = "redis")]
    let batch = match &shared.redis {
        Some(redis) => {
            let batch = claimed(shared, redis, batch).await;
            kept.records = records_of(&batch);
            if batch.is_empty() {
                return Ok(());
            }
            batch
        }
        None => batch,
    };
    let keys = batch.len() as u64;
    let recorded = tokio::time::timeout(shared.record_timeout, shared.recorder.record(batch))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the usage recorder took more than {:?}",
                shared.record_timeout
            )
            .into())
        });
    match recorded {
        Ok(()) => {
            kept.records.clear();
            shared.batches.fetch_add(1, Ordering::Relaxed);
            shared.recorded_keys.fetch_add(keys, Ordering::Relaxed);
            Ok(())
        }
        Err(error) => {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            Err(error)
        }
    }
}

fn records_of<P>(batch: &[KeyUse<P>]) -> Vec<(KeyHash, SystemTime, u64, Arc<P>)> {
    batch
        .iter()
        .map(|u| (u.hash, u.last_used, u.uses, Arc::clone(&u.principal)))
        .collect()
}

/// What this instance records of `batch` after meeting the others in
/// Redis: the keys whose marker it took (with everyone's uses), and, where
/// Redis failed, its own. A key another instance records this interval
/// waits here with no uses of its own, to be claimed again next batch.
#[cfg(feature = "redis")]
async fn claimed<P>(
    shared: &Shared<P>,
    redis: &super::RedisUsage,
    batch: Vec<KeyUse<P>>,
) -> Vec<KeyUse<P>> {
    let keys: Vec<_> = batch
        .iter()
        .map(|u| (u.hash, u.uses, u.last_used))
        .collect();
    let claims = redis
        .claim_all(&keys, shared.interval, shared.instance)
        .await;
    let mut mine = Vec::with_capacity(batch.len());
    let mut failed = None;
    for (used, claim) in batch.into_iter().zip(claims) {
        match claim {
            Ok(super::redis::Claim::Record { uses, last_used }) => mine.push(KeyUse {
                uses,
                last_used: last_used.max(used.last_used),
                ..used
            }),
            Ok(super::redis::Claim::Elsewhere) => {
                keep(shared, used.hash, used.last_used, 0, used.principal);
            }
            Ok(super::redis::Claim::Nothing) => {}
            Err(error) => {
                shared.shared_errors.fetch_add(1, Ordering::Relaxed);
                failed = Some(error);
                if used.uses > 0 {
                    mine.push(used);
                } else {
                    // Uses of other instances may wait in Redis: claim
                    // again next batch.
                    keep(shared, used.hash, used.last_used, 0, used.principal);
                }
            }
        }
    }
    if let Some(error) = failed {
        if let Some(suppressed) = shared.warnings.allow() {
            tracing::warn!(%error, suppressed, "usage: Redis failed; this instance records its own uses");
        }
    }
    mine
}

/// A batch in the recorder's hands: put back when dropped unfinished.
struct Restore<'a, P> {
    shared: &'a Shared<P>,
    records: Vec<(KeyHash, SystemTime, u64, Arc<P>)>,
}

impl<P> Drop for Restore<'_, P> {
    fn drop(&mut self) {
        for (hash, last_used, uses, principal) in self.records.drain(..) {
            keep(self.shared, hash, last_used, uses, principal);
        }
    }
}

/// Puts a failed batch's record back, merged with what was noted since
/// (counts summed, the later instant and principal kept).
fn keep<P>(shared: &Shared<P>, hash: KeyHash, last_used: SystemTime, uses: u64, principal: Arc<P>) {
    let shard = &shared.shards[usize::from(hash.as_bytes()[31]) % shared.shards.len()];
    let mut pending = lock(shard);
    if let Some(entry) = pending.get_mut(&hash) {
        entry.uses += uses;
        if last_used > entry.last_used {
            entry.last_used = last_used;
        }
        return;
    }
    if !room(shared) {
        drop(pending);
        shared.dropped_uses.fetch_add(uses, Ordering::Relaxed);
        return;
    }
    pending.insert(
        hash,
        Pending {
            principal,
            last_used,
            uses,
        },
    );
}
