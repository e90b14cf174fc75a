//! Rate limits per key with in-process counters, through the layer: exact
//! admissions, the 429 and its fields, route costs and exemptions, defaults
//! and unlimited keys, owner-wide quotas, resets, and requests refused by
//! authentication never counting.

mod common;

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use common::{get_anon, get_with_key, send, Resp};
use http::StatusCode;
use tower_api_key::cache::MemoryCache;
use tower_api_key::ratelimit::{Algorithm, MemoryCounters, RateLimitStatus, RateLimiter};
use tower_api_key::{
    lookup_fn, ApiKeyAuthLayer, Authenticated, KeyHash, Lookup, Principal, RateLimit,
};

#[derive(Clone, Debug)]
struct Client {
    #[allow(dead_code)] // tells the clients apart in a debugger
    id: u64,
    limits: Option<Vec<RateLimit>>,
    org: Option<String>,
    per_owner: bool,
}

impl Principal for Client {
    fn rate_limits(&self) -> Option<&[RateLimit]> {
        self.limits.as_deref()
    }

    fn owner(&self) -> Option<Cow<'_, str>> {
        self.org.as_deref().map(Cow::Borrowed)
    }

    fn limits_per_owner(&self) -> bool {
        self.per_owner
    }
}

fn limit(name: &str, quota: u64, secs: u64) -> RateLimit {
    RateLimit::new(name, quota, Duration::from_secs(secs)).unwrap()
}

/// Keys: `sk_limited` (3 per minute), `sk_two` (burst 2/min and 5/hour),
/// `sk_default` (no own limits), `sk_admin` (explicitly none), `sk_org_a`
/// and `sk_org_b` (sharing an org-wide 3/min).
fn lookup(lookups: Arc<AtomicUsize>) -> impl Lookup<Client> {
    lookup_fn(move |hash: KeyHash| {
        lookups.fetch_add(1, Ordering::SeqCst);
        let client = |id, limits, org: Option<&str>, per_owner| Client {
            id,
            limits,
            org: org.map(str::to_owned),
            per_owner,
        };
        let found = [
            (
                "sk_limited",
                client(1, Some(vec![limit("minute", 3, 60)]), None, false),
            ),
            (
                "sk_two",
                client(
                    2,
                    Some(vec![limit("burst", 2, 60), limit("hour", 5, 3600)]),
                    None,
                    false,
                ),
            ),
            ("sk_default", client(3, None, None, false)),
            ("sk_admin", client(4, Some(vec![]), None, false)),
            (
                "sk_org_a",
                client(5, Some(vec![limit("org", 3, 60)]), Some("acme"), true),
            ),
            (
                "sk_org_b",
                client(6, Some(vec![limit("org", 3, 60)]), Some("acme"), true),
            ),
        ]
        .into_iter()
        .find(|(secret, _)| KeyHash::of(secret) == hash)
        .map(|(_, c)| c);
        async move { Ok::<_, Infallible>(found) }
    })
}

fn app(
    limiter: RateLimiter,
) -> (
    Router,
    ApiKeyAuthLayer<MemoryCache<Client>, impl Lookup<Client>>,
) {
    let auth = ApiKeyAuthLayer::new(MemoryCache::new(), lookup(Arc::default()))
        .rate_limits(limiter)
        .route_cost("/expensive", 2)
        .exempt_from_rate_limits("/free");
    let me = |status: Option<axum::Extension<RateLimitStatus>>| async move {
        status.map_or("unlimited".to_owned(), |s| {
            s.policies()
                .map(|(l, q)| format!("{}={}", l.name(), q.remaining))
                .collect::<Vec<_>>()
                .join(",")
        })
    };
    let router = Router::new()
        .route("/me", get(me))
        .route("/expensive", get(|| async { "ok" }))
        .route("/free", get(|_: Authenticated<Client>| async { "ok" }))
        .layer(auth.clone());
    (router, auth)
}

/// Counters on a clock stopped when the limiter is made: no window rolls
/// during a test (a fixed minute's edge fell inside one, once, and its
/// quota was admitted twice).
fn limiter() -> RateLimiter {
    let stopped = std::time::SystemTime::now();
    RateLimiter::new(MemoryCounters::builder().clock(move || stopped).build())
        .algorithm(Algorithm::FixedWindow)
}

async fn statuses(app: &Router, path: &str, key: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            send(app.clone(), get_with_key(path, key))
                .await
                .status
                .as_u16(),
        );
    }
    out
}

