//! [`RateLimit`]: one quota policy, and [`Algorithm`]: how windows count.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One quota policy: at most `quota` units in every `window`, under a name
/// that the `RateLimit-Policy` and `RateLimit` response fields carry.
///
/// A principal reports its policies with
/// [`Principal::rate_limits`](crate::Principal::rate_limits) (10 per second
/// and 10,000 per day is two policies); a request is admitted only when
/// every one of them admits it, and then it counts against all of them. A
/// request costs 1 unit unless its route costs more
/// ([`route_cost`](crate::ApiKeyAuthLayer::route_cost)).
///
/// It (de)serializes as `{"name": "burst", "quota": 100, "window_seconds":
/// 60}` (`name` optional), so a principal cached in Redis keeps its limits.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::RateLimit;
///
/// let burst = RateLimit::new("burst", 10, Duration::from_secs(1)).unwrap();
/// let daily = RateLimit::per_day(10_000);
/// assert_eq!(daily.name(), "day");
/// assert_eq!("100/60".parse::<RateLimit>().unwrap(), RateLimit::new("default", 100, Duration::from_secs(60)).unwrap());
/// # let _ = burst;
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub struct RateLimit {
    /// Shared: every request's [`RateLimitStatus`](crate::ratelimit::RateLimitStatus)
    /// holds its policies.
    name: Arc<str>,
    quota: u64,
    window: u64,
    /// The policy's identity among a key's counts, of its name and window.
    id: u64,
}

/// The longest window, a year: counts live twice their window, and every
/// arithmetic on it stays far from overflow.
const MAX_WINDOW_SECS: u64 = 366 * 86_400;

/// Why a [`RateLimit`] can't be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit: {0}")]
pub struct InvalidRateLimit(&'static str);

/// How a policy's windows count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// The current window's count plus the previous window's, weighted by
    /// how much of it is still inside the last `window` (Cloudflare's
    /// estimate). Smooth across a boundary: a client that spent its whole
    /// quota at the end of one window gets it back gradually through the
    /// next, not at once. The estimate assumes the previous window's traffic
    /// was even, and errs either way by its unevenness: a client bursting at
    /// the end of one window and spreading through the next can get up to
    /// nearly twice the quota within one window's length.
    #[default]
    SlidingWindow,
    /// A count per window aligned to the clock, exact within it, reset at its
    /// end. Across a boundary a client can spend up to twice the quota within
    /// one window's length (all of one window's quota at its end, all of the
    /// next one's at its start).
    FixedWindow,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default = "default_name")]
    name: String,
    quota: u64,
    window_seconds: u64,
}

fn default_name() -> String {
    "default".to_owned()
}

impl TryFrom<Wire> for RateLimit {
    type Error = InvalidRateLimit;

    fn try_from(w: Wire) -> Result<Self, InvalidRateLimit> {
        RateLimit::new(w.name, w.quota, Duration::from_secs(w.window_seconds))
    }
}

impl From<RateLimit> for Wire {
    fn from(r: RateLimit) -> Self {
        Wire {
            name: r.name.to_string(),
            quota: r.quota,
            window_seconds: r.window,
        }
    }
}

impl RateLimit {
    /// At most `quota` units per `window`. The name is 1 to 64 of
    /// `A-Z a-z 0-9 - _ .` (it goes into response headers and counter
    /// names); the quota at least 1; the window whole seconds, at least one
    /// (a fraction is rounded up) and at most a year (366 days).
    pub fn new(
        name: impl Into<String>,
        quota: u64,
        window: Duration,
    ) -> Result<Self, InvalidRateLimit> {
        let name = name.into();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(InvalidRateLimit("a name is 1 to 64 of A-Z a-z 0-9 - _ ."));
        }
        if quota == 0 {
            return Err(InvalidRateLimit("the quota is at least 1"));
        }
        let window = window.as_secs() + u64::from(window.subsec_nanos() > 0);
        if window == 0 {
            return Err(InvalidRateLimit("the window is at least one second"));
        }
        if window > MAX_WINDOW_SECS {
            return Err(InvalidRateLimit("the window is at most a year"));
        }
        Ok(Self::made(name.into(), quota, window))
    }

    fn made(name: Arc<str>, quota: u64, window: u64) -> Self {
        // FNV-1a of the name and the window.
        let mut id: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes().chain(window.to_le_bytes()) {
            id = (id ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self {
            name,
            quota,
            window,
            id,
        }
    }

    /// `quota` per second, named `second`.
    pub fn per_second(quota: u64) -> Self {
        Self::named("second", quota, 1)
    }

    /// `quota` per minute, named `minute`.
    pub fn per_minute(quota: u64) -> Self {
        Self::named("minute", quota, 60)
    }

    /// `quota` per hour, named `hour`.
    pub fn per_hour(quota: u64) -> Self {
        Self::named("hour", quota, 3600)
    }

    /// `quota` per day, named `day`.
    pub fn per_day(quota: u64) -> Self {
        Self::named("day", quota, 86_400)
    }

    fn named(name: &str, quota: u64, window: u64) -> Self {
        Self::made(name.into(), quota.max(1), window)
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Units allowed per window.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The window.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window)
    }

    pub(crate) fn window_ms(&self) -> u64 {
        self.window.saturating_mul(1000)
    }

    /// The policy's identity among a key's counts (its name and window: a
    /// changed quota keeps the counts).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}/{}s", self.name, self.quota, self.window)
    }
}

/// `QUOTA/WINDOW_SECONDS`, as `APIKEY_DEFAULT_RATE_LIMIT` spells it (`100/60`),
/// named `default`.
impl std::str::FromStr for RateLimit {
    type Err = InvalidRateLimit;

    fn from_str(s: &str) -> Result<Self, InvalidRateLimit> {
        let (quota, window) = s
            .trim()
            .split_once('/')
            .ok_or(InvalidRateLimit("expected QUOTA/WINDOW_SECONDS, as 100/60"))?;
        let number = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| InvalidRateLimit("expected QUOTA/WINDOW_SECONDS, as 100/60"))
        };
        Self::new(
            "default",
            number(quota)?,
            Duration::from_secs(number(window)?),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_when_made_and_when_read() {
        assert!(RateLimit::new("burst", 1, Duration::from_secs(1)).is_ok());
        for (name, quota, window) in [
            ("", 1, 1),
            ("a b", 1, 1),
            ("x", 0, 1),
            ("x", 1, 0),
            ("x", 1, 367 * 86_400),
            ("x", 1, u64::MAX),
        ] {
            assert!(RateLimit::new(name, quota, Duration::from_secs(window)).is_err());
        }
        assert_eq!(
            RateLimit::new("x", 1, Duration::from_millis(1500))
                .unwrap()
                .window(),
            Duration::from_secs(2)
        );
        let json = r#"{"name":"burst","quota":5,"window_seconds":60}"#;
        let limit: RateLimit = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&limit).unwrap(), json);
        let unnamed: RateLimit =
            serde_json::from_str(r#"{"quota":5,"window_seconds":60}"#).unwrap();
        assert_eq!(unnamed.name(), "default");
        assert!(serde_json::from_str::<RateLimit>(r#"{"quota":0,"window_seconds":60}"#).is_err());
        assert!("100/0".parse::<RateLimit>().is_err());
        assert!("abc".parse::<RateLimit>().is_err());
    }
}
