//! What a batch holds at once is bounded by a constant, not by the keys in
//! use: a usage flush of 100,000 pending keys, met with the other instances'
//! in Redis and recorded, measured by a counting allocator (this test
//! binary's global allocator). Before the fix every claim of the batch was
//! made before the first was sent (~8.8 KB each: ~880 MB for 100,000 keys).
#![cfg(all(feature = "usage", feature = "redis"))]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use common::redis::RedisServer;
use common::Client;
use futures_util::FutureExt;
use http::{HeaderValue, Request};
use tower::{service_fn, Layer, Service};
use tower_api_key::cache::MemoryCache;
use tower_api_key::usage::{KeyUse, RedisUsage, UsageTracker, BATCH_KEYS};
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, BoxError, KeyHash};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is `System`'s, with the same layout; the counters are
// only read.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEYS: usize = 100_000;

#[tokio::test(flavor = "current_thread")]
async fn a_usage_flush_of_100_000_keys_holds_a_bounded_amount_at_once() {
    let server = RedisServer::start();
    let redis = RedisUsage::connect(server.url(), "mem:")
        .await
        .expect("redis");
    let recorded_keys = Arc::new(AtomicU64::new(0));
    let recorded_uses = Arc::new(AtomicU64::new(0));
    let largest = Arc::new(AtomicUsize::new(0));
    let (keys_seen, uses_seen, largest_seen) = (
        recorded_keys.clone(),
        recorded_uses.clone(),
        largest.clone(),
    );
    let usage = UsageTracker::builder(move |batch: Vec<KeyUse<Client>>| {
        keys_seen.fetch_add(batch.len() as u64, Ordering::Relaxed);
        uses_seen.fetch_add(batch.iter().map(|u| u.uses).sum(), Ordering::Relaxed);
        largest_seen.fetch_max(batch.len(), Ordering::Relaxed);
        async { Ok::<(), BoxError>(()) }
    })
    .max_pending(2 * KEYS)
    .batches_on_timer(false)
    .shared_in(redis)
    .build();
    // Every key valid, answered at once; the layer notes each key's use.
    let lookup = lookup_fn(|hash: KeyHash| async move {
        Ok::<_, Infallible>(Some(Client {
            id: i64::from(hash.as_bytes()[0]),
            name: String::new(),
            expires_at: None,
            owner: None,
            scopes: Vec::new(),
            networks: None,
        }))
    });
    let auth = ApiKeyAuthLayer::new(
        MemoryCache::builder().max_capacity(2 * KEYS as u64).build(),
        lookup,
    )
    .usage(usage.clone());
    let mut svc = auth.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(bytes::Bytes::new()))
    }));
    for i in 0..KEYS {
        let mut req = Request::new(());
        let value = HeaderValue::from_str(&format!("Bearer sk_memory_{i}")).unwrap();
        req.headers_mut().insert("authorization", value);
        let res = svc.call(req).now_or_never().expect("in process").unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(usage.stats().pending, KEYS as u64);

    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    usage.flush().await.expect("recorded");
    let peak = PEAK.load(Ordering::Relaxed) - before;

    assert_eq!(recorded_keys.load(Ordering::Relaxed), KEYS as u64);
    assert_eq!(recorded_uses.load(Ordering::Relaxed), KEYS as u64);
    assert_eq!(largest.load(Ordering::Relaxed), BATCH_KEYS);
    assert_eq!(usage.stats().pending, 0);
    eprintln!(
        "usage flush of {KEYS} keys: peak {:.1} MB above the pending set",
        peak as f64 / 1e6
    );
    // A batch of BATCH_KEYS records, its claims 64 at a time, the shards'
    // fresh maps: a few megabytes, whatever the keys in use.
    assert!(peak < 16_000_000, "peak {peak} bytes");
}

/// The heap a live cached key costs: a `MemoryCache` filled with 20,000
/// keys of a principal shaped like the quickstart's (an id, a name, one
/// scope), through the layer, measured by the counting allocator.
#[tokio::test(flavor = "current_thread")]
async fn a_cached_key_costs_a_few_hundred_bytes() {
    const CACHED: usize = 20_000;
    let lookup = lookup_fn(|hash: KeyHash| async move {
        Ok::<_, Infallible>(Some(Client {
            id: i64::from(hash.as_bytes()[0]),
            name: "ci-bot".to_owned(),
            expires_at: None,
            owner: None,
            scopes: vec!["reports:read".to_owned()],
            networks: None,
        }))
    });
    let auth = ApiKeyAuthLayer::new(
        MemoryCache::builder()
            .max_capacity(2 * CACHED as u64)
            .build(),
        lookup,
    );
    let mut svc = auth.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(bytes::Bytes::new()))
    }));
    let request = |i: usize| {
        let mut req = Request::new(());
        let value = HeaderValue::from_str(&format!("Bearer sk_cached_{i}")).unwrap();
        req.headers_mut().insert("authorization", value);
        req
    };
    // Warm whatever is made once (the cache's shards, the flights' tables).
    for i in 0..100 {
        svc.call(request(i))
            .now_or_never()
            .expect("in process")
            .unwrap();
    }
    let before = CURRENT.load(Ordering::Relaxed);
    for i in 100..100 + CACHED {
        svc.call(request(i))
            .now_or_never()
            .expect("in process")
            .unwrap();
    }
    let per_key = (CURRENT.load(Ordering::Relaxed) - before) / CACHED;
    eprintln!("a cached key with the quickstart's principal: {per_key} bytes of heap");
    assert_eq!(auth.stats().lookups, (100 + CACHED) as u64);
    assert!(per_key < 1_024, "{per_key} bytes a key");
}
