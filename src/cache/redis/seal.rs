//! Sealed values: with a server-side secret, every entry the cache writes
//! carries a MAC over the Redis key it is stored under and its contents, so
//! that whoever can write to Redis can't mint a verdict (a made-up value,
//! or a valid one copied under another key's name).
//!
//! A sealed value is `s1:<32 hex digits>:<envelope>`: HMAC-SHA256, keyed by
//! a key derived from the secret, over the key's name, a zero byte and the
//! envelope, truncated to 128 bits and checked in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &[u8] = b"s1:";
const TAG_HEX: usize = 32;

/// The keyed MAC of one cache's values.
#[derive(Clone)]
pub(crate) struct Seal {
    mac: Hmac<Sha256>,
}

impl Seal {
    pub(crate) fn new(secret: &[u8]) -> Self {
        let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        derive.update(b"tower-api-key Redis value seal v1");
        let key = derive.finalize().into_bytes();
        Self {
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&key)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length")),
        }
    }

    fn mac(&self, name: &str, envelope: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(envelope);
        mac
    }

    /// `envelope`, sealed for the key `name`.
    pub(crate) fn seal(&self, name: &str, envelope: &str) -> String {
        let tag = self.mac(name, envelope.as_bytes()).finalize().into_bytes();
        let mut sealed = String::with_capacity(PREFIX.len() + TAG_HEX + 1 + envelope.len());
        sealed.push_str("s1:");
        for byte in &tag[..TAG_HEX / 2] {
            sealed.push_str(&format!("{byte:02x}"));
        }
        sealed.push(':');
        sealed.push_str(envelope);
        sealed
    }

    /// The envelope inside `raw`, read under the key `name`, if its MAC
    /// holds.
    pub(crate) fn open<'a>(&self, name: &str, raw: &'a [u8]) -> Result<&'a [u8], &'static str> {
        let (tag, envelope) = split(raw).ok_or("a value without the cache's MAC")?;
        let tag = decode_hex(tag).ok_or("a malformed MAC")?;
        self.mac(name, envelope)
            .verify_truncated_left(&tag)
            .map(|()| envelope)
            .map_err(|_| "a value whose MAC fails (written without the secret, or for another key)")
    }
}

/// A sealed value's tag and envelope, or what a cache without a secret
/// reads of it: the envelope (it can't check the tag).
pub(crate) fn unsealed(raw: &[u8]) -> &[u8] {
    split(raw).map_or(raw, |(_, envelope)| envelope)
}

fn split(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = raw.strip_prefix(PREFIX)?;
    let (tag, rest) = (rest.get(..TAG_HEX)?, rest.get(TAG_HEX..)?);
    Some((tag, rest.strip_prefix(b":")?))
}

/// Lower-case hex only, as [`Seal::seal`] writes it: one spelling per tag,
/// so the seal accepts exactly the bytes it wrote.
fn decode_hex(hex: &[u8]) -> Option<[u8; TAG_HEX / 2]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; TAG_HEX / 2];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_under_its_key_and_secret_only() {
        let seal = Seal::new(b"secret");
        let sealed = seal.seal("apikey:{aa}", r#"{"v":1,"kind":"invalid"}"#);
        assert!(sealed.starts_with("s1:") && sealed.len() == 3 + 32 + 1 + 24);
        assert_eq!(
            seal.open("apikey:{aa}", sealed.as_bytes()),
            Ok(&br#"{"v":1,"kind":"invalid"}"#[..])
        );
        assert!(
            seal.open("apikey:{bb}", sealed.as_bytes()).is_err(),
            "copied to another key"
        );
        assert!(Seal::new(b"other")
            .open("apikey:{aa}", sealed.as_bytes())
            .is_err());
        let tampered = sealed.replace("invalid", "valid!!");
        assert!(seal.open("apikey:{aa}", tampered.as_bytes()).is_err());
        for bad in ["", r#"{"v":1,"kind":"invalid"}"#, "s1:zz", "s1:0123:x"] {
            assert!(seal.open("apikey:{aa}", bad.as_bytes()).is_err(), "{bad}");
        }
        // Found by the `redis_value` fuzz target: an upper-case tag is the
        // same MAC, but not the bytes the seal wrote.
        let upper = format!("s1:{}{}", sealed[3..35].to_uppercase(), &sealed[35..]);
        assert_ne!(upper, sealed);
        assert!(seal.open("apikey:{aa}", upper.as_bytes()).is_err());
        assert_eq!(unsealed(sealed.as_bytes()), br#"{"v":1,"kind":"invalid"}"#);
        assert_eq!(unsealed(b"{}"), b"{}");
    }
}
