//! The hit path on real traffic: a request carrying a cached key, through
//! `ApiKeyAuth` on a plain tower stack (a request as hyper hands it over: no
//! `MatchedPath`, no extensions yet), over 100,000 cached keys drawn
//!
//! - **hot**: one key, every time;
//! - **rotating**: every key in turn (a shuffled order);
//! - **zipf**: Zipf(1.0) over the keys (rank to key shuffled),
//!
//! each request built just before it is sent. Beside the layer, in the same
//! process and the same interleaved rounds:
//!
//! - **bare**: the inner service alone, on the same requests (its cost is
//!   subtracted: "layer cost" is layer − bare);
//! - **floor**: the minimal auth step (parse the header, SHA-256, one
//!   `std::collections::HashMap` read, one clock read and the expiry check,
//!   `Arc<P>` into the extensions), then the inner service.
//!
//! Then the same zipf traffic on two threads at once (per request, against
//! one thread), an axum `Router` (with `MatchedPath`) with and without
//! the layer, and the layer under no tracing subscriber, one at `WARN` and
//! one at `INFO` (the `api_key_auth` span built). Prints every figure and
//! its ratio.
//!
//! ```sh
//! cargo bench --bench hit_path
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_api_key::cache::MemoryCache;
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Principal};

mod common;
use common::call_now;
use common::traffic::{keys, request, sequences, warm, Keys, KEYS, SEQUENCE};

const ROUNDS: usize = 40;
const ITERS: u32 = 20_000;

struct Client {
    #[allow(dead_code)]
    id: u64,
}
impl Principal for Client {}

type Body = Full<Bytes>;
type Inner = tower::util::ServiceFn<
    fn(Request<Body>) -> std::future::Ready<Result<Response<Body>, Infallible>>,
>;

fn respond(req: Request<Body>) -> std::future::Ready<Result<Response<Body>, Infallible>> {
    black_box(&req);
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

fn inner() -> Inner {
    service_fn(respond as fn(_) -> _)
}

/// The minimal auth step, then the inner service: what no layer can beat.
#[derive(Clone)]
struct Floor {
    table: Arc<HashMap<KeyHash, (Arc<Client>, Instant)>>,
    inner: Inner,
}

impl Floor {
    fn call(&mut self, mut req: Request<Body>) -> Response<Body> {
        let found = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(KeyHash::of)
            .and_then(|hash| self.table.get(&hash))
            .filter(|(_, deadline)| Instant::now() < *deadline)
            .map(|(client, _)| Arc::clone(client));
        match found {
            Some(client) => {
                req.extensions_mut().insert(client);
                call_now(&mut self.inner, req)
            }
            None => {
                let mut res = Response::new(Full::new(Bytes::new()));
                *res.status_mut() = StatusCode::UNAUTHORIZED;
                res
            }
        }
    }
}

type Layered = tower_api_key::ApiKeyAuth<
    Inner,
    MemoryCache<Client>,
    tower_api_key::LookupFn<fn(KeyHash) -> std::future::Ready<Result<Option<Client>, Infallible>>>,
>;

fn known(hash: KeyHash) -> std::future::Ready<Result<Option<Client>, Infallible>> {
    let id = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or_default());
    std::future::ready(Ok(Some(Client { id })))
}

/// The layer as a service hands it to hyper: a cache big enough for every
/// key, a public health route (so route resolution runs), every key cached.
/// With `HIT_PATH_KEEP_KEY=1` the key stays in the request
/// (`hide_credentials(false)`: the path before the key was taken out).
fn layered(keys: &Keys) -> Layered {
    let keep = std::env::var("HIT_PATH_KEEP_KEY").is_ok_and(|v| v == "1");
    let auth = ApiKeyAuthLayer::new(
        MemoryCache::builder().max_capacity(2 * KEYS as u64).build(),
        lookup_fn(known as fn(_) -> _),
    )
    .public("/health")
    .hide_credentials(!keep);
    let mut svc = ServiceBuilder::new().layer(auth.clone()).service(inner());
    warm(&mut svc, keys);
    assert_eq!(auth.stats().lookups, KEYS as u64);
    svc
}

