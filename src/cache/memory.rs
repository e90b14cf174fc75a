//! [`MemoryCache`]: in-process, bounded, per-entry TTL, on quick_cache.
//!
//! The engine was chosen by `benches/hit_path.rs` (see BENCHMARKS.md): on a
//! long tail of keys a read of quick_cache (S3-FIFO, expiry kept in the
//! value and checked on read) costs a fraction of moka's, which the crate
//! used before.

use std::fmt;
use std::future::{ready, Future, Ready};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use quick_cache::sync::DefaultLifecycle;
use quick_cache::UnitWeighter;

use super::tier::NearTier;
use super::{CacheError, CacheRead, KeyCache, Ttl, Verdict};
use crate::hash::DigestHasher;
use crate::{KeyHash, Principal};

/// Default most valid keys kept.
pub(crate) const DEFAULT_CAPACITY: u64 = 100_000;
/// Default most negative entries kept.
pub(crate) const DEFAULT_NEGATIVE_CAPACITY: u64 = 10_000;

/// Number of invalidation stripes; a hash uses the one its first bytes pick.
/// More stripes, fewer fills skipped because another key in the same stripe
/// was invalidated at the same moment.
const STRIPES: usize = 1024;

type Engine<P> = quick_cache::sync::Cache<KeyHash, Entry<P>, UnitWeighter, DigestHasher>;

/// The in-process cache: two bounded caches, one for valid keys and one for
/// negative entries, each entry with its own expiry.
///
/// - **Separate TTLs.** Every entry carries the deadline the layer chose for
///   it (positive, negative, or capped by the key's own expiry), checked on
///   every read: an entry past it is a miss, and its slot goes to the next
///   fill or to eviction.
/// - **Bounded, and a flood of unknown keys can't evict valid ones.** Valid
///   keys live in a cache of [`max_capacity`](MemoryCacheBuilder::max_capacity)
///   entries, negative entries in their own of
///   [`max_negative_capacity`](MemoryCacheBuilder::max_negative_capacity)
///   (each split in shards of their own capacity, and evicting by S3-FIFO,
///   which a one-off key doesn't displace a reused one in). Random keys only
///   churn the negative cache; memory is bounded by the sum.
/// - **Revocation can't be undone by an in-flight lookup.** Each miss returns
///   a [`MemoryToken`] (a global epoch, a per-stripe generation, an owner
///   epoch). [`invalidate`](KeyCache::invalidate) bumps the stripe's
///   generation and removes the entry under the stripe's lock; a `put`
///   checks the generation and stores under the same lock, so it either
///   lands before the removal or sees the bump and stores nothing.
///   [`invalidate_all`](KeyCache::invalidate_all) bumps the epoch, which every
///   entry records and every read checks. Generations are kept per stripe
///   (1,024 of them), not per key, so memory stays fixed: invalidating one
///   key also skips the cache write of a lookup that is in flight at that
///   moment for another key of its stripe (that answer is still served, just
///   not cached). Safe, and rare. Reads take no lock of ours.
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
    positive: Engine<P>,
    negative: Engine<P>,
    epoch: AtomicU64,
    stripes: Box<[Stripe]>,
    /// Bumped by `invalidate_owner`, under `owner_lock`'s write side; a put
    /// of an owned principal checks it under the read side, so it either
    /// lands before the owner's entries are swept or sees the bump.
    owner_epoch: AtomicU64,
    owner_lock: RwLock<()>,
}

/// A stripe of hashes: its generation, moved by every invalidation of one of
/// them, and the lock that puts and invalidations of them take.
#[derive(Default)]
struct Stripe {
    generation: AtomicU64,
    lock: Mutex<()>,
}

struct Entry<P> {
    verdict: Verdict<P>,
    epoch: u64,
    /// A hit until then.
    expires: Instant,
    /// An aging hit from then (`expires` when there is no refresh point).
    refresh_at: Instant,
    /// Kept as a stale principal until then (`expires` when nothing is).
    keep_until: Instant,
    filled: Instant,
}

