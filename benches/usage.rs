//! Usage tracking on the hit path: what noting a key's use adds to a
//! cached hit.
//!
//! The same layer (every one of 100,000 keys cached) with and without a
//! `UsageTracker` (its batches never due during the run), on one hot key and
//! on Zipf(1.0) over the keys, interleaved in the same rounds: "added" is
//! the difference.
//!
//! ```sh
//! cargo bench --bench usage
//! ```

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder};
use tower_api_key::cache::MemoryCache;
use tower_api_key::usage::{KeyUse, UsageTracker};
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, BoxError, KeyHash, Principal};

mod common;
use common::call_now;
use common::traffic::{keys, request, sequences, warm, Keys, KEYS, SEQUENCE};

const ROUNDS: usize = 40;
const ITERS: u32 = 20_000;

struct Client;
impl Principal for Client {}

type Body = Full<Bytes>;
type Inner = tower::util::ServiceFn<
    fn(Request<Body>) -> std::future::Ready<Result<Response<Body>, Infallible>>,
>;
type Layered = tower_api_key::ApiKeyAuth<
    Inner,
    MemoryCache<Client>,
    tower_api_key::LookupFn<fn(KeyHash) -> std::future::Ready<Result<Option<Client>, Infallible>>>,
>;

fn respond(req: Request<Body>) -> std::future::Ready<Result<Response<Body>, Infallible>> {
    black_box(&req);
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

fn known(_: KeyHash) -> std::future::Ready<Result<Option<Client>, Infallible>> {
    std::future::ready(Ok(Some(Client)))
}

fn layered(keys: &Keys, usage: Option<UsageTracker<Client>>) -> Layered {
    let mut auth = ApiKeyAuthLayer::new(
        MemoryCache::builder().max_capacity(2 * KEYS as u64).build(),
        lookup_fn(known as fn(_) -> _),
    );
    if let Some(usage) = usage {
        auth = auth.usage(usage);
    }
    let mut svc = ServiceBuilder::new()
        .layer(auth)
        .service(service_fn(respond as fn(_) -> _));
    warm(&mut svc, keys);
    svc
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let keys = keys();
    let [hot, _, zipf] = sequences();
    // A runtime entered, as a server's would be: the tracker's task runs
    // (its clock ticks; its batch is an hour away).
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _entered = runtime.enter();
    let usage = UsageTracker::builder(|_: Vec<KeyUse<Client>>| async { Ok::<(), BoxError>(()) })
        .interval(Duration::from_secs(3600))
        .max_pending(2 * KEYS)
        .build();
    let without = layered(&keys, None);
    let with = layered(&keys, Some(usage.clone()));
    println!("usage tracking on a cached hit, {ROUNDS} interleaved rounds of {ITERS}, medians (ns per request):");
    println!(
        "{:<6} {:>10} {:>10} {:>8} {:>8}",
        "keys", "no usage", "usage", "added", "ratio"
    );
    for (name, sequence) in [hot, zipf] {
        let (mut a, mut b) = (without.clone(), with.clone());
        let mut next = [0, SEQUENCE / 2];
        let [no, yes] = common::interleaved(ROUNDS, ITERS, |which| {
            let at = next[which];
            next[which] = (at + 1) % SEQUENCE;
            let header = &keys.headers[sequence[at] as usize];
            let svc = if which == 0 { &mut a } else { &mut b };
            assert_eq!(call_now(svc, request(header)).status(), 200);
        });
        println!(
            "{name:<6} {no:>10.1} {yes:>10.1} {:>8.1} {:>8.3}",
            yes - no,
            yes / no
        );
    }
    println!(
        "target: added <= 30 ns; {} keys pending, {} uses dropped",
        usage.stats().pending,
        usage.stats().dropped_uses
    );
}
