//! The arithmetic of windows: one source of truth for every counter store.
//! The in-process store keeps [`Counts`] in memory; Redis's script stores
//! and rolls the same three numbers, and what it returns is read here.

use super::policy::{Algorithm, RateLimit};
use super::store::Counted;

/// One policy's counts: the window they belong to (its index since the
/// epoch: `now_ms / window_ms`), its count, and the previous window's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) window: u64,
    pub(crate) current: u64,
    pub(crate) previous: u64,
}

/// What a policy says of one request, once counted (or refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Units left in the window after this request (0 exactly when a
    /// request of cost 1 would be refused now).
    pub remaining: u64,
    /// Seconds until the quota resets: to the end of the window, or, when
    /// nothing remains, until a request of cost 1 would be admitted.
    pub reset: u64,
    /// Seconds until this request would be admitted, when the policy
    /// refused it (`u64::MAX` if it never can be: it costs more than the
    /// quota).
    pub retry_after: Option<u64>,
}

impl Counts {
    /// The counts as of window `index`: a later window rolls them (the
    /// current becomes the previous; two windows on, both are empty); an
    /// earlier one (a clock that stepped back) leaves them as they are.
    pub(crate) fn rolled_to(self, index: u64) -> Self {
        if index <= self.window {
            self
        } else if index == self.window + 1 {
            Self {
                window: index,
                current: 0,
                previous: self.current,
            }
        } else {
            Self {
                window: index,
                current: 0,
                previous: 0,
            }
        }
    }

    /// The counts with `cost` more in the current window.
    pub(crate) fn plus(self, cost: u64) -> Self {
        Self {
            current: self.current.saturating_add(cost),
            ..self
        }
    }
}

/// The index of the window `now_ms` falls in.
pub(crate) fn window_of(policy: &RateLimit, now_ms: u64) -> u64 {
    now_ms / policy.window_ms()
}

/// How far into its window `now_ms` is, in milliseconds.
fn elapsed(policy: &RateLimit, now_ms: u64) -> u64 {
    now_ms % policy.window_ms()
}

/// The units counted against the policy now: the current window's, plus for
/// a sliding window the previous one's weighted by what is left of it.
pub(crate) fn used(counts: Counts, policy: &RateLimit, algorithm: Algorithm, now_ms: u64) -> f64 {
    let current = counts.current as f64;
    match algorithm {
        Algorithm::FixedWindow => current,
        Algorithm::SlidingWindow => {
            let w = policy.window_ms() as f64;
            let left = w - elapsed(policy, now_ms) as f64;
            current + counts.previous as f64 * left / w
        }
    }
}

/// Whether the policy admits `cost` more units at `now_ms`, given counts
/// already rolled to `now_ms`'s window.
pub(crate) fn admits(
    counts: Counts,
    policy: &RateLimit,
    algorithm: Algorithm,
    now_ms: u64,
    cost: u64,
) -> bool {
    used(counts, policy, algorithm, now_ms) + cost as f64 <= policy.quota() as f64
}

/// Milliseconds until a request of `cost` would be admitted (0: now), or
/// `None` if never (it costs more than the quota).
fn wait_ms(
    counts: Counts,
    policy: &RateLimit,
    algorithm: Algorithm,
    now_ms: u64,
    cost: u64,
) -> Option<u64> {
    let (q, w) = (policy.quota(), policy.window_ms());
    if cost > q {
        return None;
    }
    if admits(counts, policy, algorithm, now_ms, cost) {
        return Some(0);
    }
    let to_end = w - elapsed(policy, now_ms);
    let room = (q - cost) as f64;
    let (current, previous) = (counts.current as f64, counts.previous as f64);
    let w = w as f64;
    Some(match algorithm {
        Algorithm::FixedWindow => to_end,
        // Within this window, the previous one's weight falls until
        // `current + previous * (left - t) / w <= room`.
        Algorithm::SlidingWindow if current <= room && previous > 0.0 => {
            let t = to_end as f64 - (room - current) * w / previous;
            (t.ceil() as u64).clamp(1, to_end)
        }
        // Not before the window rolls; then this window's count is the
        // previous one's, fading until `current * (w - s) / w <= room`.
        Algorithm::SlidingWindow => {
            let s = if current > 0.0 {
                w - room * w / current
            } else {
                0.0
            };
            to_end + s.max(0.0).ceil() as u64
        }
    })
}