impl<P> Clone for Entry<P> {
    fn clone(&self) -> Self {
        Self {
            verdict: self.verdict.clone(),
            epoch: self.epoch,
            expires: self.expires,
            refresh_at: self.refresh_at,
            keep_until: self.keep_until,
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
        let engine = |capacity: u64| {
            let items = usize::try_from(capacity).unwrap_or(usize::MAX);
            Engine::with(
                items,
                capacity,
                UnitWeighter,
                DigestHasher::new(),
                DefaultLifecycle::default(),
            )
        };
        MemoryCache {
            inner: Arc::new(Inner {
                positive: engine(self.max_capacity),
                negative: engine(self.max_negative_capacity),
                epoch: AtomicU64::new(0),
                stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
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

    /// Entries held now, positive and negative (expired ones included until
    /// a fill or an eviction takes their slot).
    pub fn entry_count(&self) -> u64 {
        self.positive_count() + self.negative_count()
    }

    /// Valid keys held now (as [`entry_count`](Self::entry_count)).
    pub fn positive_count(&self) -> u64 {
        self.inner.positive.len() as u64
    }

    /// Negative entries held now.
    pub fn negative_count(&self) -> u64 {
        self.inner.negative.len() as u64
    }

    fn stripe(&self, hash: &KeyHash) -> &Stripe {
        &self.inner.stripes[(hash.prefix_u64() as usize) % STRIPES]
    }
}

impl<P: Principal> NearTier for MemoryCache<P> {
    fn get_now(&self, hash: &KeyHash, filled_since: Option<Instant>) -> CacheRead<P, MemoryToken> {
        let inner = &*self.inner;
        let epoch = inner.epoch.load(Ordering::Acquire);
        let found = inner
            .positive
            .get(hash)
            .or_else(|| inner.negative.get(hash));
        if let Some(entry) = found {
            let now = Instant::now();
            let current = entry.epoch == epoch && filled_since.is_none_or(|t| entry.filled >= t);
            if current && now < entry.expires {
                crate::telemetry::cache_hit(crate::telemetry::Tier::L1);
                return match entry.verdict {
                    Verdict::Valid(p) if now >= entry.refresh_at => CacheRead::Aging(p),
                    verdict => CacheRead::Hit(verdict),
                };
            }
            // Only valid entries are kept past `expires`.
            if let (true, Verdict::Valid(p)) = (current && now < entry.keep_until, entry.verdict) {
                return CacheRead::stale(self.refresh_token_now(hash), p);
            }
        }
        CacheRead::miss(self.refresh_token_now(hash))
    }

    fn refresh_token_now(&self, hash: &KeyHash) -> MemoryToken {
        let inner = &*self.inner;
        MemoryToken {
            epoch: inner.epoch.load(Ordering::Acquire),
            generation: self.stripe(hash).generation.load(Ordering::Acquire),
            owner_epoch: inner.owner_epoch.load(Ordering::Acquire),
        }
    }

    fn put_now(&self, hash: KeyHash, token: MemoryToken, verdict: Verdict<P>, ttl: Ttl) {
        let inner = &*self.inner;
        let owned = matches!(&verdict, Verdict::Valid(p) if p.owner().is_some());
        let _owner_guard = owned.then(|| {
            inner
                .owner_lock
                .read()
                .unwrap_or_else(PoisonError::into_inner)
        });
        let stripe = self.stripe(&hash);
        // `invalidate` bumps the generation and removes under this lock: a
        // put either lands before the removal or sees the bump.
        let _stripe = stripe.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = stripe.generation.load(Ordering::Acquire) == token.generation
            && inner.epoch.load(Ordering::Acquire) == token.epoch
            && (!owned || inner.owner_epoch.load(Ordering::Acquire) == token.owner_epoch);
        if !fresh {
            return;
        }
        let (target, other, ttl) = match verdict {
            Verdict::Valid(_) => (&inner.positive, &inner.negative, ttl),
            Verdict::Invalid => (&inner.negative, &inner.positive, Ttl::fresh(ttl.fresh)),
        };
        let now = Instant::now();
        let at = |d: Duration| {
            now.checked_add(d)
                .unwrap_or(now + Duration::from_secs(86_400 * 365))
        };
        let expires = at(ttl.fresh);
        let entry = Entry {
            verdict,
            epoch: token.epoch,
            expires,
            refresh_at: expires.checked_sub(ttl.refresh).unwrap_or(now).max(now),
            keep_until: at(ttl.total()),
            filled: now,
        };
        target.insert(hash, entry);
        // A key that became valid is no longer invalid, and the other way
        // round (a bypass route may learn either first).
        other.remove(&hash);
    }

    fn invalidate_now(&self, hash: &KeyHash) {
        let stripe = self.stripe(hash);
        let _stripe = stripe.lock.lock().unwrap_or_else(PoisonError::into_inner);
        stripe.generation.fetch_add(1, Ordering::AcqRel);
        self.inner.positive.remove(hash);
        self.inner.negative.remove(hash);
    }

    fn invalidate_all_now(&self) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner.positive.clear();
        self.inner.negative.clear();
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
            .field("positive_entries", &self.inner.positive.len())
            .field("negative_entries", &self.inner.negative.len())
            .field("max_capacity", &self.inner.positive.capacity())
            .field("max_negative_capacity", &self.inner.negative.capacity())
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
        ttl: Ttl,
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
        c.put_now(h, token, verdict, Ttl::fresh(Duration::from_secs(60)));
    }

    fn is_hit<Q: Principal>(c: &MemoryCache<Q>, h: &KeyHash) -> bool {
        matches!(c.get_now(h, None), CacheRead::Hit(_))
    }

    #[test]
    fn a_hit_carries_the_verdict_and_a_miss_a_token_that_fills() {
        let c = MemoryCache::<P>::new();
        let h = KeyHash::of("a");
        let CacheRead::Miss {
            token,
            degraded,
            stale,
        } = c.get_now(&h, None)
        else {
            panic!("an empty cache hit");
        };
        assert!(degraded.is_none() && stale.is_none());
        c.put_now(h, token, valid(), Ttl::fresh(Duration::from_secs(60)));
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
            Ttl::fresh(Duration::from_secs(60)),
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
