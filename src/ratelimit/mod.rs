//! Rate limits per key: the stage after authentication.
//!
//! Once a request is authenticated the layer knows which key made it; with a
//! [`RateLimiter`] ([`ApiKeyAuthLayer::rate_limits`](crate::ApiKeyAuthLayer::rate_limits))
//! it counts the request against the key's policies
//! ([`Principal::rate_limits`](crate::Principal::rate_limits), or the
//! limiter's default) and answers `429` when one is spent. Requests refused
//! by authentication never touch a counter.
//!
//! | part | where |
//! | --- | --- |
//! | [`RateLimit`], [`Algorithm`] | `policy.rs`: a quota per window; sliding or fixed |
//! | the arithmetic | `window.rs`: rolling and weighing counts, `Retry-After`, what remains |
//! | [`CounterStore`] | `store.rs`: the backend contract |
//! | [`MemoryCounters`] | `memory.rs`: in this process, bounded |
//! | `RedisCounters` | `redis.rs`: in Redis, one script per request (feature `redis`) |
//! | `LocalFirst` | `local_first.rs`: Redis counts, decided here, sent in batches (feature `redis`) |
//! | [`RateLimitSettings`] | `settings.rs`: the backend picked from the environment |
//! | the response fields | `headers.rs`: `RateLimit-Policy`, `RateLimit`, `X-RateLimit-*` |
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use tower_api_key::cache::MemoryCache;
//! use tower_api_key::ratelimit::{MemoryCounters, RateLimiter};
//! use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Principal, RateLimit};
//!
//! struct Client { limits: Vec<RateLimit> }
//! impl Principal for Client {
//!     fn rate_limits(&self) -> Option<&[RateLimit]> {
//!         Some(&self.limits)
//!     }
//! }
//!
//! let auth = ApiKeyAuthLayer::new(
//!     MemoryCache::new(),
//!     lookup_fn(|_: KeyHash| async { Ok::<Option<Client>, Infallible>(None) }),
//! )
//! .rate_limits(
//!     RateLimiter::new(MemoryCounters::new())
//!         .default_limit(RateLimit::per_minute(600))
//!         .headers_on_every_response(),
//! )
//! .route_cost("/v1/reports", 10)
//! .exempt_from_rate_limits("/v1/usage");
//! # let _ = auth;
//! ```

mod headers;
#[cfg(feature = "redis")]
mod local_first;
mod memory;
pub(crate) mod policy;
#[cfg(feature = "redis")]
mod redis;
mod settings;
mod store;
mod window;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::noop_waker_ref;
use http::HeaderMap;
use smallvec::SmallVec;

pub(crate) use headers::Fields;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use local_first::{LocalFirst, LocalFirstBuilder, LocalFirstHit, LocalFirstStats};
pub use memory::{MemoryCounters, MemoryCountersBuilder};
pub use policy::Algorithm;
use policy::RateLimit;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisCounters, RedisCountersBuilder, RedisHit};
pub use settings::{RateLimitSettings, RateLimitSettingsError};
pub use store::{Counted, CounterError, CounterKey, CounterStore};
pub use window::Quota;

use crate::breaker::{Breaker, DEFAULT_COOLDOWN, DEFAULT_THRESHOLD};

/// What happens to requests while the counter store fails (or its breaker
/// is open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// Count in this process instead (the default): each instance enforces
    /// the limits alone, so across `n` instances a key may get up to `n`
    /// times its quota until the store is back.
    #[default]
    Memory,
    /// Admit every request, uncounted.
    Open,
    /// Refuse with `503` and `Retry-After`.
    Closed,
}

