//! The value stored for a key: a small versioned JSON envelope,
//! `{"v":1,"kind":"valid","principal":{…}}` or `{"v":1,"kind":"invalid"}`.
//!
//! A valid entry kept past its fresh time (serve-stale) also carries its
//! fresh deadline, `"fresh_until"`, and one with a refresh point
//! (refresh-ahead) `"refresh_at"`, both in Unix milliseconds by the
//! writer's clock (instances' clocks differ by what NTP leaves, which moves
//! those two instants by as much; the entry's own end is Redis's `PX`).
//! Readers that predate them ignore them, and values without them are
//! fresh until they expire.
//!
//! Every entry also carries its end, `"until"` (Unix ms, the writer's
//! `now` + the whole [`Ttl`]), and is read as absent from then on, whatever
//! Redis's `PX` says: under a seal (`seal.rs`) that bounds a replay, a
//! value saved from Redis and written back later, by the value's own
//! lifetime.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheError, Ttl, Verdict};
use crate::redis_pool::millis;

const ENVELOPE_VERSION: u8 = 1;

#[derive(Serialize)]
struct EnvelopeOut<'a, P> {
    v: u8,
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a P>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fresh_until: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_at: Option<u64>,
    until: u64,
}

#[derive(Deserialize)]
struct EnvelopeIn<P> {
    v: u8,
    kind: Kind,
    principal: Option<P>,
    #[serde(default)]
    fresh_until: Option<u64>,
    #[serde(default)]
    refresh_at: Option<u64>,
    #[serde(default)]
    until: Option<u64>,
}

/// A decoded entry: its verdict, and the instants its value carries.
pub(crate) struct Stored<P> {
    verdict: Verdict<P>,
    fresh_until: Option<u64>,
    refresh_at: Option<u64>,
    until: Option<u64>,
}

