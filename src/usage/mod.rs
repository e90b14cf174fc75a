//! Usage tracking: last-used instants and use counts, debounced and batched
//! off the request path.
//!
//! The layer notes each authenticated request's key in memory (a sharded
//! map: one short lock, no I/O). Every interval (60 s by default) a task
//! hands your [`UsageRecorder`] one batch with each key used since, once:
//! its hash, its principal, the latest use and the number of uses. A
//! recorder that fails is given the same data again with the next batch
//! (merged: counts summed, the latest instant kept), so nothing is lost
//! while the pending set has room; beyond
//! [`max_pending`](UsageTrackerBuilder::max_pending) keys, new keys are
//! dropped and counted ([`UsageStats::dropped_uses`]). Call
//! [`UsageTracker::shutdown`] when the server stops to send what is
//! pending. With [`RedisUsage`] (feature `redis`), a key is recorded once
//! per interval across every instance, its uses summed in Redis.
//!
//! A typical recorder is one batched statement that never moves a
//! timestamp backwards:
//!
//! ```sql
//! UPDATE api_keys SET uses = uses + v.n,
//!     last_used_at = GREATEST(COALESCE(last_used_at, v.ts), v.ts)
//! FROM (VALUES ...) AS v(hash, ts, n)
//! WHERE api_keys.hash = v.hash
//! ```
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::usage::{KeyUse, UsageTracker};
//! use tower_api_key::{BoxError, Principal};
//!
//! #[derive(Clone)]
//! struct Client { id: i64 }
//! impl Principal for Client {}
//!
//! let usage = UsageTracker::builder(|batch: Vec<KeyUse<Client>>| async move {
//!     for used in &batch {
//!         println!("key {} used {} times, last at {:?}", used.principal.id, used.uses, used.last_used);
//!     }
//!     Ok::<(), BoxError>(())
//! })
//! .interval(Duration::from_secs(30))
//! .build();
//! // ApiKeyAuthLayer::new(cache, lookup).usage(usage.clone()), and on shutdown:
//! // usage.shutdown(Duration::from_secs(5)).await
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

mod flush;
#[cfg(feature = "redis")]
mod redis;

pub use self::flush::BATCH_KEYS;
use self::flush::{batches, flush};
#[cfg(feature = "redis")]
pub use redis::RedisUsage;

use crate::hash::DigestHasher;
use crate::stats::WarnLimiter;
use crate::{BoxError, KeyHash};

/// Default interval between two batches.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Default bound on the keys pending (noted, not yet recorded).
pub const DEFAULT_MAX_PENDING: usize = 100_000;
/// Default time the recorder may take with one batch.
pub const DEFAULT_RECORD_TIMEOUT: Duration = Duration::from_secs(30);

const SHARDS: usize = 64;

/// One key's use over an interval, as handed to a [`UsageRecorder`].
#[derive(Debug)]
#[non_exhaustive]
pub struct KeyUse<P> {
    /// The key, by hash.
    pub hash: KeyHash,
    /// The principal the lookup answered for it (as of its latest use).
    pub principal: Arc<P>,
    /// The latest use.
    pub last_used: SystemTime,
    /// Uses since the last successful batch.
    pub uses: u64,
}

/// A recorder's future.
pub type RecordFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// Where usage goes: typically one batched `UPDATE` of your key table.
///
/// Implemented for every `Fn(Vec<KeyUse<P>>) -> impl Future<Output =
/// Result<(), E>>` (a closure, as in the [module example](self)); implement
/// it yourself for a type that holds a pool.
pub trait UsageRecorder<P>: Send + Sync + 'static {
    /// Records one batch: each key at most once. An error keeps the batch
    /// for the next interval.
    fn record(&self, batch: Vec<KeyUse<P>>) -> RecordFuture;
}

impl<P, F, Fut, E> UsageRecorder<P> for F
where
    F: Fn(Vec<KeyUse<P>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn record(&self, batch: Vec<KeyUse<P>>) -> RecordFuture {
        let fut = self(batch);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// What a [`UsageTracker`] has done, from [`UsageTracker::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageStats {
    /// Batches the recorder accepted.
    pub batches: u64,
    /// Key records in those batches.
    pub recorded_keys: u64,
    /// Batches the recorder failed (their data kept for the next).
    pub failures: u64,
    /// Uses not recorded because the pending set was full (of keys not yet
    /// in it).
    pub dropped_uses: u64,
    /// Keys pending now.
    pub pending: u64,
    /// Keys whose claim in Redis failed (with [`RedisUsage`]): recorded by
    /// this instance alone.
    pub shared_errors: u64,
}

/// Debounced, batched usage tracking; see the [module docs](self). Cheap to
/// clone: clones share one pending set and one batch task.
pub struct UsageTracker<P> {
    shared: Arc<Shared<P>>,
}

impl<P> Clone for UsageTracker<P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<P> fmt::Debug for UsageTracker<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageTracker")
            .field("interval", &self.shared.interval)
            .field("max_pending", &self.shared.max_pending)
            .finish_non_exhaustive()
    }
}

