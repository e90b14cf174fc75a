//! Property tests of authorization at the edge, through the layer on a plain
//! tower stack: no spelling of a path dodges a scope requirement, the key
//! never reaches the inner service from any source (and the rest of the
//! request does, as sent), and a forwarded chain is believed only from a
//! trusted peer and only from its right end, whatever a client writes.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION, COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};
use tower_api_key::cache::MemoryCache;
use tower_api_key::{
    ApiKeyAuthLayer, ClientAddress, IpNet, KeyHash, KeySource, PeerAddr, Principal, Scopes,
};

const CASES: u32 = 256;

/// Every key is valid; a key whose secret starts with `net_` may only be
/// used from 203.0.113.0/24; none has a scope.
struct Client {
    networks: Option<Vec<IpNet>>,
}

impl Principal for Client {
    fn allowed_networks(&self) -> Option<&[IpNet]> {
        self.networks.as_deref()
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

const RESTRICTED: &str = "net_sk_live_restricted";

#[derive(Clone)]
struct Anyone;

impl tower::Service<KeyHash> for Anyone {
    type Response = Option<Client>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Option<Client>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, hash: KeyHash) -> Self::Future {
        let networks =
            (hash == KeyHash::of(RESTRICTED)).then(|| vec!["203.0.113.0/24".parse().unwrap()]);
        std::future::ready(Ok(Some(Client { networks })))
    }
}

type Auth = ApiKeyAuthLayer<MemoryCache<Client>, Anyone>;

fn auth() -> Auth {
    ApiKeyAuthLayer::new(MemoryCache::new(), Anyone)
}

/// What the inner service saw: its URI and every header line.
type Seen = Arc<Mutex<Option<String>>>;

fn status(layer: &Auth, req: Request<Bytes>) -> (StatusCode, Option<String>) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let inner = service_fn(move |req: Request<Bytes>| {
        let mut view = format!("{}\n", req.uri());
        for (name, value) in req.headers() {
            view.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        *log.lock().unwrap() = Some(view);
        async { Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok"))) }
    });
    let svc = layer.layer(inner);
    let status = runtime().block_on(svc.oneshot(req)).unwrap().status();
    let view = seen.lock().unwrap().take();
    (status, view)
}

// Scopes: a respelled path never needs less.

fn scoped_layer() -> Auth {
    auth()
        .require_scopes("/users/me", Scopes::one("admin"))
        .require_scopes("/users/{id}/keys", Scopes::any(["keys:read", "admin"]))
        .require_scopes("/files/{*path}", Scopes::one("files:read"))
        .public("/health")
}

fn route_path() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "/users/me",
        "/users/42/keys",
        "/files/a/b.txt",
        "/files/x",
        "/users/42",
        "/health",
    ])
    .prop_map(str::to_owned)
}

/// One way of spelling `path` differently (as `tests/properties.rs` does).
fn respell(path: &str, how: u8, at: usize, lower: bool) -> String {
    let at = at % path.len();
    let slash = path[..=at].rfind('/').unwrap_or(0);
    match how % 6 {
        0 => {
            let b = path.as_bytes()[at];
            let enc = if lower {
                format!("%{b:02x}")
            } else {
                format!("%{b:02X}")
            };
            format!("{}{enc}{}", &path[..at], &path[at + 1..])
        }
        1 => format!("{}/{}", &path[..=slash], &path[slash + 1..]),
        2 => format!("{path}/"),
        3 => format!("{}./{}", &path[..=slash], &path[slash + 1..]),
        4 => format!("{}x/../{}", &path[..=slash], &path[slash + 1..]),
        _ => format!("{};a=b{}", &path[..at.max(1)], &path[at.max(1)..]),
    }
}

fn get(path: &str, key: &str) -> Option<Request<Bytes>> {
    let mut req = Request::get(path).body(Bytes::new()).ok()?;
    req.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).ok()?,
    );
    Some(req)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn no_spelling_of_a_path_dodges_a_scope(
        path in route_path(),
        how in any::<u8>(),
        at in any::<usize>(),
        lower in any::<bool>(),
    ) {
        let layer = scoped_layer();
        let other = respell(&path, how, at, lower);
        let (Some(original), Some(respelled)) = (get(&path, "sk_a"), get(&other, "sk_a")) else {
            return Ok(());
        };
        let (original, _) = status(&layer, original);
        let (respelled, _) = status(&layer, respelled);
        if original == StatusCode::FORBIDDEN {
            prop_assert_eq!(respelled, StatusCode::FORBIDDEN, "{} then {}", path, other);
        }
        // A key without scopes passes only where nothing is required.
        if respelled == StatusCode::OK && other != path {
            prop_assert!(path == "/health" || path == "/users/42", "{} -> {} passed", path, other);
        }
    }
}

// Credentials: the key never reaches the inner service.

fn key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_]{8,40}"
}

