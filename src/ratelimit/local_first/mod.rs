//! [`LocalFirst`]: Redis counters for hot keys, decided in this process
//! from units leased out of Redis.

mod lease;
mod script;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use quick_cache::sync::Cache;
use quick_cache::UnitWeighter;

use self::lease::{Here, Local};
use super::memory::{table, Clock};
use super::policy::{Algorithm, RateLimit};
use super::redis::RedisCounters;
use super::store::{Counted, CounterError, CounterKey, CounterStore};
use crate::hash::DigestHasher;
use crate::stats::{Counter, WarnLimiter};

/// Default time between two rounds of give-backs and top-ups (a lease is
/// sized to two of it at the key's pace).
const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
/// Default largest share of a quota one lease may hold.
const DEFAULT_LEASE_SHARE: f64 = 0.1;
/// Default most counter keys followed.
const DEFAULT_KEYS: u64 = 100_000;
/// Give-backs sent in one round of a batch: what a batch holds at once is
/// bounded by this, not by the keys in use.
const BATCH_KEYS: usize = 512;

/// Rate-limit counters in Redis for hot keys: most requests decided in this
/// process with no round trip, from units each instance leases out of
/// Redis (feature `redis`).
///
/// A request this instance can't decide from what it holds goes to Redis
/// (one round trip, one script): the script gives back what the instance
/// still held, counts the request as [`RedisCounters`] would (all or
/// nothing across the key's policies), and **leases** the instance units
/// that every policy has room for, counted in Redis at once. The instance
/// then admits that many requests with no round trip. A lease is sized to
/// the instance's pace (two intervals of what it spent since its last
/// lease) and never more than a share of the quota (10 % by default,
/// [`lease_share`](LocalFirstBuilder::lease_share)). Every interval a
/// round goes over the keys: a lease idle for an interval goes back to
/// Redis, and a key in use that holds less than one interval of its pace
/// is topped up (a step that counts nothing and asks for the rest), so a
/// busy key's requests rarely wait for Redis. One step per key asks for a
/// lease at a time: requests on the key meanwhile send their own cost
/// alone, and every grant adds to what the key holds (none is lost
/// between answers).
///
/// # The bound on over-admission
///
/// **None.** A unit is admitted here only if Redis leased it first, and
/// Redis leases only what the quota has room for: across any number of
/// instances, at any traffic shape, a key is admitted at most its quota
/// per window. What a lease costs is the other way: units leased to an
/// instance and not spent can't be admitted elsewhere until they come back
/// (within an interval of going idle) or their window ends, so a key may
/// be refused a little early: at most a lease (the share) per instance
/// holding one. Near the limit leases shrink to what is left, and every
/// request asks Redis.
///
/// After a refusal an instance refuses that key here for an interval (or
/// until the refusing window ends, if sooner), then asks again: a flood of
/// refused requests costs a round trip per interval, not per request.
///
/// # Failures, and sending once
///
/// A round trip that fails falls back as the
/// [`RateLimiter`](super::RateLimiter) says; what it would have leased is
/// lost to this window (an early refusal, never an extra admission). Each
/// step to Redis carries an id that the key remembers (its last 16): a
/// give-back whose answer was lost is sent again with the same id, and a
/// step the client replays on reconnect is applied once. Units held when
/// the process ends are lost to their window: call [`flush`](Self::flush)
/// on shutdown to give them back.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), tower_api_key::ratelimit::CounterError> {
/// use std::time::Duration;
/// use tower_api_key::ratelimit::{LocalFirst, RateLimiter, RedisCounters};
///
/// let counters = RedisCounters::builder("redis://127.0.0.1:6379").build().await?;
/// let limiter = RateLimiter::new(
///     LocalFirst::builder(counters).interval(Duration::from_millis(50)).build(),
/// );
/// # let _ = limiter; Ok(()) }
/// ```
#[derive(Clone)]
pub struct LocalFirst {
    shared: Arc<Shared>,
}

