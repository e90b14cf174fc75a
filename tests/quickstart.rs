//! Drives `examples/quickstart/` end to end over real HTTP: the binary the
//! README's first command runs.

#[path = "common/quickstart.rs"]
mod quickstart;

use std::process::Command;
use std::time::Duration;

use quickstart::{binary, call, get_status, start, ADMIN};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_end_to_end() {
    let qs = start(&[("DEMO_API_KEY", ADMIN), ("APIKEY_NEGATIVE_TTL", "60")]);
    let b = qs.base.clone();
    use reqwest::Method;
    assert!(
        qs.stdout.iter().any(|l| l.contains("curl")),
        "prints curl commands: {:?}",
        qs.stdout
    );
    assert!(
        !qs.stdout.iter().any(|l| l.contains(ADMIN)),
        "a given DEMO_API_KEY is not echoed"
    );

    assert_eq!(get_status(&format!("{b}/health"), None).await, 200);
    let (s, hello) = call(Method::GET, &format!("{b}/v1/hello"), None, None).await;
    assert_eq!(s, 200);
    assert!(hello["message"].as_str().unwrap().contains("anonymous"));
    let (_, hello) = call(Method::GET, &format!("{b}/v1/hello"), Some(ADMIN), None).await;
    assert_eq!(hello["message"], "hello, admin");

    let (s, body) = call(Method::GET, &format!("{b}/v1/me"), None, None).await;
    assert_eq!((s, body["code"].as_str()), (401, Some("missing_api_key")));
    let (s, me) = call(Method::GET, &format!("{b}/v1/me"), Some(ADMIN), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        me,
        json!({"id": 1, "name": "admin", "scopes": ["admin"], "allowed_networks": null,
               "expires_at": null, "rate_limits": []})
    );

    // Create a key.
    let (s, created) = call(
        Method::POST,
        &format!("{b}/v1/keys"),
        Some(ADMIN),
        Some(json!({"name": "ci-bot", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_i64().unwrap();
    let (s, me) = call(Method::GET, &format!("{b}/v1/me"), Some(&secret), None).await;
    assert_eq!((s, me["name"].as_str()), (200, Some("ci-bot")));
    // What a key without the admin scope gets on the admin routes:
    // tests/quickstart_authorization.rs.
    assert_eq!(
        get_status(&format!("{b}/v1/stats"), Some(&secret)).await,
        403
    );
    let (s, _) = call(
        Method::POST,
        &format!("{b}/v1/keys"),
        Some(ADMIN),
        Some(json!({"name": ""})),
    )
    .await;
    assert_eq!(s, 422);

    // Revoke: effective on the next request, though the key was cached.
    assert_eq!(
        call(
            Method::DELETE,
            &format!("{b}/v1/keys/{id}"),
            Some(ADMIN),
            None
        )
        .await
        .0,
        204
    );
    let (s, body) = call(Method::GET, &format!("{b}/v1/me"), Some(&secret), None).await;
    assert_eq!((s, body["code"].as_str()), (401, Some("invalid_token")));
    // Again: still 204 (the cache is invalidated again: what a retry after
    // a 503 needs); an id that never existed is 404.
    assert_eq!(
        call(
            Method::DELETE,
            &format!("{b}/v1/keys/{id}"),
            Some(ADMIN),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        call(
            Method::DELETE,
            &format!("{b}/v1/keys/987654321"),
            Some(ADMIN),
            None
        )
        .await
        .0,
        404
    );

    // A key with a TTL stops working when it expires, cached or not.
    let (_, short) = call(
        Method::POST,
        &format!("{b}/v1/keys"),
        Some(ADMIN),
        Some(json!({"name": "short", "ttl_seconds": 1})),
    )
    .await;
    let short = short["secret"].as_str().unwrap().to_owned();
    assert_eq!(get_status(&format!("{b}/v1/me"), Some(&short)).await, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get_status(&format!("{b}/v1/me"), Some(&short)).await, 401);

    let (s, stats) = call(Method::GET, &format!("{b}/v1/stats"), Some(ADMIN), None).await;
    assert_eq!(s, 200);
    for field in [
        "hits",
        "negative_hits",
        "misses",
        "lookups",
        "lookup_errors",
        "cache_errors",
        "coalesced",
    ] {
        assert!(stats[field].is_u64(), "{field} in {stats}");
    }
    assert!(stats["hits"].as_u64().unwrap() >= 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_shows_coalescing_with_a_slow_lookup() {
    let qs = start(&[
        ("DEMO_API_KEY", ADMIN),
        ("QUICKSTART_LOOKUP_DELAY_MS", "300"),
    ]);
    let url = format!("{}/v1/me", qs.base);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { call(reqwest::Method::GET, &url, Some(ADMIN), None).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let (_, stats) = call(
        reqwest::Method::GET,
        &format!("{}/v1/stats", qs.base),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(stats["lookups"], 1, "{stats}");
    assert_eq!(
        stats["misses"].as_u64(),
        Some(1 + stats["coalesced"].as_u64().unwrap()),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_with_a_failing_key_store_answers_503_not_401() {
    let qs = start(&[("DEMO_API_KEY", ADMIN), ("QUICKSTART_LOOKUP_FAIL", "1")]);
    let (s, body) = call(
        reqwest::Method::GET,
        &format!("{}/v1/me", qs.base),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (503, Some("lookup_unavailable"))
    );
    let res = reqwest::Client::new()
        .get(format!("{}/v1/me", qs.base))
        .bearer_auth("sk_unknown")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(get_status(&format!("{}/health", qs.base), None).await, 200);
}

#[test]
fn a_kept_database_gets_no_second_random_admin_key() {
    let path = std::env::temp_dir().join(format!("tower-api-key-qs-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}", path.display());
    let first = start(&[("DATABASE_URL", url.as_str())]);
    assert!(first
        .stdout
        .iter()
        .any(|l| l.starts_with("admin key (shown once")));
    drop(first);
    let second = start(&[("DATABASE_URL", url.as_str())]);
    assert!(
        !second
            .stdout
            .iter()
            .any(|l| l.starts_with("admin key (shown once")),
        "{:?}",
        second.stdout
    );
    drop(second);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn quickstart_prints_a_random_admin_key_once_and_rejects_bad_config() {
    let qs = start(&[]);
    let line = qs
        .stdout
        .iter()
        .find(|l| l.starts_with("admin key"))
        .expect("random admin key printed");
    assert!(line.contains("sk_"));
    drop(qs);

    let out = Command::new(binary())
        .env_clear()
        .env("PORT", "0")
        .env("APIKEY_CACHE_BACKEND", "carrier-pigeon")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("APIKEY_CACHE_BACKEND"));

    // A chosen admin key with the format's prefix would fail its checksum.
    let out = Command::new(binary())
        .env_clear()
        .env("PORT", "0")
        .env("DEMO_API_KEY", "sk_pub_my_own_admin_key")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEMO_API_KEY starts with sk_pub_"));
}

#[cfg(feature = "tiered")]
#[path = "common/redis.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_servers;

#[cfg(feature = "tiered")]
mod shared_redis {
    use super::*;

    use super::redis_servers as redis;

    /// Two quickstart processes, one key table (a SQLite file), one Redis:
    /// a key looked up by one is a hit for the other, and a key revoked
    /// through one is rejected by the other on its next request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_share_verdicts_and_revocations_through_redis() {
        two_instances_share_verdicts_and_revocations("redis").await;
    }

    /// The same with the tiered cache: B answers from its own L1, and A's
    /// revocation reaches B's L1 by broadcast.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_share_verdicts_and_revocations_through_the_tiered_cache() {
        two_instances_share_verdicts_and_revocations("tiered").await;
    }

    async fn two_instances_share_verdicts_and_revocations(backend: &str) {
        use reqwest::Method;
        let server = redis::RedisServer::start();
        let db = std::env::temp_dir().join(format!(
            "tower-api-key-qs-shared-{backend}-{}.db",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&db);
        let db_url = format!("sqlite://{}", db.display());
        let url = server.url();
        // The tiered instances seal their Redis values (one secret for
        // both); the Redis ones don't, and say so.
        let sealed = backend == "tiered";
        let secret = if sealed {
            "quickstart cache secret"
        } else {
            ""
        };
        let env = [
            ("DEMO_API_KEY", ADMIN),
            ("DATABASE_URL", db_url.as_str()),
            ("APIKEY_CACHE_BACKEND", backend),
            ("REDIS_URL", url.as_str()),
            ("APIKEY_CACHE_SECRET", secret),
        ];
        let a = start(&env);
        let b = start(&env);
        let said = if sealed {
            "(Redis values sealed with APIKEY_CACHE_SECRET)"
        } else {
            "(Redis values NOT authenticated"
        };
        assert!(
            a.stdout
                .iter()
                .any(|l| l.starts_with(&format!("cache: {backend} {said}"))),
            "{:?}",
            a.stdout
        );
        assert!(
            a.stdout
                .iter()
                .any(|l| l == "usage: recorded every 60000 ms, shared in Redis"),
            "{:?}",
            a.stdout
        );
        let (s, created) = call(
            Method::POST,
            &format!("{}/v1/keys", a.base),
            Some(ADMIN),
            Some(json!({"name": "shared"})),
        )
        .await;
        assert_eq!(s, 201);
        let secret = created["secret"].as_str().unwrap().to_owned();
        let id = created["id"].as_i64().unwrap();

        assert_eq!(
            get_status(&format!("{}/v1/me", a.base), Some(&secret)).await,
            200
        );
        for _ in 0..2 {
            assert_eq!(
                get_status(&format!("{}/v1/me", b.base), Some(&secret)).await,
                200
            );
        }
        let b_stats = || async {
            call(
                Method::GET,
                &format!("{}/v1/stats", b.base),
                Some(ADMIN),
                None,
            )
            .await
            .1
        };
        let stats_b = b_stats().await;
        assert_eq!(
            stats_b["lookups"], 0,
            "instance B answered from Redis: {stats_b}"
        );
        assert!(stats_b["hits"].as_u64().unwrap() >= 3, "{stats_b}");
        if backend == "tiered" {
            // The admin key and the new one, each read from Redis once;
            // then B's own L1 answered.
            assert_eq!(stats_b["tiered"]["l2_hits"], 2, "{stats_b}");
        }

        let revoke = format!("{}/v1/keys/{id}", a.base);
        assert_eq!(
            call(Method::DELETE, &revoke, Some(ADMIN), None).await.0,
            204
        );
        if backend == "tiered" {
            // The order that matters: once B has the broadcast, its next
            // request is rejected (A's key creation sent one too).
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while b_stats().await["tiered"]["broadcasts_received"]
                .as_u64()
                .unwrap_or(0)
                < 2
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no broadcast reached B"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(
            get_status(&format!("{}/v1/me", b.base), Some(&secret)).await,
            401
        );
        drop((a, b));
        let _ = std::fs::remove_file(&db);
    }

    #[test]
    fn redis_asked_for_without_a_url_still_authenticates_from_memory() {
        let qs = start(&[("DEMO_API_KEY", ADMIN), ("APIKEY_CACHE_BACKEND", "redis")]);
        assert!(
            qs.stdout.iter().any(|l| l.starts_with("cache: memory")),
            "{:?}",
            qs.stdout
        );
    }
}

/// Keys made by the quickstart carry a checksum: a forged one of the same
/// shape is refused with no lookup; the DEMO_API_KEY (no prefix) works as
/// given; with APIKEY_KEY_SECRETS the checksum is keyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_keys_carry_a_checksum_and_forged_ones_cost_no_lookup() {
    use reqwest::Method;
    for (env, said, prefix) in [
        (
            None,
            "keys: sk_pub_…, public CRC-32 checksum, legacy keys allowed",
            "sk_pub_",
        ),
        (
            Some("newest,older"),
            "keys: sk_live_…, keyed checksum (2 secrets), legacy keys allowed",
            "sk_live_",
        ),
    ] {
        let mut vars = vec![("DEMO_API_KEY", ADMIN)];
        if let Some(secrets) = env {
            vars.push(("APIKEY_KEY_SECRETS", secrets));
        }
        let qs = start(&vars);
        let b = qs.base.clone();
        assert!(qs.stdout.iter().any(|l| l == said), "{:?}", qs.stdout);
        let (s, created) = call(
            Method::POST,
            &format!("{b}/v1/keys"),
            Some(ADMIN),
            Some(json!({"name": "formatted"})),
        )
        .await;
        assert_eq!(s, 201, "{created}");
        let secret = created["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with(prefix), "{secret}");
        let checksum = if env.is_some() { 11 } else { 6 };
        assert_eq!(secret.len(), prefix.len() + 32 + checksum);
        assert_eq!(get_status(&format!("{b}/v1/me"), Some(&secret)).await, 200);
        let (_, before) = call(Method::GET, &format!("{b}/v1/stats"), Some(ADMIN), None).await;
        // The same shape, one character changed.
        let mut forged = secret.clone().into_bytes();
        forged[12] = if forged[12] == b'a' { b'b' } else { b'a' };
        let forged = String::from_utf8(forged).unwrap();
        for _ in 0..20 {
            assert_eq!(get_status(&format!("{b}/v1/me"), Some(&forged)).await, 401);
        }
        let (_, after) = call(Method::GET, &format!("{b}/v1/stats"), Some(ADMIN), None).await;
        assert_eq!(after["format_rejected"], 20, "{after}");
        assert_eq!(
            after["lookups"], before["lookups"],
            "no lookup for a forged key"
        );
    }
}

/// `GET /v1/keys` shows each key's usage as recorded once per interval:
/// null and 0 before, then the count and an RFC 3339 instant, written in
/// one batch (the requests themselves write nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_records_usage_in_batches_and_lists_it() {
    use reqwest::Method;
    let qs = start(&[("DEMO_API_KEY", ADMIN), ("APIKEY_USAGE_INTERVAL_MS", "200")]);
    let b = qs.base.clone();
    let (s, created) = call(
        Method::POST,
        &format!("{b}/v1/keys"),
        Some(ADMIN),
        Some(json!({"name": "counted"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let listed = |keys: &serde_json::Value| {
        keys.as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .cloned()
            .unwrap()
    };
    let (s, keys) = call(Method::GET, &format!("{b}/v1/keys"), Some(ADMIN), None).await;
    assert_eq!(s, 200, "{keys}");
    let fresh = listed(&keys);
    assert_eq!(fresh["name"], "counted");
    assert_eq!(fresh["last_used_at"], serde_json::Value::Null);
    assert_eq!(fresh["uses"], 0);
    // Only the admin lists keys.
    assert_eq!(
        get_status(&format!("{b}/v1/keys"), Some(&secret)).await,
        403
    );
    for _ in 0..25 {
        assert_eq!(get_status(&format!("{b}/v1/me"), Some(&secret)).await, 200);
    }
    let today = |_: ()| {
        let out = Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let day_before = today(());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let used = loop {
        let (_, keys) = call(Method::GET, &format!("{b}/v1/keys"), Some(ADMIN), None).await;
        let key = listed(&keys);
        // The 403 above was refused by the layer (the admin scope is its
        // configuration): not a use.
        if key["uses"] == 25 {
            break key;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded: {key}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at = used["last_used_at"].as_str().unwrap();
    assert_eq!(at.len(), "2026-12-01T21:13:05.123Z".len(), "{at}");
    assert!(at.ends_with('Z') && at.as_bytes()[10] == b'T', "{at}");
    assert!(
        at.starts_with(&day_before) || at.starts_with(&today(())),
        "{at} is today (UTC)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_its_metrics_in_prometheus_text() {
    let qs = start(&[("DEMO_API_KEY", ADMIN)]);
    let b = qs.base.clone();
    use reqwest::Method;
    for _ in 0..3 {
        let (s, _) = call(Method::GET, &format!("{b}/v1/me"), Some(ADMIN), None).await;
        assert_eq!(s, 200);
    }
    let (s, _) = call(
        Method::GET,
        &format!("{b}/v1/me"),
        Some("sk_live_nope"),
        None,
    )
    .await;
    assert_eq!(s, 401);
    // Public: no key needed.
    let res = reqwest::get(format!("{b}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text().await.expect("a body");
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    };
    assert!(value("api_key_auth_hits_total ") >= 2.0, "{text}");
    assert!(value("api_key_auth_cache_hits_total{tier=\"l1\"} ") >= 2.0);
    assert!(value("api_key_auth_rejections_total{reason=\"invalid_token\"} ") >= 1.0);
    assert!(text.contains("api_key_auth_lookup_duration_seconds"));
    // Described: Prometheus shows the help text.
    assert!(
        text.contains("# HELP api_key_auth_hits_total Requests answered from a cached valid key."),
        "{text}"
    );
    assert!(!text.contains(ADMIN) && !text.contains("sk_live_nope"));
}