fn floor(keys: &Keys) -> Floor {
    let deadline = Instant::now() + Duration::from_secs(3600);
    let table = keys
        .hashes
        .iter()
        .enumerate()
        .map(|(i, h)| (*h, (Arc::new(Client { id: i as u64 }), deadline)))
        .collect();
    Floor {
        table: Arc::new(table),
        inner: inner(),
    }
}

/// One round's worth of requests through each, in rotating order.
struct Run<'a> {
    keys: &'a Keys,
    sequence: &'a [u32],
    next: [usize; 3],
    bare: Inner,
    floor: Floor,
    layer: Layered,
}

impl Run<'_> {
    fn step(&mut self, which: usize) {
        let at = self.next[which];
        self.next[which] = (at + 1) % self.sequence.len();
        let req = request(&self.keys.headers[self.sequence[at] as usize]);
        let res = match which {
            0 => call_now(&mut self.bare, req),
            1 => self.floor.call(req),
            _ => call_now(&mut self.layer, req),
        };
        debug_assert_eq!(res.status(), 200);
        black_box(res);
    }
}

/// Medians of bare, floor and layer, interleaved.
fn measure(keys: &Keys, sequence: &[u32], layer: &Layered) -> [f64; 3] {
    let mut run = Run {
        keys,
        sequence,
        next: [0, SEQUENCE / 3, 2 * SEQUENCE / 3],
        bare: inner(),
        floor: floor(keys),
        layer: layer.clone(),
    };
    common::interleaved(ROUNDS, ITERS, |which| run.step(which))
}