struct Shared {
    counters: RedisCounters,
    keys: Cache<CounterKey, Arc<Mutex<Local>>, UnitWeighter, DigestHasher>,
    /// The keys holding a lease or owing a give-back (held here even when
    /// `keys` evicts them, so nothing is stranded).
    leased: Mutex<Vec<(CounterKey, Arc<Mutex<Local>>)>>,
    interval: Duration,
    lease_share: f64,
    started: AtomicBool,
    clock: Clock,
    counts: LocalFirstCounters,
    warnings: WarnLimiter,
}

#[derive(Default)]
struct LocalFirstCounters {
    local: Counter,
    remote: Counter,
    batches: Counter,
    batch_failures: Counter,
}

/// What a [`LocalFirst`] store did, since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalFirstStats {
    /// Requests decided in this process, with no round trip.
    pub decided_locally: u64,
    /// Requests that asked Redis.
    pub asked_redis: u64,
    /// Rounds of give-backs sent.
    pub batches: u64,
    /// Give-backs that failed (sent again, with the same id, next round).
    pub batch_failures: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builder for [`LocalFirst`], from [`LocalFirst::builder`].
pub struct LocalFirstBuilder {
    counters: RedisCounters,
    clock: Clock,
    interval: Duration,
    lease_share: f64,
    max_keys: u64,
}

impl fmt::Debug for LocalFirstBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFirstBuilder")
            .field("interval", &self.interval)
            .field("lease_share", &self.lease_share)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl LocalFirstBuilder {
    /// Time between two rounds (default 100 ms): a lease idle this long
    /// goes back, a busy key holding less than this long of its pace is
    /// topped up, and a lease is sized to two of it at the key's pace.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The largest share of a key's smallest quota one lease may hold (0 to
    /// 1, default 0.1): what an instance can hold unspent, and so how early
    /// a key may be refused while others hold leases. A larger share means
    /// fewer round trips for a hot key.
    #[must_use]
    pub fn lease_share(mut self, share: f64) -> Self {
        self.lease_share = share.clamp(0.0, 1.0);
        self
    }

    /// The most counter keys followed (default 100,000; beyond that the
    /// least used are forgotten, and asked about again).
    #[must_use]
    pub fn max_keys(mut self, keys: u64) -> Self {
        self.max_keys = keys.max(1);
        self
    }

    /// Reads this instance's time from `clock` instead of the system clock
    /// (for tests and simulations: whatever it says, decisions follow
    /// Redis's clock, learnt from each answer).
    #[must_use]
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the store. Its give-backs start with its first request (on
    /// the Tokio runtime that request runs on).
    pub fn build(self) -> LocalFirst {
        LocalFirst {
            shared: Arc::new(Shared {
                counters: self.counters,
                keys: table(self.max_keys),
                leased: Mutex::new(Vec::new()),
                interval: self.interval,
                lease_share: self.lease_share,
                started: AtomicBool::new(false),
                clock: self.clock,
                counts: LocalFirstCounters::default(),
                warnings: WarnLimiter::new(Duration::from_secs(5)),
            }),
        }
    }
}

impl LocalFirst {
    /// A builder around `counters`, with the defaults.
    pub fn builder(counters: RedisCounters) -> LocalFirstBuilder {
        LocalFirstBuilder {
            counters,
            clock: Arc::new(SystemTime::now),
            interval: DEFAULT_INTERVAL,
            lease_share: DEFAULT_LEASE_SHARE,
            max_keys: DEFAULT_KEYS,
        }
    }

    /// Local-first counting on `counters`, with the defaults.
    pub fn new(counters: RedisCounters) -> Self {
        Self::builder(counters).build()
    }

    /// What the store did so far.
    pub fn stats(&self) -> LocalFirstStats {
        let c = &self.shared.counts;
        LocalFirstStats {
            decided_locally: c.local.get(),
            asked_redis: c.remote.get(),
            batches: c.batches.get(),
            batch_failures: c.batch_failures.get(),
        }
    }

    /// Gives back now every unit this instance holds, and what it owes
    /// from a give-back that failed (the interval does so for idle leases;
    /// call this on shutdown, or in a test).
    pub async fn flush(&self) -> Result<(), CounterError> {
        send_rounds(&self.shared, true).await
    }

    /// Starts the give-backs, once, on the current Tokio runtime.
    fn start(&self) {
        let shared = &self.shared;
        crate::background::spawn_once(&shared.started, || {
            rounds(Arc::downgrade(shared), shared.interval)
        });
    }

    fn entry(
        &self,
        key: &CounterKey,
        limits: &[RateLimit],
        algorithm: Algorithm,
    ) -> Arc<Mutex<Local>> {
        let made = self.shared.keys.get_or_insert_with(key, || {
            Ok::<_, Infallible>(Arc::new(Mutex::new(Local::new(limits, algorithm))))
        });
        match made {
            Ok(entry) => entry,
            Err(never) => match never {},
        }
    }
}

impl Shared {
    /// The most one lease may hold for these policies.
    fn max_lease(&self, limits: &[RateLimit]) -> u64 {
        let smallest = limits.iter().map(RateLimit::quota).min().unwrap_or(0);
        (smallest as f64 * self.lease_share) as u64
    }

    /// Puts a key in the list of keys holding something, once.
    fn list(&self, key: CounterKey, entry: &Arc<Mutex<Local>>, local: &mut Local) {
        if !local.listed && local.holds() {
            local.listed = true;
            lock(&self.leased).push((key, Arc::clone(entry)));
        }
    }
}

impl fmt::Debug for LocalFirst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFirst")
            .field("interval", &self.shared.interval)
            .field("lease_share", &self.shared.lease_share)
            .field("keys", &self.shared.keys.len())
            .finish_non_exhaustive()
    }
}

