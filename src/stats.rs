//! [`Stats`]: what the layer has done, as cheap counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::telemetry::metric::CounterMetric;

/// A snapshot of a layer's counters, from [`ApiKeyAuthLayer::stats`].
///
/// Every request that presents a key counts once in `hits`,
/// `negative_hits` or `misses`, or, refused by the
/// [`KeyFormat`](crate::KeyFormat) before the cache, in `format_rejected`. A miss is answered by a lookup of its own
/// (`lookups`) or by sharing another request's lookup for the same key
/// (`coalesced`).
///
/// [`ApiKeyAuthLayer::stats`]: crate::ApiKeyAuthLayer::stats
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Requests answered from a cached valid key.
    pub hits: u64,
    /// Requests answered from a cached negative entry.
    pub negative_hits: u64,
    /// Requests that needed the lookup: not cached, on a cache-bypass route,
    /// or the cache failed.
    pub misses: u64,
    /// Calls made to the lookup service.
    pub lookups: u64,
    /// Lookups that failed (answered 503, never cached).
    pub lookup_errors: u64,
    /// Lookups that took longer than the
    /// [`lookup_timeout`](crate::ApiKeyAuthLayer::lookup_timeout) (also in
    /// `lookup_errors`).
    pub lookup_timeouts: u64,
    /// Cache operations that failed and were degraded to the lookup.
    pub cache_errors: u64,
    /// Of those, operations the cache skipped because its circuit breaker
    /// was open (Redis failing): answered from the lookup at once.
    pub cache_skipped: u64,
    /// Requests whose key failed the [`KeyFormat`](crate::KeyFormat) (its
    /// shape or checksum, or a legacy key where none is allowed): refused
    /// before any cache read or lookup, so not in `misses`.
    pub format_rejected: u64,
    /// Requests that waited on another request's lookup instead of making
    /// their own (single flight).
    pub coalesced: u64,
    /// Requests answered from a stale entry because the lookup failed
    /// ([`serve_stale`](crate::ApiKeyAuthLayer::serve_stale)); also counted
    /// in `misses` (and their lookup, once per flight, in `lookup_errors`).
    pub stale_served: u64,
    /// Background refreshes started by hits on aging entries
    /// ([`refresh_ahead`](crate::ApiKeyAuthLayer::refresh_ahead)); each is a
    /// lookup (in `lookups`), not a miss.
    pub refreshes: u64,
    /// Requests the rate limit counted and admitted.
    pub rate_limit_admitted: u64,
    /// Requests refused with `429`.
    pub rate_limited: u64,
    /// Requests decided by the limiter's fallback (the counter store failed,
    /// or its breaker was open).
    pub rate_limit_fallbacks: u64,
    /// Counter store operations that failed.
    pub rate_limit_store_errors: u64,
    /// Requests refused `403 insufficient_scope`: the key lacked a scope
    /// its route requires (checked before any rate-limit counter).
    pub forbidden_scope: u64,
    /// Requests refused `403 address_not_allowed`: the key may not be used
    /// from the client's address, or the address could not be known.
    pub forbidden_address: u64,
}

/// How many cells a counter is split into. Each thread bumps one, so two
/// cores counting hits don't fight over one cache line; a snapshot sums them.
const CELLS: usize = 16;

/// One cell on its own cache line (two, for the adjacent-line prefetcher).
#[derive(Default)]
#[repr(align(128))]
struct Cell(AtomicU64);

/// A counter split into per-thread cells: bumping it is one relaxed add on a
/// line no other core writes (as long as there are no more threads than
/// cells).
///
/// A counter of the layer's may also be a metric (feature `metrics`): each
/// bump increments it too.
pub(crate) struct Counter {
    cells: [Cell; CELLS],
    #[cfg(feature = "metrics")]
    metric: Option<&'static CounterMetric>,
}

impl Default for Counter {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Counter {
    fn new(metric: Option<&'static CounterMetric>) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = metric;
        Self {
            cells: std::array::from_fn(|_| Cell::default()),
            #[cfg(feature = "metrics")]
            metric,
        }
    }

    /// A counter that is also `metric`.
    pub(crate) fn metric(metric: &'static CounterMetric) -> Self {
        Self::new(Some(metric))
    }

