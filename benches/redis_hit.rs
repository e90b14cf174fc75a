//! Load script: a cached key through the layer with `RedisCache`, against a
//! bare fred `GET` of the same Redis key, each driven by 64 concurrent tasks
//! on one private `redis-server` (started here on a free loopback port).
//! Rounds come in pairs, one of each, the order alternating; prints the
//! medians of throughput and p50/p99 latency of each, and the median of the
//! pairs' ratios (robust to the machine's drift during the run). Then the
//! same again with redis-server pinned to one core and the client to the
//! other, where the ratio is about the client's own work.
//!
//! ```sh
//! cargo bench --bench redis_hit --features redis
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::prelude::{Builder, Config};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_api_key::cache::RedisCache;
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyHash, Principal};

mod common;
use common::load::{load, median, Run, ROUND, TASKS};
use common::{request, SECRET};
const ROUNDS: usize = 12;

#[derive(serde::Serialize, serde::Deserialize)]
struct Client {
    id: u64,
    name: String,
}
impl Principal for Client {}

fn main() {
    common::on_private_redis(|url| async move {
        let cache: RedisCache<Client> = RedisCache::builder(&url).build().await.expect("cache");
        let redis_key = cache.redis_key(&KeyHash::of(SECRET));
        let auth = ApiKeyAuthLayer::new(
            cache,
            lookup_fn(|hash: KeyHash| async move {
                Ok::<_, Infallible>((hash == KeyHash::of(SECRET)).then(|| Client {
                    id: 1,
                    name: "bench".into(),
                }))
            }),
        );
        let svc = ServiceBuilder::new()
            .layer(auth.clone())
            .service(service_fn(|_: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }));
        assert_eq!(svc.clone().oneshot(request()).await.unwrap().status(), 200);

        // The bare baseline: a pool like the cache's (4 connections), GET of
        // the very key the layer reads.
        let pool = Builder::from_config(Config::from_url(&url).expect("url"))
            .build_pool(4)
            .expect("pool");
        pool.init().await.expect("connect");
        let pool = Arc::new(pool);

        let bare_get = {
            let (p, k) = (pool.clone(), redis_key.clone());
            move || {
                let (p, k) = (p.clone(), k.clone());
                async move {
                    let v: Option<String> = p.get(k).await.expect("GET");
                    assert!(v.is_some());
                }
            }
        };
        let layer_hit = {
            let s = svc.clone();
            move || {
                let s = s.clone();
                async move {
                    let res = s.oneshot(request()).await.expect("infallible");
                    assert_eq!(res.status(), 200);
                }
            }
        };
        // For a profiler: REDIS_HIT_ONLY=layer (or bare) runs that side
        // alone, for 20 rounds.
        if let Ok(side) = std::env::var("REDIS_HIT_ONLY") {
            for _ in 0..20 {
                let run = if side == "bare" {
                    load(bare_get.clone()).await
                } else {
                    load(layer_hit.clone()).await
                };
                println!("{side}: {:.0} ops/s", run.ops_per_sec);
            }
            return;
        }
        // Pairs of rounds, each pair in alternating order, so that the
        // machine's drift hits both sides of a pair alike.
        let mut bare = Vec::new();
        let mut layer = Vec::new();
        for round in 0..ROUNDS {
            if round % 2 == 0 {
                bare.push(load(bare_get.clone()).await);
                layer.push(load(layer_hit.clone()).await);
            } else {
                layer.push(load(layer_hit.clone()).await);
                bare.push(load(bare_get.clone()).await);
            }
        }
        // REDIS_HIT_VARIANTS=1: why RedisCache bounds commands with
        // tokio's timeout rather than fred's per-command one.
        if std::env::var_os("REDIS_HIT_VARIANTS").is_some() {
            for fred_timeout in [false, true] {
                let (p, k) = (pool.clone(), redis_key.clone());
                let run = load(move || {
                    let (p, k) = (p.clone(), k.clone());
                    async move {
                        let v: Option<String> = if fred_timeout {
                            let opts = fred::types::config::Options {
                                timeout: Some(Duration::from_millis(100)),
                                ..Default::default()
                            };
                            p.with_options(&opts).get(k).await.expect("GET")
                        } else {
                            tokio::time::timeout(Duration::from_millis(100), p.get(k))
                                .await
                                .expect("in time")
                                .expect("GET")
                        };
                        assert!(v.is_some());
                    }
                })
                .await;
                let how = if fred_timeout {
                    "fred's timeout "
                } else {
                    "tokio::timeout "
                };
                println!(
                    "GET with {how}:  {:>9.0} ops/s  p99 {:?}",
                    run.ops_per_sec, run.p99
                );
            }
        }
        let stats = auth.stats();
        assert_eq!(
            stats.lookups, 1,
            "every benchmarked request was a Redis hit"
        );
        assert_eq!(stats.cache_errors, 0);

        let summarize = |runs: &[Run]| {
            (
                median(runs.iter().map(|r| r.ops_per_sec).collect()),
                median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e6).collect()),
                median(runs.iter().map(|r| r.p99.as_secs_f64() * 1e6).collect()),
            )
        };
        let (b_ops, b_p50, b_p99) = summarize(&bare);
        let (l_ops, l_p50, l_p99) = summarize(&layer);
        let paired = |f: fn(&Run) -> f64| {
            median(bare.iter().zip(&layer).map(|(b, l)| f(l) / f(b)).collect())
        };
        let throughput_ratio = paired(|r| r.ops_per_sec);
        let p99_ratio = paired(|r| r.p99.as_secs_f64());
        println!(
            "{TASKS} concurrent tasks, {ROUNDS} pairs of {ROUND:?} rounds (order alternating), medians:"
        );
        println!(
            "bare fred GET:          {b_ops:>9.0} ops/s  p50 {b_p50:>7.1} µs  p99 {b_p99:>7.1} µs"
        );
        println!(
            "layer, Redis hit:       {l_ops:>9.0} ops/s  p50 {l_p50:>7.1} µs  p99 {l_p99:>7.1} µs"
        );
        println!(
            "throughput ratio layer/bare: {throughput_ratio:.2}  (median of the pairs' ratios; target >= 0.80; ratio of medians {:.2})",
            l_ops / b_ops
        );
        println!(
            "p99 ratio layer/bare:        {p99_ratio:.2}  (median of the pairs' ratios; target <= 1.50; ratio of medians {:.2})",
            l_p99 / b_p99
        );
        let _ = pool.quit().await;
    });
    common::pinned_too();
}
