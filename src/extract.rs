//! [`Authenticated`], the axum extractor for the principal.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;

use crate::rejection::{AuthRejection, Passed};

/// Extractor for the principal of a request that [`ApiKeyAuthLayer`]
/// authenticated: `Arc<P>`, as your lookup returned it.
///
/// - On a `Required` route it always succeeds.
/// - `Option<Authenticated<P>>` is `None` for an anonymous request on an
///   `Optional` route (and on a `Public` one, where the layer doesn't
///   authenticate at all).
/// - `Authenticated<P>` on a request that passed without a key is rejected
///   with the layer's `401`.
/// - On a route the layer doesn't cover (or with a `P` other than the
///   layer's), both forms answer `500` saying the layer is missing: a server
///   bug should not look like a client's.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_api_key::{Authenticated, Principal};
///
/// struct Client { name: String }
/// impl Principal for Client {}
///
/// async fn me(Authenticated(client): Authenticated<Client>) -> String {
///     client.name.clone()
/// }
///
/// async fn hello(client: Option<Authenticated<Client>>) -> String {
///     match client {
///         Some(c) => format!("hello, {}", c.name),
///         None => "hello, stranger".to_owned(),
///     }
/// }
///
/// let app: Router = Router::new().route("/me", get(me)).route("/hello", get(hello));
/// # let _ = app;
/// ```
///
/// [`ApiKeyAuthLayer`]: crate::ApiKeyAuthLayer
pub struct Authenticated<P>(pub Arc<P>);

impl<P> Deref for Authenticated<P> {
    type Target = P;

    fn deref(&self) -> &P {
        &self.0
    }
}

impl<P> Clone for Authenticated<P> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<P: fmt::Debug> fmt::Debug for Authenticated<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Authenticated").field(&self.0).finish()
    }
}

impl<P: Send + Sync + 'static> Authenticated<P> {
    /// What the layer left in the request: the principal, or the mark of a
    /// request it passed without one; the `500` when no layer ran (for
    /// this `P`).
    fn from_parts(parts: &Parts) -> Result<Result<Self, &Passed>, AuthRejection> {
        if let Some(principal) = parts.extensions.get::<Arc<P>>() {
            return Ok(Ok(Self(Arc::clone(principal))));
        }
        match parts.extensions.get::<Passed>() {
            Some(passed) => Ok(Err(passed)),
            None => {
                tracing::error!(
                    principal = std::any::type_name::<P>(),
                    "Authenticated extractor used on a route without ApiKeyAuthLayer for this principal type"
                );
                Err(AuthRejection::layer_missing().for_request(&parts.headers))
            }
        }
    }
}

impl<P, S> FromRequestParts<S> for Authenticated<P>
where
    P: Send + Sync + 'static,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Self::from_parts(parts)?.map_err(|passed| passed.missing_key(&parts.headers))
    }
}

impl<P, S> OptionalFromRequestParts<S> for Authenticated<P>
where
    P: Send + Sync + 'static,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(Self::from_parts(parts)?.ok())
    }
}
