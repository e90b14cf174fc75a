//! [`AuthRejection`]: the responses the layer gives instead of calling your
//! service.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};
use serde::Serialize;

use crate::ratelimit::{Fields, RateLimitStatus};
use crate::{MalformedKey, RateLimit};

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
/// `WWW-Authenticate` is not sent (it belongs to a `401`).
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
    config: Option<Arc<RejectionConfig>>,
    /// For `RateLimited`: what the policies said, and the fields to write.
    rate_limit: Option<Box<(RateLimitStatus, Fields)>>,
}

/// `grpc-status`: the response header of a trailers-only gRPC answer.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the status's message, percent-encoded.
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Renders a rejection: your replacement for the default problem+json body.
pub type RejectionHandler = Arc<dyn Fn(&AuthRejection) -> Response<Bytes> + Send + Sync>;

/// What a layer's rejections need to render.
#[derive(Clone)]
pub(crate) struct RejectionConfig {
    pub(crate) scheme: Challenge,
    pub(crate) realm: String,
    pub(crate) retry_after: Duration,
    pub(crate) handler: Option<RejectionHandler>,
}

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

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'static str,
    #[serde(rename = "violated-policies", skip_serializing_if = "Vec::is_empty")]
    violated_policies: Vec<&'a str>,
}

impl AuthRejection {
    pub(crate) fn new(kind: RejectionKind, config: Arc<RejectionConfig>) -> Self {
        crate::telemetry::rejected(kind);
        Self {
            kind,
            grpc: false,
            config: Some(config),
            rate_limit: None,
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
            rate_limit: Some(Box::new((status, fields))),
        }
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn layer_missing() -> Self {
        crate::telemetry::rejected(RejectionKind::LayerMissing);
        Self {
            kind: RejectionKind::LayerMissing,
            grpc: false,
            config: None,
            rate_limit: None,
        }
    }

    /// Notes whether the rejected request is gRPC, from its headers. Called
    /// on a rejection only: a forwarded request never pays for it.
    pub(crate) fn for_request(mut self, headers: &HeaderMap) -> Self {
        self.grpc = is_grpc_request(headers);
        self
    }

    /// For a rate-limit refusal: each policy of the key and what it has
    /// left (the ones that refused have a `retry_after`).
    pub fn rate_limit(&self) -> Option<&RateLimitStatus> {
        self.rate_limit.as_deref().map(|(status, _)| status)
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
        }
    }

