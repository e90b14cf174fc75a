//! [`AuthRejection`]: the responses the layer gives instead of calling your
//! service (their rendering is `render.rs`).

mod render;

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

pub(crate) use self::render::sanitize_realm;
use crate::ratelimit::{Fields, RateLimitStatus};
use crate::scope::Requirement;
use crate::{MalformedKey, Scopes};

/// Why a request was not passed to the inner service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// No key was presented on a route that requires one.
    MissingKey,
    /// A key was presented but can't be one (bad syntax, too long, two keys).
    MalformedKey(MalformedKey),
    /// The key is unknown, revoked or expired. (One kind for all three: the
    /// cache keeps one negative verdict, and a client learns nothing about
    /// which keys once existed.)
    InvalidKey,
    /// The lookup failed; the key's validity is unknown. Never cached.
    LookupUnavailable,
    /// [`Authenticated`](crate::Authenticated) was used on a route that the
    /// layer does not cover: a server bug, not a client error.
    LayerMissing,
    /// The key is valid but one of its rate-limit policies is spent
    /// ([`AuthRejection::rate_limit`] says which).
    RateLimited,
    /// The rate-limit counter store failed and the limiter's fallback is
    /// fail-closed.
    RateLimiterUnavailable,
    /// The key is valid but lacks a scope the route requires
    /// ([`AuthRejection::required_scopes`] says what would pass).
    InsufficientScope,
    /// The key is valid but may not be used from the client's address (or
    /// the address can't be known): see
    /// [`Principal::allowed_networks`](crate::Principal::allowed_networks).
    AddressNotAllowed,
}

/// A rejection, ready to render. Your [`on_rejection`] handler receives it;
/// [`default_response`](Self::default_response) is the standard rendering:
///
/// | kind | status | `WWW-Authenticate` (Bearer sources) | `code` in the body | `grpc-status` ([gRPC](#grpc)) |
/// | --- | --- | --- | --- | --- |
/// | no key | 401 | `Bearer realm="api"` (no error code, RFC 6750 §3.1) | `missing_api_key` | 16 `UNAUTHENTICATED` |
/// | malformed key, two keys | 400 | `…, error="invalid_request", error_description="…"` | `invalid_request` | 16 `UNAUTHENTICATED` |
/// | unknown, revoked or expired key | 401 | `…, error="invalid_token", error_description="…"` | `invalid_token` | 16 `UNAUTHENTICATED` |
/// | lookup failed | 503 + `Retry-After` | — | `lookup_unavailable` | 14 `UNAVAILABLE` |
/// | a rate-limit policy spent | 429 + `Retry-After`, `RateLimit-Policy`, `RateLimit` | — | `rate_limited` | 8 `RESOURCE_EXHAUSTED` |
/// | counter store failed, fail-closed | 503 + `Retry-After` | — | `rate_limiter_unavailable` | 14 `UNAVAILABLE` |
/// | key lacks a scope the route requires | 403 | `…, error="insufficient_scope", scope="…"` | `insufficient_scope` | 7 `PERMISSION_DENIED` |
/// | key not allowed from this address | 403 | — | `address_not_allowed` | 7 `PERMISSION_DENIED` |
/// | extractor used without the layer | 500 | — | `auth_layer_missing` | 13 `INTERNAL` |
///
/// Bodies are RFC 9457 `application/problem+json`:
///
/// ```json
/// {"type":"about:blank","title":"Unauthorized","status":401,
///  "detail":"the API key is not valid","code":"invalid_token"}
/// ```
///
/// A `429`'s is of the httpapi problem type `quota-exceeded`, naming the
/// policies it broke:
///
/// ```json
/// {"type":"https://iana.org/assignments/http-problem-types#quota-exceeded",
///  "title":"Too Many Requests","status":429,"detail":"…","code":"rate_limited",
///  "violated-policies":["burst"]}
/// ```
///
/// A `403 insufficient_scope`'s names the route's whole rule, never the
/// scopes the key has (the challenge's `scope` is one way to satisfy it):
///
/// ```json
/// {"type":"about:blank","title":"Forbidden","status":403,"detail":"…",
///  "code":"insufficient_scope","required_scopes":"reports:read OR admin"}
/// ```
///
/// Neither the headers nor the body ever contain the presented key.
///
/// # gRPC
///
/// A request whose `content-type` is `application/grpc` (or
/// `application/grpc+proto`, `+json`, …) is answered as gRPC clients expect,
/// a *trailers-only* response: HTTP `200`, `content-type: application/grpc`,
/// the status in `grpc-status` and [`detail`](Self::detail) in
/// `grpc-message` (percent-encoded as the gRPC HTTP/2 protocol says), no
/// body; the code is the table's last column
/// ([`grpc_status`](Self::grpc_status)). `Retry-After` and the rate-limit
/// fields are kept (tonic shows them as the status's metadata);
/// `WWW-Authenticate` is not sent (it belongs to HTTP's `401` and `403`).
///
/// A malformed key is `UNAUTHENTICATED`, not `INVALID_ARGUMENT`: it is a bad
/// credential, not a bad argument of the call (the message tells the cases
/// apart). gRPC-Web (`application/grpc-web…`) is not recognised, its clients
/// expect their own content-type: put the layer inside tonic-web's
/// `GrpcWebLayer`, which hands the services behind it `application/grpc`
/// requests. A handler set with
/// [`on_rejection`] sees [`is_grpc`](Self::is_grpc) and can keep the gRPC
/// form by returning [`default_response`](Self::default_response) for it.
///
/// [`on_rejection`]: crate::ApiKeyAuthLayer::on_rejection
#[derive(Clone)]
pub struct AuthRejection {
    kind: RejectionKind,
    /// The request was gRPC: render the trailers-only form.
    grpc: bool,
    /// The layer's rendering settings; `None`: the defaults.
    config: Option<Arc<RejectionConfig>>,
    /// What the kind carries.
    detail: Option<Box<Detail>>,
}

