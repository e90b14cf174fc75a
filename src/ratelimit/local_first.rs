//! [`LocalFirst`]: Redis counters for hot keys, decided in this process
//! and sent to Redis in batches.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use quick_cache::sync::Cache;
use quick_cache::UnitWeighter;
use smallvec::SmallVec;

use super::memory::{now_ms, table, Clock};
use super::policy::{Algorithm, RateLimit};
use super::redis::{Answer, Carried, Carry, RedisCounters, RedisHit};
use super::store::{Counted, CounterError, CounterKey, CounterStore};
use super::window::{self, Counts};
use crate::hash::DigestHasher;
use crate::stats::{Counter, WarnLimiter};

/// Default time between two batches.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
/// Default share of a quota past which every request asks Redis.
const DEFAULT_NEAR: f64 = 0.9;
/// Default most counter keys followed.
const DEFAULT_KEYS: u64 = 100_000;

/// Rate-limit counters in Redis for hot keys: most requests decided in this
/// process with no round trip, the counts sent to Redis in one pipeline per
/// interval (feature `redis`).
///
/// Each instance decides on Redis's counts as of its last answer plus what it
/// admitted since, and asks Redis (one round trip, as [`RedisCounters`]
/// does, carrying what it admitted locally) when:
///
/// - it knows nothing recent of the key (first request, or nothing heard
///   from Redis for an interval);
/// - the key is near its limit (≥ 90 % of a quota, by default): from then on
///   every request asks, so the last units are counted exactly;
/// - a request was refused: until the refusing window ends;
/// - a window ended since the units it holds were admitted (they are sent
///   to count in their own window);
/// - its own estimate would refuse.
///
/// Every interval (default 100 ms) the units admitted locally go to Redis
/// together on one connection, a script call per key that adds them to the
/// window they were admitted in (admitted is admitted) and answers the key's
/// counts from every instance.
///
/// # The bound on over-admission
///
/// An instance doesn't see what the others admitted and haven't sent yet
/// (at most an interval's worth each), nor what they sent since its own
/// last answer (at most another interval). So across all instances a key
/// may be admitted beyond its quota **at most the traffic the instances
/// decide locally in two intervals plus one round trip**; as they go strict
/// at 90 %, usually far less (none when the last 10 % of the quota is more
/// than that traffic: the batches land first). The tests check the bound
/// with two instances; the figures at twice the limit are in
/// `BENCHMARKS.md`. Use [`RedisCounters`] when a quota must hold exactly.
///
/// # Failures
///
/// A round trip that fails falls back as the [`RateLimiter`](super::RateLimiter)
/// says; a batch that fails is kept (its units go with the next batch or
/// round trip) and logged at a bounded rate. Delivery is at least once: a
/// batch that timed out after Redis applied it is sent again and counts
/// twice, and so is one given up while the connection was dropping (the
/// Redis client replays it once it reconnects, after the batch was kept),
/// which errs toward refusing: at most the units of the batches that failed. Units never sent (the process ends
/// between two batches; call [`flush`](Self::flush) on shutdown) are lost:
/// at most one interval's traffic.
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
    /// The keys with units to send, and their state (held here even when
    /// `keys` evicts them, so nothing admitted goes unsent).
    unsent: Mutex<Vec<(CounterKey, Arc<Mutex<Local>>)>>,
    max_unsent: usize,
    interval: Duration,
    near: f64,
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
    /// Batches sent.
    pub batches: u64,
    /// Batches (or keys of a batch) that failed, their units kept for the
    /// next one.
    pub batch_failures: u64,
}