    /// The RFC 6750 error code, when the kind has one.
    fn oauth_error(&self) -> Option<&'static str> {
        match self.kind {
            RejectionKind::MalformedKey(_) => Some("invalid_request"),
            RejectionKind::InvalidKey => Some("invalid_token"),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` challenge, on 400 and 401.
    pub fn www_authenticate(&self) -> Option<HeaderValue> {
        let config = self.config.as_deref()?;
        if !matches!(
            self.status(),
            StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST
        ) {
            return None;
        }
        let mut value = match &config.scheme {
            Challenge::Bearer => format!("Bearer realm=\"{}\"", config.realm),
            Challenge::ApiKey(param) => format!("ApiKey realm=\"{}\", {param}", config.realm),
        };
        if let Some(error) = self.oauth_error() {
            value.push_str(&format!(
                ", error=\"{error}\", error_description=\"{}\"",
                self.detail()
            ));
        }
        // The realm was sanitised when it was set and the rest is ours.
        HeaderValue::from_str(&value).ok()
    }

    /// How long a client should wait before retrying, on 503 and 429 (for a
    /// rate limit: until every refusing policy would admit the request,
    /// never earlier).
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            RejectionKind::LookupUnavailable | RejectionKind::RateLimiterUnavailable => {
                self.config.as_ref().map(|c| c.retry_after)
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
    /// invalid key, `8` (`RESOURCE_EXHAUSTED`) for a rate limit, `14`
    /// (`UNAVAILABLE`) when the lookup or the rate limiter failed, `13`
    /// (`INTERNAL`) for the extractor without the layer. The numbers are
    /// gRPC's (tonic: `tonic::Code::from(rejection.grpc_status())`).
    ///
    /// ```
    /// # use tower_api_key::AuthRejection;
    /// fn grpc_name(rejection: &AuthRejection) -> &'static str {
    ///     match rejection.grpc_status() {
    ///         16 => "UNAUTHENTICATED",
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
            RejectionKind::RateLimited => 8,
            RejectionKind::LookupUnavailable | RejectionKind::RateLimiterUnavailable => 14,
            RejectionKind::LayerMissing => 13,
        }
    }

    /// The standard rendering: status, `WWW-Authenticate` or `Retry-After`,
    /// and an RFC 9457 problem+json body; for a gRPC request
    /// ([`is_grpc`](Self::is_grpc)), a trailers-only gRPC response.
    pub fn default_response(&self) -> Response<Bytes> {
        if self.grpc {
            return self.grpc_response();
        }
        let status = self.status();
        let problem = Problem {
            kind: match self.kind {
                RejectionKind::RateLimited => {
                    "https://iana.org/assignments/http-problem-types#quota-exceeded"
                }
                _ => "about:blank",
            },
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
            code: self.code(),
            violated_policies: self
                .rate_limit()
                .map(|s| s.violated().map(RateLimit::name).collect())
                .unwrap_or_default(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = Response::new(Bytes::from(body));
        *res.status_mut() = status;
        let headers = res.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(challenge) = self.www_authenticate() {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        self.write_retry_headers(headers);
        res
    }

    /// The gRPC rendering: `200`, `grpc-status`, `grpc-message`, no body
    /// (trailers-only: every field goes in the one HEADERS frame).
    fn grpc_response(&self) -> Response<Bytes> {
        let mut res = Response::new(Bytes::new());
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(GRPC_STATUS, HeaderValue::from(self.grpc_status()));
        // Percent-encoded, so visible ASCII: always a valid header value.
        if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(self.detail())) {
            headers.insert(GRPC_MESSAGE, message);
        }
        self.write_retry_headers(headers);
        res
    }

    /// `Retry-After` (on 503 and 429) and the rate-limit fields (on 429).
    fn write_retry_headers(&self, headers: &mut HeaderMap) {
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some((status, fields)) = self.rate_limit.as_deref() {
            headers.extend(status.headers(*fields));
        }
    }

    /// The layer's rendering: your handler if one is set, else the default.
    pub fn to_response(&self) -> Response<Bytes> {
        match self.config.as_ref().and_then(|c| c.handler.as_ref()) {
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

/// Whether a request is gRPC: `content-type` is `application/grpc`, alone
/// or followed by `+` (`+proto`, `+json`) or `;` (parameters), in any case.
/// `application/grpc-web…` is not: its clients expect another framing.
fn is_grpc_request(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// `grpc-message`'s encoding (gRPC over HTTP/2, "Percent-Encoded"): the
/// bytes of the UTF-8 string from space to `~` except `%` stay as they are,
/// every other byte is `%XX` (upper-case hex).
fn grpc_percent_encode(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

/// Keeps a realm inside its quoted-string: printable ASCII without `"` or `\`.
pub(crate) fn sanitize_realm(realm: &str) -> String {
    realm
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
        .collect()
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for AuthRejection {
    fn into_response(self) -> axum::response::Response {
        self.to_response().map(axum::body::Body::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(kind: RejectionKind) -> AuthRejection {
        AuthRejection::new(kind, Arc::new(RejectionConfig::default()))
    }

    #[test]
    fn missing_key_has_a_challenge_without_error_code() {
        let res = rejection(RejectionKind::MissingKey).default_response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()[WWW_AUTHENTICATE], r#"Bearer realm="api""#);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["status"], 401);
        assert_eq!(body["code"], "missing_api_key");
    }

    #[test]
    fn invalid_and_malformed_carry_rfc6750_codes() {
        let res = rejection(RejectionKind::InvalidKey).default_response();
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="invalid_token", error_description="the API key is not valid""#
        );
        let res = rejection(RejectionKind::MalformedKey(MalformedKey::TooLong)).default_response();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(res.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains(r#"error="invalid_request""#));
    }

    #[test]
    fn lookup_unavailable_is_503_with_retry_after() {
        let res = rejection(RejectionKind::LookupUnavailable).default_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[RETRY_AFTER], "5");
        assert!(res.headers().get(WWW_AUTHENTICATE).is_none());
    }

    fn grpc_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers
    }

    fn grpc(kind: RejectionKind) -> Response<Bytes> {
        let rejection = rejection(kind).for_request(&grpc_headers());
        assert!(rejection.is_grpc());
        rejection.default_response()
    }

    fn rate_limited() -> AuthRejection {
        use crate::ratelimit::{Algorithm, CounterKey, MemoryCounters};
        let limits = [RateLimit::new("burst", 1, Duration::from_secs(60)).unwrap()];
        let store = MemoryCounters::builder().build();
        let key = CounterKey::key(&crate::KeyHash::of("k"));
        let _ = store.count(&key, &limits, Algorithm::SlidingWindow, 1);
        let refused = store.count(&key, &limits, Algorithm::SlidingWindow, 1);
        assert!(!refused.admitted);
        let fields = Fields {
            ietf: true,
            x_ratelimit: false,
        };
        AuthRejection::rate_limited(
            Arc::new(RejectionConfig::default()),
            RateLimitStatus::new(&limits, &refused),
            fields,
        )
    }

    #[test]
    fn grpc_status_of_each_kind() {
        let cases = [
            (RejectionKind::MissingKey, 16),
            (RejectionKind::MalformedKey(MalformedKey::TooLong), 16),
            (
                RejectionKind::MalformedKey(MalformedKey::MultipleCredentials),
                16,
            ),
            (RejectionKind::InvalidKey, 16),
            (RejectionKind::LookupUnavailable, 14),
            (RejectionKind::RateLimiterUnavailable, 14),
        ];
        for (kind, code) in cases {
            assert_eq!(rejection(kind).grpc_status(), code, "{kind:?}");
            let res = grpc(kind);
            assert_eq!(res.status(), StatusCode::OK, "{kind:?}");
            assert_eq!(res.headers()[CONTENT_TYPE], "application/grpc");
            assert_eq!(res.headers()["grpc-status"], code.to_string().as_str());
            assert!(res.body().is_empty(), "{kind:?}: trailers-only");
            assert!(res.headers().get(WWW_AUTHENTICATE).is_none());
        }
        assert_eq!(AuthRejection::layer_missing().grpc_status(), 13);
        let res = AuthRejection::layer_missing()
            .for_request(&grpc_headers())
            .default_response();
        assert_eq!(res.headers()["grpc-status"], "13");
        assert_eq!(rate_limited().grpc_status(), 8);
    }

    #[test]
    fn grpc_keeps_retry_after_and_rate_limit_fields() {
        let res = grpc(RejectionKind::LookupUnavailable);
        assert_eq!(res.headers()[RETRY_AFTER], "5");
        let res = rate_limited()
            .for_request(&grpc_headers())
            .default_response();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "8");
        assert!(res.headers().contains_key(RETRY_AFTER));
        assert!(res.headers().contains_key("ratelimit-policy"));
        assert!(res.body().is_empty());
    }

    #[test]
    fn grpc_message_is_the_detail_percent_encoded() {
        let res = grpc(RejectionKind::InvalidKey);
        assert_eq!(res.headers()["grpc-message"], "the API key is not valid");
        let res = grpc(RejectionKind::MissingKey);
        assert_eq!(res.headers()["grpc-message"], "an API key is required");
    }

    #[test]
    fn percent_encoding_follows_the_grpc_spec() {
        // Space through `~` stay, except `%`; everything else is `%XX`.
        assert_eq!(grpc_percent_encode("a b~!\"#$&'"), "a b~!\"#$&'");
        assert_eq!(grpc_percent_encode("100%"), "100%25");
        assert_eq!(grpc_percent_encode("line\nbreak\t"), "line%0Abreak%09");
        assert_eq!(grpc_percent_encode("\u{7f}"), "%7F");
        assert_eq!(grpc_percent_encode("é…"), "%C3%A9%E2%80%A6");
        assert_eq!(grpc_percent_encode(""), "");
    }

    #[test]
    fn only_grpc_content_types_are_grpc() {
        for (value, expected) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc+json", true),
            ("Application/GRPC", true),
            ("application/grpc; charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/grpc-web+proto", false),
            ("application/grpcx", false),
            ("application/json", false),
            ("application/gr", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc_request(&headers), expected, "{value}");
        }
        assert!(!is_grpc_request(&HeaderMap::new()));
        // Not gRPC: the problem+json rendering, as before.
        let res = rejection(RejectionKind::InvalidKey)
            .for_request(&HeaderMap::new())
            .default_response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers().get("grpc-status").is_none());
    }

    #[test]
    fn realm_is_sanitised() {
        assert_eq!(sanitize_realm("my \"realm\"\\\n é"), "my realm ");
    }
}
