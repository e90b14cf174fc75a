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
//! 4. reads the cache ([`KeyCache`](cache::KeyCache); `MemoryCache` by
//!    default): a valid entry, a negative entry, or a miss;
//! 5. on a miss, asks your [`Lookup`] once for all concurrent requests with
//!    that key, and caches a valid key for the positive TTL (capped by the
//!    key's own expiry) and an unknown one for the negative TTL. A lookup
//!    error is never cached and answers `503`;
//! 6. authorizes: the route's required [`Scopes`] against the key's
//!    [`has_scope`](Principal::has_scope), the key's
//!    [`allowed_networks`](Principal::allowed_networks) against the client's
//!    address ([`ClientAddress`]); refused, `403`, before any rate-limit
//!    counter;
//! 7. puts the principal into the request's extensions as `Arc<P>`, where
//!    the [`Authenticated`] (or [`Scoped`]) extractor finds it. The key itself
//!    was taken out of the request once read
//!    ([`hide_credentials`](ApiKeyAuthLayer::hide_credentials)).
//!
//! Rejections are responses: `400`, `401` with an RFC 6750 challenge, `403`
//! (`insufficient_scope` with its challenge, `address_not_allowed`), `503`
//! with `Retry-After`, with RFC 9457 problem+json bodies; a gRPC request
//! (`content-type: application/grpc…`, a tonic client) gets a gRPC status
//! instead, `UNAUTHENTICATED`, `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED` or
//! `UNAVAILABLE` (see [`AuthRejection`]).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use axum::{routing::get, Router};
//! use tower_api_key::cache::MemoryCache;
//! use tower_api_key::{lookup_fn, ApiKeyAuthLayer, Authenticated, KeyHash, Principal};
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
//! - `memory` (default): `cache::MemoryCache`, on quick_cache.
//! - `axum` (default): [`Authenticated`] and [`Scoped`], `IntoResponse` for
//!   [`AuthRejection`], route policies by `MatchedPath`, and the client's
//!   address from `ConnectInfo`.
//! - `redis`: `cache::RedisCache`, shared by every instance through Redis
//!   (on fred).
//! - `tiered` (`memory` + `redis`): `cache::TieredCache` (memory in front
//!   of Redis, invalidations broadcast to every instance), and `cache::AnyCache`
//!   / `cache::CacheSettings` to pick the backend from the environment.
//! - `tokio` (default): the lookup timeout (`DEFAULT_LOOKUP_TIMEOUT`) and
//!   refresh-ahead's background lookups, on Tokio's timer and tasks.
//! - `usage` (default): `usage::UsageTracker`, last-used instants and
//!   counts handed to your recorder in batches, never a write per request.
//! - `redis-tls`: `rediss://` URLs.
//! - `metrics`: counters and histograms on the
//!   [`metrics`](https://docs.rs/metrics) facade (see below).
//! - `test-util`: the cache conformance suite,
//!   `cache::conformance` and `key_cache_conformance!`, for your own
//!   backend's tests.
//!
//! # Observability
//!
//! Each request the layer sees gets one `INFO` span, `api_key_auth`, with
//! `route` (the matched template, else the path), `tier` (what answered:
//! `l1`, `l2`, `lookup`, `stale`), `outcome` (`admitted` or the rejection's
//! code) and, only when `DEBUG` is enabled for this crate, `key` (the
//! [`ShortHash`]). Without a subscriber that wants it, the span is
//! `Span::none()`. Degradations (Redis failing, the breaker, stale answers,
//! failed lookups or usage batches) are `WARN` events on target
//! `tower_api_key`, one line per 10 s each.
//!
//! With the `metrics` feature, install a recorder before the first request;
//! the layer then emits:
//!
//! | metric | labels |
//! | --- | --- |
//! | `api_key_auth_cache_hits_total` | `tier`: `l1`, `l2` |
//! | `api_key_auth_hits_total`, `_negative_hits_total`, `_misses_total` | |
//! | `api_key_auth_lookups_total`, `_lookup_errors_total`, `_lookup_timeouts_total` | |
//! | `api_key_auth_cache_errors_total`, `_cache_skipped_total` | |
//! | `api_key_auth_coalesced_total`, `_stale_served_total`, `_refreshes_total`, `_format_rejected_total` | |
//! | `api_key_auth_rejections_total` | `reason`: the rejection body's `code` |
//! | `api_key_auth_rate_limit_decisions_total` | `outcome`: `admitted`, `limited`, `fallback` |
//! | `api_key_auth_rate_limit_store_errors_total` | |
//! | `api_key_auth_lookup_duration_seconds` (histogram) | |
//! | `api_key_auth_redis_command_duration_seconds` (histogram, feature `redis`) | |
//!
//! Labels are fixed words: never a key, its hash or a principal. The
//! counters but the rejections are the events of [`ApiKeyAuthLayer::stats`],
//! summed over every layer in the process.
//!
//! # What is public
//!
//! At the root, what a user of the layer writes: the layer, its service, the
//! key source and hash, the principal and lookup traits, route policy and
//! scopes, the client's address, rejections, the extractors, the counters. In [`cache`], the backend
//! contract and the backends; their tokens and `get` futures, which no user
//! of the layer names, one level down in `cache::token` and
//! `cache::future`, as the service's response future is in [`future`]. One
//! path per item.
//!
//! The crate is laid out as `ARCHITECTURE.md` (in the repository) describes.

#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "redis", feature = "usage"))]
mod background;
mod breaker;
pub mod cache;
mod client_addr;
mod env;
#[cfg(feature = "axum")]
mod extract;
mod format;
pub mod future;
#[cfg(feature = "__fuzz")]
#[doc(hidden)]
pub mod fuzzing;
mod hash;
mod layer;
mod lookup;
mod policy;
mod principal;
pub mod ratelimit;
#[cfg(feature = "redis")]
mod redis_pool;
mod rejection;
mod request_path;
mod scope;
mod service;
mod source;
mod stats;
mod telemetry;
#[cfg(feature = "usage")]
#[cfg_attr(docsrs, doc(cfg(feature = "usage")))]
pub mod usage;

pub use client_addr::{ClientAddress, ForwardedHeader, PeerAddr};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use extract::{Authenticated, Scoped};
pub use format::{FormatCheck, FormatError, GeneratedKey, KeyFormat};
pub use hash::{KeyHash, KeyHasher, ShortHash};
/// An IPv4 or IPv6 network (CIDR), as a key's
/// [`allowed_networks`](Principal::allowed_networks) and
/// [`ClientAddress::trusted_proxies`] take it: the `ipnet` crate's (its
/// `serde` feature (de)serialises it as `"10.0.0.0/8"`).
pub use ipnet::IpNet;
pub use layer::ApiKeyAuthLayer;
pub use lookup::{lookup_fn, BoxError, Lookup, LookupFn};
pub use policy::{InvalidRoute, Route, RoutePolicy};
pub use principal::Principal;
pub use ratelimit::policy::{InvalidRateLimit, RateLimit};
pub use rejection::{AuthRejection, RejectionHandler, RejectionKind};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use request_path::DEFAULT_LOOKUP_TIMEOUT;
pub use request_path::{DEFAULT_NEGATIVE_TTL, DEFAULT_POSITIVE_TTL};
pub use scope::{InvalidScopes, Scopes};
pub use service::ApiKeyAuth;
pub use source::{KeySource, MalformedKey, DEFAULT_MAX_KEY_LENGTH};
pub use stats::Stats;

/// The README's code, compiled and run as doc tests (it uses every feature).
#[cfg(all(doctest, feature = "tiered", feature = "test-util"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
