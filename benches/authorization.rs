//! Authorization on the hit path: what the scope and network checks add to
//! a cached hit, and what taking the key out of the request costs.
//!
//! Layers over the same 100,000 cached keys and the same requests (each
//! carrying a `PeerAddr`, as a server would put it there), each with a
//! public `/health` route (so every one resolves routes, as `hit_path`'s
//! does), in the same interleaved rounds, on one hot key and on Zipf(1.0):
//!
//! - **kept**: no requirement, keys without networks, the key left in the
//!   request (`hide_credentials(false)`): the hit path as it was;
//! - **hidden**: the same with the key taken out (the default);
//! - **authorized**: the default, plus the route requiring
//!   `reports:read OR admin` of keys that carry 8 scopes (`reports:read`
//!   the seventh, no `admin`) and 2 allowed networks (the peer in the
//!   second), as a `Vec<String>` and a `Vec<IpNet>` (each on the heap);
//! - **compact**: hidden and authorized again with the keys' scopes as bits
//!   of a known list and their networks inline in the principal (nothing
//!   more to read than the principal itself, which the hit touches anyway).
//!
//! "stage" is authorized − hidden for each kind of principal (target
//! ≤ 25 ns), "hide" is hidden − kept.
//!
//! ```sh
//! cargo bench --bench authorization
//! ```

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder};
use tower_api_key::cache::MemoryCache;
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, IpNet, KeyHash, PeerAddr, Principal, Scopes};

mod common;
use common::call_now;
use common::traffic::{keys, request, sequences, Keys, KEYS, SEQUENCE};

const ROUNDS: usize = 40;
const ITERS: u32 = 20_000;

/// A key's scopes and networks, as a principal may keep them: on the heap
/// (strings as the table gave them), or compact (bits of `SCOPES`, the
/// networks inline).
enum Client {
    Heap {
        scopes: Vec<String>,
        networks: Option<Vec<IpNet>>,
    },
    Compact {
        scopes: u64,
        networks: Option<[IpNet; 2]>,
    },
}

impl Principal for Client {
    fn has_scope(&self, scope: &str) -> bool {
        match self {
            Client::Heap { scopes, .. } => scopes.iter().any(|s| s == scope),
            Client::Compact { scopes, .. } => SCOPES
                .iter()
                .position(|s| *s == scope)
                .is_some_and(|bit| scopes & (1 << bit) != 0),
        }
    }

    fn allowed_networks(&self) -> Option<&[IpNet]> {
        match self {
            Client::Heap { networks, .. } => networks.as_deref(),
            Client::Compact { networks, .. } => networks.as_ref().map(|n| &n[..]),
        }
    }
}

type Body = Full<Bytes>;
type Inner = tower::util::ServiceFn<
    fn(Request<Body>) -> std::future::Ready<Result<Response<Body>, Infallible>>,
>;
type Lookup =
    tower_api_key::LookupFn<fn(KeyHash) -> std::future::Ready<Result<Option<Client>, Infallible>>>;
type Layered = tower_api_key::ApiKeyAuth<Inner, MemoryCache<Client>, Lookup>;

fn respond(req: Request<Body>) -> std::future::Ready<Result<Response<Body>, Infallible>> {
    black_box(&req);
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

const SCOPES: [&str; 8] = [
    "keys:read",
    "keys:write",
    "invoices:read",
    "invoices:write",
    "customers:read",
    "customers:write",
    "reports:read",
    "webhooks:write",
];

fn networks() -> [IpNet; 2] {
    [
        "10.0.0.0/8".parse().expect("net"),
        "192.0.2.0/24".parse().expect("net"),
    ]
}

fn scoped(_: KeyHash) -> std::future::Ready<Result<Option<Client>, Infallible>> {
    std::future::ready(Ok(Some(Client::Heap {
        scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        networks: Some(networks().to_vec()),
    })))
}

fn compact(_: KeyHash) -> std::future::Ready<Result<Option<Client>, Infallible>> {
    std::future::ready(Ok(Some(Client::Compact {
        scopes: (1 << SCOPES.len()) - 1,
        networks: Some(networks()),
    })))
}

fn compact_plain(_: KeyHash) -> std::future::Ready<Result<Option<Client>, Infallible>> {
    std::future::ready(Ok(Some(Client::Compact {
        scopes: (1 << SCOPES.len()) - 1,
        networks: None,
    })))
}

fn plain(_: KeyHash) -> std::future::Ready<Result<Option<Client>, Infallible>> {
    std::future::ready(Ok(Some(Client::Heap {
        scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        networks: None,
    })))
}

const PEER: PeerAddr = PeerAddr(SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10)),
    4711,
));

