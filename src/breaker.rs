//! [`Breaker`]: stop asking a backend that keeps failing, and ask again
//! once in a while.
//!
//! Closed, every call goes through. After `threshold` failures in a row it
//! opens: calls skip the backend (the caller falls back at once) for
//! `cooldown`. Then it half-opens: the next call goes through as a probe,
//! and its success closes the breaker, its failure opens it again. An
//! outage then costs the first few requests a timeout, not every request.
//! Where the backend can be probed apart from any request (Redis: a `PING`
//! of the pool's own, `redis_pool.rs`), the prober marks itself
//! ([`probing`](Breaker::probing)) and no request is a probe.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The failure of a call the breaker kept from the backend.
#[derive(Debug)]
pub(crate) struct Skipped;

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("skipped: the circuit breaker is open after repeated failures")
    }
}

impl std::error::Error for Skipped {}

/// Default failures in a row before the breaker opens.
pub(crate) const DEFAULT_THRESHOLD: u32 = 3;
/// Default time an open breaker waits before it lets a probe through.
pub(crate) const DEFAULT_COOLDOWN: Duration = Duration::from_secs(1);

pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    origin: Instant,
    failures: AtomicU32,
    /// While open: when (in ms since `origin`, plus one; 0 is closed) the
    /// next probe may go.
    open_until: AtomicU64,
    /// A prober of its own runs: no call goes through while open.
    probing: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            origin: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Claims the probing (`true`) or gives it up (`false`); claiming
    /// answers whether this caller got it.
    #[cfg(feature = "redis")]
    pub(crate) fn probing(&self, on: bool) -> bool {
        if on {
            !self.probing.swap(true, Ordering::AcqRel)
        } else {
            self.probing.store(false, Ordering::Release);
            false
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go to the backend now: closed, or open and due for
    /// a probe (the first caller to find it due takes the probe; the others
    /// keep skipping until it answers).
    pub(crate) fn allows(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms() + 1;
        if now < until || self.probing.load(Ordering::Acquire) {
            return false;
        }
        // Due: move the deadline on, so that only this caller probes.
        let next = now + u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX);
        self.open_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The backend answered: the breaker closes. Returns whether this
    /// closed it.
    pub(crate) fn succeeded(&self) -> bool {
        // Read first: on the common path (closed, no failures) nothing is
        // written, so threads don't bounce the line between their cores.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Release);
        }
        self.open_until.load(Ordering::Relaxed) != 0
            && self.open_until.swap(0, Ordering::AcqRel) != 0
    }

    /// Whether the breaker is open (calls skip the backend, but for a
    /// probe now and then).
    #[cfg(feature = "redis")]
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) != 0
    }

    /// How long an open breaker waits before a probe.
    #[cfg(feature = "redis")]
    pub(crate) fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// The backend failed; returns whether this opened the breaker.
    /// A threshold of 0 is a breaker that never opens.
    pub(crate) fn failed(&self) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let failures = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                Some(f.saturating_add(1))
            })
            .map_or(u32::MAX, |f| f.saturating_add(1));
        if failures < self.threshold {
            return false;
        }
        let until =
            self.now_ms() + 1 + u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX);
        self.open_until.swap(until, Ordering::AcqRel) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_after_the_cooldown_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(50));
        assert!(b.allows());
        assert!(!b.failed() && !b.failed());
        assert!(b.allows(), "two failures: still closed");
        assert!(b.failed(), "the third opens it");
        assert!(!b.allows());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allows(), "due for a probe");
        assert!(!b.allows(), "one probe at a time");
        b.succeeded();
        assert!(b.allows());
    }

    #[cfg(feature = "redis")]
    #[test]
    fn while_a_prober_of_its_own_runs_no_call_is_a_probe() {
        let b = Breaker::new(1, Duration::from_millis(20));
        assert!(b.failed());
        assert!(b.probing(true));
        assert!(!b.probing(true), "one prober");
        std::thread::sleep(Duration::from_millis(30));
        assert!(!b.allows(), "due, but the prober probes");
        b.succeeded();
        b.probing(false);
        assert!(b.allows());
    }

    #[test]
    fn a_threshold_of_zero_never_opens() {
        let b = Breaker::new(0, Duration::from_millis(30));
        for _ in 0..100 {
            assert!(!b.failed());
            assert!(b.allows());
        }
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let b = Breaker::new(1, Duration::from_millis(30));
        assert!(b.failed());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allows());
        b.failed();
        assert!(!b.allows(), "open again for another cooldown");
    }
}