/// The rate-limit stage's configuration: where counts live, the default
/// policies, how windows count, which response fields are written, and what
/// happens when the store fails.
///
/// `Clone` shares the store.
#[derive(Clone)]
pub struct RateLimiter {
    store: Arc<dyn ErasedStore>,
    default: Vec<RateLimit>,
    algorithm: Algorithm,
    on_every_response: bool,
    x_ratelimit: bool,
    fallback: Fallback,
    fallback_store: MemoryCounters,
    breaker: Arc<Breaker>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("store", &self.store.kind())
            .field("default", &self.default)
            .field("algorithm", &self.algorithm)
            .field("on_every_response", &self.on_every_response)
            .field("x_ratelimit", &self.x_ratelimit)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Counts in `store`, with no default policy (a key whose principal
    /// reports no limits is unlimited), sliding windows, the IETF fields on
    /// `429` responses only, and in-process counters while the store fails
    /// (its breaker opens after 3 failures in a row, and probes again after a
    /// second).
    pub fn new(store: impl CounterStore) -> Self {
        Self {
            store: Arc::new(store),
            default: Vec::new(),
            algorithm: Algorithm::default(),
            on_every_response: false,
            x_ratelimit: false,
            fallback: Fallback::default(),
            fallback_store: MemoryCounters::new(),
            breaker: Arc::new(Breaker::new(DEFAULT_THRESHOLD, DEFAULT_COOLDOWN)),
        }
    }

    /// The policy of keys whose principal reports none (add several with
    /// repeated calls).
    pub fn default_limit(mut self, limit: RateLimit) -> Self {
        self.default.push(limit);
        self
    }

    /// How windows count (default [`Algorithm::SlidingWindow`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Writes `RateLimit-Policy` and `RateLimit` on every response to a
    /// limited key, not only on `429`.
    pub fn headers_on_every_response(mut self) -> Self {
        self.on_every_response = true;
        self
    }

    /// Also writes GitHub's `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` (epoch seconds), of the policy closest to
    /// refusing, wherever the IETF fields go.
    pub fn x_ratelimit_headers(mut self) -> Self {
        self.x_ratelimit = true;
        self
    }

    /// What happens while the store fails (default [`Fallback::Memory`]).
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// The store's breaker: open after `failures` in a row, probe again after
    /// `cooldown` (defaults 3 and one second).
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker = Arc::new(Breaker::new(failures, cooldown));
        self
    }

    /// The policies `limits` apply, `None` when they are empty (unlimited).
    pub(crate) fn limits<'a>(&'a self, own: Option<&'a [RateLimit]>) -> Option<&'a [RateLimit]> {
        Some(own.unwrap_or(&self.default)).filter(|l| !l.is_empty())
    }

    /// The fields of an admitted request's response, if the limiter writes
    /// them on every response.
    pub(crate) fn fields(&self) -> Option<Fields> {
        self.on_every_response.then(|| self.refusal_fields())
    }

    /// The fields of a `429`.
    pub(crate) fn refusal_fields(&self) -> Fields {
        Fields {
            ietf: true,
            x_ratelimit: self.x_ratelimit,
        }
    }

    pub(crate) fn fallback_kind(&self) -> Fallback {
        self.fallback
    }

    /// Counts the request in the store, unless its breaker is open (`None`:
    /// fall back).
    pub(crate) fn hit(&self, key: &CounterKey, limits: &[RateLimit], cost: u64) -> Option<Hit> {
        self.breaker
            .allows()
            .then(|| self.store.hit(key, limits, self.algorithm, cost))
    }

    /// Tells the breaker how the store answered; returns whether this
    /// failure opened it.
    pub(crate) fn answered(&self, ok: bool) -> bool {
        if ok {
            self.breaker.succeeded();
            false
        } else {
            self.breaker.failed()
        }
    }

    /// Counts in this process instead.
    pub(crate) fn hit_fallback(
        &self,
        key: &CounterKey,
        limits: &[RateLimit],
        cost: u64,
    ) -> Counted {
        self.fallback_store.count(key, limits, self.algorithm, cost)
    }

    /// Forgets `key`'s counts, in the store and in the fallback.
    pub(crate) async fn reset(&self, key: &CounterKey) -> Result<(), CounterError> {
        CounterStore::reset(&self.fallback_store, key).await?;
        self.store.reset(key).await
    }
}

/// What a limited request was told: each policy and what it has left. In
/// the request's extensions for the handler (`/v1/me` of the quickstart
/// shows it), and what `429` responses report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitStatus {
    entries: SmallVec<[(RateLimit, Quota); 2]>,
}

impl RateLimitStatus {
    pub(crate) fn new(limits: &[RateLimit], counted: &Counted) -> Self {
        Self {
            entries: limits
                .iter()
                .cloned()
                .zip(counted.quotas.iter().copied())
                .collect(),
        }
    }

