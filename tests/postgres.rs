//! The PostgreSQL example (`examples/postgres/`) against the machine's
//! PostgreSQL: the example's own modules, built into this test and served
//! over real HTTP, each test in a schema of its own (dropped at the end).
//! What is counted is what the store ran: its lookups (`SELECT`s) and its
//! usage `UPDATE`s, and the rows themselves.
//!
//! Without a PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) each test says `SKIPPED` and
//! passes, except under CI (`CI` set), where `scripts/test` has started one
//! and its absence is a failure.

#[path = "../examples/postgres/app.rs"]
#[allow(dead_code)]
mod app;
#[path = "common/quickstart.rs"]
mod quickstart;
#[path = "../examples/postgres/routes.rs"]
mod routes;
#[path = "../examples/postgres/store.rs"]
#[allow(dead_code)]
mod store;

use std::future::IntoFuture;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;

use app::{App, Settings};
use quickstart::{call, get_status};

/// A legacy key (no `sk_pg_` prefix): the example allows those.
const ADMIN: &str = "pg-test-admin-key-0123456789";

/// The example, built on a schema of its own and listening on a free port.
/// Dropping it drops the schema.
struct Running {
    base: String,
    app: App,
    url: String,
    schema: String,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `SELECT`s the store has run for keys.
    fn lookups(&self) -> u64 {
        self.app.store.queries().lookups.load(Ordering::Relaxed)
    }

    fn usage_updates(&self) -> u64 {
        self.app
            .store
            .queries()
            .usage_updates
            .load(Ordering::Relaxed)
    }

    /// Creates a key through the API; returns its id and secret.
    async fn create(&self, body: Value) -> (i64, String) {
        let (s, created) = call(Method::POST, &self.url("/v1/keys"), Some(ADMIN), Some(body)).await;
        assert_eq!(s, 201, "{created}");
        let secret = created["secret"].as_str().expect("secret").to_owned();
        (created["id"].as_i64().expect("id"), secret)
    }

    async fn delete(&self, path: &str, key: &str) -> (u16, Value) {
        call(Method::DELETE, &self.url(path), Some(key), None).await
    }

    async fn me(&self, key: &str) -> u16 {
        get_status(&self.url("/v1/me"), Some(key)).await
    }

    /// A row's `revoked_at`, as text.
    async fn revoked_at(&self, id: i64) -> Option<String> {
        sqlx::query_scalar("SELECT revoked_at::text FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_one(self.app.store.pool())
            .await
            .expect("row")
    }

    /// `(use_count, last_used_at as Unix microseconds)` of a row.
    async fn usage_of(&self, id: i64) -> (i64, Option<i64>) {
        sqlx::query_as(
            "SELECT use_count, (extract(epoch FROM last_used_at) * 1000000)::int8
             FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_one(self.app.store.pool())
        .await
        .expect("row")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Also after a failed assertion: on a thread of its own, as the
        // test's runtime may be gone.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut conn)
                    .await
                    .map(drop)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "could not drop the test schema {}: {dropped:?}",
                self.schema
            );
        }
    }
}