/// What a stored entry is now.
pub(crate) enum Freshness<P> {
    Fresh(Verdict<P>),
    Aging(Arc<P>),
    Stale(Arc<P>),
    /// Past the end its value carries: read as absent.
    Gone,
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl<P> Stored<P> {
    /// What the entry is at `now` (Unix ms), and, given how long Redis
    /// keeps it (`left`), what is left of its [`Ttl`].
    pub(crate) fn at(self, now: u64, left: Option<Duration>) -> (Freshness<P>, Option<Ttl>) {
        let until = |at: u64| Duration::from_millis(at.saturating_sub(now));
        let remaining = left.map(|total| {
            let fresh = self.fresh_until.map_or(total, until).min(total);
            Ttl {
                fresh,
                refresh: self
                    .refresh_at
                    .map_or(Duration::ZERO, |at| fresh.saturating_sub(until(at))),
                stale: total - fresh,
            }
        });
        let freshness = match self.verdict {
            _ if self.until.is_some_and(|at| now >= at) => Freshness::Gone,
            Verdict::Valid(p) if self.fresh_until.is_some_and(|at| now >= at) => {
                Freshness::Stale(p)
            }
            Verdict::Valid(p) if self.refresh_at.is_some_and(|at| now >= at) => Freshness::Aging(p),
            verdict => Freshness::Fresh(verdict),
        };
        (freshness, remaining)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Valid,
    Invalid,
}

/// The envelope of `verdict`, stored at `now` (Unix ms) for `ttl`.
pub(crate) fn encode<P: Serialize>(
    verdict: &Verdict<P>,
    ttl: Ttl,
    now: u64,
) -> Result<String, CacheError> {
    let at = |d: Duration| now.saturating_add(millis(d));
    let envelope = match verdict {
        Verdict::Valid(p) => EnvelopeOut {
            v: ENVELOPE_VERSION,
            kind: Kind::Valid,
            principal: Some(&**p),
            fresh_until: (!ttl.stale.is_zero()).then(|| at(ttl.fresh)),
            refresh_at: (!ttl.refresh.is_zero()).then(|| at(ttl.fresh.saturating_sub(ttl.refresh))),
            until: at(ttl.total()),
        },
        Verdict::Invalid => EnvelopeOut {
            v: ENVELOPE_VERSION,
            kind: Kind::Invalid,
            principal: None,
            fresh_until: None,
            refresh_at: None,
            until: at(ttl.total()),
        },
    };
    serde_json::to_string(&envelope).map_err(CacheError::new)
}

/// What a `GET` of an entry found: its verdict, or a miss, with why when a
/// value was there but didn't decode (corrupt, or from another version).
pub(crate) fn decode<P: DeserializeOwned>(
    raw: Option<&[u8]>,
) -> Result<Stored<P>, Option<CacheError>> {
    let raw = raw.ok_or(None)?;
    decode_envelope(raw)
        .map_err(|why| Some(CacheError::new(format!("undecodable cached value: {why}"))))
}

fn decode_envelope<P: DeserializeOwned>(raw: &[u8]) -> Result<Stored<P>, String> {
    let envelope: EnvelopeIn<P> = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    if envelope.v != ENVELOPE_VERSION {
        return Err(format!(
            "envelope version {} (this build reads {ENVELOPE_VERSION})",
            envelope.v
        ));
    }
    let verdict = match (envelope.kind, envelope.principal) {
        (Kind::Valid, Some(p)) => Verdict::Valid(Arc::new(p)),
        (Kind::Invalid, None) => Verdict::Invalid,
        (Kind::Valid, None) => return Err("a valid entry without its principal".to_owned()),
        (Kind::Invalid, Some(_)) => return Err("an invalid entry with a principal".to_owned()),
    };
    let instants = envelope.fresh_until.is_some() || envelope.refresh_at.is_some();
    if instants && matches!(verdict, Verdict::Invalid) {
        return Err("an invalid entry with a fresh deadline".to_owned());
    }
    Ok(Stored {
        verdict,
        fresh_until: envelope.fresh_until,
        refresh_at: envelope.refresh_at,
        until: envelope.until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct P {
        id: u32,
    }

    fn verdict<P>(
        stored: Result<Stored<P>, Option<CacheError>>,
    ) -> Result<Verdict<P>, Option<CacheError>> {
        stored.map(|s| s.verdict)
    }

    const FRESH: Ttl = Ttl::fresh(Duration::from_secs(60));

    #[test]
    fn envelopes_round_trip_and_refuse_other_versions() {
        let valid = encode(&Verdict::Valid(Arc::new(P { id: 7 })), FRESH, 0).unwrap();
        assert_eq!(
            valid,
            r#"{"v":1,"kind":"valid","principal":{"id":7},"until":60000}"#
        );
        assert!(
            matches!(verdict(decode::<P>(Some(valid.as_bytes()))), Ok(Verdict::Valid(p)) if p.id == 7)
        );
        let invalid = encode::<P>(&Verdict::Invalid, FRESH, 0).unwrap();
        assert_eq!(invalid, r#"{"v":1,"kind":"invalid","until":60000}"#);
        assert!(matches!(
            verdict(decode::<P>(Some(invalid.as_bytes()))),
            Ok(Verdict::Invalid)
        ));
        for bad in [
            r#"{"v":2,"kind":"invalid"}"#,
            r#"{"v":1,"kind":"valid"}"#,
            r#"{"v":1,"kind":"valid","principal":{"name":"x"}}"#,
            r#"{"v":1,"kind":"maybe"}"#,
            r#"{"v":1,"kind":"invalid","principal":{"id":1}}"#,
            r#"{"v":1,"kind":"invalid","fresh_until":5}"#,
            "not json",
            "",
        ] {
            assert!(
                matches!(decode::<P>(Some(bad.as_bytes())), Err(Some(_))),
                "{bad}"
            );
        }
        assert!(
            matches!(decode::<P>(None), Err(None)),
            "absent is a plain miss"
        );
    }

    #[test]
    fn a_valid_entry_carries_its_fresh_deadline_and_refresh_point() {
        let ttl = Ttl {
            fresh: Duration::from_secs(100),
            refresh: Duration::from_secs(10),
            stale: Duration::from_secs(50),
        };
        let raw = encode(&Verdict::Valid(Arc::new(P { id: 1 })), ttl, 1_000).unwrap();
        assert_eq!(
            raw,
            r#"{"v":1,"kind":"valid","principal":{"id":1},"fresh_until":101000,"refresh_at":91000,"until":151000}"#
        );
        // No instants on a negative entry, whatever the TTL asks.
        assert_eq!(
            encode::<P>(&Verdict::Invalid, ttl, 1_000).unwrap(),
            r#"{"v":1,"kind":"invalid","until":151000}"#
        );
        let at = |now: u64| {
            let stored = decode::<P>(Some(raw.as_bytes())).ok().unwrap();
            stored.at(now, Some(Duration::from_millis(151_000 - now)))
        };
        let (fresh, left) = at(51_000);
        assert!(matches!(fresh, Freshness::Fresh(Verdict::Valid(_))));
        assert_eq!(
            left,
            Some(Ttl {
                fresh: Duration::from_secs(50),
                refresh: Duration::from_secs(10),
                stale: Duration::from_secs(50),
            })
        );
        assert!(matches!(at(91_000).0, Freshness::Aging(_)));
        let (stale, left) = at(101_000);
        assert!(matches!(stale, Freshness::Stale(_)));
        assert_eq!(left.map(|t| t.fresh), Some(Duration::ZERO));
        // Past its end the value is absent, even if Redis still holds it.
        assert!(matches!(at(151_000).0, Freshness::Gone));
    }

    #[test]
    fn values_without_an_end_are_read_as_before() {
        let old = decode::<P>(Some(br#"{"v":1,"kind":"invalid"}"#))
            .ok()
            .unwrap();
        assert!(matches!(
            old.at(u64::MAX, None).0,
            Freshness::Fresh(Verdict::Invalid)
        ));
    }
}