/// One request's decision, all or nothing: `cost` is added to every
/// policy's counts (each rolled to `now_ms`'s window) if every policy admits
/// it, and each policy says what it has left.
pub(crate) fn decide(
    counts: &mut [Counts],
    limits: &[RateLimit],
    algorithm: Algorithm,
    now_ms: u64,
    cost: u64,
) -> Counted {
    let admitted = limits
        .iter()
        .zip(counts.iter())
        .all(|(limit, c)| admits(*c, limit, algorithm, now_ms, cost));
    if admitted {
        for c in counts.iter_mut() {
            *c = c.plus(cost);
        }
    }
    let quotas = limits
        .iter()
        .zip(counts.iter())
        .map(|(limit, c)| {
            // Refused: the counts are as they were; say which refused.
            let refused = !admitted && !admits(*c, limit, algorithm, now_ms, cost);
            quota(*c, limit, algorithm, now_ms, cost, refused)
        })
        .collect();
    Counted { admitted, quotas }
}

fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// What the policy says, given counts rolled to `now_ms`'s window (and,
/// when the request was admitted, already including its `cost`); `refused`
/// when this policy is one that refused it.
pub(crate) fn quota(
    counts: Counts,
    policy: &RateLimit,
    algorithm: Algorithm,
    now_ms: u64,
    cost: u64,
    refused: bool,
) -> Quota {
    let used = used(counts, policy, algorithm, now_ms);
    let remaining = (policy.quota() as f64 - used).floor().max(0.0) as u64;
    let to_end = policy.window_ms() - elapsed(policy, now_ms);
    let reset = if remaining > 0 {
        seconds(to_end)
    } else {
        wait_ms(counts, policy, algorithm, now_ms, 1).map_or(u64::MAX, |ms| seconds(ms).max(1))
    };
    let retry_after = refused.then(|| {
        wait_ms(counts, policy, algorithm, now_ms, cost).map_or(u64::MAX, |ms| seconds(ms).max(1))
    });
    Quota {
        remaining,
        reset,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn per_10s(quota: u64) -> RateLimit {
        RateLimit::new("p", quota, Duration::from_secs(10)).unwrap()
    }

    /// Runs requests of cost 1 at the given instants through one policy, as a
    /// store does, and answers what each was told.
    fn run(policy: &RateLimit, algorithm: Algorithm, at_ms: &[u64]) -> Vec<(bool, Quota)> {
        let mut counts = Counts::default();
        at_ms
            .iter()
            .map(|&now| {
                counts = counts.rolled_to(window_of(policy, now));
                let ok = admits(counts, policy, algorithm, now, 1);
                if ok {
                    counts = counts.plus(1);
                }
                (ok, quota(counts, policy, algorithm, now, 1, !ok))
            })
            .collect()
    }

    #[test]
    fn a_fixed_window_admits_exactly_its_quota_and_remaining_reaches_zero_with_it() {
        let p = per_10s(3);
        let told = run(
            &p,
            Algorithm::FixedWindow,
            &[1_000, 2_000, 3_000, 4_000, 10_000],
        );
        let admitted: Vec<bool> = told.iter().map(|t| t.0).collect();
        assert_eq!(
            admitted,
            [true, true, true, false, true],
            "the next window starts afresh"
        );
        let remaining: Vec<u64> = told.iter().map(|t| t.1.remaining).collect();
        assert_eq!(remaining, [2, 1, 0, 0, 2]);
        // Refused at 4 s: the window ends at 10 s.
        assert_eq!(told[3].1.retry_after, Some(6));
        assert_eq!(
            told[2].1.reset, 7,
            "nothing left: reset is when one more fits"
        );
        assert_eq!(told[0].1.reset, 9);
    }

    #[test]
    fn a_sliding_window_weighs_the_previous_window_by_what_is_left_of_it() {
        let p = per_10s(10);
        // Ten at the very end of one window.
        let mut at: Vec<u64> = (0..10).map(|i| 9_900 + i).collect();
        // Then at 12 s (80 % of the previous window still weighs: 8 units),
        // two more fit, the third doesn't.
        at.extend([12_000, 12_001, 12_002]);
        let told = run(&p, Algorithm::SlidingWindow, &at);
        assert!(told[..10].iter().all(|t| t.0));
        assert_eq!(told[9].1.remaining, 0);
        assert!(told[10].0 && told[11].0 && !told[12].0);
        assert_eq!(told[11].1.remaining, 0, "8 + 2 = 10: nothing left");
        // The refused one fits once the weight falls by one unit: 1 s later.
        assert_eq!(told[12].1.retry_after, Some(1));
        // A fixed window would have admitted ten again at 12 s.
        let fixed = run(&per_10s(10), Algorithm::FixedWindow, &at);
        assert!(fixed.iter().all(|t| t.0));
    }

    #[test]
    fn remaining_is_zero_exactly_when_the_next_request_is_refused() {
        for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
            let p = per_10s(7);
            let at: Vec<u64> = (0..400).map(|i| 5_000 + i * 97).collect();
            let told = run(&p, algorithm, &at);
            for pair in told.windows(2) {
                // Requests 97 ms apart: close enough that the next one sees
                // (almost) the state the previous answer described, except
                // across a window's end or the weight's fall.
                if pair[0].1.remaining == 0 && pair[0].1.reset > 1 {
                    assert!(!pair[1].0, "{algorithm:?}: remaining 0, then admitted");
                }
                if pair[0].1.remaining >= 1 {
                    assert!(
                        pair[1].0,
                        "{algorithm:?}: remaining {}, then refused",
                        pair[0].1.remaining
                    );
                }
            }
        }
    }

    #[test]
    fn retry_after_is_never_early() {
        // Whatever the instant, a request retried after the advertised
        // Retry-After is admitted, and one a second earlier is not.
        for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
            let p = per_10s(5);
            let mut counts = Counts::default();
            for now in (0..200_000).step_by(333) {
                counts = counts.rolled_to(window_of(&p, now));
                if admits(counts, &p, algorithm, now, 1) {
                    counts = counts.plus(1);
                    continue;
                }
                let wait = quota(counts, &p, algorithm, now, 1, true)
                    .retry_after
                    .unwrap();
                let later = now + wait * 1000;
                let then = counts.rolled_to(window_of(&p, later));
                assert!(
                    admits(then, &p, algorithm, later, 1),
                    "{algorithm:?} at {now}: {wait}s too early"
                );
            }
        }
    }

    #[test]
    fn a_request_costing_more_than_the_quota_never_fits() {
        let p = per_10s(3);
        let q = quota(Counts::default(), &p, Algorithm::SlidingWindow, 0, 4, true);
        assert_eq!(q.retry_after, Some(u64::MAX));
        assert!(!admits(Counts::default(), &p, Algorithm::FixedWindow, 0, 4));
    }

    #[test]
    fn counts_roll_forward_only() {
        let c = Counts {
            window: 5,
            current: 3,
            previous: 1,
        };
        assert_eq!(c.rolled_to(5), c);
        assert_eq!(c.rolled_to(4), c, "a clock stepping back changes nothing");
        assert_eq!(
            c.rolled_to(6),
            Counts {
                window: 6,
                current: 0,
                previous: 3
            }
        );
        assert_eq!(
            c.rolled_to(9),
            Counts {
                window: 9,
                current: 0,
                previous: 0
            }
        );
    }
}
