//! Scopes per route, checked by the layer after the key is known and before
//! any counter: every rule shape, method rules, optional and public routes,
//! spellings of a path that must not dodge a requirement, the RFC 6750
//! answer byte for byte (and gRPC's), the rejection handler, the counters
//! left alone, and `Scoped<P>` for handlers that decide themselves.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::{delete, get};
use axum::Router;
use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use tower::{service_fn, ServiceBuilder};
use tower_api_key::ratelimit::{MemoryCounters, RateLimiter};
use tower_api_key::{
    ApiKeyAuthLayer, AuthRejection, Authenticated, RateLimit, RejectionKind, Scoped, Scopes,
};

const ADMIN: &str = "sk_test_authz_admin";
const READER: &str = "sk_test_authz_reader";
const WRITER: &str = "sk_test_authz_writer";
const BILLING: &str = "sk_test_authz_billing";
const NOBODY: &str = "sk_test_authz_no_scopes";

fn store() -> KeyStore {
    let store = KeyStore::new();
    store.create_scoped("admin", ADMIN, &["admin"], None);
    store.create_scoped("reader", READER, &["reports:read", "keys:read"], None);
    store.create_scoped("writer", WRITER, &["keys:write", "reports:read"], None);
    store.create_scoped("billing", BILLING, &["keys:write", "billing"], None);
    store.create_scoped("nobody", NOBODY, &[], None);
    store
}

async fn name(Authenticated(c): Authenticated<Client>) -> String {
    c.name.clone()
}

fn who() -> axum::routing::MethodRouter {
    get(name)
}

/// An axum app whose routes require: `/v1/keys` admin (every method),
/// `GET /v1/keys` keys:read or admin, `/v1/reports` reports:read or admin,
/// `/v1/invoices` keys:write and billing, `/v1/projects/{id}` keys:write
/// and (billing or admin); `/docs` is optional and needs reports:read,
/// `/health` is public.
fn scoped_layer(
    store: &KeyStore,
) -> ApiKeyAuthLayer<tower_api_key::cache::MemoryCache<Client>, impl tower_api_key::Lookup<Client>>
{
    layer(store)
        .require_scopes("/v1/keys", Scopes::one("admin"))
        .require_scopes(
            (Method::GET, "/v1/keys"),
            Scopes::any(["keys:read", "admin"]),
        )
        .require_scopes("/v1/reports", Scopes::any(["reports:read", "admin"]))
        .require_scopes("/v1/invoices", Scopes::all(["keys:write", "billing"]))
        .require_scopes(
            "/v1/projects/{id}",
            "keys:write AND (billing OR admin)".parse().unwrap(),
        )
        .require_scopes("/docs", Scopes::one("reports:read"))
        .optional("/docs")
        .public("/health")
        // Public wins: a public route checks nothing, whatever it requires.
        .require_scopes("/health", Scopes::one("admin"))
}

