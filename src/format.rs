//! [`KeyFormat`]: keys with a checksum, checked before any cache read.

use std::fmt;

use std::hash::Hasher as _;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use siphasher::sip::SipHasher24;

use crate::{KeyHash, KeyHasher};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// [`KeyFormat`]: keys that carry a checksum, so that a mistyped, random or
/// forged key is refused before any cache read or lookup.
///
/// A formatted key is `prefix`, a random body of base62 characters from the
/// operating system's CSPRNG, and a fixed-width base62 checksum of the
/// prefix and body:
///
/// - **public** ([`KeyFormat::crc32`]): CRC-32, as GitHub's tokens carry. A
///   secret scanner can verify it, and so can anyone: it stops typos and
///   blind floods of random strings, not a flood made to look well formed.
/// - **keyed** ([`KeyFormat::keyed`]): a 64-bit SipHash-2-4 tag of the
///   prefix and body (SipHash is a keyed PRF made for short inputs: a MAC
///   at a fraction of HMAC's cost) under a 128-bit key derived from a
///   server-side secret (HMAC-SHA256, once). A forged key fails unless its
///   maker has the secret, so a deliberate flood costs no lookup either. Give several secrets, newest first, to rotate: new keys are
///   made with the first, and a key made with any of them passes.
///
/// A key that fails is answered as an unknown key is (`401 invalid_token`,
/// so the check is no oracle) and counted apart
/// ([`Stats::format_rejected`](crate::Stats::format_rejected)).
///
/// ```
/// use tower_api_key::{KeyFormat, KeyHash};
///
/// let format = KeyFormat::keyed("sk_live_", [b"newest secret".as_slice()])
///     .unwrap()
///     .allow_legacy(true);
/// let key = format.generate().unwrap();
/// assert!(key.secret().starts_with("sk_live_"));
/// assert_eq!(key.hash(), &KeyHash::of(key.secret()));
/// assert!(format.check(key.secret()).passes());
///
/// // One character changed: the checksum fails, though the prefix is right.
/// let mut typo = key.secret().to_owned().into_bytes();
/// typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
/// assert!(!format.check(&typo).passes());
///
/// // Without the prefix it is a legacy key, allowed here by the switch.
/// assert!(format.check("an-older-key").passes());
/// ```
#[derive(Clone)]
pub struct KeyFormat {
    prefix: Box<str>,
    body_len: usize,
    checksum: Checksum,
    legacy: bool,
}

#[derive(Clone)]
enum Checksum {
    Crc32,
    /// SipHash keys derived from the secrets, newest first.
    Keyed(Vec<[u8; 16]>),
}

impl Checksum {
    /// Base62 characters of the checksum: 6 hold 32 bits, 11 hold 64.
    fn width(&self) -> usize {
        match self {
            Checksum::Crc32 => 6,
            Checksum::Keyed(_) => 11,
        }
    }
}

/// Why a [`KeyFormat`] can't be built, or a key can't be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The prefix is empty, longer than 32 bytes, or has a character outside
    /// `A-Z a-z 0-9 _ - .`.
    #[error("a key prefix is 1 to 32 characters of A-Z a-z 0-9 _ - .")]
    Prefix,
    /// The body length is outside
    /// [`MIN_BODY_LEN`](KeyFormat::MIN_BODY_LEN)`..=`[`MAX_BODY_LEN`](KeyFormat::MAX_BODY_LEN).
    #[error("a key body is 22 to 128 characters")]
    BodyLen,
    /// A keyed format was given no secret, or an empty one.
    #[error("a keyed key format needs at least one non-empty secret")]
    NoSecret,
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(#[from] getrandom::Error),
}

/// What [`KeyFormat::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatCheck {
    /// The prefix, the shape and the checksum are right.
    Valid,
    /// Not in the format (no prefix): passes only while legacy keys are
    /// allowed.
    Legacy {
        /// Whether the format allows legacy keys.
        allowed: bool,
    },
    /// The prefix is there, but the shape or the checksum is wrong.
    Invalid,
}

impl FormatCheck {
    /// Whether the key may go on to the cache and the lookup.
    pub fn passes(self) -> bool {
        matches!(
            self,
            FormatCheck::Valid | FormatCheck::Legacy { allowed: true }
        )
    }
}

