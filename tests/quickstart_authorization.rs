//! The quickstart's authorization, over real HTTP: the admin routes and
//! `/v1/reports` need their scopes through the layer's configuration (403
//! `insufficient_scope` with the RFC 6750 challenge), keys made with
//! `allowed_networks` work only from there (the peer, or through
//! `APIKEY_TRUSTED_PROXIES` the forwarded client), and `/v1/me` shows both.

#[path = "common/quickstart.rs"]
mod quickstart;

use quickstart::{call, call_with_headers, start, ADMIN};
use reqwest::Method;
use serde_json::{json, Value};

async fn create(base: &str, body: Value) -> String {
    let (s, created) = call(
        Method::POST,
        &format!("{base}/v1/keys"),
        Some(ADMIN),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    created["secret"].as_str().unwrap().to_owned()
}

async fn get_from(url: &str, key: &str, forwarded_for: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url).bearer_auth(key);
    if let Some(chain) = forwarded_for {
        req = req.header("x-forwarded-for", chain);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_and_reports_need_their_scopes_through_the_layer() {
    let qs = start(&[("DEMO_API_KEY", ADMIN)]);
    let b = qs.base.clone();
    let reader = create(&b, json!({"name": "reader", "scopes": ["reports:read"]})).await;
    let plain = create(&b, json!({"name": "plain"})).await;

    // /v1/reports: reports:read OR admin.
    for key in [ADMIN, reader.as_str()] {
        let (s, report) = get_from(&format!("{b}/v1/reports"), key, None).await;
        assert_eq!(s, 200, "{report}");
        assert!(report["active_keys"].as_u64().unwrap() >= 3, "{report}");
    }
    let (s, headers, body) =
        call_with_headers(Method::GET, &format!("{b}/v1/reports"), Some(&plain), None).await;
    assert_eq!(s, 403);
    assert_eq!(
        headers["www-authenticate"],
        r#"Bearer realm="api", error="insufficient_scope", scope="reports:read""#
    );
    assert_eq!(body["code"], "insufficient_scope");
    assert_eq!(body["required_scopes"], "reports:read OR admin");

    // Every admin route, for a key without admin: the layer's 403.
    for (method, path, body) in [
        (Method::POST, "/v1/keys", Some(json!({"name": "x"}))),
        (Method::POST, "/v1/keys", Some(json!({"bad": 1}))),
        (Method::GET, "/v1/keys", None),
        (Method::DELETE, "/v1/keys/1", None),
        (Method::GET, "/v1/stats", None),
    ] {
        let url = format!("{b}{path}");
        let (s, headers, answer) =
            call_with_headers(method.clone(), &url, Some(&reader), body).await;
        assert_eq!(s, 403, "{method} {path}: {answer}");
        assert_eq!(answer["code"], "insufficient_scope", "{method} {path}");
        assert_eq!(answer["required_scopes"], "admin");
        assert_eq!(
            headers["www-authenticate"],
            r#"Bearer realm="api", error="insufficient_scope", scope="admin""#
        );
    }
    // No spelling of an admin route gets past it.
    for path in ["//v1/keys", "/v1/keys/", "/v1/%6Beys", "/v1/stats/"] {
        let (s, _) = get_from(&format!("{b}{path}"), &reader, None).await;
        assert!(!(200..300).contains(&s), "{path}: {s}");
    }
    let (s, stats) = call(Method::GET, &format!("{b}/v1/stats"), Some(ADMIN), None).await;
    assert_eq!(s, 200);
    // 1 + 5 + the 4 spellings: without a MatchedPath (axum's router matched
    // none of them), each needed every requirement at once.
    assert_eq!(stats["forbidden_scope"], 10, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_networks_work_only_from_there() {
    let qs = start(&[("DEMO_API_KEY", ADMIN)]);
    let b = qs.base.clone();
    let local = create(
        &b,
        json!({"name": "local", "scopes": ["reports:read"], "allowed_networks": ["127.0.0.0/8", "::1/128"]}),
    )
    .await;
    let office = create(
        &b,
        json!({"name": "office", "allowed_networks": ["10.0.0.0/8"]}),
    )
    .await;

    let (s, me) = get_from(&format!("{b}/v1/me"), &local, None).await;
    assert_eq!(s, 200);
    assert_eq!(me["scopes"], json!(["reports:read"]));
    assert_eq!(me["allowed_networks"], json!(["127.0.0.0/8", "::1/128"]));
    let (s, body) = get_from(&format!("{b}/v1/me"), &office, None).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (403, Some("address_not_allowed"))
    );
    // Without trusted proxies, a forwarded address is not believed.
    let (s, _) = get_from(&format!("{b}/v1/me"), &office, Some("10.1.2.3")).await;
    assert_eq!(s, 403);
    // A bad network is refused at creation.
    let (s, _) = call(
        Method::POST,
        &format!("{b}/v1/keys"),
        Some(ADMIN),
        Some(json!({"name": "bad", "allowed_networks": ["10.0.0.0/33"]})),
    )
    .await;
    assert_eq!(s, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_the_forwarded_client_decides() {
    let qs = start(&[
        ("DEMO_API_KEY", ADMIN),
        ("APIKEY_TRUSTED_PROXIES", "127.0.0.1/32, 192.168.0.0/16"),
    ]);
    assert!(qs
        .stdout
        .iter()
        .any(|l| l.contains("X-Forwarded-For through 2 trusted proxy networks")));
    let b = qs.base.clone();
    let office = create(
        &b,
        json!({"name": "office", "allowed_networks": ["10.0.0.0/8"]}),
    )
    .await;
    let me = format!("{b}/v1/me");
    assert_eq!(get_from(&me, &office, Some("10.1.2.3")).await.0, 200);
    assert_eq!(
        get_from(&me, &office, Some("10.1.2.3, 192.168.1.1"))
            .await
            .0,
        200
    );
    assert_eq!(
        get_from(&me, &office, Some("10.9.9.9, 172.16.0.1")).await.0,
        403,
        "an untrusted hop"
    );
    assert_eq!(get_from(&me, &office, Some("not an address")).await.0, 403);
    assert_eq!(
        get_from(&me, &office, None).await.0,
        403,
        "the proxy itself"
    );
}

#[test]
fn a_bad_trusted_proxy_list_stops_the_start() {
    let out = std::process::Command::new(quickstart::binary())
        .env_clear()
        .env("PORT", "0")
        .env("APIKEY_TRUSTED_PROXIES", "10.0.0.0/8, nonsense")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("APIKEY_TRUSTED_PROXIES"), "{err}");
}
