//! [`KeyHash`], the only form of an API key past the edge, and the
//! [`KeyHasher`] that makes it.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// SHA-256 digest of a presented API key (or HMAC-SHA256 with a server-side
/// pepper, see [`KeyHasher::with_pepper`]).
///
/// Past the header parser, the key exists only as this digest: cache keys,
/// lookups, logs and metrics all see the hash, never the secret. Store the hash
/// in your key table and look keys up by it.
///
/// `Debug` and `Display` print a short prefix of the hex digest only
/// (`KeyHash(3f2a9c1e…)`), enough to correlate log lines, not enough to be a
/// lookup handle. [`to_hex`](Self::to_hex) gives the whole digest, for your
/// own storage.
///
/// # Example
///
/// ```
/// use tower_api_key::KeyHash;
///
/// let hash = KeyHash::of("sk_live_abc123");
/// assert_eq!(hash, KeyHash::of("sk_live_abc123"));
/// assert_ne!(hash, KeyHash::of("sk_live_abc124"));
/// assert_eq!(hash.to_hex().len(), 64);
/// assert!(!format!("{hash:?}").contains(&hash.to_hex()));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a secret with plain SHA-256 (no pepper).
    ///
    /// Use [`KeyHasher::hash`] (or [`ApiKeyAuthLayer::hash_key`]) when the layer
    /// is configured with a pepper, so both sides agree.
    ///
    /// [`ApiKeyAuthLayer::hash_key`]: crate::ApiKeyAuthLayer::hash_key
    pub fn of(secret: impl AsRef<[u8]>) -> Self {
        Self(Sha256::digest(secret.as_ref()).into())
    }

    /// Wraps digest bytes read back from storage.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the 64-character hex form written by [`to_hex`](Self::to_hex).
    ///
    /// ```
    /// use tower_api_key::KeyHash;
    /// let hash = KeyHash::of("k");
    /// assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
    /// assert_eq!(KeyHash::from_hex("zz"), None);
    /// ```
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(Self(out))
    }

    /// The 32 digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The whole digest as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        self.push_hex(&mut s);
        s
    }

    /// Appends the 64 hex characters to `out`.
    pub(crate) fn push_hex(&self, out: &mut String) {
        let mut hex = [0u8; 64];
        for (pair, b) in hex.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[(b >> 4) as usize];
            pair[1] = HEX[(b & 0xf) as usize];
        }
        // Always ASCII: the check can't fail.
        out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    }

    /// A short, non-identifying prefix for logs: the first 4 bytes in hex.
    pub fn short(&self) -> ShortHash {
        ShortHash(*self)
    }

    /// The first 8 bytes as an integer: striping and sharding inside the crate.
    pub(crate) fn prefix_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.short())
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.short(), f)
    }
}

/// Hashes a [`KeyHash`] for a hash table: the digest is uniform already,
/// so its first eight bytes, mixed with a seed drawn at random for each
/// table, are as good a hash as any and cost a multiply. (The seed keeps a
/// client from aiming keys at one bucket: it can't see where they land.)
#[derive(Clone)]
#[cfg_attr(not(feature = "memory"), allow(dead_code))]
pub(crate) struct DigestHasher {
    seed: u64,
}

impl DigestHasher {
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) fn new() -> Self {
        use std::hash::BuildHasher;
        Self {
            seed: std::collections::hash_map::RandomState::new().hash_one(0u8),
        }
    }
}

impl std::hash::BuildHasher for DigestHasher {
    type Hasher = DigestState;

    fn build_hasher(&self) -> DigestState {
        DigestState {
            seed: self.seed,
            hash: 0,
        }
    }
}

/// The state of a [`DigestHasher`].
pub(crate) struct DigestState {
    seed: u64,
    hash: u64,
}

