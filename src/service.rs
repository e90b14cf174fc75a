//! [`ApiKeyAuth`], the service, and its [`ResponseFuture`].

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::task::noop_waker_ref;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::cache::{CacheError, CacheRead, KeyCache, Verdict};
use crate::flight::{Flight, Outcome};
use crate::layer::{is_expired, ApiKeyAuthLayer};
use crate::lookup::Lookup;
use crate::policy::RoutePolicy;
use crate::rejection::{AuthRejection, RejectionConfig, RejectionKind};
use crate::source::RequestHead;
use crate::KeyHash;

/// Middleware that authenticates each request by API key before calling the
/// inner service. Made by [`ApiKeyAuthLayer`].
///
/// A valid key's principal is put into the request's extensions as `Arc<P>`
/// (read it with [`Authenticated`](crate::Authenticated) in axum, or
/// `req.extensions().get::<Arc<P>>()`). Rejections are responses (`Ok`) with
/// the status and body described in [`rejection`](crate::rejection); the
/// error type is the inner service's, so the middleware fits axum's
/// `Infallible` requirement.
pub struct ApiKeyAuth<S, C: KeyCache, L> {
    inner: S,
    layer: ApiKeyAuthLayer<C, L>,
}

/// Marks a request the layer passed without a principal (anonymous on an
/// optional route, or a public route), so extractors can tell "no key" from
/// "no layer".
#[derive(Clone)]
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) struct Passed(pub(crate) Arc<RejectionConfig>);

impl<S, C: KeyCache, L> ApiKeyAuth<S, C, L> {
    pub(crate) fn new(inner: S, layer: ApiKeyAuthLayer<C, L>) -> Self {
        Self { inner, layer }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The layer this service was made by: the handle for revocation and
    /// statistics.
    pub fn layer(&self) -> &ApiKeyAuthLayer<C, L> {
        &self.layer
    }
}

impl<S: Clone, C: KeyCache, L> Clone for ApiKeyAuth<S, C, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, C: KeyCache, L> fmt::Debug for ApiKeyAuth<S, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyAuth")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

/// What a cache read decided.
enum Decision<P, T> {
    Accept(Arc<P>),
    Reject(RejectionKind),
    Lookup(Option<T>),
}

/// A request waiting on the cache or a lookup, with the service that
/// `poll_ready` made ready for it.
struct Pending<S, C: KeyCache, L, ReqB> {
    req: Request<ReqB>,
    inner: S,
    hash: KeyHash,
    bypass: bool,
    layer: ApiKeyAuthLayer<C, L>,
}

impl<S, C, L, ReqB, ResB> Service<Request<ReqB>> for ApiKeyAuth<S, C, L>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    C: KeyCache,
    C::Get: Unpin,
    L: Lookup<C::Principal>,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, C, L, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The instance `poll_ready` made ready goes with this request.
        let clone = self.inner.clone();
        let mut inner = mem::replace(&mut self.inner, clone);
        let config = &*self.layer.config;

        let route = config.routes.resolve(&req);
        // Public, or anonymous on an optional route: no principal, but a mark
        // that the layer ran, for the extractor.
        let mut pass = |mut req: Request<ReqB>| {
            req.extensions_mut()
                .insert(Passed(Arc::clone(&config.rejection)));
            ResponseFuture::inner(inner.call(req))
        };
        if route.policy == RoutePolicy::Public {
            return pass(req);
        }

        let hash = match config.source.extract(&RequestHead::of(&req)) {
            Ok(Some(secret)) => config.hasher.hash(&secret),
            Ok(None) if route.policy == RoutePolicy::Optional => return pass(req),
            Ok(None) => return self.reject(RejectionKind::MissingKey),
            Err(malformed) => return self.reject(RejectionKind::MalformedKey(malformed)),
        };

        // An in-process cache answers on the first poll: decide here, so a
        // hit costs no state machine, no clone of the layer, no allocation
        // beyond the extension.
        let pending = |req, inner| {
            Box::new(Pending {
                req,
                inner,
                hash,
                bypass: route.bypass_cache,
                layer: self.layer.clone(),
            })
        };
        if route.bypass_cache {
            // No cache read: the lookup takes its own fillable token
            // (`KeyCache::refresh_token`) before it starts.
            return ResponseFuture {
                state: State::waiting(pending(req, inner), None),
            };
        }
        let mut get = self.layer.core.cache.get(&hash);
        let mut cx = Context::from_waker(noop_waker_ref());
        match Pin::new(&mut get).poll(&mut cx) {
            Poll::Ready(read) => match decide(&self.layer, read) {
                Decision::Accept(principal) => {
                    req.extensions_mut().insert(principal);
                    ResponseFuture::inner(inner.call(req))
                }
                Decision::Reject(kind) => self.reject(kind),
                Decision::Lookup(token) => ResponseFuture {
                    state: State::waiting(pending(req, inner), token),
                },
            },
            Poll::Pending => ResponseFuture {
                state: State::Reading {
                    get,
                    pending: Some(pending(req, inner)),
                },
            },
        }
    }
}

impl<S, C: KeyCache, L> ApiKeyAuth<S, C, L> {
    fn reject<ReqB>(&self, kind: RejectionKind) -> ResponseFuture<S, C, L, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        ResponseFuture {
            state: State::rejected(&self.layer, kind),
        }
    }
}

