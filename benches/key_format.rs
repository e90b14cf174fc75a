//! Key formats: what a check costs, and what a flood of forged keys costs
//! with one and without.
//!
//! 1. `KeyFormat::check` on a valid key (public CRC-32; keyed, made under
//!    the newest of two secrets) and on a forged key (keyed: both secrets
//!    tried), against one SHA-256 of the same key, interleaved in the same
//!    rounds.
//! 2. Through the layer (`MemoryCache`, a lookup that answers at once, each
//!    request awaited on a current-thread runtime): a cached valid key,
//!    then a flood of distinct forged keys with a keyed format and without
//!    one. Prints ns per request, the ratio to the cached key, and what the
//!    flood cost: lookups and cache entries.
//!
//! ```sh
//! cargo bench --bench key_format
//! ```

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_api_key::cache::MemoryCache;
use tower_api_key::{lookup_fn, ApiKeyAuthLayer, KeyFormat, KeyHash, Principal};

mod common;
use common::traffic::request;

const ROUNDS: usize = 40;
const ITERS: u32 = 20_000;
/// Distinct forged keys: every flood request carries a new one.
const FLOOD: usize = 200_000;

#[derive(Clone)]
struct Client;
impl Principal for Client {}

static LOOKUPS: AtomicU64 = AtomicU64::new(0);

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let secrets = ["newest secret", "older secret"];
    let crc = KeyFormat::crc32("sk_live_").unwrap();
    let keyed = KeyFormat::keyed("sk_live_", secrets).unwrap();
    let guess = KeyFormat::keyed("sk_live_", ["a guess"]).unwrap();
    let crc_keys: Vec<String> = (0..1000)
        .map(|_| crc.generate().unwrap().into_parts().0)
        .collect();
    let keyed_keys: Vec<String> = (0..1000)
        .map(|_| keyed.generate().unwrap().into_parts().0)
        .collect();
    let forged: Vec<String> = (0..1000)
        .map(|_| guess.generate().unwrap().into_parts().0)
        .collect();

    let mut at = 0;
    let [sha, crc_ns, keyed_ns, forged_ns] = common::interleaved(ROUNDS, ITERS, |which| {
        at = (at + 1) % 1000;
        match which {
            0 => {
                black_box(KeyHash::of(black_box(&keyed_keys[at])));
            }
            1 => assert!(crc.check(black_box(&crc_keys[at])).passes()),
            2 => assert!(keyed.check(black_box(&keyed_keys[at])).passes()),
            _ => assert!(!keyed.check(black_box(&forged[at])).passes()),
        }
    });
    println!("KeyFormat::check, {ROUNDS} interleaved rounds of {ITERS}, medians:");
    println!("  SHA-256 of the key (baseline)   {sha:>7.1} ns");
    println!(
        "  crc32, valid                    {crc_ns:>7.1} ns  ({:.2}x SHA-256)",
        crc_ns / sha
    );
    println!(
        "  keyed, valid (newest secret)    {keyed_ns:>7.1} ns  ({:.2}x)",
        keyed_ns / sha
    );
    println!(
        "  keyed, forged (2 secrets tried) {forged_ns:>7.1} ns  ({:.2}x)",
        forged_ns / sha
    );

    flood(&keyed);
}

type Body = Full<Bytes>;

fn respond(req: Request<Body>) -> std::future::Ready<Result<Response<Body>, Infallible>> {
    black_box(&req);
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

fn flood(format: &KeyFormat) {
    let valid = format.generate().unwrap();
    let valid_hash = *valid.hash();
    let valid_header = header(valid.secret());
    let guess = KeyFormat::keyed("sk_live_", ["a guess"]).unwrap();
    let forged: Vec<HeaderValue> = (0..FLOOD)
        .map(|_| header(guess.generate().unwrap().secret()))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "\nthrough the layer, a cached valid key, then {FLOOD} distinct forged keys (ns per request, median of {ROUNDS} rounds):"
    );
    println!(
        "{:<20} {:>12} {:>14} {:>10} {:>10} {:>14}",
        "", "cached key", "forged flood", "ratio", "lookups", "cache entries"
    );
    for (name, with_format) in [("keyed KeyFormat", true), ("no KeyFormat", false)] {
        let cache = MemoryCache::builder().max_negative_capacity(10_000).build();
        let lookup = lookup_fn(move |hash: KeyHash| {
            LOOKUPS.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok::<_, Infallible>((hash == valid_hash).then_some(Client)))
        });
        let mut auth = ApiKeyAuthLayer::new(cache.clone(), lookup);
        if with_format {
            auth = auth.key_format(format.clone());
        }
        let mut svc = ServiceBuilder::new()
            .layer(auth)
            .service(service_fn(respond as fn(_) -> _));
        let mut call = |h: &HeaderValue| {
            rt.block_on(async { svc.ready().await.unwrap().call(request(h)).await.unwrap() })
                .status()
        };
        assert_eq!(call(&valid_header), 200);
        LOOKUPS.store(0, Ordering::Relaxed);
        let mut next = 0;
        let [hit, flood] = common::interleaved(ROUNDS, ITERS / 4, |which| {
            if which == 0 {
                assert_eq!(call(&valid_header), 200);
            } else {
                assert_eq!(call(&forged[next % FLOOD]), 401);
                next += 1;
            }
        });
        println!(
            "{name:<20} {hit:>10.0} ns {flood:>11.0} ns {:>9.2}x {:>10} {:>14}",
            flood / hit,
            LOOKUPS.load(Ordering::Relaxed),
            cache.entry_count(),
        );
    }
}

fn header(secret: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {secret}")).unwrap()
}