/// What this instance knows of one counter key.
struct Local {
    limits: Vec<RateLimit>,
    algorithm: Algorithm,
    /// Redis's counts at its last answer, plus what was admitted here since.
    view: SmallVec<[Counts; 2]>,
    /// Units admitted here and not yet sent, and when the first was.
    unsent: Carried,
    /// Bumped when the key's policies change: answers about the old ones
    /// are not merged.
    generation: u64,
    /// In `Shared::unsent`.
    listed: bool,
    /// Redis's clock minus this one's, in ms, at its last answer.
    offset_ms: i64,
    /// Decide locally until then (two intervals after Redis last answered).
    fresh_until: Option<Instant>,
    /// Redis's time (ms) until which every request asks: the end of a
    /// refusing window.
    strict_until_ms: u64,
    /// Near a limit: every request asks.
    near: bool,
    /// Reset: nothing of it is sent any more.
    gone: bool,
}

impl Local {
    fn new(limits: &[RateLimit], algorithm: Algorithm) -> Self {
        Self {
            limits: limits.to_vec(),
            algorithm,
            view: SmallVec::new(),
            unsent: Carried::default(),
            generation: 0,
            listed: false,
            offset_ms: 0,
            fresh_until: None,
            strict_until_ms: 0,
            near: false,
            gone: false,
        }
    }

    /// Redis's time now, as this instance reckons it.
    fn now_ms(&self, clock: &Clock) -> u64 {
        now_ms(clock).saturating_add_signed(self.offset_ms)
    }

    /// Whether any policy has used `near` of its quota.
    fn is_near(&self, now_ms: u64, near: f64) -> bool {
        self.limits.iter().zip(&self.view).any(|(limit, counts)| {
            window::used(*counts, limit, self.algorithm, now_ms) >= near * limit.quota() as f64
        })
    }