/// Builder for [`UsageTracker`], from [`UsageTracker::builder`].
pub struct UsageTrackerBuilder<P> {
    recorder: Arc<dyn UsageRecorder<P>>,
    interval: Duration,
    max_pending: usize,
    record_timeout: Duration,
    on_timer: bool,
    #[cfg(feature = "redis")]
    redis: Option<RedisUsage>,
}

impl<P> fmt::Debug for UsageTrackerBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageTrackerBuilder")
            .field("interval", &self.interval)
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}

impl<P: Send + Sync + 'static> UsageTrackerBuilder<P> {
    /// Time between two batches (default [`DEFAULT_INTERVAL`]; at least
    /// 1 ms): a key is recorded at most once per interval.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Bound on the keys pending, all shards together (default
    /// [`DEFAULT_MAX_PENDING`]): beyond it, uses of keys not yet pending are
    /// dropped and counted.
    pub fn max_pending(mut self, keys: usize) -> Self {
        self.max_pending = keys.max(1);
        self
    }

    /// How long the recorder may take with one batch (default
    /// [`DEFAULT_RECORD_TIMEOUT`]); past it the batch counts as failed and
    /// is merged back for the next.
    pub fn record_timeout(mut self, timeout: Duration) -> Self {
        self.record_timeout = timeout;
        self
    }

    /// Whether a task of the tracker's own sends a batch every interval
    /// (default `true`). With `false` nothing is sent until you call
    /// [`flush`](UsageTracker::flush): on a scheduler of your own, or in a
    /// test that decides when each batch goes. The interval still bounds
    /// how often a key is recorded across instances sharing Redis.
    #[must_use]
    pub fn batches_on_timer(mut self, on: bool) -> Self {
        self.on_timer = on;
        self
    }

    /// Records each key at most once per interval across every instance
    /// that shares `redis` (see [`RedisUsage`]), counts summed there. While
    /// Redis fails, each instance records its own uses (counted in
    /// [`UsageStats::shared_errors`]).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn shared_in(mut self, redis: RedisUsage) -> Self {
        self.redis = Some(redis);
        self
    }

    /// The tracker. Its batches start on the Tokio runtime of the first
    /// request it notes.
    pub fn build(self) -> UsageTracker<P> {
        UsageTracker {
            shared: Arc::new(Shared {
                recorder: self.recorder,
                #[cfg(feature = "redis")]
                redis: self.redis,
                interval: self.interval,
                max_pending: self.max_pending,
                pending_keys: AtomicUsize::new(0),
                record_timeout: self.record_timeout,
                #[cfg(feature = "redis")]
                instance: random_id(),
                shards: std::array::from_fn(|_| {
                    Mutex::new(HashMap::with_hasher(DigestHasher::new()))
                }),
                flushing: tokio::sync::Mutex::new(()),
                // Without the timer, as if started: no task is spawned.
                started: AtomicBool::new(!self.on_timer),
                batches: AtomicU64::new(0),
                recorded_keys: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                dropped_uses: AtomicU64::new(0),
                shared_errors: AtomicU64::new(0),
                warnings: WarnLimiter::new(Duration::from_secs(10)),
            }),
        }
    }
}

struct Pending<P> {
    principal: Arc<P>,
    last_used: SystemTime,
    uses: u64,
}

type Shard<P> = Mutex<HashMap<KeyHash, Pending<P>, DigestHasher>>;