/// What a rejection carries beyond its kind.
#[derive(Clone)]
enum Detail {
    /// `RateLimited`: what the policies said, and the fields to write.
    RateLimit(RateLimitStatus, Fields),
    /// `InsufficientScope`: what the route (or the handler) requires.
    Scope(Arc<Requirement>),
}

/// Renders a rejection: your replacement for the default problem+json body.
pub type RejectionHandler = Arc<dyn Fn(&AuthRejection) -> Response<Bytes> + Send + Sync>;

/// What a layer's rejections need to render.
#[derive(Clone)]
pub(crate) struct RejectionConfig {
    pub(crate) scheme: Challenge,
    pub(crate) realm: String,
    pub(crate) retry_after: Duration,
    pub(crate) handler: Option<RejectionHandler>,
    /// Set by any setter: the layer then renders again, with these, a
    /// rejection an extractor made in the handler ([`Rerender`]).
    pub(crate) custom: bool,
}

/// The defaults, for a rejection made without a layer's settings.
static DEFAULT_CONFIG: LazyLock<RejectionConfig> = LazyLock::new(RejectionConfig::default);

#[derive(Clone, Debug)]
pub(crate) enum Challenge {
    Bearer,
    /// Sources without Bearer: `ApiKey realm="…", header="x-api-key"` (or
    /// `query="…"`); the parameter is pre-rendered.
    ApiKey(String),
}

impl Default for RejectionConfig {
    fn default() -> Self {
        Self {
            scheme: Challenge::Bearer,
            realm: "api".to_owned(),
            retry_after: Duration::from_secs(5),
            handler: None,
            custom: false,
        }
    }
}

impl fmt::Debug for RejectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectionConfig")
            .field("scheme", &self.scheme)
            .field("realm", &self.realm)
            .field("retry_after", &self.retry_after)
            .field("custom_handler", &self.handler.is_some())
            .finish()
    }
}

