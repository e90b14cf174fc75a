//! What the layer tells the outside: the `api_key_auth` tracing span of
//! each request, and (feature `metrics`) counters and histograms on the
//! [`metrics`](https://docs.rs/metrics) facade.
//!
//! Every metric is a `static` here, registered with the global recorder at
//! its first use and kept: install the recorder (the exporter) before the
//! first request. Labels are fixed words (a tier, a reason, an outcome):
//! never a key, its hash, or a principal. Without the feature the statics
//! are empty and every call is nothing.
//!
//! The span is created only when a subscriber wants `INFO` spans of this
//! crate (otherwise it is `Span::none()`, and recording on it is a no-op).

use std::time::Duration;

use tracing::field::Empty;
use tracing::Span;

use crate::{KeyHash, RejectionKind};

/// The span of one request's authentication: `route` (the matched
/// template, or the path), then `tier` (what answered: `l1`, `l2`,
/// `lookup`, `stale`), `outcome` (`admitted` or the rejection's code) and,
/// at `DEBUG` only, `key` (the hash's first 8 hex digits).
#[inline]
pub(crate) fn request_span<B>(req: &http::Request<B>) -> Span {
    // No subscriber has ever been set: with tracing's `log` feature on
    // (axum's default `tower-log` turns it on) a span macro would still
    // build its fields for the `log` crate, ~440 instructions a request by
    // callgrind (`benches/hit_path.rs`). Once one is set, the macro's own
    // cached interest decides, filters on span names included.
    if !tracing::dispatcher::has_been_set() {
        return Span::none();
    }
    tracing::info_span!(
        "api_key_auth",
        route = route_of(req),
        tier = Empty,
        outcome = Empty,
        key = Empty
    )
}

/// Runs `f` (a stage, or a poll of a waiting request) inside the request's
/// span: a disabled span is not entered, and only inside a live one do
/// [`answered_by`] and [`key`] record anything.
#[inline]
pub(crate) fn in_request_span<R>(span: &Span, f: impl FnOnce() -> R) -> R {
    if span.is_disabled() {
        return f();
    }
    span.in_scope(|| {
        let _live = InRequestSpan::enter();
        f()
    })
}

std::thread_local! {
    /// Whether this thread runs inside a live `api_key_auth` span now.
    static IN_REQUEST_SPAN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets [`IN_REQUEST_SPAN`] and puts it back on drop (a panic included).
struct InRequestSpan(bool);

impl InRequestSpan {
    fn enter() -> Self {
        Self(IN_REQUEST_SPAN.replace(true))
    }
}

impl Drop for InRequestSpan {
    fn drop(&mut self) {
        IN_REQUEST_SPAN.set(self.0);
    }
}

fn route_of<B>(req: &http::Request<B>) -> &str {
    #[cfg(feature = "axum")]
    if let Some(matched) = req.extensions().get::<axum::extract::MatchedPath>() {
        return matched.as_str();
    }
    req.uri().path()
}

/// The request's outcome, on its span.
#[inline]
pub(crate) fn decided(span: &Span, rejection: Option<&crate::AuthRejection>) {
    if !span.is_disabled() {
        span.record("outcome", rejection.map_or("admitted", |r| r.code()));
    }
}

/// What answered this request, on the request's span (and never on a
/// span of the application's: only inside [`in_request_span`]).
#[inline]
pub(crate) fn answered_by(tier: &'static str) {
    if IN_REQUEST_SPAN.get() {
        Span::current().record("tier", tier);
    }
}

/// The key's short hash on the request's span, at `DEBUG` only.
#[inline]
pub(crate) fn key(hash: &KeyHash) {
    if IN_REQUEST_SPAN.get() && tracing::enabled!(tracing::Level::DEBUG) {
        Span::current().record("key", tracing::field::display(hash.short()));
    }
}

/// A cache tier answered a read (a hit, fresh or aging): counted by tier,
/// and named on the request's span.
#[cfg(any(feature = "memory", feature = "redis"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tier {
    /// In process: `MemoryCache`, or the tiered cache's L1.
    #[cfg(feature = "memory")]
    L1,
    /// Redis: `RedisCache`, or the tiered cache's L2.
    #[cfg(feature = "redis")]
    L2,
}

#[cfg(any(feature = "memory", feature = "redis"))]
#[inline]
pub(crate) fn cache_hit(tier: Tier) {
    match tier {
        #[cfg(feature = "memory")]
        Tier::L1 => {
            metric::L1_HITS.increment();
            answered_by("l1");
        }
        #[cfg(feature = "redis")]
        Tier::L2 => {
            metric::L2_HITS.increment();
            answered_by("l2");
        }
    }
}

