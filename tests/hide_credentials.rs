//! The presented key stops at the layer: for each source (bearer, header,
//! query, cookie) the inner service sees no key in any of the four places,
//! the rest of the request as sent; the opt-out keeps it; a public route is
//! left untouched.

mod common;

use axum::body::Body;
use axum::extract::Request;
use axum::routing::get;
use axum::Router;
use common::*;
use http::header::HeaderName;
use http::StatusCode;
use tower_api_key::KeySource;

const SECRET: &str = "sk_test_HIDDEN_42";

/// What the handler sees: the URI (and axum's `OriginalUri`) and every
/// header line.
async fn echo(req: Request) -> String {
    let mut seen = format!("uri {}\n", req.uri());
    if let Some(original) = req.extensions().get::<axum::extract::OriginalUri>() {
        seen.push_str(&format!("original {}\n", original.0));
    }
    for (name, value) in req.headers() {
        seen.push_str(&format!(
            "{name}: {}\n",
            value.to_str().unwrap_or("<bytes>")
        ));
    }
    seen
}

fn app(source: KeySource, hide: bool) -> Router {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let auth = layer(&store)
        .source(source)
        .hide_credentials(hide)
        .public("/public")
        .optional("/optional");
    Router::new()
        .route("/echo", get(echo))
        .route("/optional", get(echo))
        .route("/public", get(echo))
        .layer(auth)
}

fn all_sources() -> KeySource {
    KeySource::bearer()
        .or_header(HeaderName::from_static("x-api-key"))
        .or_query("api_key")
        .or_cookie("api_key")
}

/// The same request with the key in each of the four places.
fn requests(path: &str) -> Vec<(&'static str, http::Request<Body>)> {
    let get = || http::Request::get(path);
    vec![
        (
            "bearer",
            get()
                .header("authorization", format!("Bearer {SECRET}"))
                .header("authorization", "Basic dXNlcjpwYXNz")
                .header("cookie", "theme=dark")
                .body(Body::empty())
                .unwrap(),
        ),
        (
            "header",
            get()
                .header("x-api-key", SECRET)
                .header("x-request-id", "r1")
                .body(Body::empty())
                .unwrap(),
        ),
        (
            "query",
            http::Request::get(format!("{path}?a=1&api_key={SECRET}&b=two%20words+x&c"))
                .body(Body::empty())
                .unwrap(),
        ),
        (
            "cookie",
            get()
                .header("cookie", format!("theme=dark; api_key={SECRET}; lang=en"))
                .header("cookie", "session=s1")
                .body(Body::empty())
                .unwrap(),
        ),
    ]
}

#[tokio::test]
async fn the_inner_service_never_sees_the_key_from_any_source() {
    let app = app(all_sources(), true);
    for path in ["/echo", "/optional"] {
        for (source, req) in requests(path) {
            let res = send(app.clone(), req).await;
            assert_eq!(res.status, StatusCode::OK, "{source} {path}");
            assert!(!res.body.contains(SECRET), "{source} {path}: {}", res.body);
            assert!(!res.body.contains("HIDDEN"), "{source} {path}");
            // The rest of the request, as sent.
            match source {
                "bearer" => {
                    assert!(res.body.contains("authorization: Basic dXNlcjpwYXNz\n"));
                    assert!(res.body.contains("cookie: theme=dark\n"));
                }
                "header" => assert!(res.body.contains("x-request-id: r1\n")),
                "query" => {
                    let rest = format!("{path}?a=1&b=two%20words+x&c\n");
                    assert!(res.body.starts_with(&format!("uri {rest}")), "{}", res.body);
                    assert!(
                        res.body.contains(&format!("original {rest}")),
                        "{}",
                        res.body
                    );
                }
                _ => {
                    assert!(
                        res.body.contains("cookie: theme=dark; lang=en\n"),
                        "{}",
                        res.body
                    );
                    assert!(res.body.contains("cookie: session=s1\n"));
                }
            }
        }
    }
}

#[tokio::test]
async fn each_source_alone_hides_its_own_place() {
    let sources = [
        ("bearer", KeySource::bearer()),
        (
            "header",
            KeySource::header(HeaderName::from_static("x-api-key")),
        ),
        ("query", KeySource::query("api_key")),
        ("cookie", KeySource::cookie("api_key")),
    ];
    for (name, source) in sources {
        let app = app(source, true);
        let (_, req) = requests("/echo")
            .into_iter()
            .find(|(s, _)| *s == name)
            .unwrap();
        let res = send(app.clone(), req).await;
        assert_eq!(res.status, StatusCode::OK, "{name}");
        assert!(!res.body.contains(SECRET), "{name}: {}", res.body);
    }
}

#[tokio::test]
async fn the_opt_out_keeps_the_key_where_it_was() {
    let app = app(all_sources(), false);
    for (source, req) in requests("/echo") {
        let res = send(app.clone(), req).await;
        assert_eq!(res.status, StatusCode::OK, "{source}");
        assert!(res.body.contains(SECRET), "{source}: kept");
    }
}

#[tokio::test]
async fn a_public_route_is_left_untouched() {
    let app = app(all_sources(), true);
    for (source, req) in requests("/public") {
        let res = send(app.clone(), req).await;
        assert_eq!(res.status, StatusCode::OK, "{source}");
        assert!(
            res.body.contains(SECRET),
            "{source}: the layer read no key there"
        );
    }
}
