//! The rate-limit stage in process: what it adds to a cached hit.
//!
//! The same layer (every one of 100,000 keys cached) with and without
//! in-process limits (`MemoryCounters`, a default policy no request
//! reaches), on one hot key and on Zipf(1.0) over the keys, interleaved in
//! the same rounds: "stage cost" is the difference. Beside them, in the same
//! rounds on the same keys, the counters asked directly (`MemoryCounters`,
//! as the stage asks them) and governor's keyed GCRA limiter
//! (`RateLimiter::keyed`, DashMap), the limiter users reach for.
//!
//! ```sh
//! cargo bench --bench rate_limit
//! ```

use std::convert::Infallible;
use std::hint::black_box;
use std::num::NonZeroU32;

use bytes::Bytes;
use futures_util::FutureExt;
use governor::{Quota, RateLimiter as Governor};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder};
use tower_api_key::cache::MemoryCache;
use tower_api_key::ratelimit::{Algorithm, CounterKey, CounterStore, MemoryCounters, RateLimiter};
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Principal, RateLimit};

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

/// A policy no benchmarked request reaches.
fn roomy() -> RateLimit {
    RateLimit::per_hour(1 << 50)
}

/// The layer, every key cached; with limits when `limiter` is given.
fn layered(keys: &Keys, limiter: Option<RateLimiter>) -> Layered {
    let mut auth = ApiKeyAuthLayer::new(
        MemoryCache::builder().max_capacity(2 * KEYS as u64).build(),
        lookup_fn(known as fn(_) -> _),
    )
    .public("/health");
    if let Some(limiter) = limiter {
        auth = auth.rate_limits(limiter);
    }
    let mut svc = ServiceBuilder::new()
        .layer(auth.clone())
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
    let counters = MemoryCounters::builder().max_keys(2 * KEYS as u64).build();
    let without = layered(&keys, None);
    let with = layered(
        &keys,
        Some(
            RateLimiter::new(MemoryCounters::builder().max_keys(2 * KEYS as u64).build())
                .default_limit(roomy()),
        ),
    );
    // For a profiler: RATE_LIMIT_PROFILE=counters|layer runs that alone on
    // the hot key, for a while.
    if let Ok(what) = std::env::var("RATE_LIMIT_PROFILE") {
        let limits = [roomy()];
        let key = CounterKey::key(&keys.hashes[hot.1[0] as usize]);
        let mut b = with.clone();
        for _ in 0..20_000_000 {
            if what == "counters" {
                let counted = counters
                    .hit(&key, &limits, Algorithm::SlidingWindow, 1)
                    .now_or_never();
                black_box(counted);
            } else {
                black_box(call_now(&mut b, request(&keys.headers[hot.1[0] as usize])));
            }
        }
        return;
    }
    let quota = Quota::per_hour(NonZeroU32::MAX);
    println!("rate-limit stage on a cached hit, {ROUNDS} interleaved rounds of {ITERS}, medians (ns per request):");
    println!(
        "{:<6} {:>10} {:>10} {:>11} {:>14} {:>16}",
        "keys", "no limits", "limits", "stage cost", "counters alone", "governor keyed"
    );
    for (name, sequence) in [hot, zipf] {
        let governor = Governor::keyed(quota);
        let limits = [roomy()];
        let (mut a, mut b) = (without.clone(), with.clone());
        let mut next = [0, SEQUENCE / 4, SEQUENCE / 2, 3 * SEQUENCE / 4];
        let [no, yes, alone, gov] = common::interleaved(ROUNDS, ITERS, |which| {
            let at = next[which];
            next[which] = (at + 1) % SEQUENCE;
            let key = sequence[at] as usize;
            match which {
                0 => assert_eq!(call_now(&mut a, request(&keys.headers[key])).status(), 200),
                1 => assert_eq!(call_now(&mut b, request(&keys.headers[key])).status(), 200),
                2 => {
                    let counted = counters
                        .hit(
                            &CounterKey::key(&keys.hashes[key]),
                            &limits,
                            Algorithm::SlidingWindow,
                            1,
                        )
                        .now_or_never()
                        .expect("in process: at once");
                    assert!(counted.expect("in process").admitted);
                }
                _ => assert!(governor.check_key(&keys.hashes[key]).is_ok()),
            }
        });
        println!(
            "{name:<6} {no:>10.1} {yes:>10.1} {:>11.1} {alone:>14.1} {gov:>16.1}",
            yes - no
        );
    }
    println!("target: stage cost <= 100 ns on both");
}