fn decide<C: KeyCache, L>(
    layer: &ApiKeyAuthLayer<C, L>,
    read: Result<CacheRead<C::Principal, C::Token>, CacheError>,
) -> Decision<C::Principal, C::Token>
where
    L: Lookup<C::Principal>,
{
    let counters = &layer.core.counters;
    if let Ok(CacheRead {
        degraded: Some(error),
        ..
    }) = &read
    {
        layer.core.note_cache_error("get", error);
    }
    match read {
        Ok(CacheRead {
            verdict: Some(Verdict::Valid(principal)),
            token,
            ..
        }) => {
            // The TTL is capped by the expiry already; this also covers a
            // backend whose clock or TTL granularity runs late.
            if is_expired(&*principal) {
                drop(token);
                counters.negative_hits.incr();
                Decision::Reject(RejectionKind::InvalidKey)
            } else {
                counters.hits.incr();
                Decision::Accept(principal)
            }
        }
        Ok(CacheRead {
            verdict: Some(Verdict::Invalid),
            ..
        }) => {
            counters.negative_hits.incr();
            Decision::Reject(RejectionKind::InvalidKey)
        }
        Ok(CacheRead {
            verdict: None,
            token,
            ..
        }) => Decision::Lookup(Some(token)),
        Err(error) => {
            layer.core.note_cache_error("get", &error);
            Decision::Lookup(None)
        }
    }
}

impl<S, C: KeyCache, L, ReqB> Pending<S, C, L, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn forward(mut self, principal: Arc<C::Principal>) -> S::Future {
        self.req.extensions_mut().insert(principal);
        self.inner.call(self.req)
    }
}

pin_project! {
    /// Response future for [`ApiKeyAuth`].
    pub struct ResponseFuture<S, C, L, ReqB>
    where
        S: Service<Request<ReqB>>,
        C: KeyCache,
    {
        #[pin]
        state: State<S, C, L, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, C, L, ReqB>
    where
        S: Service<Request<ReqB>>,
        C: KeyCache,
    {
        // Waiting on a cache that didn't answer on the first poll.
        Reading {
            get: C::Get,
            pending: Option<Box<Pending<S, C, L, ReqB>>>,
        },
        // Waiting on this key's lookup, shared with other requests.
        Waiting {
            flight: Flight<C::Principal>,
            pending: Option<Box<Pending<S, C, L, ReqB>>>,
        },
        Inner {
            #[pin]
            future: S::Future,
        },
        Rejected {
            rejection: Option<AuthRejection>,
        },
    }
}

impl<S, C, L, ReqB> ResponseFuture<S, C, L, ReqB>
where
    S: Service<Request<ReqB>>,
    C: KeyCache,
{
    fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }
}

impl<S, C, L, ReqB> State<S, C, L, ReqB>
where
    S: Service<Request<ReqB>>,
    C: KeyCache,
{
    fn rejected(layer: &ApiKeyAuthLayer<C, L>, kind: RejectionKind) -> Self {
        State::Rejected {
            rejection: Some(AuthRejection::new(
                kind,
                Arc::clone(&layer.config.rejection),
            )),
        }
    }

    /// Joins or starts this key's lookup.
    fn waiting(pending: Box<Pending<S, C, L, ReqB>>, token: Option<C::Token>) -> Self
    where
        L: Lookup<C::Principal>,
    {
        let layer = &pending.layer;
        let flight = layer
            .core
            .flight(&layer.config, pending.hash, token, pending.bypass);
        State::Waiting {
            flight,
            pending: Some(pending),
        }
    }
}

impl<S, C, L, ReqB, ResB> Future for ResponseFuture<S, C, L, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    C: KeyCache,
    C::Get: Unpin,
    L: Lookup<C::Principal>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Reading { get, pending } => {
                    let read = ready!(Pin::new(get).poll(cx));
                    let Some(pending) = pending.take() else {
                        return Poll::Pending;
                    };
                    match decide(&pending.layer, read) {
                        Decision::Accept(principal) => State::Inner {
                            future: pending.forward(principal),
                        },
                        Decision::Reject(kind) => State::rejected(&pending.layer, kind),
                        Decision::Lookup(token) => State::waiting(pending, token),
                    }
                }
                StateProj::Waiting { flight, pending } => {
                    let outcome = ready!(Pin::new(flight).poll(cx));
                    let Some(pending) = pending.take() else {
                        return Poll::Pending;
                    };
                    match outcome {
                        Outcome::Valid(principal) => State::Inner {
                            future: pending.forward(principal),
                        },
                        Outcome::Invalid => {
                            State::rejected(&pending.layer, RejectionKind::InvalidKey)
                        }
                        Outcome::Failed => {
                            State::rejected(&pending.layer, RejectionKind::LookupUnavailable)
                        }
                    }
                }
                StateProj::Inner { future } => return future.poll(cx),
                StateProj::Rejected { rejection } => {
                    let response = match rejection.take() {
                        Some(r) => r.to_response().map(ResB::from),
                        // Polled after completion.
                        None => return Poll::Pending,
                    };
                    return Poll::Ready(Ok(response));
                }
            };
            this.state.set(next);
        }
    }
}
