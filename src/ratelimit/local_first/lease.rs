//! What one instance knows and holds of one counter key: Redis's counts as
//! of its last answer, the units leased to this instance and not yet spent
//! (reserved in Redis: no other instance can admit them), and what it owes
//! back. Decisions here take no round trip.

use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::super::memory::{now_ms, Clock};
use super::super::policy::{Algorithm, RateLimit};
use super::super::store::Counted;
use super::super::window::{self, Counts};
use super::script::{Leased, Step};

/// Units an instance holds, leased in these windows (one per policy).
#[derive(Clone, Debug, Default)]
pub(super) struct Lease {
    pub(super) units: u64,
    pub(super) windows: SmallVec<[u64; 2]>,
}

/// One counter key, as this instance knows it.
pub(super) struct Local {
    pub(super) limits: Vec<RateLimit>,
    pub(super) algorithm: Algorithm,
    /// Redis's counts at its last answer (they count the whole lease).
    view: SmallVec<[Counts; 2]>,
    pub(super) lease: Lease,
    /// A give-back sent and not yet acknowledged: sent again with the same
    /// id until it is (applied once whatever happens to the answers).
    pub(super) owed: Option<Step>,
    /// Redis's clock minus this one's, in ms, at its last answer.
    offset_ms: i64,
    /// Refused by Redis: refused here until then (Redis's time, ms), with
    /// what Redis said then.
    refused_until_ms: u64,
    refusal: Option<Counted>,
    /// When a lease was last granted, and the units spent here since: this
    /// instance's pace, which the next lease is sized to.
    granted_at: Option<Instant>,
    spent: u64,
    /// The step asking for a lease, while in flight: one at a time, so
    /// requests on the key at once don't each lease (they count their cost
    /// alone). Cleared by its answer, or by `LeaseInFlight` when it fails or
    /// its request is dropped.
    pub(super) asking: Option<u64>,
    /// When a unit of the lease was last spent (a lease idle for an
    /// interval goes back).
    pub(super) last_spent: Option<Instant>,
    /// In the list of keys holding a lease or owing a give-back.
    pub(super) listed: bool,
    /// Reset: nothing of it is sent any more.
    pub(super) gone: bool,
}

/// What this instance decides of a request with no round trip, if it can.
pub(super) enum Here {
    /// Admitted from the lease, or refused while Redis's refusal holds.
    Decided(Counted),
    /// Ask Redis with this step.
    Ask(Step),
}

impl Local {
    pub(super) fn new(limits: &[RateLimit], algorithm: Algorithm) -> Self {
        Self {
            limits: limits.to_vec(),
            algorithm,
            view: SmallVec::new(),
            lease: Lease::default(),
            owed: None,
            offset_ms: 0,
            refused_until_ms: 0,
            refusal: None,
            granted_at: None,
            spent: 0,
            asking: None,
            last_spent: None,
            listed: false,
            gone: false,
        }
    }

    /// Redis's time now, as this instance reckons it.
    fn now_ms(&self, clock: &Clock) -> u64 {
        now_ms(clock).saturating_add_signed(self.offset_ms)
    }

    /// Whether `windows` are still each policy's window at `now`.
    fn same_windows(&self, windows: &[u64], now: u64) -> bool {
        windows.len() == self.limits.len()
            && self
                .limits
                .iter()
                .zip(windows)
                .all(|(limit, &w)| window::window_of(limit, now) == w)
    }

    /// The counts as Redis has them less what this instance holds unspent:
    /// what was admitted, seen from here.
    fn admitted_view(&self, now: u64) -> SmallVec<[Counts; 2]> {
        let held = if self.same_windows(&self.lease.windows, now) {
            self.lease.units
        } else {
            0
        };
        self.limits
            .iter()
            .zip(&self.view)
            .map(|(limit, c)| {
                let c = c.rolled_to(window::window_of(limit, now));
                Counts {
                    current: c.current.saturating_sub(held),
                    ..c
                }
            })
            .collect()
    }

    /// The quotas a request sees, from `view` (admitted counts).
    fn counted(&self, view: &[Counts], now: u64, cost: u64, admitted: bool) -> Counted {
        let quotas = self
            .limits
            .iter()
            .zip(view)
            .map(|(limit, &counts)| {
                let refused =
                    !admitted && !window::admits(counts, limit, self.algorithm, now, cost);
                window::quota(counts, limit, self.algorithm, now, cost, refused)
            })
            .collect();
        Counted { admitted, quotas }
    }

    /// Admits from the lease, refuses while Redis's refusal holds, or says
    /// what to ask Redis: the cost, a lease sized to this instance's pace
    /// (at most `max_lease`), and what is held unspent given back with it.
    pub(super) fn decide(
        &mut self,
        clock: &Clock,
        cost: u64,
        max_lease: u64,
        interval: Duration,
    ) -> Here {
        let now = self.now_ms(clock);
        let windows_hold = self.same_windows(&self.lease.windows, now);
        // Units held are this instance's to spend, a refusal or not.
        if let Some(counted) = self.spend(now, cost, windows_hold) {
            return Here::Decided(counted);
        }
        if now < self.refused_until_ms {
            if let Some(refusal) = &self.refusal {
                return Here::Decided(refusal.clone());
            }
        }
        if self.asking.is_some() {
            // A lease is on its way: this request counts its cost alone.
            let step = Step {
                id: random_id(),
                cost,
                ask: 0,
                give: 0,
                leased_in: SmallVec::new(),
            };
            return Here::Ask(step);
        }
        let ask = self
            .paced(interval)
            .unwrap_or(cost)
            .clamp(cost.min(max_lease), max_lease.max(1));
        let give = if windows_hold { self.lease.units } else { 0 };
        let step = Step {
            id: random_id(),
            cost,
            ask,
            give,
            leased_in: self.lease.windows.clone(),
        };
        self.lease.units = 0;
        self.asking = Some(step.id);
        Here::Ask(step)
    }

