//! The response fields of a limited request: the IETF httpapi fields of
//! draft-ietf-httpapi-ratelimit-headers (`RateLimit-Policy` and
//! `RateLimit`), and GitHub's `X-RateLimit-*` for clients that expect them.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::RateLimitStatus;

/// `RateLimit-Policy`: each policy's quota and window,
/// `"burst";q=100;w=60, "day";q=10000;w=86400`.
pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what each policy has left and when it resets,
/// `"burst";r=0;t=30`.
pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Which fields a response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fields {
    pub(crate) ietf: bool,
    pub(crate) x_ratelimit: bool,
}

/// Writes the fields for `status` into `headers`.
pub(crate) fn write(status: &RateLimitStatus, fields: Fields, headers: &mut HeaderMap) {
    if fields.ietf {
        let mut policy = String::new();
        let mut limit = String::new();
        for (i, (rate_limit, quota)) in status.policies().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            // Names are tokens of `A-Z a-z 0-9 - _ .`: safe inside an
            // sf-string, and they carry no key material.
            let _ = write!(
                policy,
                "{sep}\"{}\";q={};w={}",
                rate_limit.name(),
                rate_limit.quota(),
                rate_limit.window().as_secs()
            );
            let reset = quota.reset.min(rate_limit.window().as_secs() * 2);
            let _ = write!(
                limit,
                "{sep}\"{}\";r={};t={reset}",
                rate_limit.name(),
                quota.remaining
            );
        }
        insert(headers, &RATELIMIT_POLICY, policy);
        insert(headers, &RATELIMIT, limit);
    }
    if fields.x_ratelimit {
        // The policy closest to refusing speaks for all.
        if let Some((rate_limit, quota)) = status.policies().min_by_key(|(_, q)| q.remaining) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let reset = now.saturating_add(quota.reset.min(rate_limit.window().as_secs() * 2));
            insert(headers, &X_LIMIT, rate_limit.quota().to_string());
            insert(headers, &X_REMAINING, quota.remaining.to_string());
            insert(headers, &X_RESET, reset.to_string());
        }
    }
}

fn insert(headers: &mut HeaderMap, name: &HeaderName, value: String) {
    // Digits, names of a safe alphabet and punctuation: always valid.
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name.clone(), value);
    }
}