fn scoped_app(
    auth: ApiKeyAuthLayer<
        impl tower_api_key::cache::KeyCache<Principal = Client>,
        impl tower_api_key::Lookup<Client>,
    >,
) -> Router {
    Router::new()
        .route("/v1/keys", get(name).post(name))
        .route("/v1/reports", get(who()))
        .route("/v1/invoices", get(who()))
        .route("/v1/projects/{id}", get(who()))
        .route("/v1/me", get(who()))
        .route(
            "/docs",
            get(|c: Option<Authenticated<Client>>| async move {
                c.map_or("anonymous".to_owned(), |c| c.name.clone())
            }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(auth)
}

async fn call(app: &Router, method: Method, path: &str, key: Option<&str>) -> Resp {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    send(app.clone(), req.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn every_rule_shape_is_enforced() {
    let store = store();
    let app = scoped_app(scoped_layer(&store));
    let get = |path: &'static str, key: &'static str| {
        let app = app.clone();
        async move { call(&app, Method::GET, path, Some(key)).await.status }
    };
    const OK: StatusCode = StatusCode::OK;
    const NO: StatusCode = StatusCode::FORBIDDEN;
    // any-of
    assert_eq!(get("/v1/reports", READER).await, OK);
    assert_eq!(get("/v1/reports", ADMIN).await, OK);
    assert_eq!(get("/v1/reports", BILLING).await, NO);
    assert_eq!(get("/v1/reports", NOBODY).await, NO);
    // all-of
    assert_eq!(get("/v1/invoices", BILLING).await, OK);
    assert_eq!(get("/v1/invoices", WRITER).await, NO, "keys:write alone");
    assert_eq!(get("/v1/invoices", ADMIN).await, NO, "admin is not billing");
    // nested: keys:write AND (billing OR admin)
    assert_eq!(get("/v1/projects/7", BILLING).await, OK);
    assert_eq!(get("/v1/projects/7", WRITER).await, NO);
    assert_eq!(
        get("/v1/projects/7", ADMIN).await,
        NO,
        "admin lacks keys:write"
    );
    // No requirement: any valid key.
    assert_eq!(get("/v1/me", NOBODY).await, OK);
    // An unknown key is still a 401, never a 403.
    assert_eq!(
        get("/v1/reports", "sk_test_unknown").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(store.lookups(), 6, "one lookup per key, then the cache");
}

#[tokio::test]
async fn a_method_rule_overrides_the_routes_rule_for_its_method() {
    let store = store();
    let app = scoped_app(scoped_layer(&store));
    for (method, key, status) in [
        (Method::GET, READER, StatusCode::OK),
        (Method::HEAD, READER, StatusCode::OK),
        (Method::GET, ADMIN, StatusCode::OK),
        (Method::POST, READER, StatusCode::FORBIDDEN),
        (Method::POST, ADMIN, StatusCode::OK),
    ] {
        let res = call(&app, method.clone(), "/v1/keys", Some(key)).await;
        assert_eq!(res.status, status, "{method} {key}");
    }
}

#[tokio::test]
async fn optional_routes_hold_a_presented_key_and_public_routes_check_nothing() {
    let store = store();
    let app = scoped_app(scoped_layer(&store));
    let docs = call(&app, Method::GET, "/docs", None).await;
    assert_eq!(
        (docs.status, docs.body.as_str()),
        (StatusCode::OK, "anonymous")
    );
    assert_eq!(
        call(&app, Method::GET, "/docs", Some(READER)).await.status,
        StatusCode::OK
    );
    let refused = call(&app, Method::GET, "/docs", Some(NOBODY)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["code"], "insufficient_scope");
    // Public: no key read, no scope asked, even of a key without it.
    for key in [None, Some(NOBODY), Some("sk_test_unknown")] {
        assert_eq!(
            call(&app, Method::GET, "/health", key).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(store.lookups(), 2);
}

#[tokio::test]
async fn the_refusal_is_rfc6750_and_rfc9457_byte_for_byte() {
    let store = store();
    let app = scoped_app(scoped_layer(&store).realm("acme"));
    let res = call(&app, Method::GET, "/v1/projects/1", Some(READER)).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(
        res.header("www-authenticate"),
        Some(r#"Bearer realm="acme", error="insufficient_scope", scope="keys:write billing""#)
    );
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        res.body,
        r#"{"type":"about:blank","title":"Forbidden","status":403,"detail":"the API key lacks a scope this route requires","code":"insufficient_scope","required_scopes":"keys:write AND (billing OR admin)"}"#
    );
    // What the key has is never said.
    assert!(!res.body.contains("keys:read"));
    // gRPC: PERMISSION_DENIED, trailers-only, no challenge.
    let grpc = Request::get("/v1/reports")
        .header("authorization", format!("Bearer {NOBODY}"))
        .header("content-type", "application/grpc")
        .body(Body::empty())
        .unwrap();
    let res = send(app.clone(), grpc).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("grpc-status"), Some("7"));
    assert_eq!(
        res.header("grpc-message"),
        Some("the API key lacks a scope this route requires")
    );
    assert!(res.header("www-authenticate").is_none());
    assert!(res.body.is_empty());
}

#[tokio::test]
async fn the_rejection_handler_sees_the_kind_and_the_rule() {
    let store = store();
    type Seen = Vec<(RejectionKind, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let log = seen.clone();
    let auth = scoped_layer(&store).on_rejection(move |r: &AuthRejection| {
        log.lock()
            .unwrap()
            .push((r.kind(), r.required_scopes().map(|s| s.to_string())));
        let mut res = Response::new(Bytes::from(format!("no: {}", r.code())));
        *res.status_mut() = r.status();
        res
    });
    let app = scoped_app(auth);
    let res = call(&app, Method::GET, "/v1/reports", Some(NOBODY)).await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::FORBIDDEN, "no: insufficient_scope")
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [(
            RejectionKind::InsufficientScope,
            Some("reports:read OR admin".to_owned())
        )]
    );
}

/// The routes of `scoped_layer` on a plain tower stack: no `MatchedPath`,
/// so the layer matches the request path itself.
#[tokio::test]
async fn no_spelling_of_a_path_dodges_a_requirement() {
    let store = store();
    let inner = service_fn(|req: Request<Body>| async move {
        Ok::<_, Infallible>(axum::response::Response::new(Body::from(
            req.uri().path().to_owned(),
        )))
    });
    let svc = ServiceBuilder::new()
        .layer(scoped_layer(&store))
        .service(inner);
    for path in [
        "/v1/keys",
        "//v1/keys",
        "/v1/keys/",
        "/v1/%6Beys",
        "/v1/keys;x=1",
        "/v1/./keys",
        "/v1/x/../keys",
        "/v1/keys%2F",
        "/v1//keys",
        "/v1/reports/",
        "/v1/projects/1/",
        "/v1/projects/%31/",
    ] {
        let req = || get_with_key(path, READER);
        let mut post = req();
        *post.method_mut() = Method::POST;
        let res = send(svc.clone(), post).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "POST {path}");
        // GET of the canonical path is the reader's; any other spelling
        // needs every requirement at once.
        let res = send(svc.clone(), req()).await;
        let expected = if path == "/v1/keys" {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(res.status, expected, "GET {path}");
    }
    // The same over an axum router (the layer runs before its 404: no
    // MatchedPath for these), refused by the layer itself.
    let auth = scoped_layer(&store);
    let app = scoped_app(auth.clone());
    for path in ["//v1/keys", "/v1/keys/", "/v1/%6Beys", "/v1/keys;x"] {
        let res = call(&app, Method::POST, path, Some(READER)).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "POST {path}");
        // The answer for a path not in canonical form names no rule.
        assert!(res.json().get("required_scopes").is_none(), "{}", res.body);
        assert_eq!(
            res.header("www-authenticate"),
            Some(r#"Bearer realm="api", error="insufficient_scope""#)
        );
    }
    assert_eq!(auth.stats().forbidden_scope, 4);
}

/// Past the edge of the 600 s window when it is nearer than the test takes.
async fn clear_of_the_window_edge() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = now.as_secs_f64() % 600.0;
    if into > 595.0 {
        tokio::time::sleep(Duration::from_secs_f64(600.5 - into)).await;
    }
}

#[tokio::test]
async fn a_refused_request_touches_no_counter() {
    clear_of_the_window_edge().await;
    let store = store();
    let limiter = RateLimiter::new(MemoryCounters::builder().build())
        .default_limit(RateLimit::new("burst", 5, Duration::from_secs(600)).unwrap())
        .headers_on_every_response();
    let auth = scoped_layer(&store).rate_limits(limiter);
    let app = scoped_app(auth.clone());
    let remaining = |res: &Resp| res.header("ratelimit").map(str::to_owned);
    let before = call(&app, Method::GET, "/v1/reports", Some(READER)).await;
    assert_eq!(before.status, StatusCode::OK);
    let left = remaining(&before).unwrap();
    assert!(left.starts_with(r#""burst";r=4;"#), "{left}");
    for _ in 0..10 {
        let res = call(&app, Method::GET, "/v1/invoices", Some(READER)).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN);
        assert!(
            res.header("ratelimit").is_none(),
            "not counted, not reported"
        );
    }
    let after = call(&app, Method::GET, "/v1/reports", Some(READER)).await;
    assert_eq!(after.status, StatusCode::OK);
    let left = remaining(&after).unwrap();
    assert!(left.starts_with(r#""burst";r=3;"#), "{left}");
    let stats = auth.stats();
    assert_eq!(stats.forbidden_scope, 10);
    assert_eq!(stats.rate_limit_admitted, 2);
    assert_eq!(stats.rate_limited, 0);
}

async fn delete_project(
    client: Scoped<Client>,
    Path(id): Path<u64>,
) -> Result<String, AuthRejection> {
    if id == 1 {
        client.require("admin")?;
    } else {
        client.require(Scopes::any(["keys:write", "admin"]))?;
    }
    Ok(format!("{} deleted {id}", client.name))
}

fn extractor_app(
    auth: ApiKeyAuthLayer<
        impl tower_api_key::cache::KeyCache<Principal = Client>,
        impl tower_api_key::Lookup<Client>,
    >,
) -> Router {
    Router::new()
        .route("/projects/{id}", delete(delete_project))
        .route(
            "/maybe",
            get(|c: Option<Scoped<Client>>| async move {
                match c {
                    Some(c) => format!("{} {}", c.name, c.has("admin")),
                    None => "anonymous".to_owned(),
                }
            }),
        )
        .layer(auth.optional("/maybe"))
}

#[tokio::test]
async fn a_handler_demands_a_scope_in_one_call_and_answers_as_the_layer_would() {
    let store = store();
    let app = extractor_app(layer(&store));
    let del = |path: &'static str, key: &'static str| {
        let app = app.clone();
        async move { call(&app, Method::DELETE, path, Some(key)).await }
    };
    assert_eq!(del("/projects/2", WRITER).await.body, "writer deleted 2");
    assert_eq!(del("/projects/1", ADMIN).await.body, "admin deleted 1");
    let res = del("/projects/1", WRITER).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(
        res.header("www-authenticate"),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="admin""#)
    );
    assert_eq!(res.json()["required_scopes"], "admin");
    assert_eq!(
        del("/projects/2", READER).await.json()["required_scopes"],
        "keys:write OR admin"
    );
    // Optional: anonymous is None; a key is read.
    assert_eq!(
        call(&app, Method::GET, "/maybe", None).await.body,
        "anonymous"
    );
    assert_eq!(
        call(&app, Method::GET, "/maybe", Some(ADMIN)).await.body,
        "admin true"
    );
    // gRPC gets PERMISSION_DENIED.
    let grpc = Request::delete("/projects/1")
        .header("authorization", format!("Bearer {READER}"))
        .header("content-type", "application/grpc+proto")
        .body(Body::empty())
        .unwrap();
    let res = send(app.clone(), grpc).await;
    assert_eq!(res.header("grpc-status"), Some("7"));
    // Anonymous on a required route: the layer's 401 (the extractor never runs).
    assert_eq!(
        call(&app, Method::DELETE, "/projects/1", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_extractors_refusal_is_rendered_with_the_layers_settings() {
    let store = store();
    let auth = layer(&store).realm("projects").on_rejection(|r| {
        let mut res = r.default_response();
        res.headers_mut()
            .insert("x-rendered-by", "layer".parse().unwrap());
        res
    });
    let app = extractor_app(auth);
    let res = call(&app, Method::DELETE, "/projects/1", Some(READER)).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(res.header("x-rendered-by"), Some("layer"));
    assert_eq!(
        res.header("www-authenticate"),
        Some(r#"Bearer realm="projects", error="insufficient_scope", scope="admin""#)
    );
}

#[tokio::test]
async fn the_extractor_without_the_layer_is_a_500() {
    let app = Router::new().route("/projects/{id}", delete(delete_project));
    let res = call(&app, Method::DELETE, "/projects/1", Some(ADMIN)).await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.json()["code"], "auth_layer_missing");
}

#[test]
#[should_panic(expected = "invalid scope rule")]
fn a_scope_that_is_not_a_scope_token_is_refused_at_build() {
    let store = store();
    let _ = layer(&store).require_scopes("/x", Scopes::one("two words"));
}

#[test]
#[should_panic(expected = "an empty set of scopes")]
fn an_empty_rule_is_refused_at_build() {
    let store = store();
    let _ = layer(&store).require_scopes("/x", Scopes::any(Vec::<String>::new()));
}

/// Behind axum the rule matches the route axum chose, whatever its
/// parameters are named, and a router nested in another (the layer on the
/// outer one) is matched by the path.
#[tokio::test]
async fn rules_match_the_route_axum_chose_however_it_is_written() {
    let store = store();
    let auth = layer(&store)
        .require_scopes("/v1/keys/{id}", Scopes::one("admin"))
        .require_scopes("/api/v1/reports", Scopes::one("reports:read"))
        .public("/files/{*path}")
        .require_scopes("/files/secret", Scopes::one("admin"));
    let inner = Router::new().route("/v1/reports", get(name));
    let app = Router::new()
        .route("/v1/keys/{key_id}", get(name))
        .route("/files/{*rest}", get(|| async { "file" }))
        .nest("/api", inner)
        .layer(auth);
    let status = |path: &'static str, key: Option<&'static str>| {
        let app = app.clone();
        async move { call(&app, Method::GET, path, key).await.status }
    };
    assert_eq!(
        status("/v1/keys/7", Some(READER)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(status("/v1/keys/7", Some(ADMIN)).await, StatusCode::OK);
    assert_eq!(
        status("/api/v1/reports", Some(BILLING)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status("/api/v1/reports", Some(READER)).await,
        StatusCode::OK
    );
    // A public catch-all route doesn't open a path a rule protects.
    assert_eq!(status("/files/a.txt", None).await, StatusCode::OK);
    assert_eq!(
        status("/files/secret", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status("/files/secret", Some(READER)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(status("/files/secret", Some(ADMIN)).await, StatusCode::OK);
}
