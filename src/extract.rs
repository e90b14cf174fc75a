//! [`Authenticated`], the axum extractor for the principal, and [`Scoped`],
//! the same with a way to demand scopes in the handler.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;

use crate::rejection::{AuthRejection, Passed};
use crate::scope::Requirement;
use crate::{Principal, Scopes};

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

/// Extractor for the principal, as [`Authenticated`], for handlers that
/// decide about scopes themselves: when what is needed depends on the path
/// parameters or the body, [`require`](Self::require) demands it in one
/// call and answers exactly as the layer would, `403 insufficient_scope`
/// with the RFC 6750 challenge (`PERMISSION_DENIED` for gRPC), rendered by
/// the layer's [`on_rejection`](crate::ApiKeyAuthLayer::on_rejection)
/// handler and realm if it has them.
///
/// ```
/// use axum::extract::Path;
/// use axum::{routing::delete, Router};
/// use tower_api_key::{AuthRejection, Principal, Scoped, Scopes};
///
/// struct Client { scopes: Vec<String> }
/// impl Principal for Client {
///     fn has_scope(&self, scope: &str) -> bool {
///         self.scopes.iter().any(|s| s == scope)
///     }
/// }
///
/// async fn delete_project(client: Scoped<Client>, Path(id): Path<u64>) -> Result<String, AuthRejection> {
///     // Project 1 is the shared one: only an admin may delete it.
///     if id == 1 {
///         client.require("admin")?;
///     } else {
///         client.require(Scopes::any(["projects:write", "admin"]))?;
///     }
///     Ok(format!("deleted {id}"))
/// }
///
/// let app: Router = Router::new().route("/projects/{id}", delete(delete_project));
/// # let _ = app;
/// ```
///
/// Extraction itself behaves as [`Authenticated`]'s: the layer's `401` for
/// an anonymous request, `500` without the layer; `Option<Scoped<P>>` is
/// `None` for an anonymous request. A refusal here is counted in the
/// rejection metric; the layer's [`stats`](crate::ApiKeyAuthLayer::stats)
/// only counts its own. Returned as the handler's answer (with `?`), it is
/// rendered by the layer on its way out, with the layer's realm and
/// [`on_rejection`](crate::ApiKeyAuthLayer::on_rejection) handler.
pub struct Scoped<P> {
    principal: Arc<P>,
    grpc: bool,
}

impl<P: Principal> Scoped<P> {
    /// Demands `scopes` of the key: a scope (`"keys:write"`: a `&str` is one
    /// scope, not a rule; parse one with [`Scopes::parse`]) or a rule
    /// ([`Scopes`]). `Err` is the `403` to answer with. A rule that is not
    /// one (an empty set, a name that is no scope token) is refused
    /// whatever the key carries, and logged: a bug of the handler must not
    /// open it.
    pub fn require(&self, scopes: impl Into<Scopes>) -> Result<(), AuthRejection> {
        let scopes = scopes.into();
        match scopes.validate() {
            Ok(()) if scopes.is_satisfied_by(&*self.principal) => return Ok(()),
            Ok(()) => {}
            Err(error) => tracing::error!(%error, "Scoped::require was given no rule; refused"),
        }
        let rejection = AuthRejection::insufficient_scope(None, Requirement::new(scopes));
        Err(rejection.grpc(self.grpc))
    }

    /// Whether the key satisfies `scopes`, for a handler that answers
    /// otherwise than `403` (a narrower listing, say). `false` for a rule
    /// that is not one, as [`require`](Self::require).
    pub fn has(&self, scopes: impl Into<Scopes>) -> bool {
        let scopes = scopes.into();
        scopes.validate().is_ok() && scopes.is_satisfied_by(&*self.principal)
    }
}

impl<P> Scoped<P> {
    /// The principal.
    pub fn principal(&self) -> &Arc<P> {
        &self.principal
    }

    /// The principal, taken out.
    pub fn into_inner(self) -> Arc<P> {
        self.principal
    }
}

impl<P> Deref for Scoped<P> {
    type Target = P;

    fn deref(&self) -> &P {
        &self.principal
    }
}

impl<P> Clone for Scoped<P> {
    fn clone(&self) -> Self {
        Self {
            principal: Arc::clone(&self.principal),
            grpc: self.grpc,
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for Scoped<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Scoped").field(&self.principal).finish()
    }
}

impl<P: Send + Sync + 'static> Scoped<P> {
    fn from_authenticated(Authenticated(principal): Authenticated<P>, parts: &Parts) -> Self {
        Self {
            principal,
            grpc: AuthRejection::is_grpc_request(&parts.headers),
        }
    }
}

impl<P, S> FromRequestParts<S> for Scoped<P>
where
    P: Send + Sync + 'static,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let authenticated =
            <Authenticated<P> as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        Ok(Self::from_authenticated(authenticated, parts))
    }
}

impl<P, S> OptionalFromRequestParts<S> for Scoped<P>
where
    P: Send + Sync + 'static,
    S: Send + Sync,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let authenticated =
            <Authenticated<P> as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
                .await?;
        Ok(authenticated.map(|a| Self::from_authenticated(a, parts)))
    }
}
