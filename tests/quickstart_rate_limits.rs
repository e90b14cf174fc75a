//! The quickstart's rate limits over real HTTP: keys created with their
//! policies, the fields on every response, `429` with `Retry-After` and a
//! problem body, `/v1/me` and `/v1/stats`, the default policy from the
//! environment, and (built with `--features tiered`) two processes on one
//! Redis enforcing one limit together.

#[path = "common/quickstart.rs"]
mod quickstart;

use quickstart::{call, call_with_headers, start, ADMIN};
use reqwest::Method;
use serde_json::{json, Value};

/// Creates a key through `base`; answers its secret.
async fn create(base: &str, body: Value) -> String {
    let (status, created) = call(
        Method::POST,
        &format!("{base}/v1/keys"),
        Some(ADMIN),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    created["secret"].as_str().expect("secret").to_owned()
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_key_is_told_its_quota_then_refused_with_429() {
    let qs = start(&[("DEMO_API_KEY", ADMIN)]);
    let b = qs.base.clone();
    assert!(
        qs.stdout
            .iter()
            .any(|l| l == "rate limits: memory, default none"),
        "{:?}",
        qs.stdout
    );
    let secret = create(
        &b,
        json!({"name": "limited", "rate_limits": [{"name": "burst", "quota": 5, "window_seconds": 60}]}),
    )
    .await;
    let me = format!("{b}/v1/me");
    for left in (0..5).rev() {
        let (status, headers, body) =
            call_with_headers(Method::GET, &me, Some(&secret), None).await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "ratelimit-policy"),
            Some("\"burst\";q=5;w=60")
        );
        let field = header(&headers, "ratelimit").expect("RateLimit");
        assert!(
            field.starts_with(&format!("\"burst\";r={left};t=")),
            "{field}"
        );
        assert_eq!(body["rate_limits"][0]["name"], "burst");
        assert_eq!(body["rate_limits"][0]["quota"], 5);
        assert_eq!(body["rate_limits"][0]["remaining"], left, "{body}");
    }
    let (status, headers, body) = call_with_headers(Method::GET, &me, Some(&secret), None).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = header(&headers, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    // A sliding window may ask for more than the window: the five count in
    // the next window too, weighted down, until a fifth of it has passed.
    assert!((1..=60 + 60 / 5).contains(&retry), "{retry}");
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/problem+json")
    );
    assert!(
        body["type"].as_str().unwrap().ends_with("#quota-exceeded"),
        "{body}"
    );
    assert!(header(&headers, "ratelimit").unwrap().contains(";r=0;"));
    // Other routes of the key are refused as well; the admin is unlimited.
    assert_eq!(
        call(Method::GET, &format!("{b}/v1/hello"), Some(&secret), None)
            .await
            .0,
        429
    );
    for _ in 0..10 {
        let (status, headers, body) = call_with_headers(Method::GET, &me, Some(ADMIN), None).await;
        assert_eq!(status, 200);
        assert!(
            header(&headers, "ratelimit").is_none(),
            "the admin has no limit"
        );
        assert_eq!(body["rate_limits"], json!([]));
    }
    let (_, stats) = call(Method::GET, &format!("{b}/v1/stats"), Some(ADMIN), None).await;
    assert_eq!(stats["rate_limit_admitted"], 5, "{stats}");
    assert_eq!(stats["rate_limited"], 2, "{stats}");
    assert_eq!(stats["rate_limit_store_errors"], 0, "{stats}");
    // A key made without limits has none (no default set).
    let free = create(&b, json!({"name": "free"})).await;
    for _ in 0..10 {
        let (status, headers, _) = call_with_headers(Method::GET, &me, Some(&free), None).await;
        assert_eq!(status, 200);
        assert!(header(&headers, "ratelimit-policy").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_limit_applies_to_keys_made_without_one_and_bad_limits_are_422() {
    let qs = start(&[
        ("DEMO_API_KEY", ADMIN),
        ("APIKEY_DEFAULT_RATE_LIMIT", "3/60"),
    ]);
    let b = qs.base.clone();
    let secret = create(&b, json!({"name": "defaulted"})).await;
    let me = format!("{b}/v1/me");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(call(Method::GET, &me, Some(&secret), None).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // The admin key stays unlimited whatever the default.
    for _ in 0..5 {
        assert_eq!(call(Method::GET, &me, Some(ADMIN), None).await.0, 200);
    }
    for bad in [
        json!({"name": "x", "rate_limits": [{"quota": 0, "window_seconds": 60}]}),
        json!({"name": "x", "rate_limits": [{"quota": 5, "window_seconds": 0}]}),
        json!({"name": "x", "rate_limits": [{"quota": 5}]}),
        json!({"name": "x", "rate_limits": "lots"}),
    ] {
        let (status, body) = call(
            Method::POST,
            &format!("{b}/v1/keys"),
            Some(ADMIN),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 422, "{bad} -> {body}");
    }
}

#[cfg(feature = "tiered")]
#[path = "common/redis.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_servers;

/// Two quickstart processes, one key table, one Redis for the counters:
/// a key with a quota of 10 gets exactly 10 successes across both.
#[cfg(feature = "tiered")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_enforce_one_limit() {
    let server = redis_servers::RedisServer::start();
    let db =
        std::env::temp_dir().join(format!("tower-api-key-qs-limits-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let db_url = format!("sqlite://{}", db.display());
    let url = server.url();
    let env = [
        ("DEMO_API_KEY", ADMIN),
        ("DATABASE_URL", db_url.as_str()),
        ("APIKEY_RATELIMIT_BACKEND", "redis"),
        ("REDIS_URL", url.as_str()),
    ];
    let a = start(&env);
    let b = start(&env);
    assert!(
        a.stdout
            .iter()
            .any(|l| l == "rate limits: redis (strict), default none"),
        "{:?}",
        a.stdout
    );
    let secret = create(
        &a.base,
        json!({"name": "shared", "rate_limits": [{"quota": 10, "window_seconds": 3600}]}),
    )
    .await;
    let mut admitted = 0;
    for i in 0..30 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let status = call(Method::GET, &format!("{base}/v1/me"), Some(&secret), None)
            .await
            .0;
        assert!(status == 200 || status == 429, "{status}");
        admitted += usize::from(status == 200);
    }
    assert_eq!(admitted, 10, "one limit across both");
    drop((a, b));
    let _ = std::fs::remove_file(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_table_from_before_rate_limits_gets_their_column() {
    let db = std::env::temp_dir().join(format!("tower-api-key-qs-old-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE api_keys (
                id INTEGER PRIMARY KEY, name TEXT NOT NULL, key_hash BLOB NOT NULL UNIQUE,
                scopes TEXT NOT NULL DEFAULT '[]', created_at INTEGER NOT NULL,
                expires_at INTEGER, revoked_at INTEGER
            );",
        )
        .unwrap();
    let db_url = format!("sqlite://{}", db.display());
    let qs = start(&[("DEMO_API_KEY", ADMIN), ("DATABASE_URL", db_url.as_str())]);
    let secret = create(
        &qs.base,
        json!({"name": "new", "rate_limits": [{"quota": 1, "window_seconds": 60}]}),
    )
    .await;
    let me = format!("{}/v1/me", qs.base);
    assert_eq!(call(Method::GET, &me, Some(&secret), None).await.0, 200);
    assert_eq!(call(Method::GET, &me, Some(&secret), None).await.0, 429);
    drop(qs);
    let _ = std::fs::remove_file(&db);
}