impl AuthRejection {
    pub(crate) fn new(kind: RejectionKind, config: Arc<RejectionConfig>) -> Self {
        crate::telemetry::rejected(kind);
        Self {
            kind,
            grpc: false,
            config: Some(config),
            detail: None,
        }
    }

    pub(crate) fn rate_limited(
        config: Arc<RejectionConfig>,
        status: RateLimitStatus,
        fields: Fields,
    ) -> Self {
        crate::telemetry::rejected(RejectionKind::RateLimited);
        Self {
            kind: RejectionKind::RateLimited,
            grpc: false,
            config: Some(config),
            detail: Some(Box::new(Detail::RateLimit(status, fields))),
        }
    }

    /// `403 insufficient_scope`: `requirement` is what would pass.
    pub(crate) fn insufficient_scope(
        config: Option<Arc<RejectionConfig>>,
        requirement: Arc<Requirement>,
    ) -> Self {
        crate::telemetry::rejected(RejectionKind::InsufficientScope);
        Self {
            kind: RejectionKind::InsufficientScope,
            grpc: false,
            config,
            detail: Some(Box::new(Detail::Scope(requirement))),
        }
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn layer_missing() -> Self {
        crate::telemetry::rejected(RejectionKind::LayerMissing);
        Self {
            kind: RejectionKind::LayerMissing,
            grpc: false,
            config: None,
            detail: None,
        }
    }

    /// Notes whether the rejected request is gRPC, from its headers. Called
    /// on a rejection only: a forwarded request never pays for it.
    pub(crate) fn for_request(mut self, headers: &HeaderMap) -> Self {
        self.grpc = Self::is_grpc_request(headers);
        self
    }

    /// Whether a request with these headers is gRPC.
    pub(crate) fn is_grpc_request(headers: &HeaderMap) -> bool {
        render::is_grpc_request(headers)
    }

    /// Marks the rejection as one for a gRPC request, or not.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn grpc(mut self, grpc: bool) -> Self {
        self.grpc = grpc;
        self
    }

    /// For a rate-limit refusal: each policy of the key and what it has
    /// left (the ones that refused have a `retry_after`).
    pub fn rate_limit(&self) -> Option<&RateLimitStatus> {
        self.rate_limit_fields().map(|(status, _)| status)
    }

    fn rate_limit_fields(&self) -> Option<(&RateLimitStatus, Fields)> {
        match self.detail.as_deref()? {
            Detail::RateLimit(status, fields) => Some((status, *fields)),
            Detail::Scope(_) => None,
        }
    }

    /// For a `403 insufficient_scope`: what the route (or the handler)
    /// requires. Never the scopes the key has.
    pub fn required_scopes(&self) -> Option<&Scopes> {
        self.requirement().map(|r| &r.scopes)
    }

    fn requirement(&self) -> Option<&Requirement> {
        match self.detail.as_deref()? {
            Detail::Scope(requirement) => Some(requirement),
            Detail::RateLimit(..) => None,
        }
    }

    /// The layer's rendering settings, or the defaults.
    fn config(&self) -> &RejectionConfig {
        self.config.as_deref().unwrap_or(&*DEFAULT_CONFIG)
    }

