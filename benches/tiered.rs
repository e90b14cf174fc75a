//! Load script for `TieredCache`, on one private `redis-server` (started here
//! on a free loopback port):
//!
//! 1. **Revocation propagation.** Two instances, A and B (two tiered caches,
//!    each with its own fred pool and subscriber, each in its own layer over
//!    one in-memory key table). For each of 1,000 keys: B caches the key (a
//!    lookup, then an L1 hit), the key is removed from the table and
//!    invalidated through A, and B is polled until it rejects the key. Prints
//!    p50/p99/max of the time from A's `invalidate()` returning to B's first
//!    rejection.
//! 2. **Hit path.** A cached key through the layer with `MemoryCache` against
//!    the layer with `TieredCache` (an L1 hit), in interleaved rounds; prints
//!    the medians and the throughput ratio.
//!
//! ```sh
//! cargo bench --bench tiered --features tiered
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_api_key::cache::{KeyCache, MemoryCache, TieredCache};
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Lookup, Principal};

mod common;
use common::{call_now, request, SECRET};

const REVOCATIONS: usize = 1_000;
/// A revocation that hasn't reached B after this long is a failure, not a
/// sample.
const GIVE_UP: Duration = Duration::from_secs(5);
const HIT_ROUNDS: usize = 60;
const HIT_ITERS: u32 = 20_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Client {
    id: u64,
}
impl Principal for Client {}

/// The key table: key hash → client id. Revoking a key removes its row.
type Table = Arc<Mutex<HashMap<KeyHash, u64>>>;

fn table_lookup(table: Table) -> impl Lookup<Client> {
    lookup_fn(move |hash: KeyHash| {
        let found = table
            .lock()
            .expect("table")
            .get(&hash)
            .map(|&id| Client { id });
        async move { Ok::<_, Infallible>(found) }
    })
}

fn respond(
    req: Request<Full<Bytes>>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    black_box(&req);
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

type Inner = tower::util::ServiceFn<
    fn(Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>,
>;

fn inner() -> Inner {
    service_fn(respond as fn(_) -> _)
}

/// `GET /v1/invoices` with `secret` as a bearer token.
fn request_with(secret: &str) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = http::Uri::from_static("/v1/invoices");
    req.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {secret}")).expect("header"),
    );
    req
}

async fn tiered(url: &str) -> TieredCache<Client> {
    let cache = TieredCache::builder(url)
        .prefix("bench:")
        .l1_ttl(Duration::from_secs(300))
        .build()
        .await
        .expect("tiered cache");
    let start = Instant::now();
    while !cache.is_subscribed() {
        assert!(start.elapsed() < GIVE_UP, "the subscriber never came up");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cache
}

struct Propagation {
    /// How long A's `invalidate()` took.
    invalidate: Vec<Duration>,
    /// From A's `invalidate()` returning to B's L1 seen without the key (the
    /// broadcast applied; zero when it was applied before `invalidate()`
    /// returned).
    dropped: Vec<Duration>,
    /// From A's `invalidate()` returning to B's first rejection.
    reach: Vec<Duration>,
    /// Requests B answered (from its L1) before the first rejection.
    polls: Vec<u32>,
}

async fn propagation(url: &str) -> Propagation {
    let table = Table::default();
    let a_auth = ApiKeyAuthLayer::new(tiered(url).await, table_lookup(table.clone()));
    let b_auth = ApiKeyAuthLayer::new(tiered(url).await, table_lookup(table.clone()));
    let b = ServiceBuilder::new().layer(b_auth.clone()).service(inner());
    let status = |secret: &str| {
        b.clone()
            .oneshot(request_with(secret))
            .map(|r| r.expect("infallible").status())
    };

    let mut run = Propagation {
        invalidate: Vec::with_capacity(REVOCATIONS),
        dropped: Vec::with_capacity(REVOCATIONS),
        reach: Vec::with_capacity(REVOCATIONS),
        polls: Vec::with_capacity(REVOCATIONS),
    };
    for i in 0..REVOCATIONS {
        let secret = format!("sk_live_propagation_{i:05}_0123456789abcdef");
        let hash = KeyHash::of(&secret);
        table.lock().expect("table").insert(hash, i as u64);
        // B caches it: a lookup fills both tiers, then B answers from L1.
        assert_eq!(status(&secret).await, StatusCode::OK);
        let (lookups, l2_hits) = (b_auth.stats().lookups, b_auth.cache().stats().l2_hits);
        assert_eq!(status(&secret).await, StatusCode::OK);
        assert_eq!(
            (b_auth.stats().lookups, b_auth.cache().stats().l2_hits),
            (lookups, l2_hits),
            "B answered from its L1"
        );

        table.lock().expect("table").remove(&hash);
        let called = Instant::now();
        a_auth.invalidate(&hash).await.expect("invalidate");
        let returned = Instant::now();
        let mut polls = 0;
        let mut dropped = None;
        loop {
            if dropped.is_none() && !l1_holds(b_auth.cache(), &hash).await {
                dropped = Some(returned.elapsed());
            }
            match status(&secret).await {
                StatusCode::UNAUTHORIZED => break,
                StatusCode::OK => polls += 1,
                other => panic!("B answered {other}"),
            }
            assert!(
                returned.elapsed() < GIVE_UP,
                "revocation {i} never reached B"
            );
            tokio::task::yield_now().await;
        }
        let reach = returned.elapsed();
        run.reach.push(reach);
        // Dropped between the last look and the request that was rejected.
        run.dropped.push(dropped.unwrap_or(reach));
        run.invalidate.push(returned - called);
        run.polls.push(polls);
    }
    assert_eq!(a_auth.stats().cache_errors + b_auth.stats().cache_errors, 0);
    run
}

async fn l1_holds(cache: &TieredCache<Client>, hash: &KeyHash) -> bool {
    KeyCache::get(cache.l1(), hash)
        .await
        .expect("an in-process read")
        .is_hit()
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(v[v.len() / 2]),
        us(v[v.len() * 99 / 100]),
        us(v[v.len() - 1]),
    )
}

