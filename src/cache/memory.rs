use std::fmt;
use std::future::{ready, Future, Ready};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use moka::Expiry;

use super::tier::NearTier;
use super::{CacheError, CacheRead, KeyCache, Verdict};
use crate::{KeyHash, Principal};

/// Default most valid keys kept.
pub(crate) const DEFAULT_CAPACITY: u64 = 100_000;
/// Default most negative entries kept.
pub(crate) const DEFAULT_NEGATIVE_CAPACITY: u64 = 10_000;

/// Number of invalidation generation counters; a hash uses the one its first
/// bytes pick. More stripes, fewer fills skipped because another key in the
/// same stripe was invalidated at the same moment.
const STRIPES: usize = 1024;

/// The in-process cache: two bounded moka caches, one for valid keys and one
/// for negative entries, each entry with its own expiry.
///
/// - **Separate TTLs.** Every entry carries the TTL the layer chose for it
///   (positive, negative, or capped by the key's own expiry); moka expires it
///   exactly then, replaced entries included.
/// - **Bounded, and a flood of unknown keys can't evict valid ones.** Valid
///   keys live in a cache of [`max_capacity`](MemoryCacheBuilder::max_capacity)
///   entries, negative entries in their own of
///   [`max_negative_capacity`](MemoryCacheBuilder::max_negative_capacity).
///   Random keys only churn the negative cache; memory is bounded by the sum.
/// - **Revocation can't be undone by an in-flight lookup.** Each miss returns
///   a [`MemoryToken`] (a global epoch, a per-stripe generation, an owner
///   epoch).
///   [`invalidate`](KeyCache::invalidate) bumps the generation and then removes
///   the entry through moka's per-key compute lock; a `put` checks the
///   generation inside the same lock, so it either lands before the removal
///   or sees the bump and stores nothing. [`invalidate_all`](KeyCache::invalidate_all)
///   bumps the epoch, which every entry records and every read checks.
///   Generations are kept per stripe (1,024 of them), not per key, so memory
///   stays fixed: invalidating one key also skips the cache write of a lookup
///   that is in flight at that moment for another key of its stripe (that
///   answer is still served, just not cached). Safe, and rare.
/// - **Owner-wide invalidation.** [`invalidate_owner`](KeyCache::invalidate_owner)
///   sweeps the valid entries for principals whose
///   [`owner`](Principal::owner) matches (an in-process cache keeps no index
///   to get out of step), after bumping an owner epoch that in-flight fills
///   of owned principals check under a lock the sweep's bump also takes: a
///   fill either lands before the sweep or stores nothing.
///
/// `Clone` shares the same cache.
///
/// # Example
///
/// ```
/// use tower_api_key::cache::MemoryCache;
/// use tower_api_key::Principal;
///
/// struct Client;
/// impl Principal for Client {}
///
/// let cache: MemoryCache<Client> = MemoryCache::builder()
///     .max_capacity(100_000)
///     .max_negative_capacity(10_000)
///     .build();
/// assert_eq!(cache.entry_count(), 0);
/// ```
pub struct MemoryCache<P> {
    inner: Arc<Inner<P>>,
}

struct Inner<P> {
    positive: Cache<KeyHash, Entry<P>>,
    negative: Cache<KeyHash, Entry<P>>,
    epoch: AtomicU64,
    generations: Box<[AtomicU64]>,
    /// Bumped by `invalidate_owner`, under `owner_lock`'s write side; a put
    /// of an owned principal checks it under the read side, so it either
    /// lands before the owner's entries are swept or sees the bump.
    owner_epoch: AtomicU64,
    owner_lock: RwLock<()>,
}

struct Entry<P> {
    verdict: Verdict<P>,
    epoch: u64,
    ttl: Duration,
    filled: Instant,
}

impl<P> Clone for Entry<P> {
    fn clone(&self) -> Self {
        Self {
            verdict: self.verdict.clone(),
            epoch: self.epoch,
            ttl: self.ttl,
            filled: self.filled,
        }
    }
}