    /// Two intervals of this instance's pace since the last grant: what a
    /// lease is sized to (`None` before the first).
    fn paced(&self, interval: Duration) -> Option<u64> {
        let elapsed = self.granted_at?.elapsed().as_secs_f64().max(1e-6);
        let units = self.spent as f64 * 2.0 * interval.as_secs_f64() / elapsed;
        Some(units.ceil() as u64)
    }

    /// Admits a request of `cost` from the units held, if they cover it.
    fn spend(&mut self, now: u64, cost: u64, windows_hold: bool) -> Option<Counted> {
        if !windows_hold || self.lease.units < cost || self.view.len() != self.limits.len() {
            return None;
        }
        self.lease.units -= cost;
        self.spent = self.spent.saturating_add(cost);
        self.last_spent = Some(Instant::now());
        let view = self.admitted_view(now);
        // The admitted view counts this request already.
        Some(self.counted(&view, now, 0, true))
    }

    /// Takes in Redis's answer to `step`: its counts, the lease granted,
    /// Redis's clock; a refusal holds here for an interval (or to the end
    /// of the refusing window, if sooner). Answers what the request sees.
    pub(super) fn merge(
        &mut self,
        leased: &Leased,
        step: &Step,
        clock: &Clock,
        interval: Duration,
    ) -> Counted {
        let answer = &leased.answer;
        if self.asking == Some(step.id) {
            self.asking = None;
        }
        self.offset_ms = i64::try_from(answer.now_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(now_ms(clock)).unwrap_or(i64::MAX));
        self.view = answer.counts.clone();
        // Never more than asked: a forged answer can't widen a lease. Added
        // to what is held in the same windows: steps in flight together
        // (requests on one key at once) each bring their own grant.
        let granted = leased.granted.min(step.ask);
        let windows: SmallVec<[u64; 2]> = answer.counts.iter().map(|c| c.window).collect();
        let held = if windows == self.lease.windows {
            self.lease.units
        } else {
            0
        };
        self.lease = Lease {
            units: held.saturating_add(granted),
            windows,
        };
        if step.ask > 0 {
            self.granted_at = Some(Instant::now());
            self.spent = 0;
        }
        let now = answer.now_ms;
        let counted = answer.counted(&self.limits, self.algorithm, step.cost);
        if !counted.admitted {
            // Refused for units this instance holds (another step's lease,
            // landed while this one was asked): spent here instead.
            if let Some(counted) = self.spend(now, step.cost, true) {
                return counted;
            }
            let end = self
                .limits
                .iter()
                .zip(&counted.quotas)
                .filter(|(_, q)| q.retry_after.is_some())
                .map(|(l, _)| (window::window_of(l, now) + 1) * l.window_ms())
                .max()
                .unwrap_or(now);
            let hold = now.saturating_add(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX));
            self.refused_until_ms = end.min(hold);
            self.refusal = Some(counted.clone());
            return counted;
        }
        // What the request sees counts the lease it holds as not admitted.
        let view = self.admitted_view(now);
        self.counted(&view, now, 0, true)
    }

    /// This key's step in a round, if it needs one: what it still owes
    /// from a give-back that failed first; a give-back of what it holds if
    /// its lease has been idle for an interval (or `all`, on a flush); a
    /// top-up if it is in use and holds less than an interval of its pace,
    /// so that no request of it waits for the next lease.
    pub(super) fn round(
        &mut self,
        clock: &Clock,
        interval: Duration,
        max_lease: u64,
        all: bool,
    ) -> Option<Step> {
        if let Some(owed) = &self.owed {
            return Some(owed.clone());
        }
        let idle = self.last_spent.is_none_or(|at| at.elapsed() >= interval);
        if !(idle || all) {
            return self.top_up(clock, interval, max_lease);
        }
        if self.lease.units == 0 {
            return None;
        }
        let now = self.now_ms(clock);
        let windows = std::mem::take(&mut self.lease.windows);
        let units = std::mem::take(&mut self.lease.units);
        // Units of a window two or more behind are counted nowhere now.
        let live = self
            .limits
            .iter()
            .zip(&windows)
            .all(|(limit, &w)| window::window_of(limit, now) <= w + 1);
        if !live {
            return None;
        }
        let step = Step {
            id: random_id(),
            cost: 0,
            ask: 0,
            give: units,
            leased_in: windows,
        };
        self.owed = Some(step.clone());
        Some(step)
    }

    /// A lease asked ahead of need: two intervals of this instance's pace,
    /// less what it holds, when it holds less than one.
    fn top_up(&mut self, clock: &Clock, interval: Duration, max_lease: u64) -> Option<Step> {
        if self.asking.is_some() || self.gone {
            return None;
        }
        let held = if self.same_windows(&self.lease.windows, self.now_ms(clock)) {
            self.lease.units
        } else {
            0
        };
        let want = self.paced(interval)?.min(max_lease);
        if held.saturating_mul(2) >= want {
            return None;
        }
        let step = Step {
            id: random_id(),
            cost: 0,
            ask: want - held,
            give: 0,
            leased_in: SmallVec::new(),
        };
        self.asking = Some(step.id);
        Some(step)
    }

    /// Whether anything of this key is left to send: a lease held, or a
    /// give-back owed.
    pub(super) fn holds(&self) -> bool {
        !self.gone && (self.lease.units > 0 || self.owed.is_some())
    }
}

/// A step's id: random, so instances never collide.
fn random_id() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Without randomness, a clock-derived id is still unlikely to
        // collide within the 16 steps a key remembers.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return nanos as u64 ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(bytes)
}
