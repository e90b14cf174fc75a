//! [`MemoryCounters`]: rate-limit counters in this process.

use std::fmt;
use std::future::{ready, Future, Ready};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use quick_cache::sync::{Cache, DefaultLifecycle, EntryAction, EntryResult};
use quick_cache::UnitWeighter;
use smallvec::SmallVec;

use super::policy::{Algorithm, RateLimit};
use super::store::{Counted, CounterError, CounterKey, CounterStore};
use super::window::{self, Counts};
use crate::hash::DigestHasher;

/// Default most counter keys kept.
const DEFAULT_CAPACITY: u64 = 100_000;

/// One key's counts, a slot per policy, in the order of its policies (each
/// named by the policy's id).
#[derive(Clone, Default)]
struct Slots {
    ids: SmallVec<[u64; 2]>,
    counts: SmallVec<[Counts; 2]>,
}

/// What the store reads the time from: the system clock, unless a test
/// says otherwise.
pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Rate-limit counters in this process: exact for one instance, each
/// instance enforcing the limits alone.
///
/// - **Exact.** A hit counts against every policy of the key, or none, under
///   the lock of the key's shard: two requests can't both take the last unit.
/// - **Bounded.** At most [`max_keys`](MemoryCountersBuilder::max_keys)
///   counter keys (default 100,000), evicted by S3-FIFO beyond that. Only
///   authenticated keys reach the counters, so a flood of made-up keys
///   can't grow them; a key evicted while active starts its windows afresh,
///   so keep the bound above the number of keys active in a window.
/// - **Windows are aligned to the system clock** (as Redis's are to its
///   own), so a window of a minute starts on the minute.
///
/// # Example
///
/// ```
/// use tower_api_key::ratelimit::{MemoryCounters, RateLimiter};
/// use tower_api_key::RateLimit;
///
/// let limiter = RateLimiter::new(MemoryCounters::builder().max_keys(50_000).build())
///     .default_limit(RateLimit::per_minute(600));
/// # let _ = limiter;
/// ```
#[derive(Clone)]
pub struct MemoryCounters {
    inner: Arc<Inner>,
}

struct Inner {
    table: Cache<CounterKey, Slots, UnitWeighter, DigestHasher>,
    clock: Clock,
}

/// Builder for [`MemoryCounters`], from [`MemoryCounters::builder`].
pub struct MemoryCountersBuilder {
    max_keys: u64,
    clock: Clock,
}

impl fmt::Debug for MemoryCountersBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCountersBuilder")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl MemoryCountersBuilder {
    /// The most counter keys kept (default 100,000).
    pub fn max_keys(mut self, keys: u64) -> Self {
        self.max_keys = keys.max(1);
        self
    }

    /// Reads the time from `clock` instead of the system clock (for tests and
    /// simulations).
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryCounters {
        MemoryCounters {
            inner: Arc::new(Inner {
                table: table(self.max_keys),
                clock: self.clock,
            }),
        }
    }
}

impl MemoryCounters {
    /// A builder with the defaults.
    pub fn builder() -> MemoryCountersBuilder {
        MemoryCountersBuilder {
            max_keys: DEFAULT_CAPACITY,
            clock: Arc::new(SystemTime::now),
        }
    }

    /// A store with the defaults.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Counter keys held now.
    pub fn len(&self) -> usize {
        self.inner.table.len()
    }

    /// Whether no counter key is held.
    pub fn is_empty(&self) -> bool {
        self.inner.table.is_empty()
    }

    pub(crate) fn now_ms(&self) -> u64 {
        now_ms(&self.inner.clock)
    }
}

pub(crate) fn now_ms(clock: &Clock) -> u64 {
    clock()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for MemoryCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCounters")
            .field("keys", &self.inner.table.len())
            .field("max_keys", &self.inner.table.capacity())
            .finish()
    }
}

/// A table of at most `max_keys` counter keys, evicted by S3-FIFO.
pub(crate) fn table<V: Clone>(max_keys: u64) -> Cache<CounterKey, V, UnitWeighter, DigestHasher> {
    let items = usize::try_from(max_keys).unwrap_or(usize::MAX);
    Cache::with(
        items,
        max_keys,
        UnitWeighter,
        DigestHasher::new(),
        DefaultLifecycle::default(),
    )
}

