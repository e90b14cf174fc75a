//! The cache conformance suite: the [contract](super#the-contract) as
//! tests, for any [`KeyCache`] (feature `test-util`).
//!
//! [`key_cache_conformance!`](crate::key_cache_conformance) writes one
//! `#[test]` per check below into the module it is called in, each on a
//! fresh cache made by your closure, each named for what it checks, so a
//! failure says which rule broke. The closure answers the cache and anything
//! to keep alive while the test runs (a server's guard; `()` when there is
//! none). Caches hold this suite's own principal, [`Client`].
//!
//! ```no_run
//! // tests/conformance.rs of a crate with a backend
//! use tower_api_key::cache::MemoryCache;
//!
//! tower_api_key::key_cache_conformance!(|| async { (MemoryCache::new(), ()) });
//! // For a backend that supports owner-wide invalidation, add the owner checks:
//! mod with_owners {
//!     use tower_api_key::cache::MemoryCache;
//!     tower_api_key::key_cache_conformance!(|| async { (MemoryCache::new(), ()) }, owners);
//! }
//! ```
//!
//! Each check is also a function here, to run as you like with [`run`]. The
//! TTL checks sleep two to three seconds; the rest take what the
//! backend's round trips take.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{CacheRead, KeyCache, Ttl, Verdict};
use crate::{KeyHash, Principal};

/// The principal the suite's caches hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// Tells one principal from another.
    pub id: u64,
    /// The owner, for the owner checks.
    pub owner: Option<String>,
}

impl Principal for Client {
    fn owner(&self) -> Option<Cow<'_, str>> {
        self.owner.as_deref().map(Cow::Borrowed)
    }
}

/// Makes a fresh cache (and what it needs kept alive) on a current-thread
/// tokio runtime, and runs `check` on it.
pub fn run<C, G, Make, MakeFut, Check, CheckFut>(make: Make, check: Check)
where
    C: KeyCache<Principal = Client>,
    Make: FnOnce() -> MakeFut,
    MakeFut: Future<Output = (C, G)>,
    Check: FnOnce(C) -> CheckFut,
    CheckFut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance suite");
    runtime.block_on(async {
        let (cache, keep) = make().await;
        check(cache).await;
        drop(keep);
    });
}

/// Writes the conformance suite into the calling module: one `#[test]` per
/// check of [`cache::conformance`](crate::cache::conformance), each on a
/// fresh cache from `$make` (a closure answering a future of `(cache,
/// keep_alive)`). Add `, owners` for a backend that supports
/// [`invalidate_owner`](crate::cache::KeyCache::invalidate_owner).
#[macro_export]
macro_rules! key_cache_conformance {
    ($make:expr) => {
        $crate::key_cache_conformance!(@checks $make;
            a_miss_then_a_put_is_a_hit,
            negative_verdicts_are_stored_too,
            storing_one_kind_replaces_the_other,
            entries_expire_after_their_own_ttl,
            replacing_an_entry_resets_its_deadline,
            invalidate_drops_positive_and_negative_entries,
            invalidate_leaves_other_keys_cached,
            a_put_with_a_token_from_before_invalidate_stores_nothing,
            invalidate_all_drops_every_entry_and_every_older_token,
            tokens_are_equal_until_an_invalidation,
            a_refresh_token_fills_over_a_cached_entry,
            a_refresh_token_from_before_invalidate_stores_nothing,
            a_valid_entry_ages_in_the_last_part_of_its_fresh_time,
            a_valid_entry_is_kept_stale_after_its_fresh_time,
            invalidations_drop_stale_entries_too,
        );
    };
    ($make:expr, owners) => {
        $crate::key_cache_conformance!($make);
        $crate::key_cache_conformance!(@checks $make;
            invalidate_owner_drops_that_owners_keys_only,
            an_owned_put_with_a_token_from_before_invalidate_owner_stores_nothing,
            invalidate_owner_drops_stale_entries_too,
        );
    };
    (@checks $make:expr; $($check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::cache::conformance::run($make, $crate::cache::conformance::$check);
            }
        )+
    };
}

