//! The `Authenticated` extractor (with and without the layer), custom
//! rejections, a real hyper server, and the secret never leaving the request:
//! not in logs, bodies, headers, `Debug` strings or the cache.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use tower_api_key::{Authenticated, KeyHash, KeySource, RejectionKind};

const SECRET: &str = "sk_live_TOPSECRET_9f8e7d6c";

#[tokio::test]
async fn extractor_without_the_layer_is_a_500_naming_the_layer() {
    let app = Router::new()
        .route(
            "/me",
            get(|Authenticated(c): Authenticated<Client>| async move { c.name.clone() }),
        )
        .route(
            "/maybe",
            get(|c: Option<Authenticated<Client>>| async move { format!("{}", c.is_some()) }),
        );
    for path in ["/me", "/maybe"] {
        let res = send(app.clone(), get_with_key(path, SECRET)).await;
        assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(res.json()["code"], "auth_layer_missing");
        assert!(res.json()["detail"]
            .as_str()
            .unwrap()
            .contains("ApiKeyAuthLayer"));
    }
}

#[tokio::test]
async fn required_extractor_on_an_optional_route_answers_401_for_anonymous_requests() {
    let store = KeyStore::new();
    let app = Router::new()
        .route(
            "/strict",
            get(|Authenticated(c): Authenticated<Client>| async move { c.name.clone() }),
        )
        .layer(layer(&store).optional("/strict").realm("billing"));
    let res = send(app, get_anon("/strict")).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.header("www-authenticate"),
        Some(r#"Bearer realm="billing""#)
    );
}

#[tokio::test]
async fn custom_rejection_handler_renders_every_rejection() {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let auth = layer(&store).on_rejection(|r| {
        let mut res = Response::new(Bytes::from(format!("{{\"error\":\"{}\"}}", r.code())));
        *res.status_mut() = if r.kind() == RejectionKind::MissingKey {
            StatusCode::FORBIDDEN
        } else {
            r.status()
        };
        res.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        res
    });
    let app = app(auth);
    let res = send(app.clone(), get_anon("/me")).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(res.body, r#"{"error":"missing_api_key"}"#);
    assert_eq!(res.header("content-type"), Some("application/json"));
    let res = send(app.clone(), get_with_key("/me", "sk_nope")).await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_token"}"#)
    );
    assert_eq!(
        send(app, get_with_key("/me", SECRET)).await.status,
        StatusCode::OK
    );
}

/// A `tracing` writer that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_plaintext_key_never_leaves_the_request() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let auth = layer(&store)
        .source(KeySource::bearer().or_header(http::HeaderName::from_static("x-api-key")));
    let app = app(auth.clone());

    let mut seen = String::new();
    // Valid, unknown, malformed, duplicated, failing lookup: every path.
    let unknown = format!("{SECRET}_unknown");
    for req in [
        get_with_key("/me", SECRET),
        get_with_key("/me", &unknown),
        get_with_key("/me", &format!("{SECRET} extra")),
        {
            let mut r = get_with_key("/me", SECRET);
            r.headers_mut().insert("x-api-key", SECRET.parse().unwrap());
            r
        },
    ] {
        let res = send(app.clone(), req).await;
        seen.push_str(&format!("{:?}{}", res.headers, res.body));
    }
    store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let res = send(app.clone(), get_with_key("/me", &format!("{SECRET}_down"))).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    seen.push_str(&format!("{:?}{}", res.headers, res.body));

    seen.push_str(&format!(
        "{auth:?}{:?}{:?}",
        auth.cache(),
        KeyHash::of(SECRET)
    ));
    seen.push_str(&serde_json::to_string(&auth.stats()).unwrap());
    seen.push_str(&String::from_utf8_lossy(&logs.0.lock().unwrap()));
    assert!(
        seen.contains("lookup failed"),
        "the failure was logged: {seen}"
    );
    assert!(!seen.contains("TOPSECRET"), "{seen}");
    // Not even the whole digest: logs and Debug carry a short prefix.
    assert!(!seen.contains(&KeyHash::of(SECRET).to_hex()));
}

#[tokio::test]
async fn works_on_a_real_hyper_server() {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let app = app(layer(&store).public("/health"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let svc = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let res = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = client
        .get(format!("{base}/me"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "alice");
    // A header value that is not UTF-8, sent as raw bytes.
    let raw = raw_request(addr, b"GET /me HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \xff\xfe\r\nconnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("invalid_request"), "{raw}");
    server.abort();
}

async fn raw_request(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