/// The example on a fresh schema, or `None` (after a loud message) when no
/// PostgreSQL can be reached and this is not CI.
async fn start(usage_interval: Duration) -> Option<Running> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| app::DEFAULT_DATABASE_URL.to_owned());
    if let Err(e) = sqlx::PgConnection::connect(&url).await {
        // Where, without what is before the `@` or after a `?` (a
        // password, perhaps).
        let at = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
        let at = at.split('?').next().unwrap_or(at);
        if std::env::var_os("CI").is_some() {
            panic!("no PostgreSQL at {at} under CI (scripts/test starts one): {e}");
        }
        // Straight to stderr: libtest would capture an `eprintln!` of a
        // passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no PostgreSQL at {at} ({e}); run scripts/test to have one"
        );
        return None;
    }
    let schema = format!("apikey_test_{:016x}", rand::random::<u64>());
    let app = app::build(Settings {
        database_url: url.clone(),
        schema: schema.clone(),
        positive_ttl: Duration::from_secs(300),
        negative_ttl: Duration::from_secs(60),
        usage_interval,
        admin_key: Some(ADMIN.to_owned()),
    })
    .await
    .expect("the example builds on a fresh schema");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, app.router.clone()).into_future());
    Some(Running {
        base,
        app,
        url,
        schema,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_once_then_revoke_unknown_and_expired() {
    let Some(pg) = start(Duration::from_secs(60)).await else {
        return;
    };
    let (s, me) = call(Method::GET, &pg.url("/v1/me"), Some(ADMIN), None).await;
    assert_eq!((s, me["owner"].as_str()), (200, Some("admin")), "{me}");
    assert_eq!(get_status(&pg.url("/health"), None).await, 200);

    // Created: the secret shown once, only its SHA-256 in the table.
    let (id, secret) = pg
        .create(json!({"owner": "acme", "name": "ci-bot", "scopes": ["read"]}))
        .await;
    assert!(secret.starts_with(app::KEY_PREFIX), "{secret}");
    let (hashed, plaintext_rows): (bool, i64) = sqlx::query_as(
        "SELECT bool_and(key_hash = sha256(convert_to($1, 'UTF8')) OR id <> $2),
                count(*) FILTER (WHERE strpos(k::text, $1) > 0)
         FROM api_keys AS k",
    )
    .bind(&secret)
    .bind(id)
    .fetch_one(pg.app.store.pool())
    .await
    .unwrap();
    assert!(hashed, "key_hash is the key's SHA-256");
    assert_eq!(plaintext_rows, 0, "no column holds the secret");

    // Many requests, one SELECT.
    let before = pg.lookups();
    for _ in 0..50 {
        let (s, me) = call(Method::GET, &pg.url("/v1/me"), Some(&secret), None).await;
        assert_eq!(s, 200, "{me}");
        assert_eq!(me["owner"], "acme");
        assert_eq!(me["scopes"], json!(["read"]));
    }
    assert_eq!(pg.lookups() - before, 1, "50 requests, one lookup");

    // A fresh key asked for by 32 requests at once: still one SELECT.
    let (_, fresh) = pg.create(json!({"owner": "acme", "name": "burst"})).await;
    let before = pg.lookups();
    let statuses = futures_util::future::join_all((0..32).map(|_| pg.me(&fresh))).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(
        pg.lookups() - before,
        1,
        "concurrent misses share one lookup"
    );

    // Unknown: 401, cached as a negative entry.
    let unknown = "no-such-key-0123456789abcdef";
    let before = (pg.lookups(), pg.app.auth.stats().negative_hits);
    let (s, body) = call(Method::GET, &pg.url("/v1/me"), Some(unknown), None).await;
    assert_eq!((s, body["code"].as_str()), (401, Some("invalid_token")));
    assert_eq!(pg.me(unknown).await, 401);
    assert_eq!(pg.lookups() - before.0, 1, "the second is a negative hit");
    assert_eq!(pg.app.auth.stats().negative_hits - before.1, 1);
    // A key with the prefix and a wrong checksum costs no lookup at all.
    let forged = format!("{}{}", app::KEY_PREFIX, "A".repeat(38));
    let before = pg.lookups();
    assert_eq!(pg.me(&forged).await, 401);
    assert_eq!(pg.lookups(), before, "refused by the key format");

    // Revoked: refused on the very next request, the row marked.
    assert_eq!(pg.revoked_at(id).await, None);
    let revoke = format!("/v1/keys/{id}");
    assert_eq!(pg.delete(&revoke, &fresh).await.0, 403);
    assert_eq!(pg.delete(&revoke, ADMIN).await.0, 204);
    // (Key management bypasses the cache: the admin's key was looked up.)
    let before = pg.lookups();
    assert_eq!(pg.me(&secret).await, 401, "revoked: 401 at once");
    assert_eq!(pg.lookups() - before, 1, "invalidated: looked up again");
    let revoked_at = pg.revoked_at(id).await.expect("revoked_at set");
    // Again: idempotent, the first instant kept.
    assert_eq!(pg.delete(&revoke, ADMIN).await.0, 204);
    assert_eq!(pg.revoked_at(id).await.as_ref(), Some(&revoked_at));
    assert_eq!(pg.me(&secret).await, 401);
    assert_eq!(pg.delete("/v1/keys/999999", ADMIN).await.0, 404);

    // A row past its expires_at is not found.
    let expired = "pg-test-expired-key-0123456789";
    sqlx::query(
        "INSERT INTO api_keys (owner, name, key_hash, expires_at)
         VALUES ('acme', 'expired', $1, now() - interval '1 minute')",
    )
    .bind(pg.app.auth.hash_key(expired).as_bytes().as_slice())
    .execute(pg.app.store.pool())
    .await
    .unwrap();
    assert_eq!(pg.me(expired).await, 401);

    // A cached key stops at its row's expiry (the principal carries it).
    let (_, short) = pg
        .create(json!({"owner": "acme", "name": "short", "ttl_seconds": 2}))
        .await;
    let (s, me) = call(Method::GET, &pg.url("/v1/me"), Some(&short), None).await;
    assert_eq!(s, 200, "{me}");
    let expires_at = me["expires_at"].as_u64().expect("expires_at");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expires_at >= now && expires_at <= now + 2,
        "{expires_at} vs {now}"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(pg.me(&short).await, 401, "expired while cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_revocation_reaches_every_key_of_the_owner() {
    let Some(pg) = start(Duration::from_secs(60)).await else {
        return;
    };
    let (_, a) = pg.create(json!({"owner": "globex", "name": "a"})).await;
    let (_, b) = pg.create(json!({"owner": "globex", "name": "b"})).await;
    let (_, other) = pg.create(json!({"owner": "initech", "name": "c"})).await;
    for key in [&a, &b, &other] {
        assert_eq!(pg.me(key).await, 200);
    }
    let owner = "/v1/owners/globex/keys";
    assert_eq!(pg.delete(owner, ADMIN).await, (200, json!({"revoked": 2})));
    let before = pg.lookups();
    assert_eq!(pg.me(&a).await, 401);
    assert_eq!(pg.me(&b).await, 401);
    assert_eq!(pg.me(&other).await, 200, "another owner's key stays");
    assert_eq!(
        pg.lookups() - before,
        2,
        "only the owner's keys were dropped"
    );
    assert_eq!(
        pg.delete(owner, ADMIN).await,
        (200, json!({"revoked": 0})),
        "idempotent"
    );
    let revoked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE owner = 'globex' AND revoked_at IS NOT NULL",
    )
    .fetch_one(pg.app.store.pool())
    .await
    .unwrap();
    assert_eq!(revoked, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_one_update_per_batch() {
    // A long interval: the batches here are the flushes this test asks for.
    let Some(pg) = start(Duration::from_secs(600)).await else {
        return;
    };
    let (a, key_a) = pg.create(json!({"owner": "acme", "name": "a"})).await;
    let (b, key_b) = pg.create(json!({"owner": "acme", "name": "b"})).await;
    let started: i64 = sqlx::query_scalar("SELECT (extract(epoch FROM now()) * 1000000)::int8")
        .fetch_one(pg.app.store.pool())
        .await
        .unwrap();
    for _ in 0..30 {
        assert_eq!(pg.me(&key_a).await, 200);
    }
    for _ in 0..20 {
        assert_eq!(pg.me(&key_b).await, 200);
    }
    assert_eq!(
        pg.usage_of(a).await,
        (0, None),
        "nothing written per request"
    );
    assert_eq!(pg.usage_updates(), 0);

    pg.app.usage.flush().await.expect("flush");
    assert_eq!(pg.usage_updates(), 1, "one UPDATE for the batch");
    assert_eq!(pg.app.usage.stats().batches, 1);
    let (uses_a, last_a) = pg.usage_of(a).await;
    let (uses_b, last_b) = pg.usage_of(b).await;
    assert_eq!((uses_a, uses_b), (30, 20));
    let (last_a, last_b) = (last_a.expect("last_used_at"), last_b.expect("last_used_at"));
    // The database's clock and ours: a second apart at most.
    assert!(last_a >= started - 1_000_000, "{last_a} vs {started}");
    assert!(last_b >= last_a, "b was used after a");
    // Every row the batch touched (the admin's too) in one transaction.
    let writers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM api_keys WHERE use_count > 0")
            .fetch_one(pg.app.store.pool())
            .await
            .unwrap();
    assert_eq!(writers, 1, "one statement wrote every key of the batch");

    // The next batch adds, and moves the instant forward only.
    for _ in 0..5 {
        assert_eq!(pg.me(&key_a).await, 200);
    }
    pg.app.usage.flush().await.expect("flush");
    assert_eq!(pg.usage_updates(), 2);
    let (uses, last) = pg.usage_of(a).await;
    assert_eq!(uses, 35);
    assert!(last.unwrap() > last_a);
    assert_eq!(pg.usage_of(b).await, (20, Some(last_b)), "b untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_written_every_interval() {
    let Some(pg) = start(Duration::from_millis(200)).await else {
        return;
    };
    let (id, key) = pg.create(json!({"owner": "acme", "name": "a"})).await;
    for _ in 0..25 {
        assert_eq!(pg.me(&key).await, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pg.usage_of(id).await.0 < 25 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (uses, last) = pg.usage_of(id).await;
    assert_eq!(uses, 25, "written by the tracker's own batches");
    assert!(last.is_some());
    let batches = pg.app.usage.stats().batches;
    assert_eq!(pg.usage_updates(), batches, "one UPDATE per batch");
    assert!(batches < 25, "{batches} batches for 25 requests");
}
