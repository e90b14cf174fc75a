//! `TieredCache` against real `redis-server` processes that the tests start,
//! two "instances" per test (two caches, each with its own fred pool and
//! subscriber, each in its own layer over one key table): a verdict shared
//! through L2 and then served from L1, revocation reaching the other
//! instance on its next request after the broadcast, owner-wide
//! invalidation, a killed subscriber, Redis down and back, L1 lifetimes
//! capped by L2's, no plaintext in Redis or on the wire, and the same on a
//! 3-master cluster. Also `invalidate_owner` on `MemoryCache` and
//! `RedisCache` alone.
//!
//! Every wait is a poll with a deadline: the tests assert the order of
//! events, never how fast they happen.
#![cfg(feature = "tiered")]

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use common::redis::{dump, Monitor, RedisCluster, RedisServer, Target};
use common::*;
use http::StatusCode;
use tower_api_key::cache::{KeyCache, MemoryCache, RedisCache, TieredCache, TieredCacheBuilder};
use tower_api_key::{ApiKeyAuthLayer, KeyHash, Lookup};

/// Every secret here carries this marker, so a dump can be searched for it.
const MARK: &str = "TIEREDSECRET";
const SECRET: &str = "sk_live_TIEREDSECRET_alice";
const KEEP: &str = "sk_live_TIEREDSECRET_bob";
const ACME_1: &str = "sk_live_TIEREDSECRET_acme_1";
const ACME_2: &str = "sk_live_TIEREDSECRET_acme_2";
const GLOBEX: &str = "sk_live_TIEREDSECRET_globex";
const UNKNOWN: &str = "sk_live_TIEREDSECRET_nobody";