    /// Takes in Redis's answer about `generation`: its counts (which include
    /// what was sent), plus what was admitted here since. Answers may land
    /// out of order (the pool has several connections): within a window a
    /// count only grows, so the larger one stands.
    fn merge(&mut self, answer: &Answer, generation: u64, shared: &Shared) {
        if generation != self.generation || answer.counts.len() != self.limits.len() {
            return;
        }
        let unsent = self.unsent.units;
        let known = mem::take(&mut self.view);
        self.view = answer
            .counts
            .iter()
            .enumerate()
            .map(|(i, told)| {
                let told = told.plus(unsent);
                match known.get(i) {
                    Some(k) if k.window > told.window => *k,
                    Some(k) if k.window == told.window => Counts {
                        window: k.window,
                        current: k.current.max(told.current),
                        previous: k.previous.max(told.previous),
                    },
                    _ => told,
                }
            })
            .collect();
        self.offset_ms = i64::try_from(answer.now_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(now_ms(&shared.clock)).unwrap_or(i64::MAX));
        self.fresh_until = Some(Instant::now() + shared.interval);
        self.near = self.is_near(answer.now_ms, shared.near);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builder for [`LocalFirst`], from [`LocalFirst::builder`].
pub struct LocalFirstBuilder {
    counters: RedisCounters,
    clock: Clock,
    interval: Duration,
    near: f64,
    max_keys: u64,
}

impl fmt::Debug for LocalFirstBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFirstBuilder")
            .field("interval", &self.interval)
            .field("near", &self.near)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl LocalFirstBuilder {
    /// Time between two batches (default 100 ms): the over-admission bound
    /// is one interval's traffic.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The share of a quota (0 to 1, default 0.9) past which every request
    /// asks Redis.
    pub fn near_limit(mut self, share: f64) -> Self {
        self.near = share.clamp(0.0, 1.0);
        self
    }

    /// The most counter keys followed (default 100,000; beyond that the
    /// least used are forgotten, and asked about again), and the most with
    /// units waiting for a batch (beyond that, requests ask Redis).
    pub fn max_keys(mut self, keys: u64) -> Self {
        self.max_keys = keys.max(1);
        self
    }

    /// Reads this instance's time from `clock` instead of the system clock
    /// (for tests and simulations: whatever it says, decisions follow
    /// Redis's clock, learnt from each answer).
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the store. Its batches start with its first request (on the
    /// Tokio runtime that request runs on).
    pub fn build(self) -> LocalFirst {
        let items = usize::try_from(self.max_keys).unwrap_or(usize::MAX);
        LocalFirst {
            shared: Arc::new(Shared {
                counters: self.counters,
                keys: table(self.max_keys),
                unsent: Mutex::new(Vec::new()),
                max_unsent: items,
                interval: self.interval,
                near: self.near,
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
            near: DEFAULT_NEAR,
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

    /// Sends the units admitted since the last batch now (what the interval
    /// does; for a graceful shutdown, or a test).
    pub async fn flush(&self) -> Result<(), CounterError> {
        flush(&self.shared).await
    }

    /// Starts the batches, once, on the current Tokio runtime.
    fn start(&self) {
        let shared = &self.shared;
        crate::background::spawn_once(&shared.started, || {
            batches(Arc::downgrade(shared), shared.interval)
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

impl fmt::Debug for LocalFirst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFirst")
            .field("interval", &self.shared.interval)
            .field("keys", &self.shared.keys.len())
            .finish_non_exhaustive()
    }
}

/// Sends a batch every `interval`, while the store lives.
async fn batches(shared: Weak<Shared>, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(error) = flush(&shared).await {
            if let Some(suppressed) = shared.warnings.allow() {
                tracing::warn!(%error, suppressed, "local-first rate-limit batch failed; kept for the next one");
            }
        }
    }
}

/// Puts units that weren't counted back, to go with the next batch.
fn keep(shared: &Shared, key: CounterKey, entry: &Arc<Mutex<Local>>, units: Carried) {
    if units.units == 0 {
        return;
    }
    let mut local = lock(entry);
    if local.gone {
        return;
    }
    local.unsent = local.unsent.and(units);
    if !local.listed {
        local.listed = true;
        drop(local);
        lock(&shared.unsent).push((key, entry.clone()));
    }
}

/// The most keys sent in one round of a batch: what a batch holds at once
/// (its calls, their answers) is bounded by this, not by the keys in use.
const BATCH_KEYS: usize = 512;

/// Sends every key's unsent units, [`BATCH_KEYS`] keys at a time.
async fn flush(shared: &Shared) -> Result<(), CounterError> {
    let mut listed = mem::take(&mut *lock(&shared.unsent));
    let mut result = Ok(());
    while !listed.is_empty() {
        let round = listed.split_off(listed.len().saturating_sub(BATCH_KEYS));
        if let Err(error) = flush_round(shared, round).await {
            result = Err(error);
        }
    }
    result
}

async fn flush_round(
    shared: &Shared,
    listed: Vec<(CounterKey, Arc<Mutex<Local>>)>,
) -> Result<(), CounterError> {
    let mut batch = Vec::with_capacity(listed.len());
    let mut entries = Vec::with_capacity(listed.len());
    for (key, entry) in listed {
        let mut local = lock(&entry);
        local.listed = false;
        if local.gone || local.unsent.units == 0 {
            continue;
        }
        batch.push(Carry {
            key,
            limits: local.limits.clone(),
            algorithm: local.algorithm,
            units: mem::take(&mut local.unsent),
            generation: local.generation,
        });
        drop(local);
        entries.push(entry);
    }
    if batch.is_empty() {
        return Ok(());
    }
    shared.counts.batches.incr();
    // Each call is bounded as one command is; a call that fails keeps its
    // units for the next batch (a timeout after Redis counted them counts
    // them twice: rare, and on the side of refusing).
    let answers = shared
        .counters
        .carry_all(&batch, shared.counters.timeout())
        .await;
    let mut failed = None;
    for ((carry, entry), answer) in batch.iter().zip(&entries).zip(answers) {
        match answer {
            Ok(answer) => lock(entry).merge(&answer, carry.generation, shared),
            Err(error) => {
                keep(shared, carry.key, entry, carry.units);
                failed = Some(error);
            }
        }
    }
    match failed {
        Some(error) => {
            shared.counts.batch_failures.incr();
            Err(error)
        }
        None => Ok(()),
    }
}

/// A local-first hit: decided here, or a round trip to Redis.
pub struct LocalFirstHit {
    state: HitState,
}

enum HitState {
    Decided(Option<Counted>),
    Asking {
        hit: RedisHit,
        shared: Arc<Shared>,
        key: CounterKey,
        entry: Arc<Mutex<Local>>,
        carried: Carried,
        generation: u64,
    },
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
            HitState::Asking {
                hit,
                shared,
                key,
                entry,
                carried,
                generation,
            } => {
                let answer = match hit.poll_answer(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(answer) => answer,
                };
                Poll::Ready(match answer {
                    Ok((counted, answer)) => {
                        let mut local = lock(entry);
                        local.merge(&answer, *generation, shared);
                        if !counted.admitted {
                            // Refused: ask until the refusing windows end.
                            let end = local
                                .limits
                                .iter()
                                .zip(&counted.quotas)
                                .filter(|(_, q)| q.retry_after.is_some())
                                .map(|(l, _)| {
                                    (window::window_of(l, answer.now_ms) + 1) * l.window_ms()
                                })
                                .max()
                                .unwrap_or(0);
                            local.strict_until_ms = local.strict_until_ms.max(end);
                        }
                        Ok(counted)
                    }
                    Err(error) => {
                        keep(shared, *key, entry, mem::take(carried));
                        Err(error)
                    }
                })
            }
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
        let shared = &*self.shared;
        let entry = self.entry(key, limits, algorithm);
        let mut local = lock(&entry);
        if local.limits != limits || local.algorithm != algorithm {
            // The key's policies changed: what was known no longer applies.
            let (unsent, listed) = (local.unsent, local.listed);
            *local = Local {
                unsent,
                listed,
                ..Local::new(limits, algorithm)
            };
        }
        let fresh = local
            .fresh_until
            .is_some_and(|until| Instant::now() < until);
        let room = local.listed || lock(&shared.unsent).len() < shared.max_unsent;
        let now = local.now_ms(&shared.clock);
        // Units waiting to be sent count in their own window: once a window
        // ends, they go (with this request) before anything is decided here.
        let unsent = local.unsent;
        let same_window = unsent.units == 0
            || limits
                .iter()
                .all(|l| window::window_of(l, unsent.at_ms) == window::window_of(l, now));
        if fresh
            && room
            && same_window
            && !local.near
            && local.view.len() == limits.len()
            && now >= local.strict_until_ms
        {
            let mut view: SmallVec<[Counts; 2]> = limits
                .iter()
                .zip(&local.view)
                .map(|(limit, c)| c.rolled_to(window::window_of(limit, now)))
                .collect();
            let counted = window::decide(&mut view, limits, algorithm, now, cost);
            if counted.admitted {
                local.view = view;
                local.unsent = local.unsent.and(Carried {
                    units: cost,
                    at_ms: now,
                });
                local.near = local.is_near(now, shared.near);
                if !local.listed {
                    local.listed = true;
                    lock(&shared.unsent).push((*key, entry.clone()));
                }
                shared.counts.local.incr();
                return LocalFirstHit {
                    state: HitState::Decided(Some(counted)),
                };
            }
        }
        // Ask Redis, carrying what this instance admitted since its last
        // batch.
        let carried = mem::take(&mut local.unsent);
        let generation = local.generation;
        drop(local);
        shared.counts.remote.incr();
        LocalFirstHit {
            state: HitState::Asking {
                hit: shared
                    .counters
                    .hit_carrying(key, limits, algorithm, cost, carried),
                shared: self.shared.clone(),
                key: *key,
                entry,
                carried,
                generation,
            },
        }
    }

    fn reset(&self, key: &CounterKey) -> impl Future<Output = Result<(), CounterError>> + Send {
        if let Some((_, entry)) = self.shared.keys.remove(key) {
            let mut local = lock(&entry);
            local.gone = true;
            local.unsent = Carried::default();
        }
        let counters = self.shared.counters.clone();
        let key = *key;
        async move { counters.reset(&key).await }
    }
}
