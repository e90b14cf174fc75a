//! Arbitrary bytes as a value read from Redis: the envelope decoder (and what
//! an entry is at an arbitrary instant) never panics, a decoded principal
//! encodes and decodes back to itself, and the seal opens only what it
//! sealed: bytes it accepts are exactly what it writes for that envelope
//! under that key's name, and a sealed value with any one byte changed, read
//! under another name or with another secret, is refused.
//!
//! Input: bytes 0..8 the instant (Unix ms), 8..16 what is left of the
//! entry's `PX`, 16 which byte of a sealed value to change, the rest the
//! value (see the seeds in `corpus/redis_value`).

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use tower_api_key::cache::{Ttl, Verdict};
use tower_api_key::fuzzing::{self, Freshness, Seal};

/// A principal as an application stores one.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Client {
    id: u64,
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// The key name every seed is sealed under.
const NAME: &str = "apikey:{9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}";

fn seal() -> &'static Seal {
    static SEAL: OnceLock<Seal> = OnceLock::new();
    SEAL.get_or_init(|| Seal::new(b"fuzz value secret"))
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    let bytes = data.get(at..).unwrap_or_default();
    let n = bytes.len().min(8);
    word[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(word)
}

fuzz_target!(|data: &[u8]| {
    let now = u64_at(data, 0);
    let left = u64_at(data, 8);
    let flip = data.get(16).copied().unwrap_or(0);
    let raw = data.get(17..).unwrap_or_default();

    // The decoder, as a cache without a secret reads a value.
    let _ = fuzzing::decode::<serde_json::Value>(Some(raw));
    let unsealed = fuzzing::unsealed(raw);
    if let Ok(Verdict::Valid(client)) = fuzzing::decode::<Client>(Some(raw)) {
        let again = fuzzing::encode(
            &Verdict::Valid(client.clone()),
            Ttl::fresh(Duration::from_secs(60)),
            now,
        )
        .expect("a decoded principal encodes");
        match fuzzing::decode::<Client>(Some(again.as_bytes())) {
            Ok(Verdict::Valid(back)) => assert_eq!(back, client),
            _ => panic!("{again:?} doesn't decode back"),
        }
    }

    // What the entry is at `now`, with `left` of its PX.
    let left = (left & 1 == 1).then(|| Duration::from_millis(left >> 1));
    if let Ok((verdict, freshness, ttl)) = fuzzing::decode_at::<Client>(unsealed, now, left) {
        if let Some(ttl) = ttl {
            assert_eq!(
                Some(ttl.fresh + ttl.stale),
                left,
                "the parts add up to what is left"
            );
            assert!(ttl.refresh <= ttl.fresh);
        }
        if matches!(verdict, Verdict::Invalid) {
            assert_eq!(
                freshness,
                Freshness::Fresh,
                "a negative entry has no instants"
            );
        }
    }

    // The seal accepts only what it wrote.
    let seal = seal();
    if let Ok(envelope) = seal.open(NAME, raw) {
        let envelope = std::str::from_utf8(envelope).expect("a sealed envelope is text");
        assert_eq!(
            seal.seal(NAME, envelope).as_bytes(),
            raw,
            "accepted bytes it didn't write"
        );
    }
    let Ok(envelope) = std::str::from_utf8(unsealed) else {
        return;
    };
    let sealed = seal.seal(NAME, envelope);
    assert_eq!(seal.open(NAME, sealed.as_bytes()), Ok(envelope.as_bytes()));
    assert!(
        seal.open("apikey:{00}", sealed.as_bytes()).is_err(),
        "another key's name"
    );
    assert!(Seal::new(b"another secret")
        .open(NAME, sealed.as_bytes())
        .is_err());
    let mut changed = sealed.into_bytes();
    let at = usize::from(flip) % changed.len();
    let bit = 1u8 << (u64_at(data, 0) % 8);
    changed[at] ^= bit;
    assert!(
        seal.open(NAME, &changed).is_err(),
        "byte {at} changed ({bit:#04x}) still opens: {:?}",
        String::from_utf8_lossy(&changed)
    );
});