    /// What went wrong.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The status code of the default rendering.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            RejectionKind::MissingKey | RejectionKind::InvalidKey => StatusCode::UNAUTHORIZED,
            RejectionKind::MalformedKey(_) => StatusCode::BAD_REQUEST,
            RejectionKind::LookupUnavailable | RejectionKind::RateLimiterUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RejectionKind::LayerMissing => StatusCode::INTERNAL_SERVER_ERROR,
            RejectionKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            RejectionKind::InsufficientScope | RejectionKind::AddressNotAllowed => {
                StatusCode::FORBIDDEN
            }
        }
    }

    /// A stable machine-readable code (the body's `code` member).
    pub fn code(&self) -> &'static str {
        match self.kind {
            RejectionKind::MissingKey => "missing_api_key",
            RejectionKind::MalformedKey(_) => "invalid_request",
            RejectionKind::InvalidKey => "invalid_token",
            RejectionKind::LookupUnavailable => "lookup_unavailable",
            RejectionKind::LayerMissing => "auth_layer_missing",
            RejectionKind::RateLimited => "rate_limited",
            RejectionKind::RateLimiterUnavailable => "rate_limiter_unavailable",
            RejectionKind::InsufficientScope => "insufficient_scope",
            RejectionKind::AddressNotAllowed => "address_not_allowed",
        }
    }

    /// A sentence for people; never contains the key.
    pub fn detail(&self) -> &'static str {
        match self.kind {
            RejectionKind::MissingKey => "an API key is required",
            RejectionKind::MalformedKey(m) => m.description(),
            RejectionKind::InvalidKey => "the API key is not valid",
            RejectionKind::LookupUnavailable => {
                "the API key could not be checked right now; retry later"
            }
            RejectionKind::LayerMissing => {
                "the Authenticated extractor is used on a route that ApiKeyAuthLayer does not cover (or the layer's principal type differs)"
            }
            RejectionKind::RateLimited => {
                "this API key has spent a rate-limit quota; retry after the time given"
            }
            RejectionKind::RateLimiterUnavailable => {
                "the rate limit could not be checked right now; retry later"
            }
            RejectionKind::InsufficientScope => {
                "the API key lacks a scope this route requires"
            }
            RejectionKind::AddressNotAllowed => {
                "the API key may not be used from this address"
            }
        }
    }

    /// The RFC 6750 error code, when the kind has one.
    fn oauth_error(&self) -> Option<&'static str> {
        match self.kind {
            RejectionKind::MalformedKey(_) => Some("invalid_request"),
            RejectionKind::InvalidKey => Some("invalid_token"),
            RejectionKind::InsufficientScope => Some("insufficient_scope"),
            _ => None,
        }
    }

    /// How long a client should wait before retrying, on 503 and 429 (for a
    /// rate limit: until every refusing policy would admit the request,
    /// never earlier).
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            RejectionKind::LookupUnavailable | RejectionKind::RateLimiterUnavailable => {
                Some(self.config().retry_after)
            }
            RejectionKind::RateLimited => self
                .rate_limit()
                .and_then(RateLimitStatus::retry_after)
                .map(Duration::from_secs),
            _ => None,
        }
    }

    /// Whether the rejected request was gRPC (its `content-type` is
    /// `application/grpc` or `application/grpc+…`): the default rendering
    /// is then a trailers-only gRPC response (see [gRPC](#grpc)).
    ///
    /// A handler that renders HTTP rejections its own way can leave gRPC
    /// ones to the default:
    ///
    /// ```
    /// use bytes::Bytes;
    /// # use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Principal};
    /// # use tower_api_key::cache::MemoryCache;
    /// # #[derive(Clone)] struct Client;
    /// # impl Principal for Client {}
    /// # let layer = ApiKeyAuthLayer::new(
    /// #     MemoryCache::<Client>::builder().build(),
    /// #     lookup_fn(|_: KeyHash| async { Ok::<Option<Client>, std::convert::Infallible>(None) }),
    /// # );
    /// let layer = layer.on_rejection(|rejection| {
    ///     if rejection.is_grpc() {
    ///         return rejection.default_response(); // grpc-status, grpc-message
    ///     }
    ///     let mut res = rejection.default_response();
    ///     *res.body_mut() = Bytes::from(format!("{{\"error\":\"{}\"}}", rejection.code()));
    ///     res
    /// });
    /// ```
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// The gRPC status code of this rejection, as sent in `grpc-status` to
    /// a gRPC request: `16` (`UNAUTHENTICATED`) for a missing, malformed or
    /// invalid key, `7` (`PERMISSION_DENIED`) for a missing scope or an
    /// address not allowed, `8` (`RESOURCE_EXHAUSTED`) for a rate limit, `14`
    /// (`UNAVAILABLE`) when the lookup or the rate limiter failed, `13`
    /// (`INTERNAL`) for the extractor without the layer. The numbers are
    /// gRPC's (tonic: `tonic::Code::from(rejection.grpc_status())`).
    ///
    /// ```
    /// # use tower_api_key::AuthRejection;
    /// fn grpc_name(rejection: &AuthRejection) -> &'static str {
    ///     match rejection.grpc_status() {
    ///         16 => "UNAUTHENTICATED",
    ///         7 => "PERMISSION_DENIED",
    ///         8 => "RESOURCE_EXHAUSTED",
    ///         14 => "UNAVAILABLE",
    ///         _ => "INTERNAL",
    ///     }
    /// }
    /// ```
    pub fn grpc_status(&self) -> i32 {
        match self.kind {
            RejectionKind::MissingKey
            | RejectionKind::MalformedKey(_)
            | RejectionKind::InvalidKey => 16,
            RejectionKind::InsufficientScope | RejectionKind::AddressNotAllowed => 7,
            RejectionKind::RateLimited => 8,
            RejectionKind::LookupUnavailable | RejectionKind::RateLimiterUnavailable => 14,
            RejectionKind::LayerMissing => 13,
        }
    }

    /// The layer's rendering: your handler if one is set, else the default.
    pub fn to_response(&self) -> Response<Bytes> {
        match &self.config().handler {
            Some(handler) => handler(self),
            None => self.default_response(),
        }
    }
}