struct Shared<P> {
    recorder: Arc<dyn UsageRecorder<P>>,
    #[cfg(feature = "redis")]
    redis: Option<RedisUsage>,
    interval: Duration,
    max_pending: usize,
    /// Keys in the shards now (the bound is on all of them together).
    pending_keys: AtomicUsize,
    record_timeout: Duration,
    /// This tracker in Redis's markers: its own marker is no obstacle.
    #[cfg(feature = "redis")]
    instance: u64,
    shards: [Shard<P>; SHARDS],
    /// One batch at a time, so two can't land out of order.
    flushing: tokio::sync::Mutex<()>,
    started: AtomicBool,
    batches: AtomicU64,
    recorded_keys: AtomicU64,
    failures: AtomicU64,
    dropped_uses: AtomicU64,
    shared_errors: AtomicU64,
    warnings: WarnLimiter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<P: Send + Sync + 'static> UsageTracker<P> {
    /// A tracker handing batches to `recorder`.
    pub fn builder(recorder: impl UsageRecorder<P>) -> UsageTrackerBuilder<P> {
        UsageTrackerBuilder {
            recorder: Arc::new(recorder),
            interval: DEFAULT_INTERVAL,
            max_pending: DEFAULT_MAX_PENDING,
            record_timeout: DEFAULT_RECORD_TIMEOUT,
            on_timer: true,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// Notes one use of `hash` (the layer calls this for every request it
    /// authenticates): a short lock on one of 64 shards, no I/O.
    pub(crate) fn note(&self, hash: &KeyHash, principal: &Arc<P>) {
        self.start();
        let now = SystemTime::now();
        let shared = &*self.shared;
        let shard = &shared.shards[usize::from(hash.as_bytes()[31]) % SHARDS];
        let mut pending = lock(shard);
        if let Some(entry) = pending.get_mut(hash) {
            entry.uses += 1;
            if now > entry.last_used {
                entry.last_used = now;
            }
            return;
        }
        if !room(shared) {
            drop(pending);
            shared.dropped_uses.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.insert(
            *hash,
            Pending {
                principal: Arc::clone(principal),
                last_used: now,
                uses: 1,
            },
        );
    }

    /// Sends what is pending now as one batch (the task does this every
    /// interval; a flush of your own is one more batch); on failure the
    /// data is kept for the next batch. The batch runs as a task of its
    /// own: dropping this future (a deadline) never cuts it in half.
    pub async fn flush(&self) -> Result<(), BoxError> {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move { flush(&shared).await })
            .await
            .unwrap_or_else(|e| Err(format!("usage batch task failed: {e}").into()))
    }

    /// [`flush`](Self::flush), waiting at most `deadline` (for a server's
    /// shutdown): `Err` if the recorder failed or took longer. Past the
    /// deadline the batch goes on in the background (merged back if the
    /// recorder then fails or passes its
    /// [`record_timeout`](UsageTrackerBuilder::record_timeout)); a process
    /// that exits then loses it.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), BoxError> {
        match tokio::time::timeout(deadline, self.flush()).await {
            Ok(result) => result,
            Err(_) => Err(format!("usage flush did not finish within {deadline:?}").into()),
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> UsageStats {
        let s = &*self.shared;
        UsageStats {
            batches: s.batches.load(Ordering::Relaxed),
            recorded_keys: s.recorded_keys.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            dropped_uses: s.dropped_uses.load(Ordering::Relaxed),
            shared_errors: s.shared_errors.load(Ordering::Relaxed),
            pending: s.shards.iter().map(|m| lock(m).len() as u64).sum(),
        }
    }

    fn start(&self) {
        let shared = &self.shared;
        crate::background::spawn_once(&shared.started, || {
            batches(Arc::downgrade(shared), shared.interval)
        });
    }
}

/// A tracker of any principal type, for the layer's untyped settings (the
/// layer's builder only stores a tracker of its own principal type).
#[derive(Clone)]
pub(crate) struct AnyTracker(Arc<dyn std::any::Any + Send + Sync>);

impl AnyTracker {
    pub(crate) fn new<P: Send + Sync + 'static>(tracker: UsageTracker<P>) -> Self {
        Self(Arc::new(tracker))
    }

    /// The tracker, if it is of `P` (always, as the builder stores it).
    #[inline]
    pub(crate) fn get<P: Send + Sync + 'static>(&self) -> Option<&UsageTracker<P>> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for AnyTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UsageTracker")
    }
}

/// Whether one more key may be pending (and counts it if so).
fn room<P>(shared: &Shared<P>) -> bool {
    if shared.pending_keys.load(Ordering::Relaxed) >= shared.max_pending {
        return false;
    }
    shared.pending_keys.fetch_add(1, Ordering::Relaxed);
    true
}

#[cfg(feature = "redis")]
fn random_id() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness, a clock-derived id still tells instances apart.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return nanos as u64 ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(bytes)
}
