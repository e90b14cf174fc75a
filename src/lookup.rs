//! The user's key store, seen by the layer as a [`tower::Service`] from
//! [`KeyHash`] to `Option<P>`.
//!
//! [`tower::Service`]: tower_service::Service

use std::fmt;
use std::future::Future;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::KeyHash;

/// Boxed error type of a lookup, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Your key store: any cloneable [`Service`] that takes a [`KeyHash`] and
/// answers `Ok(Some(principal))` for a valid key, `Ok(None)` for an unknown,
/// revoked or expired one, and `Err(_)` when it can't tell (database down,
/// timeout).
///
/// The distinction matters: `Ok(None)` is cached as a negative entry and
/// answered `401`; `Err` is never cached and is answered `503` with
/// `Retry-After`, so an outage of your database never tells a client its valid
/// key is invalid.
///
/// This trait is implemented for every service with the right shape; write
/// closures with [`lookup_fn`], or compose tower middleware around your own
/// service (a [`Timeout`](https://docs.rs/tower/latest/tower/timeout/struct.Timeout.html)
/// is a good idea: the layer waits as long as the lookup does).
pub trait Lookup<P>:
    Service<KeyHash, Response = Option<P>, Error = Self::LookupError, Future = Self::LookupFuture>
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The service's error.
    type LookupError: Into<BoxError>;
    /// The service's future.
    type LookupFuture: Future<Output = Result<Option<P>, Self::LookupError>> + Send + 'static;
}

impl<P, S> Lookup<P> for S
where
    S: Service<KeyHash, Response = Option<P>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type LookupError = S::Error;
    type LookupFuture = S::Future;
}

/// Makes a [`Lookup`] from an async closure.
///
/// ```
/// use std::convert::Infallible;
/// use tower_api_key::{lookup_fn, KeyHash, Principal};
///
/// #[derive(Clone)]
/// struct Client { name: String }
/// impl Principal for Client {}
///
/// let admin = KeyHash::of("sk_admin");
/// let lookup = lookup_fn(move |hash: KeyHash| async move {
///     // Your key table, queried by hash.
///     Ok::<_, Infallible>((hash == admin).then(|| Client { name: "admin".into() }))
/// });
/// # let _ = lookup;
/// ```
pub fn lookup_fn<F>(f: F) -> LookupFn<F> {
    LookupFn { f }
}

/// A [`Lookup`] made from a closure by [`lookup_fn`].
#[derive(Clone, Copy)]
pub struct LookupFn<F> {
    f: F,
}

impl<F> fmt::Debug for LookupFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LookupFn")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}

impl<F, Fut, P, E> Service<KeyHash> for LookupFn<F>
where
    F: FnMut(KeyHash) -> Fut,
    Fut: Future<Output = Result<Option<P>, E>>,
{
    type Response = Option<P>;
    type Error = E;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, hash: KeyHash) -> Fut {
        (self.f)(hash)
    }
}
