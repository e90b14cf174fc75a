//! Per-route policy on a real axum router (matched by `MatchedPath`) and on a
//! plain tower stack (matched by the path): public, optional and required
//! routes, method rules, and path tricks that must never turn a protected
//! route public.

mod common;

use std::convert::Infallible;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_api_key::{Authenticated, RoutePolicy};

const SECRET: &str = "sk_test_policy";

fn store() -> KeyStore {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    store
}

#[tokio::test]
async fn public_optional_and_required_routes() {
    let store = store();
    let app = app(layer(&store).public("/health").optional("/hello"));

    let res = send(app.clone(), get_anon("/health")).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "ok"));
    // A public route doesn't even look at a key, bad or good.
    let res = send(app.clone(), get_with_key("/health", "sk_garbage")).await;
    assert_eq!(res.status, StatusCode::OK);

    let res = send(app.clone(), get_anon("/hello")).await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::OK, "hello, stranger")
    );
    let res = send(app.clone(), get_with_key("/hello", SECRET)).await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::OK, "hello, alice")
    );
    // Present but unknown: rejected exactly as on a required route.
    let res = send(app.clone(), get_with_key("/hello", "sk_unknown")).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(res.json()["code"], "invalid_token");

    assert_eq!(
        send(app.clone(), get_anon("/me")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(&app, "/me", SECRET).await, StatusCode::OK);
    assert_eq!(store.lookups(), 2);
}

#[tokio::test]
async fn path_tricks_never_reach_a_protected_route_unauthenticated() {
    let store = store();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/public/{*rest}", get(|| async { "public" }))
        .route("/admin", get(|| async { "ADMIN" }))
        .route("/admin/{id}", get(|| async { "ADMIN" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "nothing here") })
        .layer(layer(&store).public("/health").public("/public/{*rest}"));

    for path in [
        "//health",
        "/health/",
        "/Health",
        "/HEALTH",
        "/health;x=1",
        "/public/../admin",
        "/public/./../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public%2f..%2fadmin",
        "/public/..%2fadmin",
        "/public/..%5cadmin",
        "/public/%252e%252e/admin",
        "/public/..;/admin",
        "//admin",
        "/admin/",
        "/ADMIN",
        "/admin;jsessionid=1",
        "/admin/%2e",
        "/health/../admin",
    ] {
        let res = send(app.clone(), get_anon(path)).await;
        // Either a 401 from the layer, or a route that is public by its own
        // template. Never the admin handler.
        assert_ne!(res.body, "ADMIN", "{path}");
        if !res.body.eq("public") {
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{path}: {}", res.body);
        }
    }
    // The public catch-all's own handler decides what `..` means to it; the
    // raw path only reached it because axum matched that template.
    let res = send(app.clone(), get_anon("/public/a/b.css")).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "public"));
    assert_eq!(
        send(app.clone(), get_anon("/health")).await.status,
        StatusCode::OK
    );
    assert_eq!(store.lookups(), 0);
}

#[tokio::test]
async fn method_rules_apply_to_their_method_only() {
    let store = store();
    let app = Router::new()
        .route(
            "/items",
            get(|| async { "list" }).post(|| async { "created" }),
        )
        .layer(layer(&store).method_policy(Method::GET, "/items", RoutePolicy::Public));
    assert_eq!(
        send(app.clone(), get_anon("/items")).await.status,
        StatusCode::OK
    );
    let head = Request::head("/items").body(Body::empty()).unwrap();
    assert_eq!(send(app.clone(), head).await.status, StatusCode::OK);
    let post_anon = Request::post("/items").body(Body::empty()).unwrap();
    assert_eq!(
        send(app.clone(), post_anon).await.status,
        StatusCode::UNAUTHORIZED
    );
    let post_key = Request::post("/items")
        .header("authorization", format!("Bearer {SECRET}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(app, post_key).await.status, StatusCode::OK);
}

#[tokio::test]
async fn templates_match_nested_routes_and_parameters() {
    let store = store();
    let v1 = Router::new()
        .route("/status", get(|| async { "up" }))
        .route(
            "/docs/{page}",
            get(|c: Option<Authenticated<Client>>| async move {
                if c.is_some() {
                    "docs for you"
                } else {
                    "docs"
                }
            }),
        )
        .route("/secret", get(|| async { "secret" }));
    let app = Router::new().nest("/v1", v1).layer(
        layer(&store)
            .public("/v1/status")
            .optional("/v1/docs/{page}"),
    );
    assert_eq!(
        send(app.clone(), get_anon("/v1/status")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(app.clone(), get_anon("/v1/docs/intro")).await.body,
        "docs"
    );
    assert_eq!(
        send(app.clone(), get_with_key("/v1/docs/intro", SECRET))
            .await
            .body,
        "docs for you"
    );
    assert_eq!(
        send(app.clone(), get_anon("/v1/secret")).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn behind_axum_the_matched_route_template_decides() {
    // `GET /files/a//b` is matched by axum to `/files/{*path}`, a public
    // route, so its handler runs without a key. The same path on a plain
    // tower stack (no MatchedPath) is not canonical and needs a key: this
    // proves the router's template, not the path, is what matched.
    let store = store();
    let auth = layer(&store).public("/files/{*path}");
    let app = Router::new()
        .route("/files/{*path}", get(|| async { "file" }))
        .layer(auth.clone());
    let res = send(app, get_anon("/files/a//b")).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "file"));

    let plain = ServiceBuilder::new()
        .layer(auth)
        .service(service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(axum::response::Response::new(Body::from("file")))
        }));
    assert_eq!(
        send(plain, get_anon("/files/a//b")).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn route_layer_works_too() {
    let store = store();
    let app = Router::new()
        .route(
            "/me",
            get(|Authenticated(c): Authenticated<Client>| async move { c.name.clone() }),
        )
        .route("/open", post(|| async { "open" }))
        .route_layer(layer(&store).public("/open"));
    assert_eq!(
        send(app.clone(), get_with_key("/me", SECRET)).await.body,
        "alice"
    );
    let open = Request::post("/open").body(Body::empty()).unwrap();
    assert_eq!(send(app.clone(), open).await.status, StatusCode::OK);
    // route_layer doesn't cover the fallback: an unknown path is a plain 404.
    assert_eq!(
        send(app, get_anon("/nope")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn plain_tower_stack_matches_canonical_paths_only() {
    let store = store();
    let svc = ServiceBuilder::new()
        .layer(layer(&store).public("/health").optional("/hello"))
        .service(service_fn(|req: Request<Full<Bytes>>| async move {
            let who = req
                .extensions()
                .get::<std::sync::Arc<Client>>()
                .map_or("anonymous".to_owned(), |c| c.name.clone());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who))))
        }));
    let call = |path: &str, key: Option<&str>| {
        let mut req = Request::get(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let svc = svc.clone();
        let req = req.body(Full::new(Bytes::new())).unwrap();
        async move {
            let res = svc.oneshot(req).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    assert_eq!(
        call("/health", None).await,
        (StatusCode::OK, "anonymous".into())
    );
    assert_eq!(
        call("/hello", None).await,
        (StatusCode::OK, "anonymous".into())
    );
    assert_eq!(
        call("/hello", Some(SECRET)).await,
        (StatusCode::OK, "alice".into())
    );
    assert_eq!(
        call("/anything", Some(SECRET)).await,
        (StatusCode::OK, "alice".into())
    );
    for path in [
        "//health",
        "/health/",
        "/Health",
        "/x/../health",
        "/%68ealth/",
        "/health;a",
        "/hello%2f",
    ] {
        assert_eq!(call(path, None).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
}