/// ns per request of `make()`'d services driven on `threads` threads at
/// once over `sequence` (each thread from its own offset).
fn per_request_on_threads<S>(
    threads: usize,
    keys: &Keys,
    sequence: &[u32],
    make: impl Fn() -> S + Sync,
) -> f64
where
    S: FnMut(Request<Body>) -> Response<Body>,
{
    let per_thread = 200_000usize;
    let times: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let make = &make;
                scope.spawn(move || {
                    let mut call = make();
                    let offset = t * SEQUENCE / threads.max(1);
                    let start = Instant::now();
                    for i in 0..per_thread {
                        let index = sequence[(offset + i) % sequence.len()];
                        black_box(call(request(&keys.headers[index as usize])));
                    }
                    start.elapsed().as_nanos() as f64 / per_thread as f64
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    times.iter().sum::<f64>() / times.len() as f64
}

/// Layer cost per request on zipf traffic, on one thread and on two at once
/// (bare subtracted in each): the medians over paired rounds, and the
/// median of the pairs' ratios (robust to the machine's drift).
fn threads(keys: &Keys, zipf: &[u32], layer: &Layered) -> (f64, f64, f64) {
    let cost = |threads| {
        let layer = per_request_on_threads(threads, keys, zipf, || {
            let mut svc = layer.clone();
            move |req| call_now(&mut svc, req)
        });
        let bare = per_request_on_threads(threads, keys, zipf, || {
            let mut svc = inner();
            move |req| call_now(&mut svc, req)
        });
        layer - bare
    };
    let (mut one, mut two, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..9 {
        let (a, b) = if round % 2 == 0 {
            let a = cost(1);
            (a, cost(2))
        } else {
            let b = cost(2);
            (cost(1), b)
        };
        one.push(a);
        two.push(b);
        ratios.push(b / a);
    }
    (median(one), median(two), median(ratios))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Behind an axum `Router` (the layer finds `MatchedPath`): the router with
/// the layer against the router alone, on zipf traffic.
fn routes() -> Router {
    Router::new()
        .route("/v1/invoices", get(|| async { "ok" }))
        .route("/health", get(|| async { "ok" }))
}

/// The routes behind the layer, every key cached.
fn axum_with_layer(keys: &Keys) -> Router {
    let auth = ApiKeyAuthLayer::new(
        MemoryCache::builder().max_capacity(2 * KEYS as u64).build(),
        lookup_fn(known as fn(_) -> _),
    )
    .public("/health");
    let mut with = routes().layer(auth);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for header in &keys.headers {
            let ready = ServiceExt::<Request<Body>>::ready(&mut with).await;
            let res = ready.expect("ready").call(request(header)).await;
            assert_eq!(res.expect("infallible").status(), 200);
        }
    });
    with
}

fn behind_axum(keys: &Keys, zipf: &[u32]) -> (f64, f64) {
    let mut with = axum_with_layer(keys);
    let mut without = routes();
    let mut next = [0usize, SEQUENCE / 2];
    let [bare, layer] = common::interleaved(ROUNDS, ITERS, |which| {
        let at = next[which];
        next[which] = (at + 1) % zipf.len();
        let req = request(&keys.headers[zipf[at] as usize]);
        let res = if which == 0 {
            call_now(&mut without, req)
        } else {
            call_now(&mut with, req)
        };
        black_box(res);
    });
    (bare, layer)
}

fn criterion_hot(c: &mut Criterion) {
    let keys = keys();
    let layer = layered(&keys);
    let [(_, hot), ..] = sequences();
    let mut run = Run {
        keys: &keys,
        sequence: &hot,
        next: [0; 3],
        bare: inner(),
        floor: floor(&keys),
        layer,
    };
    let mut group = c.benchmark_group("hit_path_hot");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("bare_inner_service", |b| b.iter(|| run.step(0)));
    group.bench_function("floor_minimal_auth_step", |b| b.iter(|| run.step(1)));
    group.bench_function("layer_cached_key", |b| b.iter(|| run.step(2)));
    group.finish();
}

criterion_group!(benches, criterion_hot);

fn main() {
    if std::env::var_os("HIT_PATH_PROFILE").is_some() {
        return profile();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let keys = keys();
    let layer = layered(&keys);
    let sequences = sequences();
    println!();
    println!("{KEYS} cached keys, plain tower stack; medians of {ROUNDS} interleaved rounds x {ITERS} calls, ns per request");
    println!(
        "pattern    bare   floor   layer | floor cost  layer cost  (target)  cost/floor (target)"
    );
    let targets = [("hot", 210.0), ("rotating", 600.0), ("zipf", 500.0)];
    for ((name, sequence), (_, target)) in sequences.iter().zip(targets) {
        let [bare, floor, layer] = measure(&keys, sequence, &layer);
        let (floor_cost, layer_cost) = (floor - bare, layer - bare);
        let ratio_target = if *name == "rotating" { "" } else { "<= 1.40" };
        println!(
            "{name:<9} {bare:6.1} {floor:7.1} {layer:7.1} | {floor_cost:10.1} {layer_cost:11.1}  (<= {target:.0})  {:10.2} {ratio_target}",
            layer_cost / floor_cost
        );
    }
    let zipf = &sequences[2].1;
    let (one, two, ratio) = threads(&keys, zipf, &layer);
    println!(
        "zipf, layer cost per request: 1 thread {one:.1} ns, 2 threads at once {two:.1} ns, ratio {ratio:.2} (median of paired rounds; target <= 1.20)"
    );
    let (bare, with) = behind_axum(&keys, zipf);
    println!(
        "zipf behind an axum Router: router alone {bare:.1} ns, with the layer {with:.1} ns, layer cost {:.1} ns",
        with - bare
    );
    let [none, warn, info] = with_subscribers(&keys, zipf, &layer);
    println!(
        "zipf, the layer under tracing: no subscriber {none:.1} ns, a subscriber at WARN {warn:.1} ns ({:.2}), \
         one at INFO that builds each api_key_auth span {info:.1} ns ({:.2})",
        warn / none,
        info / none
    );
}

/// The layer on zipf traffic with no tracing subscriber, with one that
/// wants nothing of this crate (`WARN`: the span is `Span::none()`), and
/// with one that takes every `INFO` span (a registry: the span is built,
/// recorded and closed), in interleaved rounds.
fn with_subscribers(keys: &Keys, zipf: &[u32], layer: &Layered) -> [f64; 3] {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    // Each round's subscriber lives for that round only, and the interest
    // cache is rebuilt after it: a live `INFO` subscriber raises the global
    // max level for every thread, so the other rounds would not measure
    // what they say.
    let dispatch = |which: usize| match which {
        0 => tracing::Dispatch::none(),
        1 => tracing::Dispatch::new(tracing_subscriber::registry().with(LevelFilter::WARN)),
        _ => tracing::Dispatch::new(tracing_subscriber::registry().with(LevelFilter::INFO)),
    };
    let mut svc = layer.clone();
    let mut at = 0usize;
    let mut samples: [Vec<f64>; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..3 {
            let which = (round + k) % 3;
            let subscriber = dispatch(which);
            tracing::dispatcher::with_default(&subscriber, || {
                let start = Instant::now();
                for _ in 0..ITERS {
                    at = (at + 1) % zipf.len();
                    let req = request(&keys.headers[zipf[at] as usize]);
                    black_box(call_now(&mut svc, req));
                }
                samples[which].push(start.elapsed().as_nanos() as f64 / f64::from(ITERS));
            });
            drop(subscriber);
            tracing::callsite::rebuild_interest_cache();
        }
    }
    samples.map(median)
}

/// For a profiler: `HIT_PATH_PROFILE=zipf` (or hot, rotating; `zipf:floor`
/// or `zipf:bare` for the baselines) runs only that, for
/// `HIT_PATH_PROFILE_CALLS` requests (10 M), in `drive`
/// (`valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*drive*'`).
/// With `HIT_PATH_RECORDER=1` (and the `metrics` feature) a Prometheus
/// recorder is installed first, so the layer's metrics are live.
fn profile() {
    if std::env::var("HIT_PATH_RECORDER").is_ok_and(|v| v == "1") {
        #[cfg(feature = "metrics")]
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder");
        #[cfg(not(feature = "metrics"))]
        panic!("HIT_PATH_RECORDER needs the metrics feature");
    }
    let keys = keys();
    let sequences = sequences();
    let what = std::env::var("HIT_PATH_PROFILE").unwrap_or_default();
    let (pattern, which) = what.split_once(':').unwrap_or((&what, "layer"));
    let calls: usize = std::env::var("HIT_PATH_PROFILE_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000);
    let (_, sequence) = sequences
        .iter()
        .find(|(name, _)| *name == pattern)
        .expect("HIT_PATH_PROFILE is hot, rotating or zipf");
    let mut run = Run {
        keys: &keys,
        sequence,
        next: [0; 3],
        bare: inner(),
        floor: floor(&keys),
        layer: layered(&keys),
    };
    if which == "axum" {
        let mut with = axum_with_layer(&keys);
        return drive_axum(&keys, sequence, &mut with, calls);
    }
    let which = match which {
        "bare" => 0,
        "floor" => 1,
        _ => 2,
    };
    drive(&mut run, which, calls);
}

#[inline(never)]
fn drive_axum(keys: &Keys, sequence: &[u32], router: &mut Router, calls: usize) {
    for i in 0..calls {
        let req = request(&keys.headers[sequence[i % sequence.len()] as usize]);
        black_box(call_now(router, req));
    }
}

#[inline(never)]
fn drive(run: &mut Run<'_>, which: usize, calls: usize) {
    for _ in 0..calls {
        run.step(which);
    }
}
