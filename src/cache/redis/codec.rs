//! The value stored for a key: a small versioned JSON envelope,
//! `{"v":1,"kind":"valid","principal":{…}}` or `{"v":1,"kind":"invalid"}`.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheError, Verdict};

const ENVELOPE_VERSION: u8 = 1;

#[derive(Serialize)]
struct EnvelopeOut<'a, P> {
    v: u8,
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a P>,
}

#[derive(Deserialize)]
struct EnvelopeIn<P> {
    v: u8,
    kind: Kind,
    principal: Option<P>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Valid,
    Invalid,
}

/// The envelope of `verdict`.
pub(super) fn encode<P: Serialize>(verdict: &Verdict<P>) -> Result<String, CacheError> {
    let envelope = match verdict {
        Verdict::Valid(p) => EnvelopeOut {
            v: ENVELOPE_VERSION,
            kind: Kind::Valid,
            principal: Some(&**p),
        },
        Verdict::Invalid => EnvelopeOut {
            v: ENVELOPE_VERSION,
            kind: Kind::Invalid,
            principal: None,
        },
    };
    serde_json::to_string(&envelope).map_err(CacheError::new)
}

/// What a `GET` of an entry found: its verdict, or a miss, with why when a
/// value was there but didn't decode (corrupt, or from another version).
pub(super) fn decode<P: DeserializeOwned>(
    raw: Option<&[u8]>,
) -> Result<Verdict<P>, Option<CacheError>> {
    let raw = raw.ok_or(None)?;
    decode_envelope(raw)
        .map_err(|why| Some(CacheError::new(format!("undecodable cached value: {why}"))))
}

fn decode_envelope<P: DeserializeOwned>(raw: &[u8]) -> Result<Verdict<P>, String> {
    let envelope: EnvelopeIn<P> = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    if envelope.v != ENVELOPE_VERSION {
        return Err(format!(
            "envelope version {} (this build reads {ENVELOPE_VERSION})",
            envelope.v
        ));
    }
    match (envelope.kind, envelope.principal) {
        (Kind::Valid, Some(p)) => Ok(Verdict::Valid(Arc::new(p))),
        (Kind::Invalid, None) => Ok(Verdict::Invalid),
        (Kind::Valid, None) => Err("a valid entry without its principal".to_owned()),
        (Kind::Invalid, Some(_)) => Err("an invalid entry with a principal".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct P {
        id: u32,
    }

    #[test]
    fn envelopes_round_trip_and_refuse_other_versions() {
        let valid = encode(&Verdict::Valid(Arc::new(P { id: 7 }))).unwrap();
        assert_eq!(valid, r#"{"v":1,"kind":"valid","principal":{"id":7}}"#);
        assert!(matches!(decode::<P>(Some(valid.as_bytes())), Ok(Verdict::Valid(p)) if p.id == 7));
        let invalid = encode::<P>(&Verdict::Invalid).unwrap();
        assert_eq!(invalid, r#"{"v":1,"kind":"invalid"}"#);
        assert!(matches!(
            decode::<P>(Some(invalid.as_bytes())),
            Ok(Verdict::Invalid)
        ));
        for bad in [
            r#"{"v":2,"kind":"invalid"}"#,
            r#"{"v":1,"kind":"valid"}"#,
            r#"{"v":1,"kind":"valid","principal":{"name":"x"}}"#,
            r#"{"v":1,"kind":"maybe"}"#,
            r#"{"v":1,"kind":"invalid","principal":{"id":1}}"#,
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
}
