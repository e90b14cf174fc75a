//! The request path: what the layer does with one request, as its stages,
//! top to bottom.
//!
//! 1. [**Policy**](RequestPath::authenticate): the route's [`RoutePolicy`];
//!    a public route passes untouched.
//! 2. [**Read the key**](RequestPath::read_key) from the request
//!    ([`KeySource`](crate::KeySource)); with a
//!    [`KeyFormat`](crate::KeyFormat), a key that fails its checksum is
//!    refused here, before any cache or lookup work.
//! 3. **Hash** it ([`KeyHasher`](crate::KeyHasher)): from here on only the
//!    hash exists.
//! 4. [**Cache read**](RequestPath::on_read): a hit decides; a miss goes on.
//! 5. [**Miss: look up once, store**](RequestPath::look_up) (in `miss.rs`):
//!    concurrent misses share one lookup (`flight.rs`), whose answer is
//!    stored with the miss's token.
//! 6. [**Authorize**](RequestPath::authorize) (in `authorize.rs`): the
//!    route's [`Scopes`](crate::Scopes) against the key's, the key's
//!    networks against the client's address; refused, `403`, before any
//!    counter.
//! 7. [**Rate limit**](RequestPath::admit) (in `limit.rs`, with a
//!    [`RateLimiter`](crate::ratelimit::RateLimiter)): the key's policies, the
//!    route's cost, one hit of the counter store; over a quota, `429`.
//! 8. [**Usage**](RequestPath::forward) (with a
//!    [`UsageTracker`](crate::usage::UsageTracker)): the key's use noted in
//!    memory, recorded in batches off the request path.
//! 9. [**Forward**](RequestPath::forward): the principal into the request's
//!    extensions (the key itself was taken out of the request when it was
//!    read, unless the layer keeps it).
//!
//! Each stage is a method of [`RequestPath`] that either decides
//! ([`Step::Done`]) or names what it waits on ([`Step::Wait`]). The
//! service runs them inside `call` until one waits, so that a hit in an
//! in-process cache costs no state machine and no allocation; the response
//! future ([`ResponseFuture`](crate::future::ResponseFuture)) only polls
//! what is waited on ([`Authentication::poll`]) and then calls the inner
//! service or renders the rejection. A new stage is a method here and a
//! variant of [`Wait`] if it can wait; nothing else changes.

mod authorize;
mod flight;
mod limit;
mod miss;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::task::noop_waker_ref;
use http::HeaderMap;

use self::flight::{Flight, Flights, Outcome};
use self::miss::Miss;
use crate::cache::{CacheError, CacheRead, KeyCache, Verdict};
use crate::policy::RouteTable;
use crate::ratelimit::RateLimiter;
use crate::rejection::{AuthRejection, Passed, RejectionConfig, RejectionKind};
use crate::source::RequestHead;
use crate::stats::{Counters, Stats, WarnLimiter};
use crate::telemetry;
use crate::{ClientAddress, KeyFormat, KeyHash, KeyHasher, KeySource, Principal, RoutePolicy};