impl KeyFormat {
    /// Default body length: 32 base62 characters, about 190 random bits.
    pub const DEFAULT_BODY_LEN: usize = 32;

    /// The shortest body allowed: 22 characters, about 131 random bits.
    pub const MIN_BODY_LEN: usize = 22;

    /// The longest body allowed.
    pub const MAX_BODY_LEN: usize = 128;

    /// Keys `prefix` + body + CRC-32 (public: stops typos and blind floods).
    pub fn crc32(prefix: &str) -> Result<Self, FormatError> {
        Self::with(prefix, Checksum::Crc32)
    }

    /// Keys `prefix` + body + a keyed checksum under `secrets`, newest first
    /// (new keys use the first; a key made with any of them passes).
    pub fn keyed<S: AsRef<[u8]>>(
        prefix: &str,
        secrets: impl IntoIterator<Item = S>,
    ) -> Result<Self, FormatError> {
        let keys = secrets
            .into_iter()
            .map(|s| match s.as_ref() {
                [] => Err(FormatError::NoSecret),
                s => Ok(derive_key(s)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(FormatError::NoSecret);
        }
        Self::with(prefix, Checksum::Keyed(keys))
    }

    fn with(prefix: &str, checksum: Checksum) -> Result<Self, FormatError> {
        let ok = (1..=32).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            return Err(FormatError::Prefix);
        }
        Ok(Self {
            prefix: prefix.into(),
            body_len: Self::DEFAULT_BODY_LEN,
            checksum,
            legacy: false,
        })
    }

    /// The random body's length in characters (default
    /// [`DEFAULT_BODY_LEN`](Self::DEFAULT_BODY_LEN)). Keys made before a change still check only if
    /// the length is the same.
    pub fn body_len(mut self, len: usize) -> Result<Self, FormatError> {
        if !(Self::MIN_BODY_LEN..=Self::MAX_BODY_LEN).contains(&len) {
            return Err(FormatError::BodyLen);
        }
        self.body_len = len;
        Ok(self)
    }

    /// Whether keys without the prefix pass on to the cache and the lookup
    /// (default `false`): for a migration from unformatted keys. A key with
    /// the prefix and a wrong checksum is refused either way.
    pub fn allow_legacy(mut self, allow: bool) -> Self {
        self.legacy = allow;
        self
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A formatted key's whole length.
    pub fn key_len(&self) -> usize {
        self.prefix.len() + self.body_len + self.checksum.width()
    }

    /// A new key, and its [`KeyHash`] (plain SHA-256) for your key table.
    /// Show the secret once; store only the hash. With a peppered layer use
    /// [`generate_with`](Self::generate_with).
    pub fn generate(&self) -> Result<GeneratedKey, FormatError> {
        self.generate_with(&KeyHasher::sha256())
    }

    /// [`generate`](Self::generate), hashed by `hasher` (the layer's: see
    /// [`ApiKeyAuthLayer::hash_key`](crate::ApiKeyAuthLayer::hash_key)).
    pub fn generate_with(&self, hasher: &KeyHasher) -> Result<GeneratedKey, FormatError> {
        let mut secret = String::with_capacity(self.key_len());
        secret.push_str(&self.prefix);
        let mut filled = 0;
        let mut random = [0u8; 64];
        while filled < self.body_len {
            getrandom::fill(&mut random)?;
            // 248 = 4 × 62: taking the rest only below it keeps every
            // character equally likely.
            for b in random.iter().filter(|&&b| b < 248) {
                if filled == self.body_len {
                    break;
                }
                secret.push(char::from(BASE62[usize::from(b % 62)]));
                filled += 1;
            }
        }
        let sum = self.sum(secret.as_bytes(), self.newest());
        push_base62(&mut secret, sum, self.checksum.width());
        let hash = hasher.hash(&secret);
        Ok(GeneratedKey { secret, hash })
    }

    /// Whether `key` is in this format; see [`FormatCheck`]. Costs one
    /// pass over the key and a CRC-32, or a SipHash per secret tried.
    pub fn check(&self, key: impl AsRef<[u8]>) -> FormatCheck {
        let key = key.as_ref();
        let Some(rest) = key.strip_prefix(self.prefix.as_bytes()) else {
            return FormatCheck::Legacy {
                allowed: self.legacy,
            };
        };
        let width = self.checksum.width();
        if rest.len() != self.body_len + width || !rest.iter().all(u8::is_ascii_alphanumeric) {
            return FormatCheck::Invalid;
        }
        let (signed, given) = key.split_at(key.len() - width);
        // Compared as digits (encoding the sum is cheaper than parsing
        // them), in constant time: the time taken never says how much of a
        // tag was right. Secrets are tried newest first and the first match
        // ends it, so a key under the newest secret (the common case, on
        // every hit) costs one SipHash; timing may tell an older key from a
        // newer one, nothing about the tag.
        let matches = |sum: u64| {
            let digits = base62_digits(sum, width);
            let diff = digits[..width]
                .iter()
                .zip(given)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b));
            std::hint::black_box(diff) == 0
        };
        let valid = match &self.checksum {
            Checksum::Crc32 => matches(self.sum(signed, None)),
            Checksum::Keyed(keys) => keys.iter().any(|key| matches(self.sum(signed, Some(key)))),
        };
        if valid {
            FormatCheck::Valid
        } else {
            FormatCheck::Invalid
        }
    }

