//! [`ApiKeyAuth`], the service.

use std::fmt;
use std::mem;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

use crate::cache::KeyCache;
use crate::future::ResponseFuture;
use crate::layer::ApiKeyAuthLayer;
use crate::lookup::Lookup;
use crate::request_path::Progress;
use crate::telemetry;

/// Middleware that authenticates each request by API key before calling the
/// inner service. Made by [`ApiKeyAuthLayer`].
///
/// A valid key's principal is put into the request's extensions as `Arc<P>`
/// (read it with [`Authenticated`](crate::Authenticated) in axum, or
/// `req.extensions().get::<Arc<P>>()`). Rejections are responses (`Ok`) with
/// the status and body described in [`AuthRejection`](crate::AuthRejection);
/// the error type is the inner service's, so the middleware fits axum's
/// `Infallible` requirement.
pub struct ApiKeyAuth<S, C: KeyCache, L> {
    inner: S,
    layer: ApiKeyAuthLayer<C, L>,
}

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

impl<S, C, L, ReqB, ResB> Service<Request<ReqB>> for ApiKeyAuth<S, C, L>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    C: KeyCache,
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
        // Disabled unless a subscriber wants it; a disabled span is not
        // entered.
        let span = telemetry::request_span(&req);
        let progress =
            telemetry::in_request_span(&span, || self.layer.request_path().authenticate(&mut req));
        match progress {
            // Decided at once (a hit, a public route): the instance
            // `poll_ready` made ready is called here and now.
            Progress::Decided(Ok(extra)) => {
                telemetry::decided(&span, None);
                let rendering = self.layer.request_path().rendering();
                ResponseFuture::inner(self.inner.call(req), extra, rendering)
            }
            // Only a rejection reads the content-type (gRPC or not).
            Progress::Decided(Err(rejection)) => {
                telemetry::decided(&span, Some(&rejection));
                ResponseFuture::rejected(rejection.for_request(req.headers()))
            }
            // The ready instance goes with the request, a clone stays.
            Progress::Waiting(authentication) => {
                let clone = self.inner.clone();
                let inner = mem::replace(&mut self.inner, clone);
                ResponseFuture::authenticating(authentication, req, inner, span)
            }
        }
    }
}