    /// Each policy, with what it has left.
    pub fn policies(&self) -> impl Iterator<Item = (&RateLimit, &Quota)> {
        self.entries.iter().map(|(l, q)| (l, q))
    }

    /// The policies that refused the request.
    pub fn violated(&self) -> impl Iterator<Item = &RateLimit> {
        self.entries
            .iter()
            .filter(|(_, q)| q.retry_after.is_some())
            .map(|(l, _)| l)
    }

    /// Seconds until the refused request would be admitted: the longest
    /// wait among the policies that refused it (a request costing more than
    /// a quota never fits: then the longest window).
    pub fn retry_after(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter_map(|(l, q)| {
                // A sliding window's wait may be up to two windows: it is
                // kept whole; only "never" becomes the window.
                q.retry_after.map(|r| {
                    if r == u64::MAX {
                        l.window().as_secs()
                    } else {
                        r
                    }
                })
            })
            .max()
    }

    /// The response fields for this status.
    pub(crate) fn headers(&self, fields: Fields) -> HeaderMap {
        let mut map = HeaderMap::new();
        headers::write(self, fields, &mut map);
        map
    }
}

/// A [`CounterStore`] behind one type: its hit answered at once (an
/// in-process store), or boxed (a remote one, which allocates anyway).
trait ErasedStore: Send + Sync {
    /// The store's type, for `Debug`.
    fn kind(&self) -> &'static str;

    fn hit(&self, key: &CounterKey, limits: &[RateLimit], algorithm: Algorithm, cost: u64) -> Hit;

    fn reset<'a>(
        &'a self,
        key: &'a CounterKey,
    ) -> Pin<Box<dyn Future<Output = Result<(), CounterError>> + Send + 'a>>;
}

impl<S: CounterStore> ErasedStore for S {
    fn kind(&self) -> &'static str {
        std::any::type_name::<S>()
    }

    fn hit(&self, key: &CounterKey, limits: &[RateLimit], algorithm: Algorithm, cost: u64) -> Hit {
        let mut hit = CounterStore::hit(self, key, limits, algorithm, cost);
        match Pin::new(&mut hit).poll(&mut Context::from_waker(noop_waker_ref())) {
            Poll::Ready(counted) => Hit::Ready(Some(counted)),
            Poll::Pending => Hit::Waiting(Box::pin(hit)),
        }
    }

    fn reset<'a>(
        &'a self,
        key: &'a CounterKey,
    ) -> Pin<Box<dyn Future<Output = Result<(), CounterError>> + Send + 'a>> {
        Box::pin(CounterStore::reset(self, key))
    }
}

/// A counter store's answer to one request, as the request path polls it.
pub(crate) enum Hit {
    /// Answered at once (`None` once taken).
    Ready(Option<Result<Counted, CounterError>>),
    Waiting(Pin<Box<dyn Future<Output = Result<Counted, CounterError>> + Send>>),
}

impl Future for Hit {
    type Output = Result<Counted, CounterError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Hit::Ready(answer) => match answer.take() {
                Some(answer) => Poll::Ready(answer),
                None => Poll::Pending,
            },
            Hit::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_after_keeps_a_sliding_window_wait_longer_than_the_window() {
        // One per minute, spent at the start of a window: it fades only
        // through the next one, so the wait is nearly two windows.
        let limits = [RateLimit::new("m", 1, Duration::from_secs(60)).unwrap()];
        let store = MemoryCounters::builder()
            .clock(|| std::time::UNIX_EPOCH + Duration::from_secs(6_000))
            .build();
        let key = CounterKey::key(&crate::KeyHash::of("k"));
        assert!(
            store
                .count(&key, &limits, Algorithm::SlidingWindow, 1)
                .admitted
        );
        let refused = store.count(&key, &limits, Algorithm::SlidingWindow, 1);
        assert!(!refused.admitted);
        let wait = RateLimitStatus::new(&limits, &refused).retry_after();
        assert!(wait.is_some_and(|w| w > 60), "{wait:?}");
        // A request that costs more than the quota: the window, not "never".
        let never = store.count(&key, &limits, Algorithm::SlidingWindow, 2);
        assert_eq!(
            RateLimitStatus::new(&limits, &never).retry_after(),
            Some(60)
        );
    }
}