/// Counts a request against `slots` as one atomic step (the caller holds
/// the key): the policies' counts rolled to `now_ms`, then `cost` added to
/// all if all admit it; slots of policies the key no longer has go.
fn count_slots(
    slots: &mut Slots,
    limits: &[RateLimit],
    algorithm: Algorithm,
    now_ms: u64,
    cost: u64,
) -> Counted {
    if !slots
        .ids
        .iter()
        .copied()
        .eq(limits.iter().map(RateLimit::id))
    {
        // The key's policies changed (or it is new): keep the counts of the
        // policies it still has, in the new order.
        let counts = limits
            .iter()
            .map(|limit| {
                let kept = slots.ids.iter().position(|id| *id == limit.id());
                kept.map_or_else(Counts::default, |i| slots.counts[i])
            })
            .collect();
        *slots = Slots {
            ids: limits.iter().map(RateLimit::id).collect(),
            counts,
        };
    }
    for (limit, counts) in limits.iter().zip(slots.counts.iter_mut()) {
        *counts = counts.rolled_to(window::window_of(limit, now_ms));
    }
    window::decide(&mut slots.counts, limits, algorithm, now_ms, cost)
}

impl MemoryCounters {
    /// Counts a request at once (what [`CounterStore::hit`] answers).
    pub(crate) fn count(
        &self,
        key: &CounterKey,
        limits: &[RateLimit],
        algorithm: Algorithm,
        cost: u64,
    ) -> Counted {
        let now = self.now_ms();
        match self.inner.table.entry(key, None, |_, slots| {
            EntryAction::Retain(count_slots(slots, limits, algorithm, now, cost))
        }) {
            EntryResult::Retained(counted) => counted,
            EntryResult::Vacant(guard) => {
                let mut slots = Slots::default();
                let counted = count_slots(&mut slots, limits, algorithm, now, cost);
                // The guard holds the key: nobody else counted meanwhile.
                let _ = guard.insert(slots);
                counted
            }
            // The callback only retains, and without a timeout there is none:
            // these can't be; count as a key seen for the first time.
            EntryResult::Removed(..) | EntryResult::Replaced(..) | EntryResult::Timeout => {
                count_slots(&mut Slots::default(), limits, algorithm, now, cost)
            }
        }
    }
}

impl CounterStore for MemoryCounters {
    type Hit = Ready<Result<Counted, CounterError>>;

    fn hit(
        &self,
        key: &CounterKey,
        limits: &[RateLimit],
        algorithm: Algorithm,
        cost: u64,
    ) -> Self::Hit {
        ready(Ok(self.count(key, limits, algorithm, cost)))
    }

    fn reset(&self, key: &CounterKey) -> impl Future<Output = Result<(), CounterError>> + Send {
        self.inner.table.remove(key);
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    fn at(ms: &'static AtomicU64) -> MemoryCounters {
        MemoryCounters::builder()
            .clock(move || UNIX_EPOCH + Duration::from_millis(ms.load(Ordering::SeqCst)))
            .build()
    }

    #[test]
    fn every_policy_admits_or_none_counts() {
        static NOW: AtomicU64 = AtomicU64::new(1_000_000);
        let store = at(&NOW);
        let key = CounterKey::key(&crate::KeyHash::of("k"));
        let limits = [
            RateLimit::new("burst", 2, Duration::from_secs(1)).unwrap(),
            RateLimit::new("minute", 3, Duration::from_secs(60)).unwrap(),
        ];
        let hit = || {
            store
                .hit(&key, &limits, Algorithm::FixedWindow, 1)
                .now_or_never()
                .unwrap()
                .unwrap()
        };
        assert!(hit().admitted && hit().admitted);
        let third = hit();
        assert!(!third.admitted, "the burst is spent");
        assert_eq!(
            third.quotas[1].remaining, 1,
            "a refused request took nothing from the minute"
        );
        NOW.fetch_add(1_000, Ordering::SeqCst);
        let fourth = hit();
        assert!(fourth.admitted);
        assert_eq!(fourth.quotas[1].remaining, 0);
        assert!(!hit().admitted, "now the minute is spent");
        store.reset(&key).now_or_never().unwrap().unwrap();
        assert!(hit().admitted, "reset forgets the counts");
    }

    #[test]
    fn counter_memory_is_bounded_whatever_keys_arrive() {
        let store = MemoryCounters::builder().max_keys(1_000).build();
        let limits = [RateLimit::per_minute(10)];
        for i in 0..20_000 {
            let key = CounterKey::key(&crate::KeyHash::of(i.to_string()));
            let _ = store
                .hit(&key, &limits, Algorithm::SlidingWindow, 1)
                .now_or_never();
        }
        assert!(store.len() <= 1_000, "{}", store.len());
    }
}