/// The token of [`MemoryCache`]: when a read happened, in invalidations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryToken {
    epoch: u64,
    generation: u64,
    owner_epoch: u64,
}

struct PerEntryTtl;

impl<P> Expiry<KeyHash, Entry<P>> for PerEntryTtl {
    fn expire_after_create(&self, _: &KeyHash, value: &Entry<P>, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    // Without this a replaced entry would keep the old entry's deadline.
    fn expire_after_update(
        &self,
        _: &KeyHash,
        value: &Entry<P>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Builder for [`MemoryCache`], from [`MemoryCache::builder`].
pub struct MemoryCacheBuilder<P> {
    max_capacity: u64,
    max_negative_capacity: u64,
    principal: PhantomData<fn() -> P>,
}

impl<P> fmt::Debug for MemoryCacheBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCacheBuilder")
            .field("max_capacity", &self.max_capacity)
            .field("max_negative_capacity", &self.max_negative_capacity)
            .finish()
    }
}

impl<P: Principal> MemoryCacheBuilder<P> {
    /// The most valid keys kept (default 100,000).
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = entries;
        self
    }

    /// The most negative entries kept (default 10,000). Negative entries have
    /// their own bound so that a flood of random keys can't push valid keys
    /// out.
    pub fn max_negative_capacity(mut self, entries: u64) -> Self {
        self.max_negative_capacity = entries;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> MemoryCache<P> {
        let build = |capacity| {
            Cache::builder()
                .max_capacity(capacity)
                .expire_after(PerEntryTtl)
                .build()
        };
        MemoryCache {
            inner: Arc::new(Inner {
                positive: build(self.max_capacity),
                negative: build(self.max_negative_capacity),
                epoch: AtomicU64::new(0),
                generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
                owner_epoch: AtomicU64::new(0),
                owner_lock: RwLock::new(()),
            }),
        }
    }
}

impl<P: Principal> MemoryCache<P> {
    /// A builder with the defaults: 100,000 valid keys, 10,000 negative
    /// entries.
    pub fn builder() -> MemoryCacheBuilder<P> {
        MemoryCacheBuilder {
            max_capacity: DEFAULT_CAPACITY,
            max_negative_capacity: DEFAULT_NEGATIVE_CAPACITY,
            principal: PhantomData,
        }
    }

    /// A cache with the defaults.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Entries currently held, positive and negative (moka's estimate, which
    /// lags behind writes until its housekeeping runs; see
    /// [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn entry_count(&self) -> u64 {
        self.inner.positive.entry_count() + self.inner.negative.entry_count()
    }

    /// Valid keys currently held (estimate, as [`entry_count`](Self::entry_count)).
    pub fn positive_count(&self) -> u64 {
        self.inner.positive.entry_count()
    }

    /// Negative entries currently held (estimate).
    pub fn negative_count(&self) -> u64 {
        self.inner.negative.entry_count()
    }

    /// Runs moka's pending housekeeping (evictions, expirations, counts) now.
    pub fn run_pending_tasks(&self) {
        self.inner.positive.run_pending_tasks();
        self.inner.negative.run_pending_tasks();
    }

    fn generation(&self, hash: &KeyHash) -> &AtomicU64 {
        &self.inner.generations[(hash.prefix_u64() as usize) % STRIPES]
    }
}

impl<P: Principal> NearTier for MemoryCache<P> {
    fn get_now(&self, hash: &KeyHash, filled_since: Option<Instant>) -> CacheRead<P, MemoryToken> {
        let inner = &*self.inner;
        // A hit needs only the epoch; the rest of the token is a miss's.
        let epoch = inner.epoch.load(Ordering::Acquire);
        let current = |e: &Entry<P>| e.epoch == epoch && filled_since.is_none_or(|t| e.filled >= t);
        let found = match inner.positive.get(hash).filter(current) {
            Some(entry) => Some(entry.verdict),
            None => inner
                .negative
                .get(hash)
                .filter(current)
                .map(|entry| entry.verdict),
        };
        match found {
            Some(verdict) => CacheRead::Hit(verdict),
            None => CacheRead::miss(self.refresh_token_now(hash)),
        }
    }

