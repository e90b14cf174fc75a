//! [`ApiKeyAuthLayer`]: the builder, the [`Layer`] impl, and the handle for
//! revocation and statistics (the per-route setters are `routes.rs`). What
//! a request goes through is the request path's (`request_path/`).

mod routes;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tower_layer::Layer;

use crate::cache::{CacheError, KeyCache};
use crate::lookup::Lookup;
use crate::ratelimit::{CounterError, CounterKey, RateLimiter};
use crate::rejection::{sanitize_realm, AuthRejection, Challenge, RejectionConfig};
use crate::request_path::{Config, RequestPath};
use crate::stats::Stats;
use crate::{ApiKeyAuth, ClientAddress, KeyFormat, KeyHash, KeyHasher, KeySource};

/// Layer that applies [`ApiKeyAuth`], which authenticates requests by API key
/// against a cache in front of your key store.
///
/// Build it with a cache and a [`Lookup`], configure it with the chained
/// methods, then put it on a router. `Clone` is two reference counts: keep a
/// clone in your application state to revoke keys ([`invalidate`]) and read
/// [`stats`].
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use http::{header::AUTHORIZATION, Request, StatusCode};
/// use tower::ServiceExt;
/// use tower_api_key::cache::MemoryCache;
/// use tower_api_key::{lookup_fn, ApiKeyAuthLayer, Authenticated, KeyHash, Principal};
///
/// #[derive(Debug)]
/// struct Client { name: String }
/// impl Principal for Client {}
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let admin = KeyHash::of("sk_admin_123");
/// let auth = ApiKeyAuthLayer::new(
///     MemoryCache::builder().max_capacity(100_000).build(),
///     lookup_fn(move |hash: KeyHash| async move {
///         // Your key table, queried by hash.
///         Ok::<_, Infallible>((hash == admin).then(|| Client { name: "admin".into() }))
///     }),
/// )
/// .positive_ttl(Duration::from_secs(300))
/// .negative_ttl(Duration::from_secs(30))
/// .public("/health");
///
/// let app = Router::new()
///     .route("/me", get(|Authenticated(client): Authenticated<Client>| async move {
///         client.name.clone()
///     }))
///     .route("/health", get(|| async { "ok" }))
///     .layer(auth.clone());
///
/// let res = app.clone()
///     .oneshot(Request::get("/me").header(AUTHORIZATION, "Bearer sk_admin_123").body(axum::body::Body::empty()).unwrap())
///     .await
///     .unwrap();
/// assert_eq!(res.status(), StatusCode::OK);
///
/// let res = app.clone().oneshot(Request::get("/me").body(axum::body::Body::empty()).unwrap()).await.unwrap();
/// assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
///
/// let res = app.oneshot(Request::get("/health").body(axum::body::Body::empty()).unwrap()).await.unwrap();
/// assert_eq!(res.status(), StatusCode::OK);
///
/// // Revocation: drop the key's cached verdict (after marking it revoked in your table).
/// auth.invalidate(&KeyHash::of("sk_admin_123")).await.unwrap();
/// assert_eq!(auth.stats().lookups, 1);
/// # }
/// ```
///
/// [`invalidate`]: Self::invalidate
/// [`stats`]: Self::stats
pub struct ApiKeyAuthLayer<C: KeyCache, L> {
    path: RequestPath<C, L>,
}

impl<C, L> ApiKeyAuthLayer<C, L>
where
    C: KeyCache,
    L: Lookup<C::Principal>,
{
    /// A layer with `cache` in front of `lookup`, requiring a key on every
    /// route, reading it from `Authorization: Bearer`, hashing it with plain
    /// SHA-256, caching valid keys for [`DEFAULT_POSITIVE_TTL`] and unknown
    /// ones for [`DEFAULT_NEGATIVE_TTL`].
    ///
    /// [`DEFAULT_POSITIVE_TTL`]: crate::DEFAULT_POSITIVE_TTL
    /// [`DEFAULT_NEGATIVE_TTL`]: crate::DEFAULT_NEGATIVE_TTL
    pub fn new(cache: C, lookup: L) -> Self {
        Self {
            path: RequestPath::new(cache, lookup),
        }
    }
}

