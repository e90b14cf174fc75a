//! Network allowlists per key: the client's address from the connection
//! (axum's `ConnectInfo` over real TCP on 127.0.0.1 and ::1, a dual-stack
//! listener's IPv4-mapped peers, a `PeerAddr` on a plain tower stack),
//! forwarded headers believed only from trusted proxies, malformed ones
//! never a 5xx, no address a 403, and one warning for a setup that can't
//! know the address.

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use common::*;
use http::{Request, StatusCode};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_api_key::{Authenticated, ClientAddress, ForwardedHeader, IpNet, PeerAddr};

const LOOPBACK_V4: &str = "sk_test_net_v4";
const LOOPBACK_V6: &str = "sk_test_net_v6";
const OFFICE: &str = "sk_test_net_office";
const ANYWHERE: &str = "sk_test_net_anywhere";
const NOWHERE: &str = "sk_test_net_nowhere";

fn store() -> KeyStore {
    let store = KeyStore::new();
    store.create_scoped("v4", LOOPBACK_V4, &[], Some(&["127.0.0.0/8"]));
    store.create_scoped("v6", LOOPBACK_V6, &[], Some(&["::1/128"]));
    store.create_scoped(
        "office",
        OFFICE,
        &[],
        Some(&["203.0.113.0/24", "2001:db8::/32"]),
    );
    store.create_scoped("anywhere", ANYWHERE, &[], None);
    store.create_scoped("nowhere", NOWHERE, &[], Some(&[]));
    store
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// An axum app on a real listener at `bind`, served with connect info.
async fn serve(bind: &str, address: ClientAddress, store: &KeyStore) -> SocketAddr {
    let app = Router::new()
        .route(
            "/me",
            get(|Authenticated(c): Authenticated<Client>| async move { c.name.clone() }),
        )
        .layer(layer(store).client_address(address));
    let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn get_over_tcp(url: &str, key: &str, forwarded: Option<&str>) -> (StatusCode, String) {
    let mut req = reqwest::Client::new()
        .get(url)
        .header("authorization", format!("Bearer {key}"));
    if let Some(chain) = forwarded {
        req = req.header("x-forwarded-for", chain);
    }
    let res = req.send().await.expect("request");
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
    (status, res.text().await.unwrap())
}

#[tokio::test]
async fn the_peer_over_ipv4_and_ipv6_decides() {
    let store = store();
    let v4 = serve("127.0.0.1:0", ClientAddress::peer(), &store).await;
    let url = format!("http://{v4}/me");
    assert_eq!(
        get_over_tcp(&url, LOOPBACK_V4, None).await,
        (StatusCode::OK, "v4".into())
    );
    assert_eq!(get_over_tcp(&url, ANYWHERE, None).await.0, StatusCode::OK);
    for key in [LOOPBACK_V6, OFFICE, NOWHERE] {
        let (status, body) = get_over_tcp(&url, key, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{key}");
        assert!(body.contains(r#""code":"address_not_allowed""#), "{body}");
    }
    // An untrusted peer's X-Forwarded-For is not believed.
    let spoofed = get_over_tcp(&url, OFFICE, Some("203.0.113.5")).await;
    assert_eq!(spoofed.0, StatusCode::FORBIDDEN);

    let Ok(v6) = tokio::net::TcpListener::bind("[::1]:0").await else {
        eprintln!("SKIPPED the IPv6 half: no ::1 on this machine");
        return;
    };
    drop(v6);
    let v6 = serve("[::1]:0", ClientAddress::peer(), &store).await;
    let url = format!("http://{v6}/me");
    assert_eq!(
        get_over_tcp(&url, LOOPBACK_V6, None).await,
        (StatusCode::OK, "v6".into())
    );
    assert_eq!(
        get_over_tcp(&url, LOOPBACK_V4, None).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn an_ipv4_mapped_peer_matches_ipv4_networks() {
    let store = store();
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d (not on a
    // host where IPv6 sockets are IPv6 only).
    let v6_only =
        std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").map_or(true, |v| v.trim() != "0");
    let Ok(probe) = std::net::TcpListener::bind("[::]:0") else {
        eprintln!("SKIPPED: no IPv6 on this machine");
        return;
    };
    drop(probe);
    if v6_only {
        eprintln!("SKIPPED: IPv6 sockets are IPv6-only here (net.ipv6.bindv6only)");
        return;
    }
    let addr = serve("[::]:0", ClientAddress::peer(), &store).await;
    let url = format!("http://127.0.0.1:{}/me", addr.port());
    assert_eq!(
        get_over_tcp(&url, LOOPBACK_V4, None).await,
        (StatusCode::OK, "v4".into())
    );
    assert_eq!(
        get_over_tcp(&url, LOOPBACK_V6, None).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
    let store = store();
    // The loopback is the proxy here.
    let addr = serve(
        "127.0.0.1:0",
        ClientAddress::peer().trusted_proxies([net("127.0.0.0/8"), net("10.0.0.0/8")]),
        &store,
    )
    .await;
    let url = format!("http://{addr}/me");
    // client, proxy 2 (10.1.1.1), proxy 1 = the peer: the client is 203.0.113.7.
    let through_two = Some("198.51.100.1, 203.0.113.7, 10.1.1.1");
    assert_eq!(
        get_over_tcp(&url, OFFICE, through_two).await.0,
        StatusCode::OK
    );
    // The same chain, its left end forged to an allowed address: the forged
    // part is never reached.
    let forged = Some("203.0.113.9, 198.51.100.1, 10.1.1.1");
    assert_eq!(
        get_over_tcp(&url, OFFICE, forged).await.0,
        StatusCode::FORBIDDEN
    );
    // No header: the proxy itself is the client.
    assert_eq!(
        get_over_tcp(&url, LOOPBACK_V4, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get_over_tcp(&url, OFFICE, None).await.0,
        StatusCode::FORBIDDEN
    );
    // Malformed chains: a 403 for a key with networks, never a 5xx; a key
    // without networks never asks.
    for chain in [
        "unknown",
        "203.0.113.7:99999",
        "[2001:db8::1",
        "garbage, ",
        "",
        ",,,",
    ] {
        let (status, _) = get_over_tcp(&url, OFFICE, Some(chain)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{chain:?}");
        assert_eq!(
            get_over_tcp(&url, ANYWHERE, Some(chain)).await.0,
            StatusCode::OK
        );
    }
    // IPv6 hops, with ports and brackets.
    let v6 = Some("[2001:db8::42]:4711, 10.2.2.2:80");
    assert_eq!(get_over_tcp(&url, OFFICE, v6).await.0, StatusCode::OK);
}

type Svc = tower::util::BoxCloneService<Request<Body>, axum::response::Response, Infallible>;

/// A plain tower stack (no axum router): the peer is a [`PeerAddr`].
fn plain(store: &KeyStore, address: ClientAddress) -> Svc {
    let inner = service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(axum::response::Response::new(Body::from("ok")))
    });
    let svc = ServiceBuilder::new()
        .layer(layer(store).client_address(address))
        .service(inner);
    tower::util::BoxCloneService::new(svc)
}

fn from(peer: Option<&str>, key: &str, headers: &[(&'static str, &str)]) -> Request<Body> {
    let mut req = get_with_key("/me", key);
    if let Some(peer) = peer {
        let ip: std::net::IpAddr = peer.parse().unwrap();
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::new(ip, 4711)));
    }
    for (name, value) in headers {
        req.headers_mut().append(*name, value.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn rfc7239_forwarded_is_read_only_when_chosen() {
    let store = store();
    let proxies = [net("10.0.0.0/8")];
    let forwarded = plain(
        &store,
        ClientAddress::peer()
            .trusted_proxies(proxies)
            .forwarded_header(ForwardedHeader::Forwarded),
    );
    let xff = plain(&store, ClientAddress::peer().trusted_proxies(proxies));
    let chain = (
        "forwarded",
        r#"for=192.0.2.1, for="[2001:db8::7]:4711";proto=https"#,
    );
    let res = send(forwarded.clone(), from(Some("10.0.0.1"), OFFICE, &[chain])).await;
    assert_eq!(res.status, StatusCode::OK);
    // The X-Forwarded-For stack does not read Forwarded, and vice versa.
    let res = send(xff.clone(), from(Some("10.0.0.1"), OFFICE, &[chain])).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = send(
        forwarded.clone(),
        from(
            Some("10.0.0.1"),
            OFFICE,
            &[("x-forwarded-for", "203.0.113.1")],
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    for bad in [
        "for=unknown",
        "for=_hidden",
        "proto=https",
        r#"for="203.0.113.1"#,
        "for",
    ] {
        let res = send(
            forwarded.clone(),
            from(Some("10.0.0.1"), OFFICE, &[("forwarded", bad)]),
        )
        .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{bad}");
    }
    // Non-ASCII in the header: refused, not a 5xx.
    let mut req = from(Some("10.0.0.1"), OFFICE, &[]);
    req.headers_mut().insert(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"203.0.113.\xff").unwrap(),
    );
    assert_eq!(send(xff.clone(), req).await.status, StatusCode::FORBIDDEN);
    // A mapped peer is its IPv4 address.
    let res = send(xff.clone(), from(Some("::ffff:203.0.113.8"), OFFICE, &[])).await;
    assert_eq!(res.status, StatusCode::OK);
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

#[tokio::test(flavor = "current_thread")]
async fn no_address_is_a_403_and_one_warning() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let store = store();
    let mut svc = plain(&store, ClientAddress::peer());
    for _ in 0..3 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(from(None, LOOPBACK_V4, &[]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
    // A key without networks never needs the address.
    let res = send(svc.clone(), from(None, ANYWHERE, &[])).await;
    assert_eq!(res.status, StatusCode::OK);
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        logged.matches("carries no peer address").count(),
        1,
        "warned once: {logged}"
    );
    assert!(!logged.contains(LOOPBACK_V4), "no key in the log");
}

#[tokio::test]
async fn a_custom_peer_reader_and_the_stats() {
    let store = store();
    #[derive(Clone)]
    struct Remote(SocketAddr);
    let address = ClientAddress::peer().peer_from(|ext| ext.get::<Remote>().map(|r| r.0.ip()));
    let inner = service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(axum::response::Response::new(Body::from("ok")))
    });
    let auth = layer(&store).client_address(address);
    let svc = ServiceBuilder::new().layer(auth.clone()).service(inner);
    let mut req = from(None, OFFICE, &[]);
    req.extensions_mut()
        .insert(Remote("203.0.113.77:1".parse().unwrap()));
    assert_eq!(send(svc.clone(), req).await.status, StatusCode::OK);
    // A PeerAddr is not read once another reader is set.
    let req = from(Some("203.0.113.77"), OFFICE, &[]);
    assert_eq!(send(svc.clone(), req).await.status, StatusCode::FORBIDDEN);
    assert_eq!(auth.stats().forbidden_address, 1);
    assert_eq!(auth.stats().forbidden_scope, 0);
}