/// A rejection, counted by its reason (the code of its body).
#[inline]
pub(crate) fn rejected(kind: RejectionKind) {
    use metric::*;
    match kind {
        RejectionKind::MissingKey => REJECTED_MISSING.increment(),
        RejectionKind::MalformedKey(_) => REJECTED_MALFORMED.increment(),
        RejectionKind::InvalidKey => REJECTED_INVALID.increment(),
        RejectionKind::LookupUnavailable => REJECTED_LOOKUP.increment(),
        RejectionKind::LayerMissing => REJECTED_LAYER_MISSING.increment(),
        RejectionKind::RateLimited => REJECTED_RATE_LIMITED.increment(),
        RejectionKind::RateLimiterUnavailable => REJECTED_LIMITER.increment(),
        RejectionKind::InsufficientScope => REJECTED_SCOPE.increment(),
        RejectionKind::AddressNotAllowed => REJECTED_ADDRESS.increment(),
    }
}

/// How long a lookup took (answered, failed or timed out).
#[inline]
pub(crate) fn lookup_took(took: Duration) {
    metric::LOOKUP_SECONDS.record(took);
}

/// How long a Redis command took, from its first poll to its answer (or
/// its timeout).
#[cfg(feature = "redis")]
#[inline]
pub(crate) fn redis_command_took(took: Duration) {
    metric::REDIS_COMMAND_SECONDS.record(took);
}

/// A clock for a histogram: reads the time only when metrics are built in.
#[derive(Clone, Copy)]
pub(crate) struct Timer {
    #[cfg(feature = "metrics")]
    started: Option<std::time::Instant>,
}

impl Timer {
    /// Started now.
    #[inline]
    pub(crate) fn start() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            started: Some(std::time::Instant::now()),
        }
    }

    /// Not started yet (no clock read): [`start`](Self::start) it later.
    #[cfg(feature = "redis")]
    #[inline]
    pub(crate) fn unstarted() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            started: None,
        }
    }

    /// The time since [`start`](Self::start) (zero without metrics, or if
    /// never started).
    #[inline]
    pub(crate) fn elapsed(&self) -> Duration {
        #[cfg(feature = "metrics")]
        return self.started.map_or(Duration::ZERO, |t| t.elapsed());
        #[cfg(not(feature = "metrics"))]
        Duration::ZERO
    }
}

/// The metrics, one `static` each (the README lists them).
pub(crate) mod metric {
    #[cfg(feature = "metrics")]
    use std::sync::OnceLock;
    use std::time::Duration;

    /// A counter of the facade, described and registered at its first
    /// increment.
    pub(crate) struct CounterMetric {
        #[cfg(feature = "metrics")]
        key: metrics::Key,
        #[cfg(feature = "metrics")]
        help: &'static str,
        #[cfg(feature = "metrics")]
        handle: OnceLock<metrics::Counter>,
    }

    /// A histogram of the facade (seconds), described and registered at
    /// its first record.
    pub(crate) struct HistogramMetric {
        #[cfg(feature = "metrics")]
        key: metrics::Key,
        #[cfg(feature = "metrics")]
        help: &'static str,
        #[cfg(feature = "metrics")]
        handle: OnceLock<metrics::Histogram>,
    }

    #[cfg(feature = "metrics")]
    static METADATA: metrics::Metadata<'static> =
        metrics::Metadata::new("tower_api_key", metrics::Level::INFO, Some(module_path!()));

    impl CounterMetric {
        #[inline]
        pub(crate) fn increment(&'static self) {
            #[cfg(feature = "metrics")]
            self.handle
                .get_or_init(|| {
                    metrics::with_recorder(|r| {
                        r.describe_counter(self.key.name_shared(), None, self.help.into());
                        r.register_counter(&self.key, &METADATA)
                    })
                })
                .increment(1);
        }
    }

    impl HistogramMetric {
        #[inline]
        pub(crate) fn record(&'static self, took: Duration) {
            #[cfg(feature = "metrics")]
            self.handle
                .get_or_init(|| {
                    metrics::with_recorder(|r| {
                        let seconds = Some(metrics::Unit::Seconds);
                        r.describe_histogram(self.key.name_shared(), seconds, self.help.into());
                        r.register_histogram(&self.key, &METADATA)
                    })
                })
                .record(took.as_secs_f64());
            #[cfg(not(feature = "metrics"))]
            let _ = took;
        }
    }