    fn refresh_token_now(&self, hash: &KeyHash) -> MemoryToken {
        let inner = &*self.inner;
        MemoryToken {
            epoch: inner.epoch.load(Ordering::Acquire),
            generation: self.generation(hash).load(Ordering::Acquire),
            owner_epoch: inner.owner_epoch.load(Ordering::Acquire),
        }
    }

    fn put_now(&self, hash: KeyHash, token: MemoryToken, verdict: Verdict<P>, ttl: Duration) {
        let inner = &*self.inner;
        let generation = self.generation(&hash);
        let owned = matches!(&verdict, Verdict::Valid(p) if p.owner().is_some());
        let _owner_guard = owned.then(|| {
            inner
                .owner_lock
                .read()
                .unwrap_or_else(PoisonError::into_inner)
        });
        // Checked inside moka's per-key lock, which `invalidate` also takes
        // after bumping the generation: a put either lands before the removal
        // or sees the bump.
        let fresh = || {
            generation.load(Ordering::Acquire) == token.generation
                && inner.epoch.load(Ordering::Acquire) == token.epoch
                && (!owned || inner.owner_epoch.load(Ordering::Acquire) == token.owner_epoch)
        };
        let (target, other) = match verdict {
            Verdict::Valid(_) => (&inner.positive, &inner.negative),
            Verdict::Invalid => (&inner.negative, &inner.positive),
        };
        let entry = Entry {
            verdict,
            epoch: token.epoch,
            ttl,
            filled: Instant::now(),
        };
        let stored =
            target
                .entry(hash)
                .and_compute_with(|_| if fresh() { Op::Put(entry) } else { Op::Nop });
        if !matches!(stored, CompResult::Unchanged(_) | CompResult::StillNone(_)) {
            // A key that became valid is no longer invalid, and the other way
            // round (a bypass route may learn either first).
            other.entry(hash).and_compute_with(|e| match e {
                Some(_) if fresh() => Op::Remove,
                _ => Op::Nop,
            });
        }
    }

    fn invalidate_now(&self, hash: &KeyHash) {
        self.generation(hash).fetch_add(1, Ordering::AcqRel);
        for cache in [&self.inner.positive, &self.inner.negative] {
            cache.entry(*hash).and_compute_with(|_| Op::Remove);
        }
    }

    fn invalidate_all_now(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner.positive.invalidate_all();
        self.inner.negative.invalidate_all();
    }

    /// A sweep of the valid entries (an in-process cache holds no index to
    /// keep in step), after a bump that stops in-flight fills of owned
    /// principals.
    fn invalidate_owner_now(&self, owner: &str) {
        {
            let _bump = self
                .inner
                .owner_lock
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            self.inner.owner_epoch.fetch_add(1, Ordering::AcqRel);
        }
        for (hash, entry) in self.inner.positive.iter() {
            if let Verdict::Valid(p) = &entry.verdict {
                if p.owner().as_deref() == Some(owner) {
                    self.invalidate_now(&hash);
                }
            }
        }
    }
}

impl<P: Principal> Default for MemoryCache<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> Clone for MemoryCache<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P> fmt::Debug for MemoryCache<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache")
            .field("positive_entries", &self.inner.positive.entry_count())
            .field("negative_entries", &self.inner.negative.entry_count())
            .field("max_capacity", &self.inner.positive.policy().max_capacity())
            .field(
                "max_negative_capacity",
                &self.inner.negative.policy().max_capacity(),
            )
            .finish()
    }
}

/// Every operation is done when it returns, and its future is ready at once:
/// the layer takes a hit's answer without a state machine.
impl<P: Principal> KeyCache for MemoryCache<P> {
    type Principal = P;
    type Token = MemoryToken;
    type Get = Ready<Result<CacheRead<P, MemoryToken>, CacheError>>;

    fn get(&self, hash: &KeyHash) -> Self::Get {
        ready(Ok(self.get_now(hash, None)))
    }

