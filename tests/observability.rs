//! What the layer emits: metrics through the `metrics` facade (a capturing
//! recorder, installed once for this binary, and each test's increments
//! read as a difference) and the `api_key_auth` tracing span of each
//! request (a subscriber that records every span's fields).
#![cfg(all(feature = "metrics", feature = "redis"))]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::redis::RedisServer;
use common::{app, get_anon, send, status, KeyStore};
use http::{Request, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use tower_api_key::cache::{MemoryCache, RedisCache};
use tower_api_key::ratelimit::{MemoryCounters, RateLimiter};
use tower_api_key::{ApiKeyAuthLayer, KeyHash, RateLimit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const ADMIN: &str = "sk_test_observed_admin_key";
const UNKNOWN: &str = "sk_test_observed_unknown_key";

/// The recorder every test of this binary reads.
fn snapshotter() -> &'static Snapshotter {
    static RECORDER: OnceLock<Snapshotter> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// Every counter by name and labels (`name{k=v}`), and every histogram's
/// number of values.
#[derive(Debug, Default)]
struct Seen {
    counters: HashMap<String, u64>,
    histograms: HashMap<String, usize>,
    labels: Vec<(String, String)>,
}

impl Seen {
    fn now() -> Self {
        let mut seen = Seen::default();
        for (key, _, _, value) in snapshotter().snapshot().into_vec() {
            let (kind, key): (MetricKind, _) = CompositeKey::into_parts(key);
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            seen.labels.extend(
                key.labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned())),
            );
            let name = match labels.as_slice() {
                [] => key.name().to_owned(),
                labels => format!("{}{{{}}}", key.name(), labels.join(",")),
            };
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    seen.counters.insert(name, n);
                }
                (MetricKind::Histogram, DebugValue::Histogram(values)) => {
                    seen.histograms.insert(name, values.len());
                }
                _ => {}
            }
        }
        seen
    }

    /// How much `name` grew since `before`.
    fn grew(&self, before: &Seen, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
            - before.counters.get(name).copied().unwrap_or(0)
    }

    fn recorded(&self, before: &Seen, name: &str) -> usize {
        self.histograms.get(name).copied().unwrap_or(0)
            - before.histograms.get(name).copied().unwrap_or(0)
    }
}

/// Held by each test: under `cargo test` they share one process (and the
/// recorder must be in place before the layer's first metric).
async fn lock() -> tokio::sync::MutexGuard<'static, ()> {
    snapshotter();
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

#[tokio::test]
async fn the_in_process_path_counts_hits_misses_lookups_and_rejections_by_reason() {
    let _serial = lock().await;
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()));
    let before = Seen::now();
    assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(status(&app, "/me", UNKNOWN).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&app, "/me", UNKNOWN).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(app.clone(), get_anon("/me")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let two_keys = Request::get("/me")
        .header("authorization", "Bearer one")
        .header("authorization", "Bearer two")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(
        send(app.clone(), two_keys).await.status,
        StatusCode::BAD_REQUEST
    );
    store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        status(&app, "/me", "sk_test_observed_while_down").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let after = Seen::now();
    let grew = |name: &str| after.grew(&before, name);
    assert_eq!(grew("api_key_auth_hits_total"), 1);
    assert_eq!(
        grew("api_key_auth_cache_hits_total{tier=l1}"),
        2,
        "the hit and the negative hit"
    );
    assert_eq!(grew("api_key_auth_negative_hits_total"), 1);
    assert_eq!(grew("api_key_auth_misses_total"), 3);
    assert_eq!(grew("api_key_auth_lookups_total"), 3);
    assert_eq!(grew("api_key_auth_lookup_errors_total"), 1);
    assert_eq!(
        grew("api_key_auth_rejections_total{reason=invalid_token}"),
        2
    );
    assert_eq!(
        grew("api_key_auth_rejections_total{reason=missing_api_key}"),
        1
    );
    assert_eq!(
        grew("api_key_auth_rejections_total{reason=invalid_request}"),
        1
    );
    assert_eq!(
        grew("api_key_auth_rejections_total{reason=lookup_unavailable}"),
        1
    );
    assert_eq!(
        after.recorded(&before, "api_key_auth_lookup_duration_seconds"),
        3
    );
}

