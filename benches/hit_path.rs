//! The hit path: a request with a cached key through `ApiKeyAuth`, against
//! the bare inner service and against the floor (SHA-256 of the key plus one
//! cache read), in one process. Prints layer overhead / floor at the end.
//!
//! ```sh
//! cargo bench --bench hit_path
//! ```

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Service, ServiceBuilder};
use tower_api_key::cache::MemoryCache;
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Principal};

mod common;
use common::{call_now, request, SECRET};

struct Client {
    #[allow(dead_code)]
    id: u64,
}
impl Principal for Client {}

struct PerEntryTtl;

impl moka::Expiry<KeyHash, (Arc<Client>, Duration)> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &KeyHash,
        value: &(Arc<Client>, Duration),
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

type Inner = tower::util::ServiceFn<
    fn(Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>,
>;

fn respond(
    req: Request<Full<Bytes>>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    black_box(&req);
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

/// The three things measured, set up once and shared by criterion and the
/// interleaved ratio run.
struct Fixture<S> {
    moka: moka::sync::Cache<KeyHash, (Arc<Client>, Duration)>,
    bare: Inner,
    layered: S,
}

fn fixture(
) -> Fixture<impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>>
{
    // The floor: SHA-256 of the key and one read of a moka cache set up as
    // the layer needs it (bounded, per-entry TTL).
    let moka = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .expire_after(PerEntryTtl)
        .build();
    moka.insert(
        KeyHash::of(SECRET),
        (Arc::new(Client { id: 1 }), Duration::from_secs(300)),
    );

    let auth = ApiKeyAuthLayer::new(
        MemoryCache::new(),
        lookup_fn(|hash: KeyHash| async move {
            Ok::<_, Infallible>((hash == KeyHash::of(SECRET)).then_some(Client { id: 1 }))
        }),
    )
    .public("/health");
    let bare: Inner = service_fn(respond as fn(_) -> _);
    let mut layered = ServiceBuilder::new().layer(auth.clone()).service(bare);
    assert_eq!(call_now(&mut layered, request()).status(), 200);
    assert_eq!(auth.stats().lookups, 1);
    Fixture {
        moka,
        bare,
        layered,
    }
}

impl<S> Fixture<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>,
{
    fn floor(&mut self) {
        let hash = KeyHash::of(black_box(SECRET));
        black_box(self.moka.get(&hash));
    }

    fn bare(&mut self) {
        black_box(call_now(&mut self.bare, request()));
    }

    fn layer(&mut self) {
        black_box(call_now(&mut self.layered, request()));
    }
}

fn hit_path(c: &mut Criterion) {
    let mut f = fixture();
    let mut group = c.benchmark_group("hit_path");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("floor_sha256_plus_cache_get", |b| b.iter(|| f.floor()));
    group.bench_function("bare_inner_service", |b| b.iter(|| f.bare()));
    group.bench_function("layer_cached_key", |b| b.iter(|| f.layer()));
    group.finish();
}

criterion_group!(benches, hit_path);

/// The three, interleaved: medians of floor, bare and layer.
fn interleaved(rounds: usize, iters: u32) -> [f64; 3] {
    let mut f = fixture();
    common::interleaved(rounds, iters, |which| match which {
        0 => f.floor(),
        1 => f.bare(),
        _ => f.layer(),
    })
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let [floor, bare, layer] = interleaved(60, 20_000);
    let overhead = layer - bare;
    println!();
    println!("interleaved medians (60 rounds x 20,000 calls each):");
    println!("floor (SHA-256 + cache get): {floor:8.1} ns");
    println!("bare inner service:          {bare:8.1} ns");
    println!("through ApiKeyAuth (hit):    {layer:8.1} ns");
    println!("layer overhead:              {overhead:8.1} ns");
    println!(
        "ratio overhead / floor:      {:8.2}  (target <= 2.00)",
        overhead / floor
    );
}