    /// `Kind NAME = "name" {label => value}: "help";` (or a `const` of the
    /// help shared by one metric's labelled series), a `static` each.
    macro_rules! metrics {
        ($($(#[$meta:meta])* $kind:ident $name:ident = $metric:literal $({ $label:literal => $value:literal })?: $help:expr;)*) => {
            $(metrics!(@one $(#[$meta])* $kind $name $metric [$($label $value)?] $help);)*
        };
        (@one $(#[$meta:meta])* $kind:ident $name:ident $metric:literal [$($label:literal $value:literal)?] $help:expr) => {
            $(#[$meta])*
            pub(crate) static $name: $kind = $kind {
                #[cfg(feature = "metrics")]
                key: metrics::Key::from_static_parts($metric, {
                    static LABELS: &[metrics::Label] =
                        &[$(metrics::Label::from_static_parts($label, $value))?];
                    LABELS
                }),
                #[cfg(feature = "metrics")]
                help: $help,
                #[cfg(feature = "metrics")]
                handle: OnceLock::new(),
            };
        };
    }

    // The help of a metric with several labelled series, said once.
    #[cfg(all(feature = "metrics", any(feature = "memory", feature = "redis")))]
    const CACHE_HITS_HELP: &str =
        "Cache reads that found the key, by tier (l1: in process, l2: Redis).";
    #[cfg(feature = "metrics")]
    const RATE_LIMIT_DECISIONS_HELP: &str = "Rate-limit decisions, by outcome.";
    #[cfg(feature = "metrics")]
    const REJECTIONS_HELP: &str = "Requests refused, by reason (the rejection body's code).";

    metrics! {
        #[cfg(feature = "memory")]
        CounterMetric L1_HITS = "api_key_auth_cache_hits_total" { "tier" => "l1" }
            : CACHE_HITS_HELP;
        #[cfg(feature = "redis")]
        CounterMetric L2_HITS = "api_key_auth_cache_hits_total" { "tier" => "l2" }
            : CACHE_HITS_HELP;
        CounterMetric HITS = "api_key_auth_hits_total"
            : "Requests answered from a cached valid key.";
        CounterMetric NEGATIVE_HITS = "api_key_auth_negative_hits_total"
            : "Requests answered from a cached negative entry.";
        CounterMetric MISSES = "api_key_auth_misses_total"
            : "Requests that needed the lookup.";
        CounterMetric LOOKUPS = "api_key_auth_lookups_total"
            : "Calls of the key lookup service.";
        CounterMetric LOOKUP_ERRORS = "api_key_auth_lookup_errors_total"
            : "Lookups that failed (answered 503, never cached).";
        CounterMetric LOOKUP_TIMEOUTS = "api_key_auth_lookup_timeouts_total"
            : "Lookups that ran past the lookup timeout.";
        CounterMetric CACHE_ERRORS = "api_key_auth_cache_errors_total"
            : "Cache operations that failed (degraded to the lookup).";
        CounterMetric CACHE_SKIPPED = "api_key_auth_cache_skipped_total"
            : "Cache operations skipped by an open circuit breaker.";
        CounterMetric FORMAT_REJECTED = "api_key_auth_format_rejected_total"
            : "Keys refused by the key format's checksum before the cache.";
        CounterMetric COALESCED = "api_key_auth_coalesced_total"
            : "Requests that shared another request's lookup.";
        CounterMetric STALE_SERVED = "api_key_auth_stale_served_total"
            : "Requests answered from a stale entry while the lookup failed.";
        CounterMetric REFRESHES = "api_key_auth_refreshes_total"
            : "Refresh-ahead lookups started.";
        CounterMetric RATE_LIMIT_ADMITTED = "api_key_auth_rate_limit_decisions_total" { "outcome" => "admitted" }
            : RATE_LIMIT_DECISIONS_HELP;
        CounterMetric RATE_LIMIT_LIMITED = "api_key_auth_rate_limit_decisions_total" { "outcome" => "limited" }
            : RATE_LIMIT_DECISIONS_HELP;
        CounterMetric RATE_LIMIT_FALLBACK = "api_key_auth_rate_limit_decisions_total" { "outcome" => "fallback" }
            : RATE_LIMIT_DECISIONS_HELP;
        CounterMetric RATE_LIMIT_STORE_ERRORS = "api_key_auth_rate_limit_store_errors_total"
            : "Rate-limit counter store operations that failed.";
        CounterMetric REJECTED_MISSING = "api_key_auth_rejections_total" { "reason" => "missing_api_key" }
            : REJECTIONS_HELP;
        CounterMetric REJECTED_MALFORMED = "api_key_auth_rejections_total" { "reason" => "invalid_request" }
            : REJECTIONS_HELP;
        CounterMetric REJECTED_INVALID = "api_key_auth_rejections_total" { "reason" => "invalid_token" }
            : REJECTIONS_HELP;
        CounterMetric REJECTED_LOOKUP = "api_key_auth_rejections_total" { "reason" => "lookup_unavailable" }
            : REJECTIONS_HELP;
        CounterMetric REJECTED_LAYER_MISSING = "api_key_auth_rejections_total" { "reason" => "auth_layer_missing" }
            : REJECTIONS_HELP;
        CounterMetric REJECTED_RATE_LIMITED = "api_key_auth_rejections_total" { "reason" => "rate_limited" }
            : REJECTIONS_HELP;
        CounterMetric REJECTED_LIMITER = "api_key_auth_rejections_total" { "reason" => "rate_limiter_unavailable" }
            : REJECTIONS_HELP;
        CounterMetric REJECTED_SCOPE = "api_key_auth_rejections_total" { "reason" => "insufficient_scope" }
            : REJECTIONS_HELP;
        CounterMetric REJECTED_ADDRESS = "api_key_auth_rejections_total" { "reason" => "address_not_allowed" }
            : REJECTIONS_HELP;
        HistogramMetric LOOKUP_SECONDS = "api_key_auth_lookup_duration_seconds"
            : "Time taken by each key lookup, answered, failed or timed out.";
        #[cfg(feature = "redis")]
        HistogramMetric REDIS_COMMAND_SECONDS = "api_key_auth_redis_command_duration_seconds"
            : "Time taken by each Redis command, first poll to answer or timeout.";
    }
}