fn extra() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("[a-z]{1,6}", "[A-Za-z0-9%+._~-]{0,10}"), 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn the_key_never_reaches_the_inner_service(
        key in key(),
        place in 0u8..4,
        params in extra(),
        cookies in extra(),
    ) {
        let key = format!("sk_{key}");
        let source = KeySource::bearer()
            .or_header(HeaderName::from_static("x-api-key"))
            .or_query("api_key")
            .or_cookie("api_key");
        let layer = auth().source(source);
        // Other parameters and cookies, never named like the key's.
        let params: Vec<String> = params
            .iter()
            .filter(|(n, _)| !n.starts_with("api"))
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let cookies: Vec<String> = cookies
            .iter()
            .filter(|(n, _)| !n.starts_with("api"))
            .map(|(n, v)| format!("{n}={}", v.replace('%', "")))
            .collect();
        let mut query = params.clone();
        if place == 2 {
            query.insert(params.len() / 2, format!("api_key={key}"));
        }
        let uri = if query.is_empty() { "/x".to_owned() } else { format!("/x?{}", query.join("&")) };
        let mut req = Request::get(&uri).body(Bytes::new()).unwrap();
        let headers = req.headers_mut();
        match place {
            0 => { headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap()); }
            1 => { headers.insert("x-api-key", HeaderValue::from_str(&key).unwrap()); }
            _ => {}
        }
        let mut jar = cookies.clone();
        if place == 3 {
            jar.insert(cookies.len() / 2, format!("api_key={key}"));
        }
        if !jar.is_empty() {
            headers.insert(COOKIE, HeaderValue::from_str(&jar.join("; ")).unwrap());
        }
        let (status, seen) = status(&layer, req);
        prop_assert_eq!(status, StatusCode::OK);
        let seen = seen.unwrap();
        prop_assert!(!seen.contains(&key), "{}", seen);
        // The rest, as sent.
        let expected_uri = if params.is_empty() { "/x".to_owned() } else { format!("/x?{}", params.join("&")) };
        prop_assert!(seen.starts_with(&format!("{expected_uri}\n")), "{}", seen);
        if !cookies.is_empty() {
            let line = format!("cookie: {}\n", cookies.join("; "));
            prop_assert!(seen.contains(&line), "{} lacks {}", seen, line);
        }
    }
}

// Forwarded chains: believed only from a trusted peer, only from the right.

fn chain_layer() -> Auth {
    auth().client_address(
        ClientAddress::peer().trusted_proxies(["10.0.0.0/8".parse::<IpNet>().unwrap()]),
    )
}

fn from(peer: &str, chain: Option<&str>) -> Option<Request<Bytes>> {
    let mut req = get("/x", RESTRICTED)?;
    let peer: IpAddr = peer.parse().ok()?;
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(peer, 1)));
    if let Some(chain) = chain {
        req.headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_str(chain).ok()?);
    }
    Some(req)
}

fn junk() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..=255).prop_map(|d| format!("203.0.113.{d}")),
        (0u8..=255).prop_map(|d| format!("198.51.100.{d}")),
        (0u8..=255).prop_map(|d| format!("10.0.0.{d}")),
        Just("[2001:db8::1]:80".to_owned()),
        Just("unknown".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards(chain in junk(), last in 0u8..=255) {
        let layer = chain_layer();
        let peer = format!("198.51.100.{last}");
        let Some(req) = from(&peer, Some(&chain)) else { return Ok(()) };
        let (status, _) = status(&layer, req);
        prop_assert_eq!(status, StatusCode::FORBIDDEN, "{:?}", chain);
        let allowed = "203.0.113.9";
        let Some(req) = from(allowed, Some(&chain)) else { return Ok(()) };
        prop_assert_eq!(status_of(&layer, req), StatusCode::OK, "{:?}", chain);
    }

    #[test]
    fn only_the_right_end_of_a_chain_is_read(
        left in junk(),
        hops in proptest::collection::vec(address(), 1..5),
    ) {
        let layer = chain_layer();
        let chain = format!("{left}, {}", hops.join(", "));
        let Some(req) = from("10.0.0.1", Some(&chain)) else { return Ok(()) };
        let (status, _) = status(&layer, req);
        // The reference: from the right, past trusted hops, the first other
        // hop decides (an unreadable one refuses); all trusted: the left junk.
        let decided = hops.iter().rev().find(|h| !h.starts_with("10.0.0."));
        match decided {
            Some(h) if h.starts_with("203.0.113.") => prop_assert_eq!(status, StatusCode::OK, "{}", chain),
            Some(_) => prop_assert_eq!(status, StatusCode::FORBIDDEN, "{}", chain),
            // Decided by the client's own part: never a 5xx.
            None => prop_assert!(status == StatusCode::OK || status == StatusCode::FORBIDDEN, "{}", chain),
        }
    }
}

fn status_of(layer: &Auth, req: Request<Bytes>) -> StatusCode {
    status(layer, req).0
}
