//! The routes: public `/health` and `/metrics` (Prometheus text), optional
//! `/v1/hello`, required `/v1/me`, `/v1/reports` (scope `reports:read` or
//! `admin`), and the admin's key management and counters. Which scope a
//! route needs is the layer's configuration (`main.rs`), not these
//! handlers' code.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tower_api_key::ratelimit::RateLimitStatus;
use tower_api_key::{ApiKeyAuthLayer, Authenticated, FormatError, IpNet, KeyFormat, RateLimit};

use crate::cache::{tiered_stats, Cache};
use crate::db::{unix_now, ApiClient, Db, DbError, NewRow};
use crate::lookup::DbLookup;

pub type Auth = ApiKeyAuthLayer<Cache, DbLookup>;

/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The app, every route behind `auth`.
pub fn router(db: Db, auth: Auth, format: KeyFormat, metrics: PrometheusHandle) -> Router {
    let state = AppState {
        db,
        auth: auth.clone(),
        format: Arc::new(format),
    };
    Router::new()
        .route("/health", get(health))
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(CONTENT_TYPE, PROMETHEUS_TEXT)], text) }
            }),
        )
        .route("/v1/hello", get(hello))
        .route("/v1/me", get(me))
        .route("/v1/reports", get(reports))
        .route("/v1/keys", post(create_key).get(list_keys))
        .route("/v1/keys/{id}", delete(revoke_key))
        .route("/v1/stats", get(stats))
        .layer(auth)
        .with_state(state)
}

#[derive(Clone)]
struct AppState {
    db: Db,
    auth: Auth,
    /// How new keys are made (the layer checks the same format).
    format: Arc<KeyFormat>,
}

/// Errors of the demo's own handlers, as problem+json.
struct ApiError(StatusCode, &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.0.canonical_reason().unwrap_or("Error"),
            "status": self.0.as_u16(),
            "detail": self.1,
        });
        (
            self.0,
            [("content-type", "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        tracing::error!(error = %e, "key store failed");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the key store is unavailable",
        )
    }
}

/// A new key's secret, in the quickstart's format (a prefix, 32 random
/// characters, a checksum): shown once, stored only as its hash.
pub fn new_secret(format: &KeyFormat) -> Result<String, FormatError> {
    Ok(format.generate()?.into_parts().0)
}

async fn health() -> &'static str {
    "ok"
}

async fn hello(client: Option<Authenticated<ApiClient>>) -> Json<serde_json::Value> {
    Json(match client {
        Some(c) => serde_json::json!({ "message": format!("hello, {}", c.name) }),
        None => {
            serde_json::json!({ "message": "hello, anonymous caller; send a key to be greeted by name" })
        }
    })
}

/// The caller's key: its scopes, the networks it may be used from (`null`:
/// anywhere), and each of its rate-limit policies with what this request
/// left of it (`rate_limits` is empty for an unlimited key).
async fn me(
    Authenticated(client): Authenticated<ApiClient>,
    status: Option<Extension<RateLimitStatus>>,
) -> Json<serde_json::Value> {
    let limits: Vec<serde_json::Value> = status
        .iter()
        .flat_map(|Extension(s)| s.policies())
        .map(|(limit, quota)| {
            serde_json::json!({
                "name": limit.name(),
                "quota": limit.quota(),
                "window_seconds": limit.window().as_secs(),
                "remaining": quota.remaining,
                "reset_seconds": quota.reset,
            })
        })
        .collect();
    Json(serde_json::json!({
        "id": client.id,
        "name": client.name,
        "scopes": client.scopes,
        "allowed_networks": client.allowed_networks,
        "expires_at": client.expires_at,
        "rate_limits": limits,
    }))
}

/// A report for keys with `reports:read` (or `admin`): how many keys are
/// active and the uses recorded of them.
async fn reports(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let (keys, uses) = state.db.totals().await?;
    Ok(Json(
        serde_json::json!({ "active_keys": keys, "uses": uses }),
    ))
}