#[tokio::test]
async fn redis_hits_count_as_l2_and_every_command_is_timed() {
    let _serial = lock().await;
    let server = RedisServer::start();
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let cache = RedisCache::builder(server.url())
        .build()
        .await
        .expect("a Redis cache");
    let app = app(ApiKeyAuthLayer::new(cache, store.lookup()));
    let before = Seen::now();
    for _ in 0..3 {
        assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    }
    let after = Seen::now();
    assert_eq!(
        after.grew(&before, "api_key_auth_cache_hits_total{tier=l2}"),
        2
    );
    assert_eq!(after.grew(&before, "api_key_auth_hits_total"), 2);
    // A miss (GET, then the version), the fill, two hits: five at least.
    let commands = after.recorded(&before, "api_key_auth_redis_command_duration_seconds");
    assert!(commands >= 5, "{commands} Redis commands timed");
}

#[tokio::test]
async fn rate_limit_decisions_are_counted_by_outcome() {
    let _serial = lock().await;
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let limit = RateLimit::new("burst", 2, Duration::from_secs(60)).expect("a limit");
    let limiter = RateLimiter::new(MemoryCounters::new()).default_limit(limit);
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()).rate_limits(limiter));
    let before = Seen::now();
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        assert_eq!(status(&app, "/me", ADMIN).await, expected);
    }
    let after = Seen::now();
    let grew = |name: &str| after.grew(&before, name);
    assert_eq!(
        grew("api_key_auth_rate_limit_decisions_total{outcome=admitted}"),
        2
    );
    assert_eq!(
        grew("api_key_auth_rate_limit_decisions_total{outcome=limited}"),
        1
    );
    assert_eq!(
        grew("api_key_auth_rejections_total{reason=rate_limited}"),
        1
    );
}

#[tokio::test]
async fn no_label_carries_key_material() {
    let _serial = lock().await;
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()));
    for key in [ADMIN, UNKNOWN] {
        status(&app, "/me", key).await;
    }
    let seen = Seen::now();
    assert!(!seen.counters.is_empty());
    let words = [
        "l1",
        "l2",
        "admitted",
        "limited",
        "fallback",
        "missing_api_key",
        "invalid_request",
        "invalid_token",
        "lookup_unavailable",
        "auth_layer_missing",
        "rate_limited",
        "rate_limiter_unavailable",
    ];
    for (key, value) in &seen.labels {
        assert!(
            ["tier", "reason", "outcome"].contains(&key.as_str()),
            "{key}"
        );
        assert!(words.contains(&value.as_str()), "{key}={value}");
    }
    let names = format!("{seen:?}");
    for secret in [ADMIN, UNKNOWN] {
        let hex = KeyHash::of(secret).to_hex();
        assert!(!names.contains(secret) && !names.contains(&hex[..8]));
    }
}

type SpanFields = HashMap<String, String>;

/// Every span's name and fields, as strings: open ones by id, closed ones
/// in the order they closed.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<SpanLog>>);

#[derive(Default)]
struct SpanLog {
    open: HashMap<u64, SpanFields>,
    closed: Vec<SpanFields>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::from([("name".to_owned(), attrs.metadata().name().to_owned())]);
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().open.insert(id.into_u64(), fields);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.0.lock().unwrap().open.get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(fields) = spans.open.remove(&id.into_u64()) {
            spans.closed.push(fields);
        }
    }
}

impl Spans {
    fn closed(&self) -> Vec<SpanFields> {
        std::mem::take(&mut self.0.lock().unwrap().closed)
    }