/// How long a broadcast may take to arrive before a test fails: generous,
/// a loopback hop takes well under a millisecond.
const BROADCAST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a reconnect may take (fred's reconnect policy, a Redis restart).
const RECONNECT_DEADLINE: Duration = Duration::from_secs(10);

const OK: StatusCode = StatusCode::OK;
const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;

fn builder(url: &str, prefix: &str) -> TieredCacheBuilder<Client> {
    TieredCache::builder(url)
        .prefix(prefix)
        .pool_size(2)
        .connect_timeout(Duration::from_millis(500))
}

/// A tiered cache (its own pool and subscriber), once its subscriber is
/// listening.
async fn tiered(builder: TieredCacheBuilder<Client>) -> TieredCache<Client> {
    let cache = builder.build().await.expect("tiered cache");
    wait_until("the subscriber is listening", BROADCAST_DEADLINE, || {
        cache.is_subscribed()
    })
    .await;
    cache
}

/// One instance: a tiered cache in a layer over `store`, and the app behind
/// it.
async fn instance(
    builder: TieredCacheBuilder<Client>,
    store: &KeyStore,
) -> (
    ApiKeyAuthLayer<TieredCache<Client>, impl Lookup<Client>>,
    Router,
) {
    let auth = ApiKeyAuthLayer::new(tiered(builder).await, store.lookup());
    let app = app(auth.clone());
    (auth, app)
}

/// Polls `done` until it holds; fails the test after `deadline`.
async fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < deadline,
            "not within {deadline:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether an instance's L1 holds an entry (valid or negative) for `secret`.
async fn l1_holds(cache: &TieredCache<Client>, secret: &str) -> bool {
    KeyCache::get(cache.l1(), &KeyHash::of(secret))
        .await
        .expect("an in-process read")
        .is_hit()
}

fn heard(cache: &TieredCache<Client>) -> u64 {
    cache.stats().broadcasts_received
}

/// A looked up by A is an L2 hit on B, then an L1 hit; revoked through A, B
/// drops it when the broadcast arrives and rejects it on its next request.
async fn revocation_reaches_the_other_instance(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    let id = store.create("alice", SECRET, None);
    let hash = KeyHash::of(SECRET);
    let (a_auth, a) = instance(builder(&t.url(), prefix), &store).await;
    let (b_auth, b) = instance(builder(&t.url(), prefix), &store).await;
    let (ca, cb) = (a_auth.cache(), b_auth.cache());
    assert_eq!(ca.channel(), cb.channel());
    assert!(ca.channel().starts_with(prefix), "{}", ca.channel());

    assert_eq!(status(&a, "/me", SECRET).await, OK);
    assert_eq!(store.lookups(), 1);
    assert!(t.holds(&ca.l2().redis_key(&hash)), "A filled L2");
    let l2_hits = cb.stats().l2_hits;
    assert_eq!(status(&b, "/me", SECRET).await, OK);
    assert_eq!(store.lookups(), 1, "B found A's verdict in Redis");
    assert_eq!(cb.stats().l2_hits, l2_hits + 1);
    assert!(l1_holds(cb, SECRET).await, "the L2 hit filled B's L1");
    for _ in 0..5 {
        assert_eq!(status(&b, "/me", SECRET).await, OK);
    }
    assert_eq!(cb.stats().l2_hits, l2_hits + 1, "B answers from its L1");
    assert_eq!(store.lookups(), 1);

    store.revoke(id);
    let (a_heard, b_heard) = (heard(ca), heard(cb));
    let invalidated = Instant::now();
    a_auth.invalidate(&hash).await.unwrap();
    let returned = invalidated.elapsed();
    // A's own tiers are clean when invalidate returns.
    assert!(!l1_holds(ca, SECRET).await, "A's L1 still holds it");
    assert!(!t.holds(&ca.l2().redis_key(&hash)), "Redis still holds it");

    wait_until("B hears the invalidation", BROADCAST_DEADLINE, || {
        heard(cb) > b_heard
    })
    .await;
    let arrived = invalidated.elapsed();
    assert!(
        !l1_holds(cb, SECRET).await,
        "B's L1 kept it after the broadcast"
    );
    assert_eq!(
        status(&b, "/me", SECRET).await,
        UNAUTHORIZED,
        "B's very next request after the broadcast"
    );
    assert_eq!(status(&a, "/me", SECRET).await, UNAUTHORIZED);
    wait_until("A hears its own invalidation", BROADCAST_DEADLINE, || {
        heard(ca) > a_heard
    })
    .await;
    eprintln!("invalidate returned after {returned:?}, B heard it after {arrived:?}");
}

/// `invalidate_all` on A empties B's L1 as well, and only this prefix in
/// Redis.
async fn invalidate_all_reaches_the_other_instance(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    store.create("bob", KEEP, None);
    let (a_auth, a) = instance(builder(&t.url(), prefix), &store).await;
    let (b_auth, b) = instance(builder(&t.url(), prefix), &store).await;
    let (_, other) = instance(builder(&t.url(), &format!("other{prefix}")), &store).await;
    let cb = b_auth.cache();
    for key in [SECRET, KEEP] {
        assert_eq!(status(&a, "/me", key).await, OK);
        assert_eq!(status(&b, "/me", key).await, OK);
        assert!(l1_holds(cb, key).await);
    }
    assert_eq!(status(&b, "/me", UNKNOWN).await, UNAUTHORIZED);
    assert_eq!(status(&other, "/me", SECRET).await, OK);
    assert_eq!(store.lookups(), 4);

    let b_heard = heard(cb);
    a_auth.invalidate_all().await.unwrap();
    let ours = |all: &[(String, String)]| {
        all.iter()
            .filter(|(k, v)| k.starts_with(prefix) && v.contains("\"kind\""))
            .count()
    };
    let all = t.dump();
    assert_eq!(ours(&all), 0, "{all:?}");
    assert!(
        all.iter()
            .any(|(k, _)| k.starts_with(&format!("other{prefix}"))),
        "another prefix's entries were dropped: {all:?}"
    );
    wait_until("B hears invalidate_all", BROADCAST_DEADLINE, || {
        heard(cb) > b_heard
    })
    .await;
    for key in [SECRET, KEEP, UNKNOWN] {
        assert!(!l1_holds(cb, key).await, "B's L1 kept an entry");
    }
    assert_eq!(status(&b, "/me", SECRET).await, OK);
    assert_eq!(store.lookups(), 5, "B's next request went to the lookup");
}

/// Two keys of acme and one of globex, cached on both instances; acme is
/// dropped everywhere (both L1s and Redis) by one call on A; globex stays.
async fn owner_invalidation_reaches_the_other_instance(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    store.create_owned("acme-1", ACME_1, "acme");
    store.create_owned("acme-2", ACME_2, "acme");
    store.create_owned("globex-1", GLOBEX, "globex");
    let (a_auth, a) = instance(builder(&t.url(), prefix), &store).await;
    let (b_auth, b) = instance(builder(&t.url(), prefix), &store).await;
    let (ca, cb) = (a_auth.cache(), b_auth.cache());
    for key in [ACME_1, ACME_2, GLOBEX] {
        assert_eq!(status(&a, "/me", key).await, OK);
        assert_eq!(status(&b, "/me", key).await, OK);
        assert!(l1_holds(ca, key).await && l1_holds(cb, key).await);
    }
    assert_eq!(store.lookups(), 3, "B's were L2 hits");
    let redis_key = |k: &str| ca.l2().redis_key(&KeyHash::of(k));

    store.revoke_owner("acme");
    let b_heard = heard(cb);
    a_auth.invalidate_owner("acme").await.unwrap();
    for key in [ACME_1, ACME_2] {
        assert!(!l1_holds(ca, key).await, "A's L1 kept an acme key");
        assert!(!t.holds(&redis_key(key)), "Redis kept an acme key");
    }
    assert!(l1_holds(ca, GLOBEX).await, "A's L1 lost globex's key");
    assert!(t.holds(&redis_key(GLOBEX)), "Redis lost globex's key");

    wait_until("B hears the owner invalidation", BROADCAST_DEADLINE, || {
        heard(cb) > b_heard
    })
    .await;
    for key in [ACME_1, ACME_2] {
        assert!(!l1_holds(cb, key).await, "B's L1 kept an acme key");
    }
    assert!(l1_holds(cb, GLOBEX).await, "B's L1 lost globex's key");
    let (l2_hits, lookups) = (cb.stats().l2_hits, store.lookups());
    assert_eq!(status(&b, "/me", GLOBEX).await, OK);
    assert_eq!(
        (cb.stats().l2_hits, store.lookups()),
        (l2_hits, lookups),
        "globex's key is still an L1 hit"
    );
    assert_eq!(status(&b, "/me", ACME_1).await, UNAUTHORIZED);
    assert_eq!(status(&b, "/me", ACME_2).await, UNAUTHORIZED);
    assert_eq!(status(&a, "/me", ACME_1).await, UNAUTHORIZED);
}

/// `CLIENT KILL TYPE pubsub`, then a revocation through A that B's
/// subscriber may miss: B empties its L1 when it is back, so the revoked key
/// is rejected and the valid one comes from L2, not the lookup.
async fn a_killed_subscriber_empties_l1_on_reconnect(t: &Target<'_>, prefix: &str) {
    let store = KeyStore::new();
    let id = store.create("alice", SECRET, None);
    store.create("bob", KEEP, None);
    let (a_auth, a) = instance(builder(&t.url(), prefix), &store).await;
    let (b_auth, b) = instance(builder(&t.url(), prefix), &store).await;
    let (ca, cb) = (a_auth.cache(), b_auth.cache());
    for key in [SECRET, KEEP] {
        assert_eq!(status(&a, "/me", key).await, OK);
        assert_eq!(status(&b, "/me", key).await, OK);
        assert!(l1_holds(cb, key).await);
    }
    assert_eq!(store.lookups(), 2);
    let (a_flushes, b_flushes) = (ca.stats().l1_flushes, cb.stats().l1_flushes);

    t.kill_subscribers();
    store.revoke(id);
    a_auth.invalidate(&KeyHash::of(SECRET)).await.unwrap();

    wait_until(
        "B's subscriber is back and has emptied its L1",
        RECONNECT_DEADLINE,
        || cb.stats().l1_flushes > b_flushes && cb.is_subscribed(),
    )
    .await;
    assert!(cb.stats().subscribed);
    assert!(
        !l1_holds(cb, KEEP).await,
        "the flush left an entry in B's L1"
    );
    assert_eq!(status(&b, "/me", SECRET).await, UNAUTHORIZED);
    let (l2_hits, lookups) = (cb.stats().l2_hits, store.lookups());
    assert_eq!(status(&b, "/me", KEEP).await, OK);
    assert_eq!(store.lookups(), lookups, "the valid key came from L2");
    assert_eq!(cb.stats().l2_hits, l2_hits + 1);
    wait_until("A's subscriber is back too", RECONNECT_DEADLINE, || {
        ca.stats().l1_flushes > a_flushes && ca.is_subscribed()
    })
    .await;
}

/// The owner race: a lookup reads a still-valid owned row, the owner is
/// suspended and invalidated, a request arrives, then the stale lookup
/// returns. Neither the request that arrived after the invalidation nor a
/// later one may be accepted.
async fn owner_invalidation_race_is_closed<C>(cache: C)
where
    C: KeyCache<Principal = Client>,
{
    let store = KeyStore::new();
    store.create_owned("acme-1", ACME_1, "acme");
    let auth = ApiKeyAuthLayer::new(cache, store.lookup()).positive_ttl(Duration::from_secs(600));
    let app = app(auth.clone());

    let gate = store.arm_gate();
    let in_flight = tokio::spawn(send(app.clone(), get_with_key("/me", ACME_1)));
    gate.row_read.notified().await;
    store.revoke_owner("acme");
    auth.invalidate_owner("acme").await.unwrap();
    let during = tokio::spawn(send(app.clone(), get_with_key("/me", ACME_1)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.release.notify_one();
    assert_eq!(in_flight.await.unwrap().status, OK, "the stale lookup");
    assert_eq!(
        during.await.unwrap().status,
        UNAUTHORIZED,
        "a request after invalidate_owner shared the stale lookup"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        status(&app, "/me", ACME_1).await,
        UNAUTHORIZED,
        "the stale lookup wrote its verdict after invalidate_owner"
    );
}

/// The plaintext key appears nowhere in Redis, nor in any command sent to it
/// (values, scripts' arguments, pub/sub payloads).
fn assert_no_plaintext(t: &Target<'_>, monitors: Vec<Monitor>) {
    let all = t.dump();
    assert!(!all.is_empty());
    for (k, v) in &all {
        assert!(!k.contains(MARK) && !v.contains(MARK), "{k} = {v}");
    }
    let mut broadcasts = 0;
    for monitor in monitors {
        let seen = monitor.stop();
        // A cluster takes each PUBLISH on one node, any one: count them all.
        broadcasts += seen.to_ascii_lowercase().matches("\"publish\"").count();
        if let Some(line) = seen.lines().find(|l| l.contains(MARK)) {
            panic!("a secret was sent to Redis: {line}");
        }
    }
    assert!(broadcasts > 0, "no monitor saw a broadcast");
}

// The behaviours above, each a test on a single server and on a cluster.
on_each_target!(
    revocation_reaches_the_other_instance,
    invalidate_all_reaches_the_other_instance,
    owner_invalidation_reaches_the_other_instance,
    a_killed_subscriber_empties_l1_on_reconnect,
    tiered_owner_invalidation_race_is_closed,
    no_plaintext_in_redis_or_in_commands,
);

async fn tiered_owner_invalidation_race_is_closed(t: &Target<'_>, prefix: &str) {
    owner_invalidation_race_is_closed(tiered(builder(&t.url(), prefix)).await).await;
}

/// The broadcasts, a killed subscriber and the owner race, watched by
/// `MONITOR` on every node: no key, value, argument or message carries the
/// plaintext.
async fn no_plaintext_in_redis_or_in_commands(t: &Target<'_>, prefix: &str) {
    let monitors = t.monitors();
    revocation_reaches_the_other_instance(t, &format!("{prefix}1:")).await;
    owner_invalidation_reaches_the_other_instance(t, &format!("{prefix}2:")).await;
    invalidate_all_reaches_the_other_instance(t, &format!("{prefix}3:")).await;
    a_killed_subscriber_empties_l1_on_reconnect(t, &format!("{prefix}4:")).await;
    tiered_owner_invalidation_race_is_closed(t, &format!("{prefix}5:")).await;
    assert_no_plaintext(t, monitors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_serves_l1_within_its_bound_then_the_lookup_and_recovers() {
    let mut server = RedisServer::start();
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    store.create("bob", KEEP, None);
    // Wide enough for the steps below on a busy machine.
    let trust = Duration::from_millis(1_500);
    let (auth, app) = instance(
        builder(&server.url(), "down:")
            .disconnected_l1_ttl(trust)
            .command_timeout(Duration::from_millis(100)),
        &store,
    )
    .await;
    let c = auth.cache();
    assert_eq!(status(&app, "/me", SECRET).await, OK);
    let filled = Instant::now();
    assert_eq!(store.lookups(), 1);
    let flushes = c.stats().l1_flushes;

    server.kill();
    assert_eq!(status(&app, "/me", SECRET).await, OK);
    assert!(
        filled.elapsed() < trust,
        "too slow to check the trust window ({:?})",
        filled.elapsed()
    );
    assert_eq!(store.lookups(), 1, "a key held in L1 needs no lookup");
    // Keys L1 doesn't hold: the lookup answers, never a 5xx.
    assert_eq!(status(&app, "/me", KEEP).await, OK);
    assert_eq!(status(&app, "/me", UNKNOWN).await, UNAUTHORIZED);
    assert_eq!(store.lookups(), 3);
    wait_until(
        "the instance notices its subscriber is down",
        RECONNECT_DEADLINE,
        || !c.is_subscribed(),
    )
    .await;
    assert!(!c.stats().subscribed);
    assert!(auth.stats().cache_errors > 0, "the outage was noticed");

    // Past the bound, the entry filled before the outage is not trusted.
    tokio::time::sleep(
        (filled + trust + Duration::from_millis(50)).saturating_duration_since(Instant::now()),
    )
    .await;
    let lookups = store.lookups();
    assert_eq!(status(&app, "/me", SECRET).await, OK);
    assert_eq!(
        store.lookups(),
        lookups + 1,
        "an L1 entry older than disconnected_l1_ttl was served while unsubscribed"
    );

    server.restart();
    wait_until(
        "the subscriber reconnects by itself",
        RECONNECT_DEADLINE,
        || c.is_subscribed() && c.stats().l1_flushes > flushes,
    )
    .await;
    // L2 is used again: once refilled, an L1 miss is an L2 hit, not a lookup.
    let start = Instant::now();
    loop {
        KeyCache::invalidate(c.l1(), &KeyHash::of(KEEP))
            .await
            .unwrap();
        let (l2_hits, lookups) = (c.stats().l2_hits, store.lookups());
        assert_eq!(status(&app, "/me", KEEP).await, OK);
        if store.lookups() == lookups && c.stats().l2_hits > l2_hits {
            break;
        }
        assert!(
            start.elapsed() < RECONNECT_DEADLINE,
            "L2 hits never resumed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&app, "/me", UNKNOWN).await, UNAUTHORIZED);
}

/// An L1 entry filled from L2 never outlives the L2 entry: a negative entry
/// with a short TTL, and a positive one whose Redis key was `PEXPIRE`d.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l1_entry_never_outlives_its_l2_entry() {
    let server = RedisServer::start();
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let prefix = "capped:";
    let a_auth = ApiKeyAuthLayer::new(tiered(builder(&server.url(), prefix)).await, store.lookup())
        .negative_ttl(Duration::from_millis(1_500));
    let a = app(a_auth.clone());
    let (b_auth, b) = instance(builder(&server.url(), prefix), &store).await;
    let cb = b_auth.cache();
    let redis_key = |k: &str| a_auth.cache().l2().redis_key(&KeyHash::of(k));

    assert_eq!(status(&a, "/me", UNKNOWN).await, UNAUTHORIZED);
    assert_eq!(status(&a, "/me", SECRET).await, OK);
    assert_eq!(
        server.cli(&["pexpire", &redis_key(SECRET), "1500"]).trim(),
        "1"
    );
    assert_eq!(status(&b, "/me", UNKNOWN).await, UNAUTHORIZED);
    assert_eq!(status(&b, "/me", SECRET).await, OK);
    assert_eq!(store.lookups(), 2, "B's answers came from L2");
    assert_eq!(cb.stats().l2_hits, 2);
    assert!(l1_holds(cb, UNKNOWN).await && l1_holds(cb, SECRET).await);

    let start = Instant::now();
    while [UNKNOWN, SECRET]
        .iter()
        .any(|k| server.cli(&["pttl", &redis_key(k)]).trim() != "-2")
    {
        assert!(start.elapsed() < Duration::from_secs(5), "Redis kept them");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A little slack for the clocks; L1's deadline was set no later than Redis's.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !l1_holds(cb, UNKNOWN).await,
        "B's L1 outlived the negative entry"
    );
    assert!(
        !l1_holds(cb, SECRET).await,
        "B's L1 outlived the PEXPIREd entry"
    );
    assert_eq!(status(&b, "/me", SECRET).await, OK);
    assert_eq!(store.lookups(), 3);
}

/// `l1_ttl` bounds an L1 entry even when L2 keeps it longer: B goes back to
/// L2, not to the lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_ttl_bounds_l1_entries() {
    let server = RedisServer::start();
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let (_, a) = instance(builder(&server.url(), "l1ttl:"), &store).await;
    let (b_auth, b) = instance(
        builder(&server.url(), "l1ttl:").l1_ttl(Duration::from_millis(1_000)),
        &store,
    )
    .await;
    let cb = b_auth.cache();
    assert_eq!(status(&a, "/me", SECRET).await, OK);
    assert_eq!(status(&b, "/me", SECRET).await, OK);
    assert_eq!(status(&b, "/me", SECRET).await, OK);
    assert_eq!(cb.stats().l2_hits, 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(!l1_holds(cb, SECRET).await, "B's L1 outlived l1_ttl");
    assert_eq!(status(&b, "/me", SECRET).await, OK);
    assert_eq!(cb.stats().l2_hits, 2);
    assert_eq!(store.lookups(), 1);
}

/// Caches three owned keys through a layer over `cache`, then drops acme's:
/// acme's keys go back to the lookup, globex's stays cached.
async fn owner_invalidation_alone<C>(cache: C) -> ApiKeyAuthLayer<C, impl Lookup<Client>>
where
    C: KeyCache<Principal = Client>,
{
    let store = KeyStore::new();
    store.create_owned("acme-1", ACME_1, "acme");
    store.create_owned("acme-2", ACME_2, "acme");
    store.create_owned("globex-1", GLOBEX, "globex");
    let auth = ApiKeyAuthLayer::new(cache, store.lookup());
    let app = app(auth.clone());
    for _ in 0..2 {
        for key in [ACME_1, ACME_2, GLOBEX] {
            assert_eq!(status(&app, "/me", key).await, OK);
        }
    }
    assert_eq!(store.lookups(), 3);
    store.revoke_owner("acme");
    auth.invalidate_owner("acme").await.unwrap();
    let cached = |k: &'static str| {
        let read = auth.cache().get(&KeyHash::of(k));
        async move { read.await.unwrap().is_hit() }
    };
    assert!(!cached(ACME_1).await && !cached(ACME_2).await);
    assert!(cached(GLOBEX).await);
    assert_eq!(status(&app, "/me", GLOBEX).await, OK);
    assert_eq!(store.lookups(), 3, "globex's key stayed cached");
    assert_eq!(status(&app, "/me", ACME_1).await, UNAUTHORIZED);
    assert_eq!(status(&app, "/me", ACME_2).await, UNAUTHORIZED);
    assert_eq!(store.lookups(), 5);
    auth
}

#[tokio::test]
async fn memory_cache_invalidates_by_owner() {
    owner_invalidation_alone(MemoryCache::new()).await;
    owner_invalidation_race_is_closed(MemoryCache::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_invalidates_by_owner() {
    let server = RedisServer::start();
    let cache = RedisCache::builder(server.url())
        .prefix("alone:")
        .pool_size(2)
        .build()
        .await
        .unwrap();
    let auth = owner_invalidation_alone(cache).await;
    let globex = auth.cache().redis_key(&KeyHash::of(GLOBEX));
    assert!(server.cli(&["get", &globex]).contains("\"valid\""));
    // The owners' sets expire: they can't outlive the entries they list by
    // more than an entry's TTL, whatever owners come and go.
    let sets: Vec<(String, String)> = dump(server.port)
        .into_iter()
        .filter(|(k, _)| k.contains("{o:"))
        .collect();
    assert!(!sets.is_empty(), "no owner sets in Redis");
    for (set, members) in &sets {
        let pttl: i64 = server.cli(&["pttl", set]).trim().parse().unwrap();
        assert!(pttl > 0, "{set} ({members}) has PTTL {pttl}");
        assert!(!set.contains("acme") && !set.contains("globex"), "{set}");
    }
    // acme's keys were looked up again: negative entries now, not the old
    // valid ones.
    for key in [ACME_1, ACME_2] {
        let redis_key = auth.cache().redis_key(&KeyHash::of(key));
        let value = server.cli(&["get", &redis_key]);
        assert!(!value.contains("\"valid\""), "{redis_key} = {value}");
    }
    let race = RedisCache::builder(server.url())
        .prefix("race:")
        .build()
        .await
        .unwrap();
    owner_invalidation_race_is_closed(race).await;
}

/// A cache-bypass route's answer replaces the cached verdict in both tiers,
/// as it does with `MemoryCache` or `RedisCache` alone: a revocation seen
/// there is neither undone when the L1 entry expires nor hidden from another
/// instance that reads Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bypass_route_refreshes_redis_as_well_as_l1() {
    let server = RedisServer::start();
    let store = KeyStore::new();
    let id = store.create("alice", SECRET, None);
    let prefix = "bypass:";
    let a_auth = ApiKeyAuthLayer::new(
        tiered(builder(&server.url(), prefix).l1_ttl(Duration::from_millis(200))).await,
        store.lookup(),
    )
    .bypass_cache("/admin/keys");
    let a = app(a_auth.clone());
    let redis_key = a_auth.cache().l2().redis_key(&KeyHash::of(SECRET));
    assert_eq!(status(&a, "/me", SECRET).await, OK);
    assert_eq!(status(&a, "/me", SECRET).await, OK);
    assert_eq!(store.lookups(), 1);

    // Revoked in the table, not invalidated: the bypass route sees it.
    store.revoke(id);
    assert_eq!(status(&a, "/admin/keys", SECRET).await, UNAUTHORIZED);
    assert_eq!(status(&a, "/me", SECRET).await, UNAUTHORIZED);
    let in_redis = server.cli(&["get", &redis_key]);
    let (_, b) = instance(builder(&server.url(), prefix), &store).await;
    let on_b = status(&b, "/me", SECRET).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let on_a_later = status(&a, "/me", SECRET).await;
    assert!(
        !in_redis.contains("\"valid\"") && on_b == UNAUTHORIZED && on_a_later == UNAUTHORIZED,
        "the bypass answer reached L1 only: Redis holds {in_redis:?}, another instance \
         answers {on_b}, A answers {on_a_later} once its L1 entry has expired"
    );
}

/// An owner's set lists only live keys: a listing lapses a moment after its
/// entry and is pruned by the next add, and the set's own TTL never runs
/// past its longest listing. Keys that come and go (rotation, CI keys)
/// don't pile up in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_sets_hold_only_live_keys() {
    let server = RedisServer::start();
    let store = KeyStore::new();
    store.create_owned("acme-1", ACME_1, "acme");
    store.create_owned("acme-2", ACME_2, "acme");
    let cache: RedisCache<Client> = RedisCache::builder(server.url())
        .prefix("live:")
        .build()
        .await
        .unwrap();
    let auth = ApiKeyAuthLayer::new(cache, store.lookup()).positive_ttl(Duration::from_millis(100));
    let app = app(auth.clone());
    let sets = || -> Vec<String> {
        dump(server.port)
            .into_iter()
            .filter(|(k, _)| k.contains("{o:"))
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(status(&app, "/me", ACME_1).await, OK);
    let set = sets().pop().expect("acme's set");
    let members = |set: &str| server.cli(&["zrange", set, "0", "-1"]);
    assert!(members(&set).contains(&KeyHash::of(ACME_1).to_hex()));
    let pttl: i64 = server.cli(&["pttl", &set]).trim().parse().unwrap();
    assert!(
        pttl > 0 && pttl <= 1_100,
        "the set lives as long as its listing: {pttl} ms"
    );
    // Past the first listing's lapse (the entry's 100 ms plus a second),
    // the next add prunes it.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(status(&app, "/me", ACME_2).await, OK);
    let now = members(&set);
    assert!(now.contains(&KeyHash::of(ACME_2).to_hex()), "{now}");
    assert!(
        !now.contains(&KeyHash::of(ACME_1).to_hex()),
        "a lapsed listing stayed: {now}"
    );
    assert_eq!(server.cli(&["zcard", &set]).trim(), "1");
}

/// A subscriber connection that stops answering without closing (here: the
/// server pauses every client) is noticed by its heartbeat: the instance
/// stops trusting its L1 beyond the disconnected bound, reconnects, and
/// empties L1 once it has subscribed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_subscriber_connection_is_noticed_and_replaced() {
    let server = RedisServer::start();
    let store = KeyStore::new();
    store.create("alice", SECRET, None);
    let (auth, app) = instance(builder(&server.url(), "hb:"), &store).await;
    let cache = auth.cache().clone();
    assert_eq!(status(&app, "/me", SECRET).await, OK);
    assert!(l1_holds(&cache, SECRET).await);
    let flushes = cache.stats().l1_flushes;
    server.cli(&["client", "pause", "2500", "all"]);
    wait_until("the heartbeat notices", RECONNECT_DEADLINE, || {
        !cache.is_subscribed()
    })
    .await;
    wait_until("the subscriber is back", RECONNECT_DEADLINE, || {
        cache.is_subscribed()
    })
    .await;
    assert!(cache.stats().l1_flushes > flushes, "{:?}", cache.stats());
    assert!(
        !l1_holds(&cache, SECRET).await,
        "L1 emptied after resubscribing"
    );
    assert_eq!(status(&app, "/me", SECRET).await, OK);
}

/// `AnyCache` says so when it is handed a token of another backend (from
/// another `AnyCache`), rather than storing nothing in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_cache_refuses_a_token_of_another_backend_loudly() {
    use tower_api_key::cache::{AnyCache, CacheRead, CacheSettings, Ttl, Verdict};
    let server = RedisServer::start();
    let memory = AnyCache::<Client>::from_settings(CacheSettings::default()).await;
    let mut settings = CacheSettings::default();
    settings.backend = "redis".to_owned();
    settings.redis_url = Some(server.url());
    let redis = AnyCache::<Client>::from_settings_strict(settings)
        .await
        .expect("a Redis AnyCache");
    let hash = KeyHash::of(SECRET);
    let CacheRead::Miss { token, .. } = memory.get(&hash).await.expect("memory get") else {
        panic!("an empty cache hit");
    };
    let put = redis
        .put(
            hash,
            token,
            Verdict::Invalid,
            Ttl::fresh(Duration::from_secs(60)),
        )
        .await;
    let error = put.expect_err("a memory token filled Redis");
    assert!(error.to_string().contains("memory token"), "{error}");
    assert!(!redis.get(&hash).await.expect("redis get").is_hit());
}