#[derive(Deserialize)]
struct NewKey {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    ttl_seconds: Option<u64>,
    /// `None`: the default policy (`APIKEY_DEFAULT_RATE_LIMIT`, or none).
    rate_limits: Option<Vec<RateLimit>>,
    /// `None` (or absent): usable from anywhere.
    allowed_networks: Option<Vec<IpNet>>,
}

#[derive(Serialize)]
struct CreatedKey {
    id: i64,
    secret: String,
    expires_at: Option<u64>,
}

/// `POST /v1/keys` (scope `admin`, required by the layer before the body
/// is read: a caller without it learns nothing from this handler).
async fn create_key(
    State(state): State<AppState>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let Json(new) = body.map_err(|_| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected JSON {\"name\": string, \"scopes\"?: [string], \"ttl_seconds\"?: number, \
             \"rate_limits\"?: [{\"name\"?: string, \"quota\": number > 0, \"window_seconds\": number > 0}], \
             \"allowed_networks\"?: [CIDR string]}",
        )
    })?;
    let name = new.name.trim().to_owned();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must be 1 to 100 characters",
        ));
    }
    if new.scopes.len() > 32 || new.scopes.iter().any(|s| s.is_empty() || s.len() > 64) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "scopes must be up to 32 names of 1 to 64 characters",
        ));
    }
    if new.rate_limits.as_ref().is_some_and(|l| l.len() > 8) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rate_limits must be up to 8 policies",
        ));
    }
    if new.allowed_networks.as_ref().is_some_and(|n| n.len() > 16) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "allowed_networks must be up to 16 networks",
        ));
    }
    let expires_at = match new.ttl_seconds {
        None => None,
        Some(0) => {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ttl_seconds must be positive",
            ))
        }
        Some(ttl) => Some(unix_now().saturating_add(ttl)),
    };
    let secret = new_secret(&state.format).map_err(|e| {
        tracing::error!(error = %e, "could not make a key");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "could not make a key")
    })?;
    let hash = state.auth.hash_key(&secret);
    let row = NewRow {
        name,
        scopes: new.scopes,
        expires_at,
        rate_limits: new.rate_limits,
        // The network's own address (`10.1.2.3/8` is `10.0.0.0/8`).
        allowed_networks: new
            .allowed_networks
            .map(|nets| nets.iter().map(IpNet::trunc).collect()),
    };
    let id = state.db.insert(hash, row).await?;
    // A negative entry cached before this key existed must not block it.
    if let Err(e) = state.auth.invalidate(&hash).await {
        tracing::warn!(error = %e, "could not invalidate the new key's hash");
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id,
            secret,
            expires_at,
        }),
    ))
}

/// One key in `GET /v1/keys`: its usage as last recorded (once per
/// `APIKEY_USAGE_INTERVAL_MS`).
#[derive(Serialize)]
struct ListedKey {
    id: i64,
    name: String,
    /// RFC 3339, UTC; `null` before its first recorded use.
    last_used_at: Option<String>,
    uses: u64,
}

async fn list_keys(State(state): State<AppState>) -> Result<Json<Vec<ListedKey>>, ApiError> {
    let rows = state.db.list().await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, name, last, uses)| ListedKey {
                id,
                name,
                last_used_at: last.map(rfc3339),
                uses,
            })
            .collect(),
    ))
}

/// Unix milliseconds as RFC 3339 in UTC (`2026-12-01T21:13:05.123Z`).
fn rfc3339(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    // Revoking a revoked key invalidates it again: a retry after a 503
    // (the cache could not be reached) finishes the job.
    let Some(hash) = state.db.revoke(id).await? else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no key with this id"));
    };
    // Revoked in the table; now gone from the cache, effective on the next request.
    state.auth.invalidate(&hash).await.map_err(|e| {
        tracing::error!(error = %e, "revoked in the table but the cache could not be invalidated");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "revoked, but the cache could not be invalidated; retry",
        )
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut body = serde_json::to_value(state.auth.stats()).unwrap_or_default();
    if let Some(tiered) = tiered_stats(state.auth.cache()) {
        body["tiered"] = tiered;
    }
    Ok(Json(body))
}
