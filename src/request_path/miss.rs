//! Stage 5, the miss path: concurrent misses for one key share one call of
//! the lookup (single flight, `flight.rs`), and its answer is stored with
//! the miss's token: valid keys for the positive TTL (never past the key's
//! own expiry), unknown ones for the negative TTL, failures never.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::{poll_fn, BoxFuture, FutureExt};

use super::flight::{Flight, FlightGuard, Outcome};
use super::{judge, RequestPath};
use crate::cache::{CacheRead, KeyCache, Verdict};
use crate::{BoxError, KeyHash, Lookup, Principal};

/// What to cache, and for how long.
type ToStore<P> = Option<(Verdict<P>, Duration)>;

/// Why a request needs the lookup, and what its answer is stored with.
pub(super) enum Miss<T> {
    /// The cache missed: the answer is stored with this token, and the
    /// request shares a lookup started with an equal one.
    Read(T),
    /// The cache failed: nothing is stored, and the request shares a lookup
    /// of another such request.
    Unreadable,
    /// A cache-bypass route: a lookup of its own (it must see one that
    /// started after it arrived), whose answer replaces what is cached.
    Refresh,
}

impl<C, L> RequestPath<C, L>
where
    C: KeyCache,
    L: Lookup<C::Principal>,
{
    /// Joins or starts the lookup for `hash`.
    pub(super) fn flight(&self, hash: KeyHash, miss: Miss<C::Token>) -> Flight<C::Principal> {
        let counters = &self.shared.counters;
        counters.misses.incr();
        let (token, may_join) = match &miss {
            Miss::Read(token) => (Some(token.clone()), true),
            Miss::Unreadable => (None, true),
            Miss::Refresh => (None, false),
        };
        let (flight, joined) = self
            .shared
            .flights
            .join_or_start(hash, token, may_join, |guard| {
                self.clone().lookup_and_store(hash, miss, guard)
            });
        if joined {
            counters.coalesced.incr();
        }
        flight
    }

    /// The flight itself: the lookup, then the store.
    fn lookup_and_store(
        self,
        hash: KeyHash,
        miss: Miss<C::Token>,
        guard: FlightGuard<C::Principal, C::Token>,
    ) -> BoxFuture<'static, Outcome<C::Principal>> {
        async move {
            let _guard = guard;
            let cache = &self.shared.cache;
            let token = match miss {
                Miss::Read(token) => {
                    // A request that missed just before another flight stored
                    // its answer (and left the registry) finds that answer
                    // here instead of looking the key up a second time. Any
                    // entry found is good: a backend only stores a fill whose
                    // token was still current, so it is at least as fresh as
                    // the read that missed.
                    if let Ok(CacheRead::Hit(verdict)) = cache.get(&hash).await {
                        self.shared.counters.coalesced.incr();
                        return judge(verdict).map_or(Outcome::Invalid, Outcome::Valid);
                    }
                    Some(token)
                }
                Miss::Unreadable => None,
                // A fresh lookup replaces whatever is cached: take a token
                // that can, before the lookup starts.
                Miss::Refresh => match cache.refresh_token(&hash).await {
                    Ok(token) => Some(token),
                    Err(error) => {
                        self.note_cache_error("refresh", &error);
                        None
                    }
                },
            };
            let (outcome, entry) = match self.lookup(hash).await {
                Ok(found) => self.conclude(found),
                Err(error) => {
                    self.shared.counters.lookup_errors.incr();
                    if let Some(suppressed) = self.shared.lookup_warnings.allow() {
                        tracing::warn!(key = %hash, %error, suppressed, "API key lookup failed; answering 503");
                    }
                    return Outcome::Failed;
                }
            };
            if let (Some(token), Some((verdict, ttl))) = (token, entry) {
                if let Err(error) = cache.put(hash, token, verdict, ttl).await {
                    self.note_cache_error("put", &error);
                }
            }
            outcome
        }
        .boxed()
    }

    /// One call of the user's lookup service.
    async fn lookup(&self, hash: KeyHash) -> Result<Option<C::Principal>, BoxError> {
        self.shared.counters.lookups.incr();
        let mut lookup = self.shared.lookup.clone();
        poll_fn(|cx| lookup.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        lookup.call(hash).await.map_err(Into::into)
    }

    /// What a lookup's answer means for the request, and what to cache for
    /// how long (nothing when the TTL is zero).
    fn conclude(
        &self,
        found: Option<C::Principal>,
    ) -> (Outcome<C::Principal>, ToStore<C::Principal>) {
        let config = &self.config;
        let negative = (Outcome::Invalid, Verdict::Invalid, config.negative_ttl);
        let (outcome, verdict, ttl) = match found {
            None => negative,
            Some(principal) => match ttl_within_expiry(&principal, config.positive_ttl) {
                Some(ttl) => {
                    let principal = Arc::new(principal);
                    let outcome = Outcome::Valid(Arc::clone(&principal));
                    (outcome, Verdict::Valid(principal), ttl)
                }
                // Expired: invalid, and cached as such.
                None => negative,
            },
        };
        (outcome, (!ttl.is_zero()).then_some((verdict, ttl)))
    }
}

/// The positive TTL, capped by the key's own expiry; `None` once that has
/// passed.
fn ttl_within_expiry<P: Principal>(principal: &P, positive_ttl: Duration) -> Option<Duration> {
    match principal.expires_at() {
        None => Some(positive_ttl),
        Some(at) => at
            .duration_since(SystemTime::now())
            .ok()
            .filter(|d| !d.is_zero())
            .map(|d| d.min(positive_ttl)),
    }
}