fn secret_lookup() -> impl Lookup<Client> {
    lookup_fn(|hash: KeyHash| async move {
        Ok::<_, Infallible>((hash == KeyHash::of(SECRET)).then_some(Client { id: 1 }))
    })
}

/// The median ns per call of a memory hit and of a tiered L1 hit, timed in
/// alternating rounds so that noise hits both alike.
async fn hit_path(url: &str) -> (f64, f64) {
    let memory = ApiKeyAuthLayer::new(MemoryCache::new(), secret_lookup());
    let tiered = ApiKeyAuthLayer::new(tiered(url).await, secret_lookup());
    let mut m = ServiceBuilder::new().layer(memory.clone()).service(inner());
    let mut t = ServiceBuilder::new().layer(tiered.clone()).service(inner());
    // Fill: the memory cache from the lookup; the tiered cache from the
    // lookup (both tiers), after which it answers from L1.
    assert_eq!(m.clone().oneshot(request()).await.unwrap().status(), 200);
    assert_eq!(t.clone().oneshot(request()).await.unwrap().status(), 200);
    let hash = KeyHash::of(SECRET);
    assert!(KeyCache::get(tiered.cache().l1(), &hash)
        .await
        .unwrap()
        .is_hit());

    let [memory_ns, tiered_ns] = common::interleaved(HIT_ROUNDS, HIT_ITERS, |which| {
        let res = if which == 0 {
            call_now(&mut m, request())
        } else {
            call_now(&mut t, request())
        };
        black_box(res);
    });
    assert_eq!(memory.stats().lookups, 1);
    assert_eq!(tiered.stats().lookups, 1);
    assert_eq!(
        tiered.cache().stats().l2_hits,
        0,
        "every tiered call was an L1 hit"
    );
    (memory_ns, tiered_ns)
}

fn main() {
    common::on_private_redis(|url| async move {
        let run = propagation(&url).await;
        let (i50, i99, imax) = percentiles(run.invalidate);
        let (d50, d99, dmax) = percentiles(run.dropped);
        let (r50, r99, rmax) = percentiles(run.reach);
        let mut polls = run.polls;
        polls.sort_unstable();
        println!("revocation propagation, {REVOCATIONS} revocations, two instances on loopback:");
        println!(
            "A's invalidate() call:                p50 {i50:>8.1} µs  p99 {i99:>8.1} µs  max {imax:>8.1} µs"
        );
        println!(
            "invalidate() returned → B's L1 drops: p50 {d50:>8.1} µs  p99 {d99:>8.1} µs  max {dmax:>8.1} µs"
        );
        println!(
            "invalidate() returned → B rejects:    p50 {r50:>8.1} µs  p99 {r99:>8.1} µs  max {rmax:>8.1} µs  (target p99 < 5000 µs)"
        );
        println!(
            "B's L1 answers before the rejection:  p50 {:>8}     p99 {:>8}     max {:>8}",
            polls[polls.len() / 2],
            polls[polls.len() * 99 / 100],
            polls[polls.len() - 1]
        );

        let (memory_ns, tiered_ns) = hit_path(&url).await;
        println!();
        println!("hit path, interleaved medians ({HIT_ROUNDS} rounds x {HIT_ITERS} calls each):");
        println!("layer + MemoryCache (hit):      {memory_ns:8.1} ns");
        println!("layer + TieredCache (L1 hit):   {tiered_ns:8.1} ns");
        println!(
            "throughput ratio tiered/memory: {:8.2}  (target >= 0.90)",
            memory_ns / tiered_ns
        );
    });
}