    /// The closed `api_key_auth` spans, in the order they closed.
    fn closed_ours(&self) -> Vec<SpanFields> {
        self.closed()
            .into_iter()
            .filter(|s| s["name"] == "api_key_auth")
            .collect()
    }
}

async fn traced(level: tracing::Level) -> Vec<SpanFields> {
    let _serial = lock().await;
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry()
        .with(spans.clone())
        .with(tracing_subscriber::filter::LevelFilter::from_level(level));
    let _default = tracing::subscriber::set_default(subscriber);
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()));
    assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(status(&app, "/me", UNKNOWN).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(app.clone(), get_anon("/me")).await.status,
        StatusCode::UNAUTHORIZED
    );
    spans.closed_ours()
}

#[tokio::test]
async fn each_request_has_one_span_with_its_route_tier_and_outcome() {
    let spans = traced(tracing::Level::INFO).await;
    let field = |i: usize, name: &str| spans[i].get(name).map(String::as_str);
    assert_eq!(spans.len(), 4, "{spans:?}");
    for i in 0..4 {
        assert_eq!(field(i, "route"), Some("/me"));
        assert_eq!(field(i, "key"), None, "the short hash is for DEBUG only");
    }
    assert_eq!(
        (field(0, "tier"), field(0, "outcome")),
        (Some("lookup"), Some("admitted"))
    );
    assert_eq!(
        (field(1, "tier"), field(1, "outcome")),
        (Some("l1"), Some("admitted"))
    );
    assert_eq!(
        (field(2, "tier"), field(2, "outcome")),
        (Some("lookup"), Some("invalid_token"))
    );
    assert_eq!(
        (field(3, "tier"), field(3, "outcome")),
        (None, Some("missing_api_key"))
    );
}

#[tokio::test]
async fn at_debug_the_span_names_the_short_hash_and_never_the_key() {
    let spans = traced(tracing::Level::DEBUG).await;
    assert_eq!(spans.len(), 4);
    let short = KeyHash::of(ADMIN).short().to_string();
    assert_eq!(spans[0].get("key"), Some(&short));
    let hex = KeyHash::of(ADMIN).to_hex();
    assert_eq!(
        short,
        format!("{}…", &hex[..8]),
        "4 bytes of the hash, no more"
    );
    for span in &spans {
        let all = format!("{span:?}");
        assert!(!all.contains(ADMIN) && !all.contains(UNKNOWN), "{all}");
    }
}

#[tokio::test]
async fn the_span_names_the_route_template_not_the_path() {
    let _serial = lock().await;
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry()
        .with(spans.clone())
        .with(tracing_subscriber::filter::LevelFilter::INFO);
    let _default = tracing::subscriber::set_default(subscriber);
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let app = axum::Router::new()
        .route("/keys/{id}", axum::routing::get(|| async { "ok" }))
        .layer(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()));
    assert_eq!(status(&app, "/keys/42", ADMIN).await, StatusCode::OK);
    let ours = spans.closed_ours();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0]["route"], "/keys/{id}");
}

/// An application that logs `INFO` but filters this crate to `WARN` gets
/// no `api_key_auth` span, and the layer never writes its `tier` or `key`
/// onto the application's own span (which has fields of those names).
#[tokio::test]
async fn a_crate_filtered_out_gets_no_span_and_the_app_span_is_left_alone() {
    use tracing::Instrument;
    let _serial = lock().await;
    let spans = Spans::default();
    let filter: tracing_subscriber::filter::Targets =
        "debug,tower_api_key=warn".parse().expect("a filter");
    let subscriber = tracing_subscriber::registry()
        .with(spans.clone())
        .with(filter);
    let _default = tracing::subscriber::set_default(subscriber);
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()));
    for _ in 0..2 {
        let request = status(&app, "/me", ADMIN);
        let in_app_span = tracing::info_span!(
            "app_request",
            tier = tracing::field::Empty,
            key = tracing::field::Empty
        );
        assert_eq!(request.instrument(in_app_span).await, StatusCode::OK);
    }
    let closed = spans.closed();
    assert!(
        closed.iter().all(|s| s["name"] != "api_key_auth"),
        "{closed:?}"
    );
    let app_spans: Vec<_> = closed
        .iter()
        .filter(|s| s["name"] == "app_request")
        .collect();
    assert_eq!(app_spans.len(), 2, "{closed:?}");
    for span in app_spans {
        assert_eq!(span.get("tier"), None, "{span:?}");
        assert_eq!(span.get("key"), None, "{span:?}");
    }
}

