//! Redis Cluster under load: three masters with a replica each. A master is
//! killed and its replica promoted; slots are resharded between masters.
//! Throughout, every answer is right and none is a 5xx; afterwards the
//! cache and the counters are in use again within a bound the test
//! measures (and the README states). And a cluster's `ASK` redirection
//! leaves every connection of the pool working.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use common::redis::RedisCluster;
use common::{app, status, KeyStore};
use http::StatusCode;
use tower_api_key::cache::RedisCache;
use tower_api_key::ratelimit::{RateLimiter, RedisCounters};
use tower_api_key::{ApiKeyAuthLayer, RateLimit, Stats};

/// Keys enough that every master holds some.
const KEYS: usize = 24;

fn secret(i: usize) -> String {
    format!("sk_test_failover_{i:02}")
}

struct Rig {
    app: Router,
    store: KeyStore,
    stats: Box<dyn Fn() -> Stats + Send + Sync>,
}

/// A layer on the cluster: the cache and (on the same connections) strict
/// counters with a quota no test reaches.
async fn rig(cluster: &RedisCluster) -> Rig {
    let cache = RedisCache::builder(cluster.url())
        .build()
        .await
        .expect("a Redis cache on the cluster");
    let limiter = RateLimiter::new(RedisCounters::from_cache(&cache)).default_limit(
        RateLimit::new("minute", 10_000_000, Duration::from_secs(60)).expect("a limit"),
    );
    let store = KeyStore::new();
    for i in 0..KEYS {
        store.create(&format!("key {i}"), &secret(i), None);
    }
    let layer = ApiKeyAuthLayer::new(cache, store.lookup()).rate_limits(limiter);
    Rig {
        app: app(layer.clone()),
        store,
        stats: Box::new(move || layer.stats()),
    }
}

/// Requests in a loop until stopped: every key in turn and an unknown one;
/// any wrong answer or 5xx is counted.
struct Load {
    stop: Arc<AtomicBool>,
    wrong: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

fn load(app: &Router) -> Load {
    let (stop, wrong, sent) = (Arc::default(), Arc::default(), Arc::default());
    let task = tokio::spawn({
        let (app, stop, wrong, sent): (
            Router,
            Arc<AtomicBool>,
            Arc<AtomicUsize>,
            Arc<AtomicUsize>,
        ) = (
            app.clone(),
            Arc::clone(&stop),
            Arc::clone(&wrong),
            Arc::clone(&sent),
        );
        async move {
            let mut seen = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (key, expected) = if i % (KEYS + 1) == KEYS {
                    (
                        "sk_test_failover_unknown".to_owned(),
                        StatusCode::UNAUTHORIZED,
                    )
                } else {
                    (secret(i % (KEYS + 1)), StatusCode::OK)
                };
                let got = status(&app, "/me", &key).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if got != expected {
                    wrong.fetch_add(1, Ordering::Relaxed);
                    seen.push(format!("{key}: {got}"));
                }
                i += 1;
                // With Redis skipped, a request may finish without ever
                // waiting: give the runtime's drivers their turn.
                tokio::task::yield_now().await;
            }
            seen
        }
    });
    Load {
        stop,
        wrong,
        sent,
        task,
    }
}

impl Load {
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.task.await.expect("the load task");
        let wrong = self.wrong.load(Ordering::Relaxed);
        assert_eq!(wrong, 0, "wrong answers or 5xx under load: {seen:?}");
        (self.sent.load(Ordering::Relaxed), wrong)
    }
}

impl Rig {
    /// Whether one pass over every key went through Redis alone: no
    /// lookup, no cache error, no counter fallback.
    async fn on_redis(&self) -> bool {
        let (before, lookups) = ((self.stats)(), self.store.lookups());
        for i in 0..KEYS {
            assert_eq!(status(&self.app, "/me", &secret(i)).await, StatusCode::OK);
        }
        let after = (self.stats)();
        self.store.lookups() == lookups
            && after.cache_errors == before.cache_errors
            && after.rate_limit_fallbacks == before.rate_limit_fallbacks
    }

