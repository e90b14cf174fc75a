//! Stage 6, the rate limit: an authenticated request counts against its
//! key's policies (or its owner's), at its route's cost, in the limiter's
//! counter store; over a quota it is answered `429`. While the store fails
//! (or its breaker is open), the limiter's fallback decides.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{Decided, Request, RequestPath, Step, Wait};
use crate::cache::KeyCache;
use crate::ratelimit::{
    Counted, CounterError, CounterKey, Fallback, Hit, RateLimitStatus, RateLimiter,
};
use crate::rejection::{AuthRejection, RejectionKind};
use crate::{KeyHash, Lookup, Principal};

/// A request on its way through the rate limit: who it is, whose counters
/// it counts against, and at what cost.
pub(crate) struct Admission<P> {
    hash: KeyHash,
    principal: Arc<P>,
    key: CounterKey,
    cost: u64,
}

impl<P> Clone for Admission<P> {
    fn clone(&self) -> Self {
        Self {
            hash: self.hash,
            principal: Arc::clone(&self.principal),
            key: self.key,
            cost: self.cost,
        }
    }
}

/// A request waiting on a counter store that didn't answer at once.
pub(crate) struct Counting<P> {
    hit: Hit,
    admission: Admission<P>,
}

impl<P> Counting<P> {
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Counted, CounterError>> {
        std::pin::Pin::new(&mut self.hit).poll(cx)
    }

    pub(super) fn take(&self) -> Admission<P> {
        self.admission.clone()
    }
}

/// Whose counters the request counts against: its owner's when the
/// principal says its limits count per owner (and it has one), else its
/// key's.
fn counter_key<P: Principal>(principal: &P, hash: &KeyHash) -> CounterKey {
    if principal.limits_per_owner() {
        if let Some(owner) = principal.owner() {
            return CounterKey::owner(&owner);
        }
    }
    CounterKey::key(hash)
}

impl<C, L> RequestPath<C, L>
where
    C: KeyCache,
    L: Lookup<C::Principal>,
{
    /// Stage 6: counts the request against the key's policies, when the
    /// layer limits rates, the key has policies and its route isn't exempt.
    pub(super) fn admit<B>(
        &self,
        req: &mut http::Request<B>,
        request: Request,
        principal: Arc<C::Principal>,
    ) -> Step<C> {
        let Some(limiter) = &self.config.rate_limiter else {
            return self.forward(req, &request.hash, principal, None);
        };
        let key = counter_key(&*principal, &request.hash);
        let hit = match limiter.limits(principal.rate_limits()) {
            Some(limits) if request.cost > 0 => limiter.hit(&key, limits, request.cost),
            _ => return self.forward(req, &request.hash, principal, None),
        };
        let admission = Admission {
            hash: request.hash,
            principal,
            key,
            cost: request.cost,
        };
        match hit {
            // The breaker is open: the store isn't asked.
            None => self.fall_back(req, limiter, admission),
            Some(Hit::Ready(Some(counted))) => self.on_count(req, admission, counted),
            Some(hit) => Step::Wait(Wait::Count(Counting { hit, admission })),
        }
    }

    /// What the counter store answered.
    pub(super) fn on_count<B>(
        &self,
        req: &mut http::Request<B>,
        admission: Admission<C::Principal>,
        counted: Result<Counted, CounterError>,
    ) -> Step<C> {
        let Some(limiter) = &self.config.rate_limiter else {
            return self.forward(req, &admission.hash, admission.principal, None);
        };
        match counted {
            Ok(counted) => {
                limiter.answered(true);
                self.decide(req, limiter, admission, counted)
            }
            Err(error) => {
                self.shared.counters.rate_limit_store_errors.incr();
                let opened = limiter.answered(false);
                if let Some(suppressed) = self.shared.counter_warnings.allow() {
                    let fallback = limiter.fallback_kind();
                    tracing::warn!(%error, opened, ?fallback, suppressed, "rate-limit counter store failed; falling back");
                }
                self.fall_back(req, limiter, admission)
            }
        }
    }

    /// The store can't count: the limiter's fallback decides.
    fn fall_back<B>(
        &self,
        req: &mut http::Request<B>,
        limiter: &RateLimiter,
        admission: Admission<C::Principal>,
    ) -> Step<C> {
        self.shared.counters.rate_limit_fallbacks.incr();
        match limiter.fallback_kind() {
            Fallback::Open => self.forward(req, &admission.hash, admission.principal, None),
            Fallback::Closed => self.reject(RejectionKind::RateLimiterUnavailable),
            Fallback::Memory => {
                let limits = limiter
                    .limits(admission.principal.rate_limits())
                    .unwrap_or_default();
                let counted = limiter.hit_fallback(&admission.key, limits, admission.cost);
                self.decide(req, limiter, admission, counted)
            }
        }
    }

    /// Admitted: forward, with the policies' status in the extensions (and
    /// the fields, when the limiter writes them on every response).
    /// Refused: `429`.
    fn decide<B>(
        &self,
        req: &mut http::Request<B>,
        limiter: &RateLimiter,
        admission: Admission<C::Principal>,
        counted: Counted,
    ) -> Step<C> {
        let limits = limiter
            .limits(admission.principal.rate_limits())
            .unwrap_or_default();
        let status = RateLimitStatus::new(limits, &counted);
        let counters = &self.shared.counters;
        if counted.admitted {
            counters.rate_limit_admitted.incr();
            let extra = limiter
                .fields()
                .map(|fields| Box::new(status.headers(fields)));
            req.extensions_mut().insert(status);
            return self.forward(req, &admission.hash, admission.principal, extra);
        }
        counters.rate_limited.incr();
        let rejection = AuthRejection::rate_limited(
            Arc::clone(&self.config.rejection),
            status,
            limiter.refusal_fields(),
        );
        Step::Done(Decided::Err(rejection))
    }
}
