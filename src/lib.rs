//! Tower middleware that authenticates HTTP requests by API key, for axum and
//! hyper services, with a cache in front of your key store so that a valid key
//! costs a hash and a cache read, not a database query.
//!
//! On each request [`ApiKeyAuthLayer`]:
//!
//! 1. finds the route's [`RoutePolicy`] (`Required` by default, `Optional`,
//!    `Public`), by axum's `MatchedPath` template when there is one;
//! 2. reads the key ([`KeySource`]: `Authorization: Bearer` by default);
//! 3. hashes it ([`KeyHash`]: SHA-256, or HMAC-SHA256 with a pepper). From here
//!    on only the hash exists: the cache, the lookup and the logs see the hash;
//! 4. reads the cache ([`KeyCache`]; [`MemoryCache`] on moka by default):
//!    a valid entry, a negative entry, or a miss;
//! 5. on a miss, asks your [`Lookup`] once for all concurrent requests with
//!    that key, and caches a valid key for the positive TTL (capped by the
//!    key's own expiry) and an unknown one for the negative TTL. A lookup
//!    error is never cached and answers `503`;
//! 6. puts the principal into the request's extensions as `Arc<P>`, where
//!    the [`Authenticated`] extractor finds it.
//!
//! Rejections are responses: `400`, `401` with an RFC 6750 challenge, `503`
//! with `Retry-After`, with RFC 9457 problem+json bodies (see
//! [`rejection`]).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use axum::{routing::get, Router};
//! use tower_api_key::{lookup_fn, ApiKeyAuthLayer, Authenticated, KeyHash, MemoryCache, Principal};
//!
//! struct Client { name: String }
//! impl Principal for Client {}
//!
//! let admin = KeyHash::of("sk_admin_123");
//! let auth = ApiKeyAuthLayer::new(
//!     MemoryCache::new(),
//!     lookup_fn(move |hash: KeyHash| async move {
//!         Ok::<_, Infallible>((hash == admin).then(|| Client { name: "admin".into() }))
//!     }),
//! )
//! .public("/health")
//! .optional("/hello");
//!
//! let app: Router = Router::new()
//!     .route("/me", get(|Authenticated(c): Authenticated<Client>| async move { c.name.clone() }))
//!     .route("/hello", get(|c: Option<Authenticated<Client>>| async move {
//!         c.map_or("hello, stranger".to_owned(), |c| format!("hello, {}", c.name))
//!     }))
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(auth);
//! # let _ = app;
//! ```
//!
//! # Features
//!
//! - `memory` (default): [`MemoryCache`].
//! - `axum` (default): [`Authenticated`], `IntoResponse` for
//!   [`AuthRejection`], and route policies by `MatchedPath`.
//! - `redis`: `cache::RedisCache`, shared by every instance through Redis (on
//!   fred), and with `memory`, `cache::TieredCache` (moka in front of Redis,
//!   invalidations broadcast to every instance) and `cache::AnyCache` /
//!   `cache::CacheSettings` to pick the backend from the environment.
//! - `redis-tls`: `rediss://` URLs.

#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cache;
#[cfg(feature = "axum")]
mod extract;
mod flight;
mod hash;
mod layer;
mod lookup;
pub mod policy;
pub mod rejection;
mod service;
mod source;
mod stats;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use cache::MemoryCache;
pub use cache::{CacheError, CacheRead, KeyCache, Principal, Verdict};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use extract::Authenticated;
pub use hash::{KeyHash, KeyHasher, ShortHash};
pub use layer::{ApiKeyAuthLayer, DEFAULT_NEGATIVE_TTL, DEFAULT_POSITIVE_TTL};
pub use lookup::{lookup_fn, BoxError, Lookup, LookupFn};
pub use policy::{InvalidRoute, RoutePolicy};
pub use rejection::{AuthRejection, RejectionHandler, RejectionKind};
pub use service::{ApiKeyAuth, ResponseFuture};
pub use source::{KeySource, MalformedKey, DEFAULT_MAX_KEY_LENGTH};
pub use stats::Stats;
