//! Memory per cached valid key: the resident set of a process before and
//! after `MemoryCache` holds 1,000,000 valid keys, per key, beyond the
//! principal's own allocation; against the same keys in a plain
//! `std::collections::HashMap<KeyHash, (Arc<P>, Instant)>` (the floor's map).
//! Each is measured in a child process of its own, so neither inherits the
//! other's heap.
//!
//! ```sh
//! cargo bench --bench memory
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tower_api_key::cache::{KeyCache, MemoryCache, Ttl, Verdict};
use tower_api_key::{KeyHash, Principal};

const KEYS: usize = 1_000_000;

struct Client {
    #[allow(dead_code)]
    id: u64,
}
impl Principal for Client {}

/// What one principal costs on the heap: its `Arc`'s block (two counts and
/// the value), as the allocator rounds it.
const PRINCIPAL_BYTES: usize = 32;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn hash(i: usize) -> KeyHash {
    KeyHash::of(format!("sk_live_{i:08}"))
}

fn now<F: Future>(f: F) -> F::Output {
    f.now_or_never()
        .expect("an in-process cache answers at once")
}

/// Bytes per key of `MemoryCache` (in this process).
fn memory_cache() -> usize {
    let hashes: Vec<KeyHash> = (0..KEYS).map(hash).collect();
    let before = resident_bytes();
    let cache = MemoryCache::<Client>::builder()
        .max_capacity(KEYS as u64)
        .build();
    for (i, h) in hashes.iter().enumerate() {
        let token = now(cache.refresh_token(h)).expect("token");
        let verdict = Verdict::Valid(Arc::new(Client { id: i as u64 }));
        now(cache.put(*h, token, verdict, Ttl::fresh(Duration::from_secs(3600)))).expect("put");
    }
    let after = resident_bytes();
    assert!(cache.positive_count() as usize >= KEYS * 99 / 100);
    std::hint::black_box(&cache);
    (after - before) / KEYS
}

/// Bytes per key of the plain map.
fn hash_map() -> usize {
    let hashes: Vec<KeyHash> = (0..KEYS).map(hash).collect();
    let before = resident_bytes();
    let deadline = Instant::now() + Duration::from_secs(3600);
    let map: HashMap<KeyHash, (Arc<Client>, Instant)> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| (*h, (Arc::new(Client { id: i as u64 }), deadline)))
        .collect();
    let after = resident_bytes();
    std::hint::black_box(&map);
    (after - before) / KEYS
}

fn child(which: &str) -> usize {
    let out = Command::new(std::env::current_exe().expect("this bench"))
        .env("MEMORY_BENCH_ONE", which)
        .output()
        .expect("a child bench process");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("bytes per key from the child")
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    match std::env::var("MEMORY_BENCH_ONE").as_deref() {
        Ok("memory") => return println!("{}", memory_cache()),
        Ok("hashmap") => return println!("{}", hash_map()),
        _ => {}
    }
    let cache = child("memory");
    let map = child("hashmap");
    let beyond = |total: usize| total.saturating_sub(PRINCIPAL_BYTES);
    println!("{KEYS} cached valid keys, resident bytes per key (principal's {PRINCIPAL_BYTES}-byte block included / beyond it):");
    println!(
        "MemoryCache:                {:5} / {:5}  (target beyond <= 200)",
        cache,
        beyond(cache)
    );
    println!(
        "HashMap<KeyHash, (Arc, Instant)>: {:5} / {:5}",
        map,
        beyond(map)
    );
    println!(
        "ratio MemoryCache / HashMap, beyond the principal: {:.2}",
        beyond(cache) as f64 / beyond(map).max(1) as f64
    );
}