#[tokio::test]
async fn a_key_gets_exactly_its_quota_then_429_with_the_fields() {
    let (app, auth) = app(limiter());
    assert_eq!(
        statuses(&app, "/me", "sk_limited", 3).await,
        [200, 200, 200]
    );
    let res: Resp = send(app.clone(), get_with_key("/me", "sk_limited")).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    let retry: u64 = res.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(res.header("ratelimit-policy"), Some(r#""minute";q=3;w=60"#));
    let ratelimit = res.header("ratelimit").unwrap();
    assert!(ratelimit.starts_with(r#""minute";r=0;t="#), "{ratelimit}");
    let body = res.json();
    assert_eq!(body["status"], 429);
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["violated-policies"], serde_json::json!(["minute"]));
    assert!(
        !res.body.contains("sk_limited"),
        "no key material in the answer"
    );
    let stats = auth.stats();
    assert_eq!((stats.rate_limit_admitted, stats.rate_limited), (3, 1));
}

#[tokio::test]
async fn concurrent_requests_get_exactly_the_quota() {
    let (app, auth) = app(limiter());
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(send(app.clone(), get_with_key("/me", "sk_limited"))))
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().status == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(auth.stats().rate_limited, 47);
}

#[tokio::test]
async fn every_policy_must_admit_and_the_handler_sees_what_remains() {
    let (app, _) = app(limiter());
    let first = send(app.clone(), get_with_key("/me", "sk_two")).await;
    assert_eq!(first.body, "burst=1,hour=4");
    assert_eq!(statuses(&app, "/me", "sk_two", 2).await, [200, 429]);
    let refused = send(app.clone(), get_with_key("/me", "sk_two")).await;
    assert_eq!(
        refused.json()["violated-policies"],
        serde_json::json!(["burst"])
    );
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some(r#""burst";q=2;w=60, "hour";q=5;w=3600"#)
    );
    // The refused requests took nothing from the hour.
    let hour = refused.header("ratelimit").unwrap();
    assert!(hour.contains(r#""hour";r=3;"#), "{hour}");
}

#[tokio::test]
async fn routes_cost_what_they_say_and_exempt_ones_nothing() {
    let (app, _) = app(limiter());
    assert_eq!(statuses(&app, "/expensive", "sk_limited", 1).await, [200]);
    assert_eq!(statuses(&app, "/free", "sk_limited", 10).await, [200; 10]);
    // 2 of 3 spent: one more unit, then the expensive route doesn't fit.
    assert_eq!(statuses(&app, "/expensive", "sk_limited", 1).await, [429]);
    assert_eq!(statuses(&app, "/me", "sk_limited", 2).await, [200, 429]);
}

#[tokio::test]
async fn the_default_applies_to_keys_without_limits_and_none_to_unlimited_keys() {
    let (app, _) = app(limiter().default_limit(limit("default", 2, 60)));
    assert_eq!(
        statuses(&app, "/me", "sk_default", 3).await,
        [200, 200, 429]
    );
    assert_eq!(statuses(&app, "/me", "sk_admin", 20).await, [200; 20]);
    let res = send(app.clone(), get_with_key("/me", "sk_admin")).await;
    assert_eq!(res.body, "unlimited");
    assert!(res.header("ratelimit").is_none());
    // Without a default, a key without limits is unlimited too.
    let (app, _) = self::app(limiter());
    assert_eq!(statuses(&app, "/me", "sk_default", 10).await, [200; 10]);
}

#[tokio::test]
async fn an_owner_wide_quota_is_shared_by_its_keys() {
    let (app, auth) = app(limiter());
    assert_eq!(statuses(&app, "/me", "sk_org_a", 2).await, [200, 200]);
    assert_eq!(statuses(&app, "/me", "sk_org_b", 2).await, [200, 429]);
    assert_eq!(statuses(&app, "/me", "sk_org_a", 1).await, [429]);
    auth.reset_owner_rate_limits("acme").await.unwrap();
    assert_eq!(statuses(&app, "/me", "sk_org_a", 1).await, [200]);
}

#[tokio::test]
async fn reset_forgets_a_keys_counts() {
    let (app, auth) = app(limiter());
    assert_eq!(
        statuses(&app, "/me", "sk_limited", 4).await,
        [200, 200, 200, 429]
    );
    auth.reset_rate_limits(&KeyHash::of("sk_limited"))
        .await
        .unwrap();
    assert_eq!(statuses(&app, "/me", "sk_limited", 1).await, [200]);
}

#[tokio::test]
async fn requests_refused_by_authentication_never_touch_a_counter() {
    let (app, auth) = app(limiter());
    for _ in 0..5 {
        assert_eq!(
            send(app.clone(), get_with_key("/me", "sk_unknown"))
                .await
                .status,
            401
        );
        assert_eq!(send(app.clone(), get_anon("/me")).await.status, 401);
        let malformed = http::Request::get("/me")
            .header("authorization", "Bearer a b")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(app.clone(), malformed).await.status, 400);
    }
    let stats = auth.stats();
    assert_eq!((stats.rate_limit_admitted, stats.rate_limited), (0, 0));
}

#[tokio::test]
async fn fields_on_every_response_and_x_ratelimit_on_request() {
    let (app, _) = app(limiter().headers_on_every_response().x_ratelimit_headers());
    let res = send(app.clone(), get_with_key("/me", "sk_limited")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("ratelimit-policy"), Some(r#""minute";q=3;w=60"#));
    assert!(res
        .header("ratelimit")
        .unwrap()
        .starts_with(r#""minute";r=2;t="#));
    assert_eq!(res.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(res.header("x-ratelimit-remaining"), Some("2"));
    let reset: u64 = res.header("x-ratelimit-reset").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(reset > now && reset <= now + 61, "{reset} vs {now}");
    // Remaining reaches 0 with the last admitted request.
    let _ = send(app.clone(), get_with_key("/me", "sk_limited")).await;
    let last = send(app.clone(), get_with_key("/me", "sk_limited")).await;
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(last.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        send(app.clone(), get_with_key("/me", "sk_limited"))
            .await
            .status,
        429
    );
}

#[tokio::test]
async fn the_rejection_handler_renders_rate_limit_refusals_too() {
    let auth = ApiKeyAuthLayer::new(MemoryCache::new(), lookup(Arc::default()))
        .rate_limits(limiter())
        .on_rejection(|rejection| {
            let mut res = rejection.default_response();
            let names: Vec<&str> = rejection
                .rate_limit()
                .map(|s| s.violated().map(RateLimit::name).collect())
                .unwrap_or_default();
            *res.body_mut() =
                bytes::Bytes::from(format!("custom {} {}", rejection.code(), names.join(",")));
            res
        });
    let app = Router::new()
        .route("/me", get(|| async { "ok" }))
        .layer(auth);
    assert_eq!(statuses(&app, "/me", "sk_limited", 3).await, [200; 3]);
    let res = send(app.clone(), get_with_key("/me", "sk_limited")).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.body, "custom rate_limited minute");
    assert!(res.header("retry-after").is_some());
}

#[tokio::test]
async fn the_sliding_window_is_the_default_and_weighs_the_previous_window() {
    use std::sync::atomic::AtomicU64;
    use std::time::UNIX_EPOCH;
    static NOW_MS: AtomicU64 = AtomicU64::new(0);
    let layer = |limiter: RateLimiter| {
        let auth = ApiKeyAuthLayer::new(
            MemoryCache::new(),
            lookup_fn(|_: KeyHash| async {
                Ok::<_, Infallible>(Some(Client {
                    id: 9,
                    limits: Some(vec![limit("second", 4, 1)]),
                    org: None,
                    per_owner: false,
                }))
            }),
        )
        .rate_limits(limiter);
        Router::new()
            .route("/me", get(|| async { "ok" }))
            .layer(auth)
    };
    let clock = || UNIX_EPOCH + Duration::from_millis(NOW_MS.load(Ordering::SeqCst));
    let sliding = layer(RateLimiter::new(
        MemoryCounters::builder().clock(clock).build(),
    ));
    let fixed = layer(
        RateLimiter::new(MemoryCounters::builder().clock(clock).build())
            .algorithm(Algorithm::FixedWindow),
    );
    let at = |ms| NOW_MS.store(ms, Ordering::SeqCst);
    // A full burst at the end of one window, on both.
    at(10_900);
    assert_eq!(
        statuses(&sliding, "/me", "sk_a", 5).await,
        [200, 200, 200, 200, 429]
    );
    assert_eq!(
        statuses(&fixed, "/me", "sk_a", 5).await,
        [200, 200, 200, 200, 429]
    );
    // 100 ms into the next: the fixed window admits a whole new burst (8 in
    // 200 ms); the sliding one still counts 90 % of the last (3.6 units).
    at(11_100);
    assert_eq!(
        statuses(&fixed, "/me", "sk_a", 5).await,
        [200, 200, 200, 200, 429]
    );
    assert_eq!(statuses(&sliding, "/me", "sk_a", 2).await, [429, 429]);
    // 600 ms in, 40 % weighs (1.6 units): two fit.
    at(11_600);
    assert_eq!(statuses(&sliding, "/me", "sk_a", 3).await, [200, 200, 429]);
}
