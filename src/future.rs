//! [`ResponseFuture`], the response future of [`ApiKeyAuth`](crate::ApiKeyAuth).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::cache::KeyCache;
use crate::lookup::Lookup;
use crate::rejection::{AuthRejection, RejectionConfig};
use crate::request_path::{Authentication, Extra};
use crate::telemetry;
use tracing::Span;

pin_project! {
    /// Response future for [`ApiKeyAuth`](crate::ApiKeyAuth).
    ///
    /// It only sequences: wait for the request path to decide (when it
    /// couldn't at once), then call the inner service or render the
    /// rejection.
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
        // Waiting on the cache or a lookup (`None` once decided).
        Authenticating {
            pending: Option<Box<Pending<S, C, L, ReqB>>>,
        },
        Inner {
            #[pin]
            future: S::Future,
            // The rate-limit fields, for the response.
            extra: Extra,
            // The layer's rendering settings when not the defaults: an
            // extractor's rejection is rendered again with them.
            rendering: Option<Arc<RejectionConfig>>,
        },
        Rejected {
            rejection: Option<AuthRejection>,
        },
    }
}

/// A request whose authentication waits, with the service that `poll_ready`
/// made ready for it: boxed together, so that the future of a request
/// decided at once (a hit) stays small.
struct Pending<S, C: KeyCache, L, ReqB> {
    authentication: Authentication<C, L>,
    req: Request<ReqB>,
    inner: S,
    /// The request's `api_key_auth` span, entered while the stages run.
    span: Span,
}

impl<S, C, L, ReqB> ResponseFuture<S, C, L, ReqB>
where
    S: Service<Request<ReqB>>,
    C: KeyCache,
{
    pub(crate) fn inner(
        future: S::Future,
        extra: Extra,
        rendering: Option<Arc<RejectionConfig>>,
    ) -> Self {
        Self {
            state: State::Inner {
                future,
                extra,
                rendering,
            },
        }
    }

    pub(crate) fn rejected(rejection: AuthRejection) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
        }
    }

    pub(crate) fn authenticating(
        authentication: Authentication<C, L>,
        req: Request<ReqB>,
        inner: S,
        span: Span,
    ) -> Self {
        let pending = Box::new(Pending {
            authentication,
            req,
            inner,
            span,
        });
        Self {
            state: State::Authenticating {
                pending: Some(pending),
            },
        }
    }
}

impl<S, C, L, ReqB, ResB> Future for ResponseFuture<S, C, L, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    C: KeyCache,
    L: Lookup<C::Principal>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Authenticating { pending } => {
                    let Some(mut waiting) = pending.take() else {
                        return Poll::Pending; // polled after completion
                    };
                    let Pending {
                        authentication,
                        req,
                        span,
                        ..
                    } = &mut *waiting;
                    let Poll::Ready(decided) =
                        telemetry::in_request_span(span, || authentication.poll(cx, req))
                    else {
                        *pending = Some(waiting);
                        return Poll::Pending;
                    };
                    let Pending {
                        authentication,
                        req,
                        mut inner,
                        span,
                    } = *waiting;
                    telemetry::decided(&span, decided.as_ref().err());
                    let rendering = authentication.rendering();
                    match decided {
                        Ok(extra) => State::Inner {
                            future: inner.call(req),
                            extra,
                            rendering,
                        },
                        Err(rejection) => State::Rejected {
                            rejection: Some(rejection.for_request(req.headers())),
                        },
                    }
                }
                StateProj::Inner {
                    future,
                    extra,
                    rendering,
                } => {
                    let mut answer = ready!(future.poll(cx));
                    #[cfg(feature = "axum")]
                    if let (Ok(res), Some(config)) = (&mut answer, rendering.take()) {
                        let as_is = std::mem::replace(res, Response::new(ResB::from(Bytes::new())));
                        *res = AuthRejection::rerender(as_is, &config);
                    }
                    #[cfg(not(feature = "axum"))]
                    let _ = rendering;
                    if let (Ok(res), Some(fields)) = (&mut answer, extra.take()) {
                        res.headers_mut().extend(*fields);
                    }
                    return Poll::Ready(answer);
                }
                StateProj::Rejected { rejection } => {
                    return match rejection.take() {
                        Some(r) => Poll::Ready(Ok(r.to_response().map(ResB::from))),
                        None => Poll::Pending, // polled after completion
                    };
                }
            };
            this.state.set(next);
        }
    }
}