/// Default time a valid key stays cached.
pub const DEFAULT_POSITIVE_TTL: Duration = Duration::from_secs(300);
/// Default time an unknown key stays cached as invalid.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Default longest wait for the lookup (feature `tokio`): a lookup that
/// hangs answers `503` after this, not never.
#[cfg(feature = "tokio")]
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the builder sets and every request reads. Copied on write: a clone
/// of a layer configured further never changes the original.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) source: KeySource,
    pub(crate) hasher: KeyHasher,
    pub(crate) routes: RouteTable,
    pub(crate) positive_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) rejection: Arc<RejectionConfig>,
    pub(crate) rate_limiter: Option<RateLimiter>,
    pub(crate) format: Option<Arc<KeyFormat>>,
    /// Take the key out of the request once read (the default).
    pub(crate) hide_credentials: bool,
    /// Where the client's address comes from, for keys with networks.
    pub(crate) client_address: ClientAddress,
    /// How long past its fresh time a valid key may answer when the lookup
    /// fails (zero: never).
    pub(crate) stale_for: Duration,
    /// The longest wait for one lookup.
    #[cfg(feature = "tokio")]
    pub(crate) lookup_timeout: Duration,
    /// The last part of the positive TTL in which a hit refreshes its entry
    /// in the background (none: never).
    #[cfg(feature = "tokio")]
    pub(crate) refresh_ahead: Option<f64>,
    #[cfg(feature = "usage")]
    pub(crate) usage: Option<crate::usage::AnyTracker>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            source: KeySource::bearer(),
            hasher: KeyHasher::sha256(),
            routes: RouteTable::default(),
            positive_ttl: DEFAULT_POSITIVE_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            rejection: Arc::new(RejectionConfig::default()),
            rate_limiter: None,
            format: None,
            hide_credentials: true,
            client_address: ClientAddress::default(),
            stale_for: Duration::ZERO,
            #[cfg(feature = "tokio")]
            lookup_timeout: DEFAULT_LOOKUP_TIMEOUT,
            #[cfg(feature = "tokio")]
            refresh_ahead: None,
            #[cfg(feature = "usage")]
            usage: None,
        }
    }
}

/// What every clone of a layer, and every service it made, shares.
struct Shared<C: KeyCache, L> {
    cache: C,
    lookup: L,
    counters: Counters,
    flights: Arc<Flights<C::Principal, C::Token>>,
    cache_warnings: WarnLimiter,
    lookup_warnings: WarnLimiter,
    stale_warnings: WarnLimiter,
    counter_warnings: WarnLimiter,
    /// Set once a key with networks met a request with no peer address.
    no_peer_warned: AtomicBool,
}

/// The request path of one layer: its settings and its shared state (two
/// reference counts).
pub(crate) struct RequestPath<C: KeyCache, L> {
    config: Arc<Config>,
    shared: Arc<Shared<C, L>>,
}

impl<C: KeyCache, L> Clone for RequestPath<C, L> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// What the response of a forwarded request gets on its way out: the
/// rate-limit fields, when the limiter writes them on every response.
pub(crate) type Extra = Option<Box<HeaderMap>>;

/// A decision: forward the request (with its principal, if it has one, in
/// its extensions), or answer with the rejection.
pub(crate) type Decided = Result<Extra, AuthRejection>;

/// What a stage decided.
pub(crate) enum Step<C: KeyCache> {
    Done(Decided),
    /// Wait on this, then go on.
    Wait(Wait<C>),
}

/// What a request can wait on.
pub(crate) enum Wait<C: KeyCache> {
    /// A cache that didn't answer at once.
    Cache(C::Get),
    /// This key's lookup, shared with other requests; and the key's stale
    /// entry, to answer with if the lookup fails (serve-stale).
    Lookup(Flight<C::Principal>, Option<Arc<C::Principal>>),
    /// A counter store that didn't answer at once.
    Count(limit::Counting<C::Principal>),
    /// The lookup failed and the key had a stale entry: the cache read
    /// again, to serve that entry only if no invalidation removed it while
    /// the lookup ran.
    Recheck(C::Get),
}

/// Where [`RequestPath::authenticate`] left a request. Returned once and
/// matched at once: a waiting request is boxed right after (with its inner
/// service, in the response future), so boxing here would add nothing but a
/// second allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Progress<C: KeyCache, L> {
    Decided(Decided),
    /// Waiting: poll this.
    Waiting(Authentication<C, L>),
}

/// A request whose authentication is waiting: what the path needs to go on
/// with it.
pub(crate) struct Authentication<C: KeyCache, L> {
    path: RequestPath<C, L>,
    /// The request as the stages after the wait need it.
    request: Request,
    wait: Wait<C>,
}