impl<C: KeyCache, L> ApiKeyAuthLayer<C, L> {
    fn config_mut(&mut self) -> &mut Config {
        self.path.config_mut()
    }

    /// The rejections' rendering settings, marked as set by the user.
    fn rejection_mut(&mut self) -> &mut RejectionConfig {
        let rejection = Arc::make_mut(&mut self.config_mut().rejection);
        rejection.custom = true;
        rejection
    }

    /// The request path this layer's services run.
    pub(crate) fn request_path(&self) -> &RequestPath<C, L> {
        &self.path
    }

    /// How long a valid key stays cached (default five minutes). A key that
    /// reports its own expiry ([`Principal::expires_at`](crate::Principal::expires_at)) is never cached past
    /// it. `Duration::ZERO` disables positive caching.
    pub fn positive_ttl(mut self, ttl: Duration) -> Self {
        self.config_mut().positive_ttl = ttl;
        self
    }

    /// How long an unknown, revoked or expired key stays cached as invalid
    /// (default thirty seconds). Negative caching protects your key store
    /// from floods of made-up keys; keep it short, and invalidate a key's hash
    /// when you create it so an earlier negative entry can't block it.
    /// `Duration::ZERO` disables negative caching.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.config_mut().negative_ttl = ttl;
        self
    }

    /// The longest wait for one lookup (default
    /// [`DEFAULT_LOOKUP_TIMEOUT`](crate::DEFAULT_LOOKUP_TIMEOUT), 5 s): a
    /// lookup still running then is a failed one, answered `503` with
    /// `Retry-After` (or, with [`serve_stale`](Self::serve_stale), from the
    /// key's stale entry), never cached, counted in
    /// [`Stats::lookup_timeouts`](crate::Stats::lookup_timeouts); every
    /// request waiting on that lookup gets the same answer at that moment.
    /// The lookup's future is dropped. Applies on a Tokio runtime (feature
    /// `tokio`), which needs its timers (`enable_time` or `enable_all` on the
    /// runtime builder; `#[tokio::main]` has them): on a runtime without
    /// them Tokio panics at the first lookup. `Duration::MAX` waits forever
    /// and uses no timer.
    ///
    /// ```
    /// use std::time::Duration;
    /// # use tower_api_key::{cache::MemoryCache, lookup_fn, ApiKeyAuthLayer, BoxError, KeyHash, Principal};
    /// # #[derive(Clone)] struct Client;
    /// # impl Principal for Client {}
    /// # let lookup = lookup_fn(|_: KeyHash| async { Ok::<Option<Client>, BoxError>(None) });
    /// let auth = ApiKeyAuthLayer::new(MemoryCache::new(), lookup)
    ///     .lookup_timeout(Duration::from_millis(500));
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().lookup_timeout = timeout;
        self
    }

    /// Serve-stale (off by default): when the lookup fails (an error or a
    /// timeout, not an unknown key) and the key's valid entry went past its
    /// fresh time less than `stale_for` ago, the request is answered with
    /// that entry, counted in [`Stats::stale_served`](crate::Stats::stale_served)
    /// and logged at a bounded rate. So that there is such an entry, valid
    /// keys are kept `stale_for` longer than [`positive_ttl`](Self::positive_ttl)
    /// (Redis: the entry's `PX`, with its fresh deadline in the value).
    ///
    /// Never for a key that was invalidated (revocation removes the entry,
    /// it does not expire it), never from a negative entry, never past the
    /// key's own [`expires_at`](crate::Principal::expires_at). A stale entry
    /// answers nothing while the lookup works: the lookup's answer replaces
    /// it; and after a failed lookup the cache is read again, so an
    /// invalidation made while the lookup ran still wins. With a cache that
    /// other instances share, the stale time is the writer's: give every
    /// instance the same `stale_for` (an instance with none serves no
    /// stale entry). On the tiered cache the stale entry is Redis's; with Redis
    /// unreachable too, only an L1 entry that L1 still trusts while cut off
    /// from the broadcasts (its disconnected bound) can serve.
    /// `Duration::ZERO` turns it off.
    ///
    /// ```
    /// use std::time::Duration;
    /// # use tower_api_key::{cache::MemoryCache, lookup_fn, ApiKeyAuthLayer, BoxError, KeyHash, Principal};
    /// # #[derive(Clone)] struct Client;
    /// # impl Principal for Client {}
    /// # let lookup = lookup_fn(|_: KeyHash| async { Ok::<Option<Client>, BoxError>(None) });
    ///
    /// // Keys looked up in the last 5 minutes keep working through a
    /// // 15-minute outage of the key store.
    /// let auth = ApiKeyAuthLayer::new(MemoryCache::new(), lookup)
    ///     .positive_ttl(Duration::from_secs(300))
    ///     .serve_stale(Duration::from_secs(900));
    /// ```
    pub fn serve_stale(mut self, stale_for: Duration) -> Self {
        self.config_mut().stale_for = stale_for;
        self
    }

    /// Refresh-ahead (off by default): a hit on a valid entry within the
    /// last `part` of its positive TTL (`0.1`: the last tenth) answers at
    /// once and starts one background lookup of the key (unless one is in
    /// flight), whose answer replaces the entry: a key in steady use never
    /// makes a request wait for the lookup. The refresh takes its cache
    /// token before its lookup starts, so an invalidation during it wins; a
    /// failed refresh stores nothing (the entry lives out its TTL). Counted
    /// in [`Stats::refreshes`](crate::Stats::refreshes). An entry whose TTL
    /// the key's own expiry cut short is not refreshed. The task runs on
    /// the Tokio runtime of the request that started it (outside a runtime,
    /// no refresh).
    ///
    /// # Panics
    ///
    /// If `part` is not within `0.0..1.0` (at `1.0` every hit would
    /// refresh): a configuration error.
    ///
    /// ```
    /// # use tower_api_key::{cache::MemoryCache, lookup_fn, ApiKeyAuthLayer, BoxError, KeyHash, Principal};
    /// # #[derive(Clone)] struct Client;
    /// # impl Principal for Client {}
    /// # let lookup = lookup_fn(|_: KeyHash| async { Ok::<Option<Client>, BoxError>(None) });
    /// // A key used in the last 30 s of its 5 minutes is refreshed.
    /// let auth = ApiKeyAuthLayer::new(MemoryCache::new(), lookup).refresh_ahead(0.1);
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn refresh_ahead(mut self, part: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&part),
            "refresh_ahead takes the part of the TTL to refresh in, within 0.0..1.0; got {part}"
        );
        self.config_mut().refresh_ahead = (part > 0.0).then_some(part);
        self
    }

    /// Where keys are read from (default `Authorization: Bearer`).
    pub fn source(mut self, source: KeySource) -> Self {
        let scheme = match (source.uses_bearer(), source.challenge_param()) {
            (false, Some(param)) => Challenge::ApiKey(param),
            _ => Challenge::Bearer,
        };
        if !matches!(scheme, Challenge::Bearer) {
            self.rejection_mut().scheme = scheme;
        } else if !matches!(self.path.config().rejection.scheme, Challenge::Bearer) {
            self.rejection_mut().scheme = Challenge::Bearer;
        }
        self.config_mut().source = source;
        self
    }

    /// Whether the presented key is taken out of the request the inner
    /// service sees (default `true`: Kong's and Envoy's
    /// `hide_credentials`): once read, the `Authorization` header's Bearer
    /// value (other schemes stay), the [`KeySource`]'s named header, its
    /// query parameter (the URI rewritten, the rest of the query as sent) or
    /// its cookie (the other cookies kept) is gone, so no handler, log line
    /// or upstream proxy can leak it. Pass `false` for an app that must
    /// forward the key itself. A [`public`](Self::public) route is left
    /// untouched either way (the layer reads no key there).
    pub fn hide_credentials(mut self, hide: bool) -> Self {
        self.config_mut().hide_credentials = hide;
        self
    }

    /// Where the client's address comes from, for keys that may only be
    /// used from some networks
    /// ([`Principal::allowed_networks`](crate::Principal::allowed_networks)):
    /// the connection's peer by default, through your trusted proxies'
    /// forwarded header when you name them (see [`ClientAddress`]).
    pub fn client_address(mut self, address: ClientAddress) -> Self {
        self.config_mut().client_address = address;
        self
    }

    /// Checks every presented key against `format` before anything else: a
    /// key with the format's prefix and a wrong checksum (or, unless the
    /// format allows legacy keys, a key without the prefix) is answered as an
    /// unknown key (`401 invalid_token`) with no cache read and no lookup,
    /// and counted in [`Stats::format_rejected`](crate::Stats::format_rejected).
    ///
    /// ```
    /// use tower_api_key::{ApiKeyAuthLayer, KeyFormat};
    /// # use tower_api_key::{cache::MemoryCache, lookup_fn, BoxError, KeyHash, Principal};
    /// # #[derive(Clone)] struct Client;
    /// # impl Principal for Client {}
    /// # let lookup = lookup_fn(|_: KeyHash| async { Ok::<Option<Client>, BoxError>(None) });
    ///
    /// # let key_secret_from_your_secret_store = "s3cr3t";
    /// let format = KeyFormat::keyed("sk_live_", [key_secret_from_your_secret_store])?
    ///     .allow_legacy(true); // while older keys are migrated
    /// let auth = ApiKeyAuthLayer::new(MemoryCache::new(), lookup).key_format(format);
    /// # Ok::<(), tower_api_key::FormatError>(())
    /// ```
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.config_mut().format = Some(Arc::new(format));
        self
    }

    /// Notes each authenticated request's key in `tracker`, which hands
    /// your recorder last-used instants and counts in batches, at most once
    /// per key per interval, off the request path (see
    /// [`usage`](crate::usage)). Keep a clone to
    /// [`shutdown`](crate::usage::UsageTracker::shutdown) it.
    #[cfg(feature = "usage")]
    #[cfg_attr(docsrs, doc(cfg(feature = "usage")))]
    pub fn usage(mut self, tracker: crate::usage::UsageTracker<C::Principal>) -> Self {
        self.config_mut().usage = Some(crate::usage::AnyTracker::new(tracker));
        self
    }

    /// Hashes keys with HMAC-SHA256 keyed by `pepper` instead of plain
    /// SHA-256. Your key table must store hashes made the same way: use
    /// [`hash_key`](Self::hash_key).
    pub fn pepper(mut self, pepper: impl AsRef<[u8]>) -> Self {
        self.config_mut().hasher = KeyHasher::with_pepper(pepper);
        self
    }

    /// Limits the rate of each key after it is authenticated: its
    /// [`rate_limits`](crate::Principal::rate_limits) (or the limiter's
    /// default) counted in the limiter's store; over a quota, `429` with
    /// `Retry-After` and the `RateLimit-Policy` / `RateLimit` fields. See
    /// [`ratelimit`](crate::ratelimit).
    pub fn rate_limits(mut self, limiter: RateLimiter) -> Self {
        self.config_mut().rate_limiter = Some(limiter);
        self
    }

    /// The `realm` of the `WWW-Authenticate` challenge (default `api`).
    /// Characters that can't appear in a quoted string are dropped.
    pub fn realm(mut self, realm: &str) -> Self {
        self.rejection_mut().realm = sanitize_realm(realm);
        self
    }

    /// The `Retry-After` sent with `503` when the lookup fails (default five
    /// seconds, rounded up to whole seconds).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.rejection_mut().retry_after = after;
        self
    }

    /// Renders rejections with `handler` instead of the default problem+json
    /// (see [`AuthRejection`]). The handler sees the
    /// [`AuthRejection`] and may start from its
    /// [`default_response`](AuthRejection::default_response). It renders
    /// everything the layer answers, and the `401` of an
    /// [`Authenticated`](crate::Authenticated) extractor on a route the layer
    /// passed anonymously; the extractor's `500` on a route without the layer
    /// can't know this handler and keeps the default rendering.
    ///
    /// ```
    /// # use tower_api_key::{ApiKeyAuthLayer, cache::MemoryCache, lookup_fn, KeyHash, Principal};
    /// # struct Client; impl Principal for Client {}
    /// # let layer = ApiKeyAuthLayer::new(MemoryCache::<Client>::new(),
    /// #     lookup_fn(|_: KeyHash| async { Ok::<Option<Client>, std::convert::Infallible>(None) }));
    /// use bytes::Bytes;
    /// use http::Response;
    ///
    /// let layer = layer.on_rejection(|rejection| {
    ///     let mut res = rejection.default_response();
    ///     *res.body_mut() = Bytes::from(format!("{{\"error\":\"{}\"}}", rejection.code()));
    ///     res.headers_mut().insert("content-type", "application/json".parse().unwrap());
    ///     res
    /// });
    /// ```
    pub fn on_rejection<F>(mut self, handler: F) -> Self
    where
        F: Fn(&AuthRejection) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.rejection_mut().handler = Some(Arc::new(handler));
        self
    }

    /// Hashes a secret the way this layer does (with its pepper, if any): use
    /// it when you create keys, to store the hash.
    pub fn hash_key(&self, secret: impl AsRef<[u8]>) -> KeyHash {
        self.path.config().hasher.hash(secret)
    }

    /// Drops the cached verdict for one key. Call it after you revoke a key
    /// in your table (and after you create one, so that a negative entry
    /// cached before it existed can't block it). Returns when the entry is
    /// gone; a lookup for this key that was already in flight can't write its
    /// now-stale answer back, and requests arriving after this call don't
    /// share it.
    pub async fn invalidate(&self, hash: &KeyHash) -> Result<(), CacheError> {
        self.path.cache().invalidate(hash).await
    }

    /// Drops every cached verdict.
    pub async fn invalidate_all(&self) -> Result<(), CacheError> {
        self.path.cache().invalidate_all().await
    }

    /// Drops every cached key of one [`owner`](crate::Principal::owner) (a
    /// tenant, an organisation, a user): call it after you suspend the owner
    /// or revoke all its keys in your table. As [`invalidate`](Self::invalidate),
    /// a lookup already in flight can't write its stale answer back. The
    /// backend must support it (all of this crate's do).
    pub async fn invalidate_owner(&self, owner: &str) -> Result<(), CacheError> {
        self.path.cache().invalidate_owner(owner).await
    }

    /// Forgets a key's rate-limit counts (after raising its limits, say).
    /// Does nothing without a [`RateLimiter`].
    pub async fn reset_rate_limits(&self, hash: &KeyHash) -> Result<(), CounterError> {
        self.reset_counts(CounterKey::key(hash)).await
    }

    /// Forgets the rate-limit counts an owner's keys share (see
    /// [`limits_per_owner`](crate::Principal::limits_per_owner)).
    pub async fn reset_owner_rate_limits(&self, owner: &str) -> Result<(), CounterError> {
        self.reset_counts(CounterKey::owner(owner)).await
    }

    async fn reset_counts(&self, key: CounterKey) -> Result<(), CounterError> {
        match &self.path.config().rate_limiter {
            Some(limiter) => limiter.reset(&key).await,
            None => Ok(()),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.path.stats()
    }

    /// The cache.
    pub fn cache(&self) -> &C {
        self.path.cache()
    }
}

impl<S, C: KeyCache, L> Layer<S> for ApiKeyAuthLayer<C, L> {
    type Service = ApiKeyAuth<S, C, L>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth::new(inner, self.clone())
    }
}

impl<C: KeyCache, L> Clone for ApiKeyAuthLayer<C, L> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
        }
    }
}

impl<C: KeyCache, L> fmt::Debug for ApiKeyAuthLayer<C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = self.path.config();
        f.debug_struct("ApiKeyAuthLayer")
            .field("source", &config.source)
            .field("hasher", &config.hasher)
            .field("routes", &config.routes)
            .field("positive_ttl", &config.positive_ttl)
            .field("negative_ttl", &config.negative_ttl)
            .field("rejection", &config.rejection)
            .field("cache", &std::any::type_name::<C>())
            .field("stats", &self.stats())
            .finish()
    }
}