/// Gives back idle leases and tops up busy ones every `interval`, while
/// the store lives.
async fn rounds(shared: Weak<Shared>, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(error) = send_rounds(&shared, false).await {
            if let Some(suppressed) = shared.warnings.allow() {
                tracing::warn!(%error, suppressed, "local-first rate limits: a give-back failed; sent again next round");
            }
        }
    }
}

/// Sends the listed keys' steps ([`Local::round`]: give-backs of idle
/// leases, or of all with `all`; top-ups of busy ones), [`BATCH_KEYS`] keys
/// at a time; keys still holding something stay listed.
async fn send_rounds(shared: &Shared, all: bool) -> Result<(), CounterError> {
    let mut listed = mem::take(&mut *lock(&shared.leased));
    let mut result = Ok(());
    while !listed.is_empty() {
        let round = listed.split_off(listed.len().saturating_sub(BATCH_KEYS));
        if let Err(error) = send_round(shared, round, all).await {
            result = Err(error);
        }
    }
    result
}

async fn send_round(
    shared: &Shared,
    listed: Vec<(CounterKey, Arc<Mutex<Local>>)>,
    all: bool,
) -> Result<(), CounterError> {
    let mut steps = Vec::with_capacity(listed.len());
    let mut entries = Vec::with_capacity(listed.len());
    for (key, entry) in listed {
        let mut local = lock(&entry);
        local.listed = false;
        if local.gone {
            continue;
        }
        let max_lease = shared.max_lease(&local.limits);
        match local.round(&shared.clock, shared.interval, max_lease, all) {
            Some(step) => {
                steps.push((key, local.limits.clone(), local.algorithm, step));
                drop(local);
                entries.push(entry);
            }
            None => {
                // A lease still in use stays listed.
                shared.list(key, &entry, &mut local);
            }
        }
    }
    if steps.is_empty() {
        return Ok(());
    }
    shared.counts.batches.incr();
    let sent: Vec<_> = steps
        .iter()
        .map(|(key, limits, _, step)| (*key, limits.clone(), step.clone()))
        .collect();
    let answers = shared
        .counters
        .steps(steps, shared.counters.pool().timeout())
        .await;
    let mut failed = None;
    for (((key, limits, step), entry), answer) in sent.into_iter().zip(&entries).zip(answers) {
        let mut local = lock(entry);
        match answer {
            // A top-up: its lease is held here.
            Ok(leased) if step.ask > 0 && !local.gone && local.limits == limits => {
                local.merge(&leased, &step, &shared.clock, shared.interval);
            }
            // Applied (once, whatever else happened to it): nothing owed.
            Ok(_) if local.owed.as_ref().is_some_and(|o| o.id == step.id) => local.owed = None,
            Ok(_) => {}
            Err(error) => {
                shared.counts.batch_failures.incr();
                failed = Some(error);
            }
        }
        if local.asking == Some(step.id) {
            local.asking = None;
        }
        shared.list(key, entry, &mut local);
    }
    failed.map_or(Ok(()), Err)
}

