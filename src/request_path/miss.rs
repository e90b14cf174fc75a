//! Stage 5, the miss path: concurrent misses for one key share one call of
//! the lookup (single flight, `flight.rs`), and its answer is stored with
//! the miss's token: valid keys for the positive TTL (never past the key's
//! own expiry; with serve-stale, kept that much longer; with refresh-ahead,
//! with a refresh point), unknown ones for the negative TTL, failures never.
//! A refresh-ahead is the same flight, started in the background by a hit
//! that found its entry aging.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::{poll_fn, BoxFuture, FutureExt};

use super::flight::{Flight, FlightGuard, Outcome};
use super::{judge, RequestPath};
use crate::cache::{CacheRead, KeyCache, Ttl, Verdict};
use crate::telemetry;
use crate::{BoxError, KeyHash, Lookup, Principal};

/// What to cache, and for how long.
type ToStore<P> = Option<(Verdict<P>, Ttl)>;

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
    /// A refresh-ahead: as `Refresh`, in the background; failed, it holds
    /// its slot for a while, so the aging entry's hits don't retry at once.
    #[cfg(feature = "tokio")]
    Ahead,
}

/// How long a failed refresh-ahead keeps another from starting for its key.
#[cfg(feature = "tokio")]
const REFRESH_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

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
            // Started by `refresh_ahead`, never here.
            #[cfg(feature = "tokio")]
            Miss::Ahead => (None, false),
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

    /// Refreshes `hash`'s aging entry in the background: a flight of its
    /// own (its token taken before its lookup, so a revocation in between
    /// wins), unless a lookup of the key is already in flight; spawned on
    /// the current Tokio runtime (outside one, nothing: the entry expires
    /// and the next request looks it up).
    pub(super) fn refresh_ahead(&self, hash: KeyHash) {
        #[cfg(feature = "tokio")]
        {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let refresh = self.shared.flights.start_unless_flying(hash, |guard| {
                self.clone().lookup_and_store(hash, Miss::Ahead, guard)
            });
            if let Some(flight) = refresh {
                self.shared.counters.refreshes.incr();
                runtime.spawn(async move {
                    flight.await;
                });
            }
        }
        #[cfg(not(feature = "tokio"))]
        let _ = hash;
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
            #[cfg(feature = "tokio")]
            let ahead = matches!(miss, Miss::Ahead);
            let token = match miss {
                Miss::Read(token) => {
                    // A request that missed just before another flight stored
                    // its answer (and left the registry) finds that answer
                    // here instead of looking the key up a second time. Any
                    // entry found is good: a backend only stores a fill whose
                    // token was still current, so it is at least as fresh as
                    // the read that missed.
                    let found = match cache.get(&hash).await {
                        Ok(CacheRead::Hit(verdict)) => Some(verdict),
                        Ok(CacheRead::Aging(principal)) => Some(Verdict::Valid(principal)),
                        _ => None,
                    };
                    if let Some(verdict) = found {
                        self.shared.counters.coalesced.incr();
                        return judge(verdict).map_or(Outcome::Invalid, Outcome::Valid);
                    }
                    Some(token)
                }
                Miss::Unreadable => None,
                // A fresh lookup replaces whatever is cached: take a token
                // that can, before the lookup starts.
                #[cfg(feature = "tokio")]
                Miss::Ahead => self.refresh_token(&hash).await,
                Miss::Refresh => self.refresh_token(&hash).await,
            };
            let (outcome, entry) = match self.lookup(hash).await {
                Ok(found) => self.conclude(found),
                Err(error) => {
                    self.shared.counters.lookup_errors.incr();
                    if let Some(suppressed) = self.shared.lookup_warnings.allow() {
                        tracing::warn!(key = %hash, %error, suppressed, "API key lookup failed");
                    }
                    #[cfg(feature = "tokio")]
                    if ahead {
                        tokio::time::sleep(REFRESH_BACKOFF).await;
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

    /// A token for a fill over whatever is cached, taken before the lookup
    /// starts; none when the cache can't give one (the answer is then not
    /// stored).
    async fn refresh_token(&self, hash: &KeyHash) -> Option<C::Token> {
        match self.shared.cache.refresh_token(hash).await {
            Ok(token) => Some(token),
            Err(error) => {
                self.note_cache_error("refresh", &error);
                None
            }
        }
    }

    /// One call of the user's lookup service, bounded by the lookup timeout
    /// (on a Tokio runtime; outside one it runs unbounded).
    async fn lookup(&self, hash: KeyHash) -> Result<Option<C::Principal>, BoxError> {
        self.shared.counters.lookups.incr();
        let timer = telemetry::Timer::start();
        let answer = self.bounded_lookup(hash).await;
        telemetry::lookup_took(timer.elapsed());
        answer
    }

    /// The lookup service's answer, within the timeout.
    async fn bounded_lookup(&self, hash: KeyHash) -> Result<Option<C::Principal>, BoxError> {
        let mut lookup = self.shared.lookup.clone();
        let call = async move {
            poll_fn(|cx| lookup.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            lookup.call(hash).await.map_err(Into::into)
        };
        #[cfg(feature = "tokio")]
        if self.config.lookup_timeout != Duration::MAX
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let limit = self.config.lookup_timeout;
            return match tokio::time::timeout(limit, call).await {
                Ok(answer) => answer,
                Err(_) => {
                    self.shared.counters.lookup_timeouts.incr();
                    Err(format!("the lookup took longer than its timeout, {limit:?}").into())
                }
            };
        }
        call.await
    }

    /// What a lookup's answer means for the request, and what to cache for
    /// how long (nothing when the TTL is zero).
    fn conclude(
        &self,
        found: Option<C::Principal>,
    ) -> (Outcome<C::Principal>, ToStore<C::Principal>) {
        let config = &self.config;
        let negative = (
            Outcome::Invalid,
            Verdict::Invalid,
            Ttl::fresh(config.negative_ttl),
        );
        let (outcome, verdict, ttl) = match found {
            None => negative,
            Some(principal) => match self.positive_ttl(&principal) {
                Some(ttl) => {
                    let principal = Arc::new(principal);
                    let outcome = Outcome::Valid(Arc::clone(&principal));
                    (outcome, Verdict::Valid(principal), ttl)
                }
                // Expired: invalid, and cached as such.
                None => negative,
            },
        };
        (outcome, (!ttl.fresh.is_zero()).then_some((verdict, ttl)))
    }

    /// A valid key's [`Ttl`]: the positive TTL, its refresh point and its
    /// stale time, none of them past the key's own expiry (when that comes
    /// first it ends the entry: nothing to refresh, nothing to keep);
    /// `None` once that expiry has passed.
    fn positive_ttl(&self, principal: &C::Principal) -> Option<Ttl> {
        let config = &self.config;
        #[cfg(feature = "tokio")]
        let refresh = config.refresh_ahead.map_or(Duration::ZERO, |part| {
            Duration::try_from_secs_f64(config.positive_ttl.as_secs_f64() * part)
                .unwrap_or(config.positive_ttl)
        });
        #[cfg(not(feature = "tokio"))]
        let refresh = Duration::ZERO;
        let ttl = Ttl {
            fresh: config.positive_ttl,
            refresh,
            stale: config.stale_for,
        };
        let Some(at) = principal.expires_at() else {
            return Some(ttl);
        };
        let left = at
            .duration_since(SystemTime::now())
            .ok()
            .filter(|d| !d.is_zero())?;
        Some(match left.checked_sub(ttl.fresh) {
            Some(after) => Ttl {
                stale: ttl.stale.min(after),
                ..ttl
            },
            None => Ttl::fresh(left),
        })
    }
}