    /// How long until the cache and the counters are in use again.
    async fn back_on_redis(&self, within: Duration) -> Duration {
        let started = Instant::now();
        while !self.on_redis().await {
            assert!(
                started.elapsed() < within,
                "not back on Redis within {within:?}: {:?}",
                (self.stats)()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    }
}

/// The bound the README states for a master's failover.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_with_no_wrong_answer() {
    let mut cluster = RedisCluster::start_with_replicas();
    let rig = rig(&cluster).await;
    rig.back_on_redis(Duration::from_secs(5)).await;
    let load = load(&rig.app);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let master = cluster.masters()[0];
    let killed = Instant::now();
    cluster.nodes[master].kill();
    // Promoted: three masters again, and every live node says ok.
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while cluster.masters().len() < 3 {
            assert!(Instant::now() < deadline, "no replica was promoted");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster.wait_ok(Duration::from_secs(15));
    });
    let promoted = killed.elapsed();
    let back = rig.back_on_redis(FAILOVER_BOUND).await;
    let (sent, _) = load.finish().await;
    eprintln!(
        "failover: replica promoted {promoted:?} after the kill; cache and counters back {:?} after the kill; {sent} requests, none wrong",
        promoted + back
    );
    assert!(sent > 100, "the load hardly ran: {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_resharded_under_load_give_no_wrong_answer() {
    let cluster = RedisCluster::start_with_replicas();
    let rig = rig(&cluster).await;
    rig.back_on_redis(Duration::from_secs(5)).await;
    let masters = cluster.masters();
    let (from, to) = (cluster.id(masters[0]), cluster.id(masters[1]));
    let entry = format!("127.0.0.1:{}", cluster.nodes[masters[0]].port);
    let load = load(&rig.app);
    let reshard = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &entry])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "3000", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster reshard")
    })
    .await
    .expect("the reshard");
    assert!(
        reshard.status.success(),
        "{}",
        String::from_utf8_lossy(&reshard.stdout)
    );
    let back = rig.back_on_redis(FAILOVER_BOUND).await;
    let (sent, _) = load.finish().await;
    eprintln!(
        "reshard of 3000 slots: back on Redis {back:?} after it; {sent} requests, none wrong"
    );
    assert!(sent > 100, "the load hardly ran: {sent}");
}

/// A cluster's `ASK` redirection (a slot migrating, its key not yet moved)
/// ends fred 10.1's connection task when the command has no attempt left
/// (the crate sends one); the pool starts the task again, so the commands
/// after it are answered, not left to wait out their timeout on a client
/// that still says "connected" (the reshard above failed that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_redirection_leaves_every_connection_working() {
    use tower_api_key::ratelimit::{Algorithm, CounterKey, CounterStore};
    use tower_api_key::KeyHash;

    let cluster = RedisCluster::start();
    // Long: a command left to its timeout can't pass for one answered. No
    // breaker: the refused ASKs would open it, and it is the connections
    // this asks about.
    let counters = RedisCounters::builder(cluster.url())
        .command_timeout(Duration::from_secs(5))
        .breaker(0, Duration::from_secs(1))
        .build()
        .await
        .expect("counters on the cluster");
    let limits = [RateLimit::per_minute(1_000)];
    let hit = |key: CounterKey| {
        let (counters, limits) = (counters.clone(), limits.clone());
        async move {
            counters
                .hit(&key, &limits, Algorithm::default(), 1)
                .await
                .map(|_| ())
        }
    };
    let key = |i: usize| CounterKey::key(&KeyHash::of(format!("sk_ask_{i}")));
    let slot =
        |k: &CounterKey| cluster.nodes[0].cli(&["cluster", "keyslot", &counters.redis_key(k)]);
    // The migrating key's slot: from its owner to another master.
    let asked = key(0);
    let owner = (0..3)
        .find(|&i| {
            !cluster.nodes[i]
                .cli(&["exists", &counters.redis_key(&asked)])
                .contains("MOVED")
        })
        .expect("an owner");
    let (to, s) = ((owner + 1) % 3, slot(&asked));
    let s = s.trim();
    let (owner_id, to_id) = (cluster.id(owner), cluster.id(to));
    cluster.nodes[to].cli(&["cluster", "setslot", s, "importing", &owner_id]);
    cluster.nodes[owner].cli(&["cluster", "setslot", s, "migrating", &to_id]);

    // Asked elsewhere: the pool's connections take turns, so a few ASKs
    // reach every one of them.
    for _ in 0..8 {
        let _ = hit(asked).await;
    }
    // Every other key is answered: none waits on a dead connection task.
    let others: Vec<CounterKey> = (1..40).map(key).filter(|k| slot(k).trim() != s).collect();
    for k in others {
        let started = Instant::now();
        let answer = hit(k).await;
        assert!(
            answer.is_ok() && started.elapsed() < Duration::from_secs(2),
            "after an ASK: {answer:?} in {:?}",
            started.elapsed()
        );
    }
}