impl fmt::Debug for AuthRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRejection")
            .field("kind", &self.kind)
            .field("status", &self.status())
            .field("grpc", &self.grpc)
            .finish()
    }
}

impl fmt::Display for AuthRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for AuthRejection {}

/// The mark of a request the layer passed without a principal (a public
/// route, or anonymous on an optional one), so that an extractor can tell
/// "no key" from "no layer", and answer with the layer's rendering.
#[derive(Clone)]
pub(crate) struct Passed(Arc<RejectionConfig>);

impl Passed {
    pub(crate) fn new(config: Arc<RejectionConfig>) -> Self {
        Self(config)
    }

    /// The layer's `401` for this request (gRPC's `UNAUTHENTICATED` for a
    /// gRPC one).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn missing_key(&self, headers: &HeaderMap) -> AuthRejection {
        AuthRejection::new(RejectionKind::MissingKey, Arc::clone(&self.0)).for_request(headers)
    }
}

/// A rejection made by an extractor in the handler
/// ([`Scoped::require`](crate::Scoped::require)), which knows nothing of
/// the layer's rendering settings: rendered with the defaults, it rides in
/// the response's extensions, and a layer whose settings are not the
/// defaults renders it again with its own on the way out
/// ([`AuthRejection::rerender`]). Nothing is added to a request: no
/// allocation on a hit.
#[cfg(feature = "axum")]
#[derive(Clone)]
pub(crate) struct Rerender(pub(crate) AuthRejection);

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for AuthRejection {
    fn into_response(self) -> axum::response::Response {
        let mut res = self.to_response().map(axum::body::Body::from);
        // Made without a layer's settings (an extractor's): a layer with
        // settings of its own renders it again.
        if self.config.is_none() && self.kind != RejectionKind::LayerMissing {
            res.extensions_mut().insert(Rerender(self));
        }
        res
    }
}

impl AuthRejection {
    /// The inner service answered with an extractor's rejection
    /// ([`Rerender`]): that rejection rendered with `config` (the layer's,
    /// not the defaults), else the response as it is.
    #[cfg(feature = "axum")]
    pub(crate) fn rerender<B: From<Bytes>>(
        response: Response<B>,
        config: &Arc<RejectionConfig>,
    ) -> Response<B> {
        match response.extensions().get::<Rerender>() {
            Some(Rerender(rejection)) => {
                let rejection = Self {
                    config: Some(Arc::clone(config)),
                    ..rejection.clone()
                };
                rejection.to_response().map(B::from)
            }
            None => response,
        }
    }
}

#[cfg(test)]
mod tests;