    #[inline]
    pub(crate) fn incr(&self) {
        self.cells[cell_of_this_thread()]
            .0
            .fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(metric) = self.metric {
            metric.increment();
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// This thread's cell, handed out round robin when it first counts.
#[inline]
fn cell_of_this_thread() -> usize {
    use std::cell::Cell as Local;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static CELL: Local<usize> = const { Local::new(usize::MAX) };
    }
    CELL.with(|cell| {
        let mut index = cell.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed) % CELLS;
            cell.set(index);
        }
        index
    })
}

pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) negative_hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) lookups: Counter,
    pub(crate) lookup_errors: Counter,
    pub(crate) lookup_timeouts: Counter,
    pub(crate) cache_errors: Counter,
    pub(crate) cache_skipped: Counter,
    pub(crate) format_rejected: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) stale_served: Counter,
    pub(crate) refreshes: Counter,
    pub(crate) rate_limit_admitted: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) rate_limit_fallbacks: Counter,
    pub(crate) rate_limit_store_errors: Counter,
    pub(crate) forbidden_scope: Counter,
    pub(crate) forbidden_address: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        use crate::telemetry::metric::*;
        Self {
            hits: Counter::metric(&HITS),
            negative_hits: Counter::metric(&NEGATIVE_HITS),
            misses: Counter::metric(&MISSES),
            lookups: Counter::metric(&LOOKUPS),
            lookup_errors: Counter::metric(&LOOKUP_ERRORS),
            lookup_timeouts: Counter::metric(&LOOKUP_TIMEOUTS),
            cache_errors: Counter::metric(&CACHE_ERRORS),
            cache_skipped: Counter::metric(&CACHE_SKIPPED),
            format_rejected: Counter::metric(&FORMAT_REJECTED),
            coalesced: Counter::metric(&COALESCED),
            stale_served: Counter::metric(&STALE_SERVED),
            refreshes: Counter::metric(&REFRESHES),
            rate_limit_admitted: Counter::metric(&RATE_LIMIT_ADMITTED),
            rate_limited: Counter::metric(&RATE_LIMIT_LIMITED),
            rate_limit_fallbacks: Counter::metric(&RATE_LIMIT_FALLBACK),
            rate_limit_store_errors: Counter::metric(&RATE_LIMIT_STORE_ERRORS),
            // Counted as metrics by their rejections' reason.
            forbidden_scope: Counter::default(),
            forbidden_address: Counter::default(),
        }
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.get(),
            negative_hits: self.negative_hits.get(),
            misses: self.misses.get(),
            lookups: self.lookups.get(),
            lookup_errors: self.lookup_errors.get(),
            lookup_timeouts: self.lookup_timeouts.get(),
            cache_errors: self.cache_errors.get(),
            cache_skipped: self.cache_skipped.get(),
            format_rejected: self.format_rejected.get(),
            coalesced: self.coalesced.get(),
            stale_served: self.stale_served.get(),
            refreshes: self.refreshes.get(),
            rate_limit_admitted: self.rate_limit_admitted.get(),
            rate_limited: self.rate_limited.get(),
            rate_limit_fallbacks: self.rate_limit_fallbacks.get(),
            rate_limit_store_errors: self.rate_limit_store_errors.get(),
            forbidden_scope: self.forbidden_scope.get(),
            forbidden_address: self.forbidden_address.get(),
        }
    }
}

/// Lets one warning through per interval and counts the ones it held back,
/// so an outage logs a line every few seconds, not one per request.
pub(crate) struct WarnLimiter {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl WarnLimiter {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed_since_last)` when this warning should be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_sums_what_every_thread_counted() {
        let counter = Counter::default();
        std::thread::scope(|s| {
            for _ in 0..(CELLS + 3) {
                s.spawn(|| (0..1_000).for_each(|_| counter.incr()));
            }
        });
        assert_eq!(counter.get(), 1_000 * (CELLS as u64 + 3));
    }

    #[test]
    fn limiter_lets_one_through_per_interval() {
        let l = WarnLimiter::new(Duration::from_millis(50));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.allow(), Some(2));
    }
}