const LONG: Ttl = Ttl::fresh(Duration::from_secs(60));
/// Short enough to wait out, long enough that a read right after the put
/// can't miss it on a busy machine.
const SHORT: Ttl = Ttl::fresh(Duration::from_secs(1));
const PAST_SHORT: Duration = Duration::from_millis(1_600);
/// Fresh for a second, then stale for a minute.
const STALE_LONG: Ttl = Ttl {
    stale: Duration::from_secs(60),
    ..SHORT
};

fn hash(name: &str) -> KeyHash {
    KeyHash::of(format!("tower-api-key conformance {name}"))
}

fn valid(id: u64) -> Verdict<Client> {
    Verdict::Valid(Arc::new(Client { id, owner: None }))
}

fn owned(id: u64, owner: &str) -> Verdict<Client> {
    Verdict::Valid(Arc::new(Client {
        id,
        owner: Some(owner.to_owned()),
    }))
}

/// What a read found, in a form assertions compare: `Some(Some(id))` a
/// valid entry, `Some(None)` a negative one, `None` a miss.
async fn found<C: KeyCache<Principal = Client>>(cache: &C, hash: &KeyHash) -> Option<Option<u64>> {
    match seen(cache, hash).await {
        Seen::Hit(id) => Some(id),
        Seen::Aging(id) => Some(Some(id)),
        Seen::Stale(_) | Seen::Miss => None,
    }
}

/// What a read found, with its kind.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Hit(Option<u64>),
    Aging(u64),
    Stale(u64),
    Miss,
}

async fn seen<C: KeyCache<Principal = Client>>(cache: &C, hash: &KeyHash) -> Seen {
    match cache.get(hash).await.expect("get") {
        CacheRead::Hit(Verdict::Valid(p)) => Seen::Hit(Some(p.id)),
        CacheRead::Hit(Verdict::Invalid) => Seen::Hit(None),
        CacheRead::Aging(p) => Seen::Aging(p.id),
        CacheRead::Miss {
            stale: Some(p),
            degraded: None,
            ..
        } => Seen::Stale(p.id),
        CacheRead::Miss {
            stale: None,
            degraded: None,
            ..
        } => Seen::Miss,
        CacheRead::Miss {
            degraded: Some(error),
            ..
        } => panic!("a miss reported as degraded: {error}"),
    }
}

/// The token of a read that must miss.
async fn miss<C: KeyCache<Principal = Client>>(cache: &C, hash: &KeyHash) -> C::Token {
    match cache.get(hash).await.expect("get") {
        CacheRead::Miss {
            token,
            degraded,
            stale,
        } => {
            assert!(degraded.is_none(), "a plain miss reported as degraded");
            assert!(stale.is_none(), "a plain miss carried a stale verdict");
            token
        }
        CacheRead::Hit(_) | CacheRead::Aging(_) => panic!("expected a miss, got a hit"),
    }
}

async fn fill<C: KeyCache<Principal = Client>>(
    cache: &C,
    hash: KeyHash,
    verdict: Verdict<Client>,
    ttl: Ttl,
) {
    let token = cache.refresh_token(&hash).await.expect("refresh_token");
    cache.put(hash, token, verdict, ttl).await.expect("put");
}

/// A miss carries a token; a put with it makes the next read a hit with that
/// principal.
pub async fn a_miss_then_a_put_is_a_hit<C: KeyCache<Principal = Client>>(cache: C) {
    let a = hash("a");
    let token = miss(&cache, &a).await;
    cache.put(a, token, valid(7), LONG).await.expect("put");
    assert_eq!(found(&cache, &a).await, Some(Some(7)));
}

/// An `Invalid` verdict is stored and read back as a negative hit.
pub async fn negative_verdicts_are_stored_too<C: KeyCache<Principal = Client>>(cache: C) {
    let a = hash("a");
    let token = miss(&cache, &a).await;
    cache
        .put(a, token, Verdict::Invalid, LONG)
        .await
        .expect("put");
    assert_eq!(found(&cache, &a).await, Some(None));
}

/// A valid verdict replaces a negative one and the other way round.
pub async fn storing_one_kind_replaces_the_other<C: KeyCache<Principal = Client>>(cache: C) {
    let a = hash("a");
    fill(&cache, a, Verdict::Invalid, LONG).await;
    fill(&cache, a, valid(1), LONG).await;
    assert_eq!(
        found(&cache, &a).await,
        Some(Some(1)),
        "valid over negative"
    );
    fill(&cache, a, Verdict::Invalid, LONG).await;
    assert_eq!(found(&cache, &a).await, Some(None), "negative over valid");
}

