use std::fmt;
use std::future::{ready, Future, Ready};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;

use super::{CacheError, CacheRead, KeyCache, Principal, Verdict};
use crate::KeyHash;

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
/// - **Revocation can't be undone by an in-flight lookup.** Each read returns
///   a [`MemoryToken`] (a global epoch and a per-stripe generation).
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
/// use tower_api_key::{MemoryCache, Principal};
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
            max_capacity: 100_000,
            max_negative_capacity: 10_000,
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

    fn read(&self, hash: &KeyHash) -> CacheRead<P, MemoryToken> {
        self.read_since(hash, None)
    }

    /// Where `hash` stands in invalidations now.
    pub(crate) fn token(&self, hash: &KeyHash) -> MemoryToken {
        let inner = &*self.inner;
        MemoryToken {
            epoch: inner.epoch.load(Ordering::Acquire),
            generation: self.generation(hash).load(Ordering::Acquire),
            owner_epoch: inner.owner_epoch.load(Ordering::Acquire),
        }
    }

    /// Reads `hash`, ignoring an entry filled before `not_before` (the
    /// tiered cache's bound while its subscriber is down).
    pub(crate) fn read_since(
        &self,
        hash: &KeyHash,
        not_before: Option<Instant>,
    ) -> CacheRead<P, MemoryToken> {
        let inner = &*self.inner;
        let token = self.token(hash);
        let current =
            |e: &Entry<P>| e.epoch == token.epoch && not_before.is_none_or(|t| e.filled >= t);
        let verdict = match inner.positive.get(hash).filter(current) {
            Some(entry) => Some(entry.verdict),
            None => inner
                .negative
                .get(hash)
                .filter(current)
                .map(|entry| entry.verdict),
        };
        match verdict {
            Some(verdict) => CacheRead::hit(verdict, token),
            None => CacheRead::miss(token),
        }
    }

    pub(crate) fn write(
        &self,
        hash: KeyHash,
        token: MemoryToken,
        verdict: Verdict<P>,
        ttl: Duration,
    ) {
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
        if !matches!(
            stored,
            moka::ops::compute::CompResult::Unchanged(_)
                | moka::ops::compute::CompResult::StillNone(_)
        ) {
            // A key that became valid is no longer invalid, and the other way
            // round (a bypass route may learn either first).
            other.entry(hash).and_compute_with(|e| match e {
                Some(_) if fresh() => Op::Remove,
                _ => Op::Nop,
            });
        }
    }

    pub(crate) fn remove(&self, hash: &KeyHash) {
        self.generation(hash).fetch_add(1, Ordering::AcqRel);
        for cache in [&self.inner.positive, &self.inner.negative] {
            cache.entry(*hash).and_compute_with(|_| Op::Remove);
        }
    }

    pub(crate) fn clear(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner.positive.invalidate_all();
        self.inner.negative.invalidate_all();
    }

    /// Drops every valid key of `owner`: a sweep of the valid entries (an
    /// in-process cache holds no index to keep in step), after a bump that
    /// stops in-flight fills of owned principals.
    pub(crate) fn remove_owner(&self, owner: &str) {
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
                    self.remove(&hash);
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

impl<P: Principal> KeyCache for MemoryCache<P> {
    type Principal = P;
    type Token = MemoryToken;
    type Get = Ready<Result<CacheRead<P, MemoryToken>, CacheError>>;

    fn get(&self, hash: &KeyHash) -> Self::Get {
        ready(Ok(self.read(hash)))
    }

    fn put(
        &self,
        hash: KeyHash,
        token: MemoryToken,
        verdict: Verdict<P>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.write(hash, token, verdict, ttl);
        ready(Ok(()))
    }

    fn invalidate(&self, hash: &KeyHash) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.remove(hash);
        ready(Ok(()))
    }

    fn invalidate_all(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.clear();
        ready(Ok(()))
    }

    fn invalidate_owner(&self, owner: &str) -> impl Future<Output = Result<(), CacheError>> + Send {
        self.remove_owner(owner);
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

    fn read(c: &MemoryCache<P>, h: &KeyHash) -> (Option<bool>, MemoryToken) {
        let r = c.read(h);
        (r.verdict.map(|v| matches!(v, Verdict::Valid(_))), r.token)
    }

    #[test]
    fn put_then_get_and_replace_kinds() {
        let c = MemoryCache::<P>::new();
        let h = KeyHash::of("a");
        let (v, t) = read(&c, &h);
        assert_eq!(v, None);
        c.write(h, t, Verdict::Invalid, Duration::from_secs(60));
        let (v, t) = read(&c, &h);
        assert_eq!(v, Some(false));
        c.write(h, t, valid(), Duration::from_secs(60));
        assert_eq!(read(&c, &h).0, Some(true));
        let t = read(&c, &h).1;
        c.write(h, t, Verdict::Invalid, Duration::from_secs(60));
        assert_eq!(
            read(&c, &h).0,
            Some(false),
            "a negative verdict drops the positive one"
        );
    }

    #[test]
    fn stale_token_cannot_write_after_invalidate() {
        let c = MemoryCache::<P>::new();
        let h = KeyHash::of("a");
        let (_, before) = read(&c, &h);
        c.remove(&h);
        c.write(h, before, valid(), Duration::from_secs(60));
        assert_eq!(read(&c, &h).0, None);

        let (_, before) = read(&c, &h);
        c.clear();
        c.write(h, before, valid(), Duration::from_secs(60));
        assert_eq!(read(&c, &h).0, None);

        // A fresh token writes again.
        let (_, now) = read(&c, &h);
        c.write(h, now, valid(), Duration::from_secs(60));
        assert_eq!(read(&c, &h).0, Some(true));
    }

    #[test]
    fn entries_written_before_invalidate_all_are_gone() {
        let c = MemoryCache::<P>::new();
        let h = KeyHash::of("a");
        let (_, t) = read(&c, &h);
        c.write(h, t, valid(), Duration::from_secs(60));
        c.clear();
        assert_eq!(read(&c, &h).0, None);
    }

    #[test]
    fn entries_expire_after_their_own_ttl() {
        let c = MemoryCache::<P>::new();
        let (a, b) = (KeyHash::of("a"), KeyHash::of("b"));
        c.write(a, read(&c, &a).1, valid(), Duration::from_millis(50));
        c.write(b, read(&c, &b).1, valid(), Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(read(&c, &a).0, None);
        assert_eq!(read(&c, &b).0, Some(true));
    }

    struct Owned(&'static str);
    impl Principal for Owned {
        fn owner(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
    }

    fn owned(c: &MemoryCache<Owned>, key: &str, owner: &'static str) -> KeyHash {
        let h = KeyHash::of(key);
        let t = c.read(&h).token;
        c.write(
            h,
            t,
            Verdict::Valid(Arc::new(Owned(owner))),
            Duration::from_secs(60),
        );
        h
    }

    #[test]
    fn invalidate_owner_drops_that_owners_keys_only() {
        let c = MemoryCache::<Owned>::new();
        let (a1, a2) = (owned(&c, "a1", "acme"), owned(&c, "a2", "acme"));
        let g = owned(&c, "g", "globex");
        c.remove_owner("acme");
        assert!(c.read(&a1).verdict.is_none());
        assert!(c.read(&a2).verdict.is_none());
        assert!(c.read(&g).verdict.is_some());
    }

    #[test]
    fn an_owned_fill_read_before_invalidate_owner_is_refused() {
        let c = MemoryCache::<Owned>::new();
        let h = KeyHash::of("a");
        let before = c.read(&h).token;
        c.remove_owner("acme");
        c.write(
            h,
            before,
            Verdict::Valid(Arc::new(Owned("acme"))),
            Duration::from_secs(60),
        );
        assert!(c.read(&h).verdict.is_none(), "the in-flight fill lost");
        // A read after it fills again.
        owned(&c, "a", "acme");
        assert!(c.read(&h).verdict.is_some());
    }

    #[test]
    fn read_since_ignores_older_fills() {
        let c = MemoryCache::<P>::new();
        let h = KeyHash::of("a");
        c.write(h, read(&c, &h).1, valid(), Duration::from_secs(60));
        let after = Instant::now() + Duration::from_millis(1);
        assert!(c.read_since(&h, Some(after)).verdict.is_none());
        assert!(c
            .read_since(&h, Some(after - Duration::from_secs(1)))
            .verdict
            .is_some());
    }

    #[test]
    fn replacing_an_entry_resets_its_deadline() {
        let c = MemoryCache::<P>::new();
        let a = KeyHash::of("a");
        c.write(a, read(&c, &a).1, valid(), Duration::from_secs(60));
        c.write(a, read(&c, &a).1, valid(), Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(read(&c, &a).0, None);
    }
}
