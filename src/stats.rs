//! [`Stats`]: what the layer has done, as cheap counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A snapshot of a layer's counters, from [`ApiKeyAuthLayer::stats`].
///
/// Every request that presents a key counts once in `hits`,
/// `negative_hits` or `misses`. A miss is answered by a lookup of its own
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
    /// Cache operations that failed and were degraded to the lookup.
    pub cache_errors: u64,
    /// Requests that waited on another request's lookup instead of making
    /// their own (single flight).
    pub coalesced: u64,
}

/// One counter on its own cache line, so that two cores bumping different
/// counters don't contend.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn incr(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) negative_hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) lookups: Counter,
    pub(crate) lookup_errors: Counter,
    pub(crate) cache_errors: Counter,
    pub(crate) coalesced: Counter,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.get(),
            negative_hits: self.negative_hits.get(),
            misses: self.misses.get(),
            lookups: self.lookups.get(),
            lookup_errors: self.lookup_errors.get(),
            cache_errors: self.cache_errors.get(),
            coalesced: self.coalesced.get(),
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
    fn limiter_lets_one_through_per_interval() {
        let l = WarnLimiter::new(Duration::from_millis(50));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.allow(), Some(2));
    }
}
