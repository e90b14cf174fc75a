//! Reading the key: Bearer syntax, named headers, query parameters, and the
//! 400/401 answers for missing, malformed, huge, non-UTF-8 and duplicate
//! credentials.

mod common;

use axum::body::Body;
use common::*;
use http::header::HeaderName;
use http::{HeaderValue, Request, StatusCode};
use tower_api_key::KeySource;

const SECRET: &str = "sk_test_4f9a2b7c";

fn setup() -> (KeyStore, axum::Router) {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let app = app(layer(&store).public("/health").optional("/hello"));
    (store, app)
}

type Headers<'a> = Vec<(&'a str, &'a [u8])>;

fn with_headers(path: &str, headers: &[(&str, &[u8])]) -> Request<Body> {
    let mut req = Request::get(path).body(Body::empty()).unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    req
}

#[tokio::test]
async fn valid_bearer_key_reaches_the_handler() {
    let (store, app) = setup();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {SECRET}");
        let res = send(
            app.clone(),
            with_headers("/me", &[("authorization", auth.as_bytes())]),
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{scheme}");
        assert_eq!(res.body, "alice");
    }
    assert_eq!(store.lookups(), 1);
}

#[tokio::test]
async fn missing_key_is_401_with_a_bare_challenge() {
    let (store, app) = setup();
    let res = send(app, get_anon("/me")).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.header("www-authenticate"),
        Some(r#"Bearer realm="api""#)
    );
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    let body = res.json();
    assert_eq!(body["status"], 401);
    assert_eq!(body["code"], "missing_api_key");
    assert_eq!(body["title"], "Unauthorized");
    assert_eq!(store.lookups(), 0);
}

#[tokio::test]
async fn unknown_key_is_401_invalid_token() {
    let (store, app) = setup();
    let res = send(app, get_with_key("/me", "sk_test_nope")).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.header("www-authenticate"),
        Some(
            r#"Bearer realm="api", error="invalid_token", error_description="the API key is not valid""#
        )
    );
    assert_eq!(res.json()["code"], "invalid_token");
    assert!(!res.body.contains("sk_test_nope"));
    assert_eq!(store.lookups(), 1);
}

#[tokio::test]
async fn malformed_credentials_are_400_invalid_request_without_a_lookup() {
    let (store, app) = setup();
    let huge = format!("Bearer {}", "a".repeat(64 * 1024));
    let cases: Vec<(&str, Headers)> = vec![
        ("empty token", vec![("authorization", b"Bearer ")]),
        ("scheme only", vec![("authorization", b"Bearer")]),
        ("tab after scheme", vec![("authorization", b"Bearer	abc")]),
        ("space inside", vec![("authorization", b"Bearer abc def")]),
        ("bad char", vec![("authorization", b"Bearer abc$def")]),
        ("non-utf8", vec![("authorization", b"Bearer \xc3\x28\xff")]),
        ("huge", vec![("authorization", huge.as_bytes())]),
        (
            "two authorization headers",
            vec![
                ("authorization", b"Bearer aaa"),
                ("authorization", b"Bearer bbb"),
            ],
        ),
    ];
    for (name, headers) in cases {
        let res = send(app.clone(), with_headers("/me", &headers)).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{name}");
        let challenge = res
            .header("www-authenticate")
            .unwrap_or_default()
            .to_owned();
        assert!(
            challenge.contains(r#"error="invalid_request""#),
            "{name}: {challenge}"
        );
        assert_eq!(res.json()["code"], "invalid_request", "{name}");
        assert!(
            !res.body.contains("abc") && !res.body.contains("aaa"),
            "{name}: {}",
            res.body
        );
        // An optional route rejects a malformed key exactly the same way.
        let res = send(app.clone(), with_headers("/hello", &headers)).await;
        assert_eq!(
            res.status,
            StatusCode::BAD_REQUEST,
            "{name} on optional route"
        );
    }
    assert_eq!(store.lookups(), 0);
}

#[tokio::test]
async fn another_authorization_scheme_counts_as_no_key() {
    // RFC 6750 §3.1: an unsupported method is a request without credentials.
    let (store, app) = setup();
    let basic: &[u8] = b"Basic YWxhZGRpbjpvcGVuc2VzYW1l";
    let res = send(
        app.clone(),
        with_headers("/me", &[("authorization", basic)]),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.header("www-authenticate"),
        Some(r#"Bearer realm="api""#)
    );
    assert_eq!(res.json()["code"], "missing_api_key");
    let res = send(
        app.clone(),
        with_headers("/hello", &[("authorization", basic)]),
    )
    .await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::OK, "hello, stranger")
    );
    // A proxy's Basic header beside the client's bearer token is not a
    // second credential.
    let bearer = format!("Bearer {SECRET}");
    let res = send(
        app,
        with_headers(
            "/me",
            &[
                ("authorization", basic),
                ("authorization", bearer.as_bytes()),
            ],
        ),
    )
    .await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));
    assert_eq!(store.lookups(), 1);
}

#[tokio::test]
async fn named_header_source_and_two_credentials_at_once() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let source = KeySource::bearer().or_header(HeaderName::from_static("x-api-key"));
    let app = app(layer(&store).source(source));

    let res = send(
        app.clone(),
        with_headers("/me", &[("x-api-key", SECRET.as_bytes())]),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let auth = format!("Bearer {SECRET}");
    let res = send(
        app.clone(),
        with_headers(
            "/me",
            &[
                ("authorization", auth.as_bytes()),
                ("x-api-key", SECRET.as_bytes()),
            ],
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        res.json()["detail"],
        "the request carries more than one API key credential"
    );
    let res = send(
        app.clone(),
        with_headers(
            "/me",
            &[
                ("x-api-key", SECRET.as_bytes()),
                ("x-api-key", SECRET.as_bytes()),
            ],
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn header_only_source_challenges_with_the_header_name() {
    let store = KeyStore::new();
    let app = app(layer(&store).source(KeySource::header(HeaderName::from_static("x-api-key"))));
    let res = send(app.clone(), get_anon("/me")).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.header("www-authenticate"),
        Some(r#"ApiKey realm="api", header="x-api-key""#)
    );
    // Authorization is not a source here: a Bearer token is not read.
    let res = send(app, get_with_key("/me", SECRET)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.json()["code"], "missing_api_key");
}

#[tokio::test]
async fn query_parameter_only_when_enabled() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let uri = format!("/me?api_key={SECRET}");

    let off = app(layer(&store));
    let res = send(off, Request::get(uri.as_str()).body(Body::empty()).unwrap()).await;
    assert_eq!(
        res.status,
        StatusCode::UNAUTHORIZED,
        "query keys are off by default"
    );

    let query_only = app(layer(&store).source(KeySource::query("api_key")));
    let res = send(query_only, get_anon("/me")).await;
    assert_eq!(
        res.header("www-authenticate"),
        Some(r#"ApiKey realm="api", query="api_key""#)
    );

    let on = app(layer(&store).source(KeySource::bearer().or_query("api_key")));
    let res = send(
        on.clone(),
        Request::get(uri.as_str()).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let mut both = Request::get(uri.as_str()).body(Body::empty()).unwrap();
    both.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {SECRET}")).unwrap(),
    );
    assert_eq!(send(on, both).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn max_length_is_configurable() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let app = app(layer(&store).source(KeySource::bearer().max_length(8)));
    let res = send(app, get_with_key("/me", SECRET)).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.json()["detail"], "the API key credential is too long");
}