/// Each entry lives for the TTL its put gave, and no longer.
pub async fn entries_expire_after_their_own_ttl<C: KeyCache<Principal = Client>>(cache: C) {
    let (short, long, negative) = (hash("short"), hash("long"), hash("negative"));
    fill(&cache, short, valid(1), SHORT).await;
    fill(&cache, long, valid(2), LONG).await;
    fill(&cache, negative, Verdict::Invalid, SHORT).await;
    assert_eq!(found(&cache, &short).await, Some(Some(1)));
    assert_eq!(found(&cache, &negative).await, Some(None));
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(found(&cache, &short).await, None, "outlived its TTL");
    assert_eq!(
        found(&cache, &negative).await,
        None,
        "a negative entry outlived its TTL"
    );
    assert_eq!(found(&cache, &long).await, Some(Some(2)), "expired early");
}

/// A replaced entry gets the new entry's deadline, not the old one's.
pub async fn replacing_an_entry_resets_its_deadline<C: KeyCache<Principal = Client>>(cache: C) {
    let a = hash("a");
    fill(&cache, a, valid(1), LONG).await;
    fill(&cache, a, valid(2), SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(found(&cache, &a).await, None, "kept the old deadline");
}

/// `invalidate` drops a valid entry and a negative one.
pub async fn invalidate_drops_positive_and_negative_entries<C: KeyCache<Principal = Client>>(
    cache: C,
) {
    let (a, b) = (hash("a"), hash("b"));
    fill(&cache, a, valid(1), LONG).await;
    fill(&cache, b, Verdict::Invalid, LONG).await;
    cache.invalidate(&a).await.expect("invalidate");
    cache.invalidate(&b).await.expect("invalidate");
    assert_eq!(found(&cache, &a).await, None, "a valid entry survived");
    assert_eq!(found(&cache, &b).await, None, "a negative entry survived");
}

/// `invalidate` of one key leaves the others cached.
pub async fn invalidate_leaves_other_keys_cached<C: KeyCache<Principal = Client>>(cache: C) {
    let (a, b) = (hash("a"), hash("b"));
    fill(&cache, a, valid(1), LONG).await;
    fill(&cache, b, valid(2), LONG).await;
    cache.invalidate(&a).await.expect("invalidate");
    assert_eq!(found(&cache, &b).await, Some(Some(2)));
}

/// Rule 1: a lookup that read before `invalidate` can't write after it.
pub async fn a_put_with_a_token_from_before_invalidate_stores_nothing<
    C: KeyCache<Principal = Client>,
>(
    cache: C,
) {
    let a = hash("a");
    let stale = miss(&cache, &a).await;
    cache.invalidate(&a).await.expect("invalidate");
    cache.put(a, stale, valid(1), LONG).await.expect("put");
    assert_eq!(
        found(&cache, &a).await,
        None,
        "a stale refill undid the invalidation"
    );
    let fresh = miss(&cache, &a).await;
    cache.put(a, fresh, valid(2), LONG).await.expect("put");
    assert_eq!(
        found(&cache, &a).await,
        Some(Some(2)),
        "a fresh token must fill"
    );
}

/// `invalidate_all` drops every entry, and no token from before it fills.
pub async fn invalidate_all_drops_every_entry_and_every_older_token<
    C: KeyCache<Principal = Client>,
>(
    cache: C,
) {
    let (a, b, c) = (hash("a"), hash("b"), hash("c"));
    fill(&cache, a, valid(1), LONG).await;
    fill(&cache, b, Verdict::Invalid, LONG).await;
    let stale = miss(&cache, &c).await;
    cache.invalidate_all().await.expect("invalidate_all");
    assert_eq!(found(&cache, &a).await, None, "a valid entry survived");
    assert_eq!(found(&cache, &b).await, None, "a negative entry survived");
    cache.put(c, stale, valid(3), LONG).await.expect("put");
    assert_eq!(found(&cache, &c).await, None, "a stale refill undid it");
    let fresh = miss(&cache, &c).await;
    cache.put(c, fresh, valid(4), LONG).await.expect("put");
    assert_eq!(
        found(&cache, &c).await,
        Some(Some(4)),
        "a fresh token must fill"
    );
}

/// Rule 2: misses with no invalidation between them give equal tokens (so
/// concurrent misses share one lookup); an invalidation makes the next one
/// differ (so a request after a revocation never shares a lookup from
/// before it).
pub async fn tokens_are_equal_until_an_invalidation<C: KeyCache<Principal = Client>>(cache: C) {
    let a = hash("a");
    let first = miss(&cache, &a).await;
    let second = miss(&cache, &a).await;
    assert!(
        first == second,
        "two misses with nothing between them differ"
    );
    cache.invalidate(&a).await.expect("invalidate");
    let after = miss(&cache, &a).await;
    assert!(
        first != after,
        "a token from before invalidate equals one after"
    );
    cache.invalidate_all().await.expect("invalidate_all");
    let after_all = miss(&cache, &a).await;
    assert!(
        after != after_all,
        "a token from before invalidate_all equals one after"
    );
}

/// Rule 3: a refresh token replaces what is cached.
pub async fn a_refresh_token_fills_over_a_cached_entry<C: KeyCache<Principal = Client>>(cache: C) {
    let a = hash("a");
    fill(&cache, a, valid(1), LONG).await;
    let token = cache.refresh_token(&a).await.expect("refresh_token");
    cache
        .put(a, token, Verdict::Invalid, LONG)
        .await
        .expect("put");
    assert_eq!(
        found(&cache, &a).await,
        Some(None),
        "the refresh did not replace it"
    );
}

/// Rule 3 keeps rule 1: a refresh token from before `invalidate` stores
/// nothing.
pub async fn a_refresh_token_from_before_invalidate_stores_nothing<
    C: KeyCache<Principal = Client>,
>(
    cache: C,
) {
    let a = hash("a");
    let stale = cache.refresh_token(&a).await.expect("refresh_token");
    cache.invalidate(&a).await.expect("invalidate");
    cache.put(a, stale, valid(1), LONG).await.expect("put");
    assert_eq!(
        found(&cache, &a).await,
        None,
        "a stale refresh undid the invalidation"
    );
}

/// Refresh-ahead: a valid entry is an [`Aging`](CacheRead::Aging) hit in
/// the last `refresh` of its fresh time, and a plain hit before; a negative
/// entry never ages.
pub async fn a_valid_entry_ages_in_the_last_part_of_its_fresh_time<
    C: KeyCache<Principal = Client>,
>(
    cache: C,
) {
    let (a, n) = (hash("a"), hash("n"));
    let ttl = Ttl {
        fresh: Duration::from_secs(2),
        refresh: Duration::from_secs(1),
        stale: Duration::ZERO,
    };
    fill(&cache, a, valid(1), ttl).await;
    fill(&cache, n, Verdict::Invalid, ttl).await;
    assert_eq!(seen(&cache, &a).await, Seen::Hit(Some(1)), "aged at once");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(seen(&cache, &a).await, Seen::Aging(1), "did not age");
    assert_eq!(
        seen(&cache, &n).await,
        Seen::Hit(None),
        "a negative entry aged"
    );
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(
        seen(&cache, &a).await,
        Seen::Miss,
        "outlived its fresh time"
    );
}

/// Serve-stale: a valid entry is kept `stale` past its fresh time, as a
/// miss that carries it (whose token fills as any miss's does); then gone.
/// A negative entry is never kept.
pub async fn a_valid_entry_is_kept_stale_after_its_fresh_time<C: KeyCache<Principal = Client>>(
    cache: C,
) {
    let (a, b, n) = (hash("a"), hash("b"), hash("n"));
    let ttl = Ttl {
        stale: Duration::from_millis(1_500),
        ..SHORT
    };
    fill(&cache, a, valid(1), ttl).await;
    fill(&cache, b, valid(2), ttl).await;
    fill(&cache, n, Verdict::Invalid, ttl).await;
    assert_eq!(seen(&cache, &a).await, Seen::Hit(Some(1)));
    tokio::time::sleep(Duration::from_millis(1_400)).await;
    assert_eq!(seen(&cache, &a).await, Seen::Stale(1), "not kept stale");
    assert_eq!(
        seen(&cache, &n).await,
        Seen::Miss,
        "a negative entry kept stale"
    );
    // The stale miss's token fills like any other.
    let CacheRead::Miss { token, .. } = cache.get(&b).await.expect("get") else {
        panic!("a hit past the fresh time");
    };
    cache.put(b, token, valid(3), LONG).await.expect("put");
    assert_eq!(
        seen(&cache, &b).await,
        Seen::Hit(Some(3)),
        "the stale miss's token did not fill"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        seen(&cache, &a).await,
        Seen::Miss,
        "kept past its stale time"
    );
}

/// Revocation removes, it does not expire: after `invalidate` or
/// `invalidate_all` no stale copy is left to carry.
pub async fn invalidations_drop_stale_entries_too<C: KeyCache<Principal = Client>>(cache: C) {
    let (a, b) = (hash("a"), hash("b"));
    fill(&cache, a, valid(1), STALE_LONG).await;
    fill(&cache, b, valid(2), STALE_LONG).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(seen(&cache, &a).await, Seen::Stale(1));
    cache.invalidate(&a).await.expect("invalidate");
    assert_eq!(seen(&cache, &a).await, Seen::Miss, "stale after invalidate");
    assert_eq!(seen(&cache, &b).await, Seen::Stale(2));
    cache.invalidate_all().await.expect("invalidate_all");
    assert_eq!(
        seen(&cache, &b).await,
        Seen::Miss,
        "stale after invalidate_all"
    );
}

/// `invalidate_owner` drops every key of that owner, and only those.
pub async fn invalidate_owner_drops_that_owners_keys_only<C: KeyCache<Principal = Client>>(
    cache: C,
) {
    let (a1, a2, g, n) = (hash("a1"), hash("a2"), hash("g"), hash("n"));
    fill(&cache, a1, owned(1, "acme"), LONG).await;
    fill(&cache, a2, owned(2, "acme"), LONG).await;
    fill(&cache, g, owned(3, "globex"), LONG).await;
    fill(&cache, n, valid(4), LONG).await;
    cache
        .invalidate_owner("acme")
        .await
        .expect("invalidate_owner");
    assert_eq!(found(&cache, &a1).await, None, "an acme key survived");
    assert_eq!(found(&cache, &a2).await, None, "an acme key survived");
    assert_eq!(
        found(&cache, &g).await,
        Some(Some(3)),
        "globex's key went too"
    );
    assert_eq!(
        found(&cache, &n).await,
        Some(Some(4)),
        "an unowned key went too"
    );
}

/// Rule 1 for owners: a lookup that read before `invalidate_owner` can't
/// write that owner's key after it.
pub async fn an_owned_put_with_a_token_from_before_invalidate_owner_stores_nothing<
    C: KeyCache<Principal = Client>,
>(
    cache: C,
) {
    let a = hash("a");
    let stale = miss(&cache, &a).await;
    cache
        .invalidate_owner("acme")
        .await
        .expect("invalidate_owner");
    cache
        .put(a, stale, owned(1, "acme"), LONG)
        .await
        .expect("put");
    assert_eq!(
        found(&cache, &a).await,
        None,
        "a stale owned refill undid it"
    );
    let fresh = miss(&cache, &a).await;
    cache
        .put(a, fresh, owned(2, "acme"), LONG)
        .await
        .expect("put");
    assert_eq!(
        found(&cache, &a).await,
        Some(Some(2)),
        "a fresh token must fill"
    );
}

/// `invalidate_owner` leaves no stale copy of that owner's keys.
pub async fn invalidate_owner_drops_stale_entries_too<C: KeyCache<Principal = Client>>(cache: C) {
    let (a, g) = (hash("a"), hash("g"));
    fill(&cache, a, owned(1, "acme"), STALE_LONG).await;
    fill(&cache, g, owned(2, "globex"), STALE_LONG).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(seen(&cache, &a).await, Seen::Stale(1));
    cache
        .invalidate_owner("acme")
        .await
        .expect("invalidate_owner");
    assert_eq!(
        seen(&cache, &a).await,
        Seen::Miss,
        "stale after invalidate_owner"
    );
    assert_eq!(
        seen(&cache, &g).await,
        Seen::Stale(2),
        "globex's stale key went too"
    );
}