impl std::hash::Hasher for DigestState {
    fn write(&mut self, bytes: &[u8]) {
        let mut prefix = [0u8; 8];
        let n = bytes.len().min(8);
        prefix[..n].copy_from_slice(&bytes[..n]);
        let x = u64::from_le_bytes(prefix) ^ self.seed ^ self.hash.rotate_left(17);
        // A folded multiply (as foldhash and wyhash mix): every input bit
        // reaches both halves, so the table's bucket bits and tag bits.
        let m = u128::from(x) * 0x9E37_79B9_7F4A_7C15_u128;
        self.hash = (m as u64) ^ ((m >> 64) as u64);
    }

    // The length prefix of the digest's array: the same for every key.
    fn write_usize(&mut self, _: usize) {}

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Display adapter for [`KeyHash::short`]: `3f2a9c1e…`.
#[derive(Clone, Copy)]
pub struct ShortHash(KeyHash);

impl fmt::Display for ShortHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 .0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl fmt::Debug for ShortHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Turns a presented secret into its [`KeyHash`]: plain SHA-256, or
/// HMAC-SHA256 keyed with a server-side pepper.
///
/// A pepper means a leaked key table (or a leaked cache) can't be checked
/// against guessed keys without also having the pepper, which lives only in the
/// servers' configuration.
///
/// ```
/// use tower_api_key::{KeyHash, KeyHasher};
///
/// let plain = KeyHasher::sha256();
/// assert_eq!(plain.hash("k"), KeyHash::of("k"));
///
/// let peppered = KeyHasher::with_pepper(b"server-side secret");
/// assert_ne!(peppered.hash("k"), KeyHash::of("k"));
/// assert_eq!(peppered.hash("k"), peppered.hash("k"));
/// ```
#[derive(Clone)]
pub struct KeyHasher {
    // The keyed state is prepared once; each hash clones it (no re-keying).
    hmac: Option<Hmac<Sha256>>,
}

impl KeyHasher {
    /// Plain SHA-256.
    pub fn sha256() -> Self {
        Self { hmac: None }
    }

    /// HMAC-SHA256 keyed with `pepper`.
    pub fn with_pepper(pepper: impl AsRef<[u8]>) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self { hmac: Some(mac) }
    }

    /// Whether a pepper is set.
    pub fn is_peppered(&self) -> bool {
        self.hmac.is_some()
    }

    /// Hashes one secret.
    pub fn hash(&self, secret: impl AsRef<[u8]>) -> KeyHash {
        match &self.hmac {
            None => KeyHash::of(secret),
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(secret.as_ref());
                KeyHash(mac.finalize().into_bytes().into())
            }
        }
    }
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::sha256()
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHasher")
            .field(
                "algorithm",
                &if self.is_peppered() {
                    "HMAC-SHA256 (peppered)"
                } else {
                    "SHA-256"
                },
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn digest_hasher_is_consistent_seeded_and_spreads_keys() {
        let (a, b) = (DigestHasher::new(), DigestHasher::new());
        let k = KeyHash::of("k");
        assert_eq!(a.hash_one(k), a.hash_one(KeyHash::of("k")));
        assert_ne!(a.hash_one(k), a.hash_one(KeyHash::of("l")));
        assert_ne!(a.hash_one(k), b.hash_one(k), "each table has its own seed");
        // 100,000 keys in 1,024 buckets by the low bits (a table's index):
        // none far from the mean of ~98.
        let mut buckets = vec![0u32; 1024];
        for i in 0..100_000 {
            buckets[(a.hash_one(KeyHash::of(i.to_string())) & 1023) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min(), buckets.iter().max());
        assert!(min > Some(&50) && max < Some(&150), "{min:?}..{max:?}");
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let h = KeyHasher::with_pepper(b"Jefe").hash("what do ya want for nothing?");
        assert_eq!(
            h.to_hex(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn debug_and_display_show_a_prefix_only() {
        let h = KeyHash::of("abc");
        assert_eq!(format!("{h:?}"), "KeyHash(ba7816bf…)");
        assert_eq!(h.to_string(), "ba7816bf…");
        assert_eq!(
            format!("{:?}", KeyHasher::with_pepper("p")),
            "KeyHasher { algorithm: \"HMAC-SHA256 (peppered)\" }"
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let h = KeyHash::of("x");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), None);
        assert_eq!(KeyHash::from_hex("ab"), None);
    }
}