    fn refresh_token(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<MemoryToken, CacheError>> + Send {
        ready(Ok(self.refresh_token_now(hash)))
    }

    fn put(
        &self,
        hash: KeyHash,
        token: MemoryToken,
        verdict: Verdict<P>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.put_now(hash, token, verdict, ttl);
        ready(Ok(()))
    }

    fn invalidate(&self, hash: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.invalidate_now(hash);
        ready(Ok(()))
    }

    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.invalidate_all_now();
        ready(Ok(()))
    }

    fn invalidate_owner(&self, owner: &str) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.invalidate_owner_now(owner);
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct P;
    impl Principal for P {}

    fn valid() -> Verdict<P> {
        Verdict::Valid(Arc::new(P))
    }

    fn fill<Q: Principal>(c: &MemoryCache<Q>, h: KeyHash, verdict: Verdict<Q>) {
        let token = c.refresh_token_now(&h);
        c.put_now(h, token, verdict, Duration::from_secs(60));
    }

    fn is_hit<Q: Principal>(c: &MemoryCache<Q>, h: &KeyHash) -> bool {
        matches!(c.get_now(h, None), CacheRead::Hit(_))
    }

    #[test]
    fn a_hit_carries_the_verdict_and_a_miss_a_token_that_fills() {
        let c = MemoryCache::<P>::new();
        let h = KeyHash::of("a");
        let CacheRead::Miss { token, degraded } = c.get_now(&h, None) else {
            panic!("an empty cache hit");
        };
        assert!(degraded.is_none());
        c.put_now(h, token, valid(), Duration::from_secs(60));
        assert!(matches!(
            c.get_now(&h, None),
            CacheRead::Hit(Verdict::Valid(_))
        ));
    }

    #[test]
    fn invalidating_one_key_leaves_the_others_cached() {
        let c = MemoryCache::<P>::new();
        let (a, b) = (KeyHash::of("a"), KeyHash::of("b"));
        fill(&c, a, valid());
        fill(&c, b, valid());
        c.invalidate_now(&a);
        assert!(!is_hit(&c, &a));
        assert!(is_hit(&c, &b));
    }

    struct Owned(&'static str);
    impl Principal for Owned {
        fn owner(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
    }

    fn owned(c: &MemoryCache<Owned>, key: &str, owner: &'static str) -> KeyHash {
        let h = KeyHash::of(key);
        fill(c, h, Verdict::Valid(Arc::new(Owned(owner))));
        h
    }

    #[test]
    fn invalidate_owner_drops_that_owners_keys_only() {
        let c = MemoryCache::<Owned>::new();
        let (a1, a2) = (owned(&c, "a1", "acme"), owned(&c, "a2", "acme"));
        let g = owned(&c, "g", "globex");
        c.invalidate_owner_now("acme");
        assert!(!is_hit(&c, &a1));
        assert!(!is_hit(&c, &a2));
        assert!(is_hit(&c, &g));
    }

    #[test]
    fn an_owned_fill_read_before_invalidate_owner_is_refused() {
        let c = MemoryCache::<Owned>::new();
        let h = KeyHash::of("a");
        let before = c.refresh_token_now(&h);
        c.invalidate_owner_now("acme");
        c.put_now(
            h,
            before,
            Verdict::Valid(Arc::new(Owned("acme"))),
            Duration::from_secs(60),
        );
        assert!(!is_hit(&c, &h), "the in-flight fill lost");
        // A read after it fills again.
        owned(&c, "a", "acme");
        assert!(is_hit(&c, &h));
    }

    #[test]
    fn get_now_ignores_entries_filled_before_the_bound() {
        let c = MemoryCache::<P>::new();
        let h = KeyHash::of("a");
        fill(&c, h, valid());
        let after = Instant::now() + Duration::from_millis(1);
        assert!(matches!(c.get_now(&h, Some(after)), CacheRead::Miss { .. }));
        assert!(matches!(
            c.get_now(&h, Some(after - Duration::from_secs(1))),
            CacheRead::Hit(_)
        ));
    }
}
