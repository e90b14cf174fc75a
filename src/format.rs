//! [`KeyFormat`]: keys that carry a checksum, so that a mistyped, random or
//! forged key is refused before any cache read or lookup.
//!
//! A formatted key is `prefix`, a random body of base62 characters from the
//! operating system's CSPRNG, and a fixed-width base62 checksum of the
//! prefix and body:
//!
//! - **public** ([`KeyFormat::crc32`]): CRC-32, as GitHub's tokens carry. A
//!   secret scanner can verify it, and so can anyone: it stops typos and
//!   blind floods of random strings, not a flood made to look well formed.
//! - **keyed** ([`KeyFormat::keyed`]): the first 64 bits of an HMAC-SHA256
//!   of the prefix and body under a server-side secret. A forged key fails
//!   unless its maker has the secret, so a deliberate flood costs no lookup
//!   either. Give several secrets, newest first, to rotate: new keys are
//!   made with the first, and a key made with any of them passes.
//!
//! A key that fails is answered as an unknown key is (`401 invalid_token`,
//! so the check is no oracle) and counted apart
//! ([`Stats::format_rejected`](crate::Stats::format_rejected)).
//!
//! ```
//! use tower_api_key::{KeyFormat, KeyHash};
//!
//! let format = KeyFormat::keyed("sk_live_", [b"newest secret".as_slice()])
//!     .unwrap()
//!     .allow_legacy(true);
//! let key = format.generate().unwrap();
//! assert!(key.secret().starts_with("sk_live_"));
//! assert_eq!(key.hash(), &KeyHash::of(key.secret()));
//! assert!(format.check(key.secret()).passes());
//!
//! // One character changed: the checksum fails, though the prefix is right.
//! let mut typo = key.secret().to_owned().into_bytes();
//! typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
//! assert!(!format.check(&typo).passes());
//!
//! // Without the prefix it is a legacy key, allowed here by the switch.
//! assert!(format.check("an-older-key").passes());
//! ```

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{KeyHash, KeyHasher};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// How a key in this format is made and checked; see the [module
/// docs](self).
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
    /// Newest first; each prepared once (a check clones one).
    Keyed(Vec<Hmac<Sha256>>),
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
        let macs = secrets
            .into_iter()
            .map(|s| match s.as_ref() {
                [] => Err(FormatError::NoSecret),
                s => Ok(<Hmac<Sha256> as Mac>::new_from_slice(s)
                    .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if macs.is_empty() {
            return Err(FormatError::NoSecret);
        }
        Self::with(prefix, Checksum::Keyed(macs))
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
    /// pass over the key and a CRC-32, or an HMAC per secret tried.
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
        let Some(given) = parse_base62(given) else {
            return FormatCheck::Invalid;
        };
        let valid = match &self.checksum {
            Checksum::Crc32 => self.sum(signed, None) == given,
            Checksum::Keyed(macs) => macs.iter().any(|mac| self.sum(signed, Some(mac)) == given),
        };
        if valid {
            FormatCheck::Valid
        } else {
            FormatCheck::Invalid
        }
    }

    fn newest(&self) -> Option<&Hmac<Sha256>> {
        match &self.checksum {
            Checksum::Crc32 => None,
            Checksum::Keyed(macs) => macs.first(),
        }
    }

    /// The checksum of `signed` (prefix and body).
    fn sum(&self, signed: &[u8], mac: Option<&Hmac<Sha256>>) -> u64 {
        match mac {
            None => u64::from(crc32fast::hash(signed)),
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(signed);
                let tag = mac.finalize().into_bytes();
                let mut first = [0u8; 8];
                first.copy_from_slice(&tag[..8]);
                u64::from_be_bytes(first)
            }
        }
    }
}

impl fmt::Debug for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checksum = match &self.checksum {
            Checksum::Crc32 => "crc32".to_owned(),
            Checksum::Keyed(macs) => format!("keyed ({} secrets)", macs.len()),
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

/// `value` as exactly `width` base62 digits, most significant first.
fn push_base62(out: &mut String, mut value: u64, width: usize) {
    let mut digits = [0u8; 11];
    for d in digits[..width].iter_mut().rev() {
        *d = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out.extend(digits[..width].iter().map(|&d| char::from(d)));
}

/// The value of base62 digits; `None` past 64 bits or on another character.
fn parse_base62(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |value, &c| {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            b'a'..=b'z' => c - b'a' + 36,
            _ => return None,
        };
        value.checked_mul(62)?.checked_add(u64::from(digit))
    })
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
        // The public checksum of the same body does not pass the keyed one.
        let public = KeyFormat::crc32("sk_").unwrap().body_len(32).unwrap();
        let forged = public.generate().unwrap();
        assert_eq!(old.check(forged.secret()), FormatCheck::Invalid);
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
    fn base62_is_fixed_width_and_round_trips() {
        for value in [0, 1, 61, 62, u64::from(u32::MAX), u64::MAX] {
            let mut s = String::new();
            push_base62(&mut s, value, 11);
            assert_eq!(s.len(), 11);
            assert_eq!(parse_base62(s.as_bytes()), Some(value));
        }
        let mut s = String::new();
        push_base62(&mut s, u64::from(u32::MAX), 6);
        assert_eq!(parse_base62(s.as_bytes()), Some(u64::from(u32::MAX)));
        assert_eq!(parse_base62(b"zzzzzzzzzzzz"), None, "past 64 bits");
    }

    #[test]
    fn debug_shows_no_secret() {
        let format = KeyFormat::keyed("sk_", ["hunter2"]).unwrap();
        assert!(!format!("{format:?}").contains("hunter2"));
        let key = format.generate().unwrap();
        assert!(!format!("{key:?}").contains(key.secret()));
    }
}