    fn newest(&self) -> Option<&[u8; 16]> {
        match &self.checksum {
            Checksum::Crc32 => None,
            Checksum::Keyed(keys) => keys.first(),
        }
    }

    /// The checksum of `signed` (prefix and body): CRC-32, or SipHash-2-4
    /// under `key`.
    fn sum(&self, signed: &[u8], key: Option<&[u8; 16]>) -> u64 {
        match key {
            None => u64::from(crc32fast::hash(signed)),
            Some(key) => {
                let mut sip = SipHasher24::new_with_key(key);
                sip.write(signed);
                sip.finish()
            }
        }
    }
}

impl fmt::Debug for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checksum = match &self.checksum {
            Checksum::Crc32 => "crc32".to_owned(),
            Checksum::Keyed(keys) => format!("keyed ({} secrets)", keys.len()),
        };
        f.debug_struct("KeyFormat")
            .field("prefix", &self.prefix)
            .field("body_len", &self.body_len)
            .field("checksum", &checksum)
            .field("allow_legacy", &self.legacy)
            .finish()
    }
}

/// A key from [`KeyFormat::generate`]: the secret to show once, and the hash
/// to store. Its `Debug` shows the hash only.
#[derive(Clone)]
pub struct GeneratedKey {
    secret: String,
    hash: KeyHash,
}

impl GeneratedKey {
    /// The secret, for the one response that shows it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The hash, for your key table.
    pub fn hash(&self) -> &KeyHash {
        &self.hash
    }

    /// The secret and the hash.
    pub fn into_parts(self) -> (String, KeyHash) {
        (self.secret, self.hash)
    }
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// The 128-bit SipHash key of one secret: HMAC-SHA256 of a fixed label
/// under the secret, truncated (so any secret, of any length, gives a
/// uniform key).
fn derive_key(secret: &[u8]) -> [u8; 16] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"tower-api-key KeyFormat checksum v1");
    let tag = mac.finalize().into_bytes();
    let mut key = [0u8; 16];
    key.copy_from_slice(&tag[..16]);
    key
}