/// A subscriber that takes spans only (as in front of an OpenTelemetry
/// exporter) still gets the span with its tier: the layer records on its
/// own span, not on what an `enabled!` hint would say.
#[tokio::test]
async fn a_spans_only_filter_gets_the_span_with_its_tier() {
    use tracing_subscriber::filter::filter_fn;
    let _serial = lock().await;
    let spans = Spans::default();
    let subscriber =
        tracing_subscriber::registry().with(spans.clone().with_filter(filter_fn(|m| m.is_span())));
    let _default = tracing::subscriber::set_default(subscriber);
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let app = app(ApiKeyAuthLayer::new(MemoryCache::new(), store.lookup()));
    assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    let ours = spans.closed_ours();
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert_eq!(ours[0].get("tier").map(String::as_str), Some("lookup"));
    assert_eq!(ours[1].get("tier").map(String::as_str), Some("l1"));
    assert_eq!(ours[1].get("outcome").map(String::as_str), Some("admitted"));
}

/// The degradations' metrics move with the layer's own counters: shared
/// lookups, a lookup past its timeout, a cache whose Redis is gone (its
/// errors, then the breaker's skips).
#[tokio::test]
async fn degradations_are_counted_as_the_stats_count_them() {
    let _serial = lock().await;
    let store = KeyStore::new();
    store.create("admin", ADMIN, None);
    let mut server = RedisServer::start();
    let cache = RedisCache::builder(server.url())
        .build()
        .await
        .expect("a Redis cache");
    let layer =
        ApiKeyAuthLayer::new(cache, store.lookup()).lookup_timeout(Duration::from_millis(300));
    let app = app(layer.clone());
    let before = Seen::now();
    let stats_before = layer.stats();

    // Five at once on one uncached key, the lookup slow: one lookup, four
    // requests that shared it.
    store
        .delay_ms
        .store(100, std::sync::atomic::Ordering::SeqCst);
    let five = (0..5).map(|_| status(&app, "/me", ADMIN));
    for answer in futures_util::future::join_all(five).await {
        assert_eq!(answer, StatusCode::OK);
    }
    // A lookup slower than the timeout: 503, counted as an error and a timeout.
    store
        .delay_ms
        .store(1_000, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        status(&app, "/me", "sk_test_observed_slow_key").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Redis gone: cache errors, then skips once the breaker opens.
    store.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    server.kill();
    for _ in 0..6 {
        assert_eq!(status(&app, "/me", ADMIN).await, StatusCode::OK);
    }

    let (after, stats) = (Seen::now(), layer.stats());
    let grew = |name: &str| after.grew(&before, name);
    assert_eq!(grew("api_key_auth_coalesced_total"), 4);
    assert_eq!(stats.coalesced - stats_before.coalesced, 4);
    assert_eq!(grew("api_key_auth_lookup_timeouts_total"), 1);
    assert_eq!(
        grew("api_key_auth_lookup_timeouts_total"),
        stats.lookup_timeouts - stats_before.lookup_timeouts
    );
    assert!(grew("api_key_auth_cache_errors_total") > 0);
    assert_eq!(
        grew("api_key_auth_cache_errors_total"),
        stats.cache_errors - stats_before.cache_errors
    );
    assert!(
        grew("api_key_auth_cache_skipped_total") > 0,
        "the breaker opened"
    );
    assert_eq!(
        grew("api_key_auth_cache_skipped_total"),
        stats.cache_skipped - stats_before.cache_skipped
    );
}