fn with_peer(header: &http::HeaderValue) -> Request<Body> {
    let mut req = request(header);
    req.extensions_mut().insert(PEER);
    req
}

fn layered(keys: &Keys, auth: ApiKeyAuthLayer<MemoryCache<Client>, Lookup>) -> Layered {
    let mut svc = ServiceBuilder::new()
        // As in `hit_path`: a public health route, so every layer resolves
        // routes (an app without any route rule skips that).
        .layer(auth.public("/health"))
        .service(service_fn(respond as fn(_) -> _));
    // Every key looked up once, from the peer (an in-process lookup answers
    // on the first poll: no runtime needed).
    for header in &keys.headers {
        assert_eq!(call_now(&mut svc, with_peer(header)).status(), 200);
    }
    svc
}

/// The five layers, every key cached.
fn services(keys: &Keys) -> [Layered; 5] {
    let cache = || MemoryCache::builder().max_capacity(2 * KEYS as u64).build();
    let kept = layered(
        keys,
        ApiKeyAuthLayer::new(cache(), lookup_fn(plain as fn(_) -> _)).hide_credentials(false),
    );
    let hidden = layered(
        keys,
        ApiKeyAuthLayer::new(cache(), lookup_fn(plain as fn(_) -> _)),
    );
    let authorized = layered(
        keys,
        ApiKeyAuthLayer::new(cache(), lookup_fn(scoped as fn(_) -> _))
            .require_scopes("/v1/invoices", Scopes::any(["reports:read", "admin"])),
    );
    let compact_hidden = layered(
        keys,
        ApiKeyAuthLayer::new(cache(), lookup_fn(compact_plain as fn(_) -> _)),
    );
    let compact = layered(
        keys,
        ApiKeyAuthLayer::new(cache(), lookup_fn(compact as fn(_) -> _))
            .require_scopes("/v1/invoices", Scopes::any(["reports:read", "admin"])),
    );
    [kept, hidden, authorized, compact_hidden, compact]
}

/// For a profiler: `AUTHZ_PROFILE=hot:authorized` (or `zipf:`, and `kept`,
/// `hidden`, `compact`) runs only that for `AUTHZ_PROFILE_CALLS` requests (1 M), in
/// `drive` (`valgrind --tool=callgrind --collect-atstart=no
/// --toggle-collect='*drive*'`).
fn profile(what: &str) {
    let keys = keys();
    let [hot, _, zipf] = sequences();
    let (pattern, which) = what.split_once(':').unwrap_or((what, "authorized"));
    let sequence = if pattern == "zipf" { zipf.1 } else { hot.1 };
    let which = match which {
        "kept" => 0,
        "hidden" => 1,
        "compact-hidden" => 3,
        "compact" => 4,
        _ => 2,
    };
    let calls: usize = std::env::var("AUTHZ_PROFILE_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let mut svc = services(&keys).into_iter().nth(which).expect("one of five");
    drive(&keys, &sequence, &mut svc, calls);
}

#[inline(never)]
fn drive(keys: &Keys, sequence: &[u32], svc: &mut Layered, calls: usize) {
    for i in 0..calls {
        let req = with_peer(&keys.headers[sequence[i % sequence.len()] as usize]);
        black_box(call_now(svc, req));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    if let Ok(what) = std::env::var("AUTHZ_PROFILE") {
        return profile(&what);
    }
    let keys = keys();
    let [hot, _, zipf] = sequences();
    let layers = services(&keys);
    println!(
        "authorization on a cached hit, {ROUNDS} interleaved rounds of {ITERS}, medians (ns per request):"
    );
    println!(
        "{:<6} {:>7} {:>7} {:>10} | {:>14} {:>10} | {:>5} {:>12} {:>9}",
        "keys",
        "kept",
        "hidden",
        "authorized",
        "compact hidden",
        "authorized",
        "hide",
        "stage (heap)",
        "(compact)"
    );
    for (name, sequence) in [hot, zipf] {
        let mut services = layers.clone();
        let mut next: [usize; 5] = std::array::from_fn(|i| i * SEQUENCE / 5);
        let [k, h, a, ch, ca] = common::interleaved(ROUNDS, ITERS, |which| {
            let at = next[which];
            next[which] = (at + 1) % SEQUENCE;
            let req = with_peer(&keys.headers[sequence[at] as usize]);
            let res = call_now(&mut services[which], req);
            debug_assert_eq!(res.status(), 200);
            black_box(res);
        });
        println!(
            "{name:<6} {k:>7.1} {h:>7.1} {a:>10.1} | {ch:>14.1} {ca:>10.1} | {:>5.1} {:>12.1} {:>9.1}",
            h - k,
            a - h,
            ca - ch
        );
    }
    println!("target: stage <= 25 ns, hot and zipf");
}
