use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};

use super::render::grpc_percent_encode;
use super::*;
use crate::RateLimit;

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
        assert_eq!(
            AuthRejection::is_grpc_request(&headers),
            expected,
            "{value}"
        );
    }
    assert!(!AuthRejection::is_grpc_request(&HeaderMap::new()));
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

fn scope_rejection(config: RejectionConfig, rule: crate::Scopes) -> AuthRejection {
    AuthRejection::insufficient_scope(Some(Arc::new(config)), crate::scope::Requirement::new(rule))
}

#[test]
fn insufficient_scope_is_rfc6750_with_the_rule_in_the_body() {
    let rule = crate::Scopes::one("keys:write").and(crate::Scopes::any(["billing", "admin"]));
    let res = scope_rejection(RejectionConfig::default(), rule.clone()).default_response();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        res.headers()[WWW_AUTHENTICATE],
        r#"Bearer realm="api", error="insufficient_scope", scope="keys:write billing""#
    );
    assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
    assert_eq!(
        std::str::from_utf8(res.body()).unwrap(),
        r#"{"type":"about:blank","title":"Forbidden","status":403,"detail":"the API key lacks a scope this route requires","code":"insufficient_scope","required_scopes":"keys:write AND (billing OR admin)"}"#
    );
    let rejection = scope_rejection(RejectionConfig::default(), rule.clone());
    assert_eq!(rejection.required_scopes(), Some(&rule));
    assert_eq!(rejection.kind(), RejectionKind::InsufficientScope);
    assert_eq!(rejection.grpc_status(), 7);
    // Another scheme and realm.
    let config = RejectionConfig {
        scheme: Challenge::ApiKey(r#"header="x-api-key""#.into()),
        realm: "billing".into(),
        ..RejectionConfig::default()
    };
    let res = scope_rejection(config, crate::Scopes::one("admin")).default_response();
    assert_eq!(
        res.headers()[WWW_AUTHENTICATE],
        r#"ApiKey realm="billing", header="x-api-key", error="insufficient_scope", scope="admin""#
    );
}

#[test]
fn address_not_allowed_is_403_without_a_challenge() {
    let res = rejection(RejectionKind::AddressNotAllowed).default_response();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.headers().get(WWW_AUTHENTICATE).is_none());
    assert_eq!(
        std::str::from_utf8(res.body()).unwrap(),
        r#"{"type":"about:blank","title":"Forbidden","status":403,"detail":"the API key may not be used from this address","code":"address_not_allowed"}"#
    );
    let res = grpc(RejectionKind::AddressNotAllowed);
    assert_eq!(res.headers()["grpc-status"], "7");
    assert_eq!(
        res.headers()["grpc-message"],
        "the API key may not be used from this address"
    );
    let res = scope_rejection(RejectionConfig::default(), crate::Scopes::one("a"))
        .for_request(&grpc_headers())
        .default_response();
    assert_eq!(res.headers()["grpc-status"], "7");
    assert!(res.headers().get(WWW_AUTHENTICATE).is_none());
    assert!(res.body().is_empty());
}