/// A key's lease request in flight: when it ends with no answer taken in
/// (failed, or its request dropped), the key may ask again.
struct LeaseInFlight {
    entry: Arc<Mutex<Local>>,
    id: u64,
}

impl Drop for LeaseInFlight {
    fn drop(&mut self) {
        let mut local = lock(&self.entry);
        if local.asking == Some(self.id) {
            local.asking = None;
        }
    }
}

/// A local-first hit: decided here, or a round trip to Redis.
pub struct LocalFirstHit {
    state: HitState,
}

type Asking = Pin<Box<dyn Future<Output = Result<Counted, CounterError>> + Send>>;

enum HitState {
    Decided(Option<Counted>),
    Asking(Asking),
}

impl fmt::Debug for LocalFirstHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFirstHit").finish_non_exhaustive()
    }
}

impl Future for LocalFirstHit {
    type Output = Result<Counted, CounterError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            HitState::Decided(counted) => match counted.take() {
                Some(counted) => Poll::Ready(Ok(counted)),
                None => Poll::Pending,
            },
            HitState::Asking(asking) => asking.as_mut().poll(cx),
        }
    }
}

impl CounterStore for LocalFirst {
    type Hit = LocalFirstHit;

    fn hit(
        &self,
        key: &CounterKey,
        limits: &[RateLimit],
        algorithm: Algorithm,
        cost: u64,
    ) -> LocalFirstHit {
        self.start();
        let shared = &self.shared;
        let entry = self.entry(key, limits, algorithm);
        let mut local = lock(&entry);
        if local.limits != limits || local.algorithm != algorithm {
            // The key's policies changed: what was known and held no longer
            // applies (a give-back owed is still sent).
            let owed = local.owed.take();
            let listed = local.listed;
            *local = Local::new(limits, algorithm);
            local.owed = owed;
            local.listed = listed;
        }
        let max_lease = shared.max_lease(limits);
        let step = match local.decide(&shared.clock, cost, max_lease, shared.interval) {
            Here::Decided(counted) => {
                shared.counts.local.incr();
                return LocalFirstHit {
                    state: HitState::Decided(Some(counted)),
                };
            }
            Here::Ask(step) => step,
        };
        drop(local);
        shared.counts.remote.incr();
        let (shared, key, limits) = (Arc::clone(shared), *key, limits.to_vec());
        let asking = async move {
            let _in_flight = (step.ask > 0).then(|| LeaseInFlight {
                entry: Arc::clone(&entry),
                id: step.id,
            });
            let timeout = shared.counters.pool().timeout();
            let leased = shared
                .counters
                .step(&key, &limits, algorithm, &step, timeout)
                .await?;
            let mut local = lock(&entry);
            if local.gone || local.limits != limits {
                // Reset, or its policies changed, while this was asked.
                return Ok(leased.answer.counted(&limits, algorithm, step.cost));
            }
            let counted = local.merge(&leased, &step, &shared.clock, shared.interval);
            shared.list(key, &entry, &mut local);
            Ok(counted)
        };
        LocalFirstHit {
            state: HitState::Asking(Box::pin(asking)),
        }
    }

    fn reset(&self, key: &CounterKey) -> impl Future<Output = Result<(), CounterError>> + Send {
        if let Some((_, entry)) = self.shared.keys.remove(key) {
            let mut local = lock(&entry);
            local.gone = true;
            local.lease = lease::Lease::default();
            local.owed = None;
        }
        let counters = self.shared.counters.clone();
        let key = *key;
        async move { counters.reset(&key).await }
    }
}