/// What the stages know of a request beyond the request itself.
#[derive(Clone, Copy)]
pub(crate) struct Request {
    hash: KeyHash,
    /// Rate-limit units it costs (its route's).
    cost: u64,
    /// The scopes its route requires (an index into the route table).
    scopes: Option<u32>,
}

impl<C: KeyCache, L> RequestPath<C, L> {
    pub(crate) fn new(cache: C, lookup: L) -> Self {
        Self {
            config: Arc::new(Config::default()),
            shared: Arc::new(Shared {
                cache,
                lookup,
                counters: Counters::default(),
                flights: Arc::new(Flights::new()),
                cache_warnings: WarnLimiter::new(Duration::from_secs(10)),
                lookup_warnings: WarnLimiter::new(Duration::from_secs(10)),
                stale_warnings: WarnLimiter::new(Duration::from_secs(10)),
                counter_warnings: WarnLimiter::new(Duration::from_secs(10)),
                no_peer_warned: AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    pub(crate) fn cache(&self) -> &C {
        &self.shared.cache
    }

    pub(crate) fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// The layer's rendering settings when they are not the defaults: the
    /// response future then renders an extractor's rejection again with
    /// them (`AuthRejection::rerender`).
    pub(crate) fn rendering(&self) -> Option<Arc<RejectionConfig>> {
        if cfg!(feature = "axum") && self.config.rejection.custom {
            Some(Arc::clone(&self.config.rejection))
        } else {
            None
        }
    }

    fn rejection(&self, kind: RejectionKind) -> AuthRejection {
        AuthRejection::new(kind, Arc::clone(&self.config.rejection))
    }

    fn reject(&self, kind: RejectionKind) -> Step<C> {
        Step::Done(Err(self.rejection(kind)))
    }

    fn note_cache_error(&self, op: &'static str, error: &CacheError) {
        self.shared.counters.cache_errors.incr();
        if error.is_skipped() {
            // The breaker logs when it opens and closes.
            self.shared.counters.cache_skipped.incr();
            return;
        }
        if let Some(suppressed) = self.shared.cache_warnings.allow() {
            tracing::warn!(op, %error, suppressed, "API key cache failed; answering from the lookup");
        }
    }
}

impl<C, L> RequestPath<C, L>
where
    C: KeyCache,
    L: crate::Lookup<C::Principal>,
{
    /// Runs the stages on `req` until one decides or waits. On a hit in an
    /// in-process cache this is the whole of the layer's work.
    pub(crate) fn authenticate<B>(&self, req: &mut http::Request<B>) -> Progress<C, L> {
        // 1. Policy.
        let route = self.config.routes.resolve(req);
        if route.policy == RoutePolicy::Public {
            return Progress::Decided(self.pass(req));
        }
        // 2. Read the key, 3. hash it.
        let hash = match self.read_key(req) {
            Ok(Some(hash)) => hash,
            Ok(None) if route.policy == RoutePolicy::Optional => {
                return Progress::Decided(self.pass(req))
            }
            Ok(None) => return Progress::Decided(Err(self.rejection(RejectionKind::MissingKey))),
            Err(malformed) => return Progress::Decided(Err(malformed)),
        };
        // 4. Cache read, unless the route asks the lookup every time.
        let request = Request {
            hash,
            cost: route.cost,
            scopes: route.scopes,
        };
        let step = if route.bypass_cache {
            self.look_up(hash, Miss::Refresh, None)
        } else {
            let mut get = self.shared.cache.get(&hash);
            // An in-process cache answers on the first poll.
            match Pin::new(&mut get).poll(&mut Context::from_waker(noop_waker_ref())) {
                Poll::Ready(read) => self.on_read(req, request, read),
                Poll::Pending => Step::Wait(Wait::Cache(get)),
            }
        };
        match step {
            Step::Done(decided) => Progress::Decided(decided),
            Step::Wait(wait) => Progress::Waiting(Authentication {
                path: self.clone(),
                request,
                wait,
            }),
        }
    }

    /// Stages 2 and 3: the presented secret, checked against the key format
    /// if there is one, hashed; `Ok(None)` when the request carries none.
    /// The secret itself is dropped here, and (unless the layer keeps it)
    /// taken out of the request.
    fn read_key<B>(&self, req: &mut http::Request<B>) -> Result<Option<KeyHash>, AuthRejection> {
        let (hash, from) = match self.config.source.find(&RequestHead::of(req)) {
            Ok(None) => return Ok(None),
            Ok(Some(found)) => {
                if let Some(format) = &self.config.format {
                    if !format.check(&found.key).passes() {
                        // Answered as an unknown key is: the check is no oracle.
                        self.shared.counters.format_rejected.incr();
                        return Err(self.rejection(RejectionKind::InvalidKey));
                    }
                }
                (self.config.hasher.hash(&found.key), found.from)
            }
            Err(malformed) => return Err(self.rejection(RejectionKind::MalformedKey(malformed))),
        };
        if self.config.hide_credentials {
            self.config.source.hide(req, from);
        }
        telemetry::key(&hash);
        Ok(Some(hash))
    }

    /// No principal (a public route, or anonymous on an optional one), but a
    /// mark that the layer ran, for the extractor.
    fn pass<B>(&self, req: &mut http::Request<B>) -> Decided {
        req.extensions_mut()
            .insert(Passed::new(Arc::clone(&self.config.rejection)));
        Ok(None)
    }

    /// Stage 4: what a cache read decides.
    fn on_read<B>(
        &self,
        req: &mut http::Request<B>,
        request: Request,
        read: Result<CacheRead<C::Principal, C::Token>, CacheError>,
    ) -> Step<C> {
        let counters = &self.shared.counters;
        let hash = request.hash;
        let (verdict, aging) = match read {
            Ok(CacheRead::Hit(verdict)) => (verdict, false),
            Ok(CacheRead::Aging(principal)) => (Verdict::Valid(principal), true),
            Ok(CacheRead::Miss {
                token,
                degraded,
                stale,
            }) => {
                if let Some(error) = degraded {
                    self.note_cache_error("get", &error);
                }
                // Another instance's entry may be kept stale; this layer
                // answers with it only if it serves stale itself.
                let stale = stale.filter(|_| !self.config.stale_for.is_zero());
                return self.look_up(hash, Miss::Read(token), stale);
            }
            Err(error) => {
                self.note_cache_error("get", &error);
                return self.look_up(hash, Miss::Unreadable, None);
            }
        };
        match judge(verdict) {
            Some(principal) => {
                counters.hits.incr();
                if aging {
                    self.refresh_ahead(hash);
                }
                self.authorize(req, request, principal)
            }
            None => {
                counters.negative_hits.incr();
                self.reject(RejectionKind::InvalidKey)
            }
        }
    }

    /// Stage 5: joins or starts this key's lookup (`miss.rs`).
    fn look_up(
        &self,
        hash: KeyHash,
        miss: Miss<C::Token>,
        stale: Option<Arc<C::Principal>>,
    ) -> Step<C> {
        Step::Wait(Wait::Lookup(self.flight(hash, miss), stale))
    }

    /// What the lookup concluded. When it failed, a stale entry of the key
    /// answers if there is one and the key's own expiry has not passed.
    fn on_lookup<B>(
        &self,
        req: &mut http::Request<B>,
        request: Request,
        outcome: Outcome<C::Principal>,
        stale: Option<Arc<C::Principal>>,
    ) -> Step<C> {
        if !matches!(outcome, Outcome::Failed) {
            telemetry::answered_by("lookup");
        }
        match outcome {
            Outcome::Valid(principal) => self.authorize(req, request, principal),
            Outcome::Invalid => self.reject(RejectionKind::InvalidKey),
            Outcome::Failed => match stale.and_then(|p| judge(Verdict::Valid(p))) {
                Some(_) => Step::Wait(Wait::Recheck(self.shared.cache.get(&request.hash))),
                None => self.reject(RejectionKind::LookupUnavailable),
            },
        }
    }

    /// What the read after a failed lookup allows: the stale entry if it is
    /// still there (an invalidation during the lookup removed it), or a
    /// verdict another request stored meanwhile; otherwise `503`.
    fn on_recheck<B>(
        &self,
        req: &mut http::Request<B>,
        request: Request,
        read: Result<CacheRead<C::Principal, C::Token>, CacheError>,
    ) -> Step<C> {
        match read {
            Ok(CacheRead::Miss {
                stale: Some(principal),
                ..
            }) => match judge(Verdict::Valid(principal)) {
                Some(principal) => {
                    self.shared.counters.stale_served.incr();
                    telemetry::answered_by("stale");
                    if let Some(suppressed) = self.shared.stale_warnings.allow() {
                        tracing::warn!(key = %request.hash, suppressed, "API key lookup failed; answering from a stale cache entry");
                    }
                    self.authorize(req, request, principal)
                }
                None => self.reject(RejectionKind::LookupUnavailable),
            },
            fresh @ Ok(CacheRead::Hit(_) | CacheRead::Aging(_)) => {
                self.on_read(req, request, fresh)
            }
            _ => self.reject(RejectionKind::LookupUnavailable),
        }
    }

    /// Stages 8 and 9: the key's use is noted (with a usage tracker), and
    /// the principal goes into the request's extensions.
    fn forward<B>(
        &self,
        req: &mut http::Request<B>,
        hash: &KeyHash,
        principal: Arc<C::Principal>,
        extra: Extra,
    ) -> Step<C> {
        #[cfg(feature = "usage")]
        if let Some(usage) = &self.config.usage {
            if let Some(tracker) = usage.get::<C::Principal>() {
                tracker.note(hash, &principal);
            }
        }
        #[cfg(not(feature = "usage"))]
        let _ = hash;
        req.extensions_mut().insert(principal);
        Step::Done(Ok(extra))
    }
}

impl<C: KeyCache, L> Authentication<C, L> {
    /// The layer's rendering settings, when not the defaults
    /// ([`RequestPath::rendering`]).
    pub(crate) fn rendering(&self) -> Option<Arc<RejectionConfig>> {
        self.path.rendering()
    }
}

impl<C, L> Authentication<C, L>
where
    C: KeyCache,
    L: crate::Lookup<C::Principal>,
{
    /// Polls what the request waits on and runs the stages after it, until
    /// one decides.
    pub(crate) fn poll<B>(
        &mut self,
        cx: &mut Context<'_>,
        req: &mut http::Request<B>,
    ) -> Poll<Decided> {
        loop {
            let step = match &mut self.wait {
                Wait::Cache(get) => {
                    let read = ready!(Pin::new(get).poll(cx));
                    self.path.on_read(req, self.request, read)
                }
                Wait::Lookup(flight, stale) => {
                    let outcome = ready!(Pin::new(flight).poll(cx));
                    let stale = stale.take();
                    self.path.on_lookup(req, self.request, outcome, stale)
                }
                Wait::Recheck(get) => {
                    let read = ready!(Pin::new(get).poll(cx));
                    self.path.on_recheck(req, self.request, read)
                }
                Wait::Count(counting) => {
                    let counted = ready!(counting.poll(cx));
                    self.path.on_count(req, counting.take(), counted)
                }
            };
            match step {
                Step::Done(decided) => return Poll::Ready(decided),
                Step::Wait(wait) => self.wait = wait,
            }
        }
    }
}

/// What a cached verdict says of the key now: its principal, unless the key
/// is invalid or its own expiry has passed (the TTL cap keeps an expired key
/// out of a well-behaved cache; this covers a backend whose clock or TTL
/// granularity runs late).
fn judge<P: Principal>(verdict: Verdict<P>) -> Option<Arc<P>> {
    match verdict {
        Verdict::Valid(p) if p.expires_at().is_none_or(|at| at > SystemTime::now()) => Some(p),
        _ => None,
    }
}
