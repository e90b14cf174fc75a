//! gRPC: `examples/grpc.rs`'s server (the layer in front of tonic's health
//! service) over real TCP, called by a real tonic client. Rejections are
//! gRPC statuses (trailers-only answers), plain HTTP requests on the same
//! layer still get problem+json.

#[allow(dead_code)] // its `main` is not run here
#[path = "../examples/grpc.rs"]
mod example;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

use example::{check, KeyTable, ALICE, BOB};

struct Server {
    addr: SocketAddr,
    channel: Channel,
    table: Arc<KeyTable>,
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let table = Arc::new(KeyTable::demo());
    tokio::spawn(example::serve(
        listener,
        example::auth_layer(Arc::clone(&table)),
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Server {
        addr,
        channel,
        table,
    }
}

/// The status, and that neither its message nor its metadata carry `key`.
async fn refused(server: &Server, key: Option<&str>) -> Status {
    let status = check(server.channel.clone(), key)
        .await
        .expect_err("refused");
    if let Some(key) = key {
        assert!(!status.message().contains(key), "{status:?}");
        for entry in status.metadata().iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(name, value) = entry {
                let value = value.to_str().unwrap_or_default();
                assert!(!value.contains(key), "{name}: {value}");
            }
        }
    }
    status
}

#[tokio::test]
async fn no_key_is_unauthenticated_with_a_message() {
    let server = start().await;
    let status = refused(&server, None).await;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "an API key is required");
}

#[tokio::test]
async fn an_unknown_key_is_unauthenticated() {
    let server = start().await;
    for _ in 0..2 {
        // The lookup's answer, then the cached negative verdict.
        let status = refused(&server, Some("sk_demo_nobody_knows_me")).await;
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "the API key is not valid");
    }
}

#[tokio::test]
async fn a_malformed_key_is_unauthenticated() {
    let server = start().await;
    // Two credentials at once: tonic sends both `authorization` values.
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    let meta = request.metadata_mut();
    meta.append("authorization", "Bearer sk_one".parse().unwrap());
    meta.append("authorization", "Bearer sk_two".parse().unwrap());
    let status = tonic_health::pb::health_client::HealthClient::new(server.channel.clone())
        .check(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "the request carries more than one API key credential"
    );
}

#[tokio::test]
async fn a_valid_key_reaches_the_service() {
    let server = start().await;
    for _ in 0..2 {
        // A lookup, then a cache hit.
        let status = check(server.channel.clone(), Some(ALICE)).await.unwrap();
        assert_eq!(status, ServingStatus::Serving);
    }
}

#[tokio::test]
async fn a_spent_rate_limit_is_resource_exhausted() {
    let server = start().await;
    for _ in 0..3 {
        let status = check(server.channel.clone(), Some(BOB)).await.unwrap();
        assert_eq!(status, ServingStatus::Serving);
    }
    let status = refused(&server, Some(BOB)).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "this API key has spent a rate-limit quota; retry after the time given"
    );
    let retry_after: u64 = status
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=120).contains(&retry_after), "{retry_after}");
    assert!(status.metadata().get("ratelimit-policy").is_some());
    // Alice has no limit.
    assert!(check(server.channel.clone(), Some(ALICE)).await.is_ok());
}

#[tokio::test]
async fn a_failing_lookup_is_unavailable() {
    let server = start().await;
    // Alice is cached before the table goes down.
    check(server.channel.clone(), Some(ALICE)).await.unwrap();
    server.table.failing.store(true, Ordering::Relaxed);
    let status = refused(&server, Some(BOB)).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "the API key could not be checked right now; retry later"
    );
    assert!(status.metadata().get("retry-after").is_some());
    // A cached key keeps working.
    assert_eq!(
        check(server.channel.clone(), Some(ALICE)).await.unwrap(),
        ServingStatus::Serving
    );
    server.table.failing.store(false, Ordering::Relaxed);
    assert!(check(server.channel.clone(), Some(BOB)).await.is_ok());
}

#[tokio::test]
async fn the_answer_is_trailers_only_and_plain_http_gets_problem_json() {
    let server = start().await;
    let url = format!("http://{}/grpc.health.v1.Health/Check", server.addr);
    let http = reqwest::Client::new();

    // The raw gRPC answer, over HTTP/1 (the server accepts it): 200,
    // grpc-status and grpc-message in the headers, no body.
    let res = http
        .post(&url)
        .header("content-type", "application/grpc")
        .header("authorization", "Bearer sk_demo_unknown_key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "16");
    assert_eq!(res.headers()["grpc-message"], "the API key is not valid");
    assert!(res.headers().get("www-authenticate").is_none());
    assert!(res.bytes().await.unwrap().is_empty());

    // The same layer, a plain HTTP request: the problem+json 401.
    let res = http
        .post(&url)
        .header("authorization", "Bearer sk_demo_unknown_key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(res.headers().get("grpc-status").is_none());
    assert!(res.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "invalid_token");
    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn the_extractors_rejections_are_grpc_too() {
    use axum::{routing::post, Router};
    use tower::ServiceExt;
    use tower_api_key::Authenticated;

    let grpc_request = |path: &str| {
        http::Request::post(path)
            .header("content-type", "application/grpc+proto")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let handler =
        |Authenticated(client): Authenticated<example::Client>| async move { client.name.clone() };
    // An optional route passes a keyless request; the extractor refuses it.
    let auth = example::auth_layer(Arc::new(KeyTable::demo())).optional("/optional");
    let app = Router::new()
        .route("/optional", post(handler))
        .layer(auth)
        .route("/bare", post(handler)); // no layer: a server bug
    let res = app
        .clone()
        .oneshot(grpc_request("/optional"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "16");
    let res = app.oneshot(grpc_request("/bare")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "13");
}