/// The last `width` base62 digits of `value`, most significant first, in
/// the first `width` bytes.
fn base62_digits(mut value: u64, width: usize) -> [u8; 11] {
    let mut digits = [0u8; 11];
    for d in digits[..width].iter_mut().rev() {
        *d = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits
}

/// `value` as exactly `width` base62 digits.
fn push_base62(out: &mut String, value: u64, width: usize) {
    let digits = base62_digits(value, width);
    out.extend(digits[..width].iter().map(|&d| char::from(d)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flip(key: &str, at: usize) -> String {
        let mut bytes = key.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_generated_key_checks_and_any_one_change_fails() {
        for format in [
            KeyFormat::crc32("sk_live_").unwrap(),
            KeyFormat::keyed("sk_live_", ["s1"]).unwrap(),
        ] {
            let key = format.generate().unwrap();
            assert_eq!(key.secret().len(), format.key_len());
            assert_eq!(format.check(key.secret()), FormatCheck::Valid);
            for at in format.prefix().len()..key.secret().len() {
                assert_eq!(
                    format.check(flip(key.secret(), at)),
                    FormatCheck::Invalid,
                    "{format:?} at {at}"
                );
            }
            // Too short, too long, a character outside base62.
            let s = key.secret();
            assert_eq!(format.check(&s[..s.len() - 1]), FormatCheck::Invalid);
            assert_eq!(format.check(format!("{s}0")), FormatCheck::Invalid);
            assert_eq!(
                format.check(format!("{}_", &s[..s.len() - 1])),
                FormatCheck::Invalid
            );
        }
    }

    #[test]
    fn bodies_are_random_base62() {
        let format = KeyFormat::crc32("k_").unwrap().body_len(64).unwrap();
        let a = format.generate().unwrap();
        let b = format.generate().unwrap();
        assert_ne!(a.secret(), b.secret());
        let body = &a.secret()[2..2 + 64];
        assert!(body.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn a_keyed_checksum_needs_the_secret_and_rotates() {
        let old = KeyFormat::keyed("sk_", ["old"]).unwrap();
        let key = old.generate().unwrap();
        let other = KeyFormat::keyed("sk_", ["someone else's"]).unwrap();
        assert_eq!(other.check(key.secret()), FormatCheck::Invalid);
        let rotated = KeyFormat::keyed("sk_", ["new", "old"]).unwrap();
        assert_eq!(rotated.check(key.secret()), FormatCheck::Valid);
        let fresh = rotated.generate().unwrap();
        assert_eq!(
            old.check(fresh.secret()),
            FormatCheck::Invalid,
            "made with the newest"
        );
        assert_eq!(rotated.check(fresh.secret()), FormatCheck::Valid);
    }

    #[test]
    fn legacy_keys_pass_only_when_allowed() {
        let format = KeyFormat::crc32("sk_").unwrap();
        assert_eq!(
            format.check("plain"),
            FormatCheck::Legacy { allowed: false }
        );
        assert!(!format.check("plain").passes());
        let format = format.allow_legacy(true);
        assert!(format.check("plain").passes());
        assert!(!format.check("sk_plain").passes(), "the prefix, a bad body");
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(KeyFormat::crc32(""), Err(FormatError::Prefix)));
        assert!(matches!(
            KeyFormat::crc32("sk live"),
            Err(FormatError::Prefix)
        ));
        assert!(matches!(
            KeyFormat::crc32("sk_").unwrap().body_len(8),
            Err(FormatError::BodyLen)
        ));
        assert!(matches!(
            KeyFormat::keyed("sk_", Vec::<&str>::new()),
            Err(FormatError::NoSecret)
        ));
        assert!(matches!(
            KeyFormat::keyed("sk_", [""]),
            Err(FormatError::NoSecret)
        ));
    }

    #[test]
    fn base62_is_fixed_width_and_exact() {
        let parse = |s: &str| {
            s.bytes().fold(0u128, |v, c| {
                v * 62 + BASE62.iter().position(|&d| d == c).unwrap() as u128
            })
        };
        for value in [0, 1, 61, 62, u64::from(u32::MAX), u64::MAX] {
            let mut s = String::new();
            push_base62(&mut s, value, 11);
            assert_eq!(s.len(), 11);
            assert_eq!(parse(&s), u128::from(value));
        }
        // Six digits hold any CRC-32.
        let mut s = String::new();
        push_base62(&mut s, u64::from(u32::MAX), 6);
        assert_eq!(parse(&s), u128::from(u32::MAX));
        assert_eq!(base62_digits(0, 6)[..6], *b"000000");
    }

    #[test]
    fn debug_shows_no_secret() {
        let format = KeyFormat::keyed("sk_", ["hunter2"]).unwrap();
        assert!(!format!("{format:?}").contains("hunter2"));
        let key = format.generate().unwrap();
        assert!(!format!("{key:?}").contains(key.secret()));
    }
}
