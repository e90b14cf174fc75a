//! The routes: public `/health`, required `/v1/me`, and the admin's key
//! management (create, list, revoke one, revoke an owner's) and counters.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower_api_key::usage::UsageTracker;
use tower_api_key::{Authenticated, FormatError, KeyFormat};

use crate::app::Auth;
use crate::store::{ApiKey, KeyRow, PgStore};

/// The app, every route behind `auth`.
pub fn router(
    store: PgStore,
    auth: Auth,
    format: KeyFormat,
    usage: UsageTracker<ApiKey>,
) -> Router {
    let state = AppState {
        store,
        auth: auth.clone(),
        format: Arc::new(format),
        usage,
    };
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/me", get(me))
        .route("/v1/keys", post(create_key).get(list_keys))
        .route("/v1/keys/{id}", delete(revoke_key))
        .route("/v1/owners/{owner}/keys", delete(revoke_owner))
        .route("/v1/stats", get(stats))
        .layer(auth)
        .with_state(state)
}

#[derive(Clone)]
struct AppState {
    store: PgStore,
    auth: Auth,
    /// How new keys are made (the layer checks the same format).
    format: Arc<KeyFormat>,
    usage: UsageTracker<ApiKey>,
}

/// Errors of the example's own handlers, as problem+json.
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

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "key table failed");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the key table is unavailable",
        )
    }
}

/// A new key's secret (the prefix, 32 random characters, a checksum): shown
/// once, stored only as its hash.
pub fn new_secret(format: &KeyFormat) -> Result<String, FormatError> {
    Ok(format.generate()?.into_parts().0)
}

fn unix_seconds(key: &ApiKey) -> Option<u64> {
    key.expires_at
        .map(|t| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

async fn me(Authenticated(key): Authenticated<ApiKey>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "id": key.id,
        "owner": key.owner,
        "name": key.name,
        "scopes": key.scopes,
        "expires_at": unix_seconds(&key),
    }))
}

#[derive(Deserialize)]
struct NewKey {
    owner: String,
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    ttl_seconds: Option<u64>,
}

#[derive(Serialize)]
struct CreatedKey {
    id: i64,
    /// The only time the secret is shown.
    secret: String,
    expires_at: Option<i64>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 100
}

async fn create_key(
    State(state): State<AppState>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let Json(new) = body.map_err(|_| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected JSON {\"owner\": string, \"name\": string, \"scopes\"?: [string], \"ttl_seconds\"?: number}",
        )
    })?;
    let (owner, name) = (new.owner.trim(), new.name.trim());
    if !is_name(owner) || !is_name(name) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "owner and name must be 1 to 100 characters",
        ));
    }
    if new.scopes.len() > 32 || new.scopes.iter().any(|s| s.is_empty() || s.len() > 64) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "scopes must be up to 32 names of 1 to 64 characters",
        ));
    }
    if matches!(new.ttl_seconds, Some(ttl) if ttl == 0 || ttl > 100 * 365 * 86_400) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl_seconds must be positive and at most 100 years",
        ));
    }
    let secret = new_secret(&state.format).map_err(|e| {
        tracing::error!(error = %e, "could not make a key");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "could not make a key")
    })?;
    let hash = state.auth.hash_key(&secret);
    let ttl = new.ttl_seconds.map(Duration::from_secs);
    let (id, expires_at) = state
        .store
        .insert(owner, name, hash, &new.scopes, ttl)
        .await?;
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

async fn list_keys(State(state): State<AppState>) -> Result<Json<Vec<KeyRow>>, ApiError> {
    Ok(Json(state.store.list().await?))
}

/// The cache could not be reached: the table says revoked, a retry
/// finishes the job.
fn not_invalidated(e: tower_api_key::cache::CacheError) -> ApiError {
    tracing::error!(error = %e, "revoked in the table but the cache could not be invalidated");
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "revoked, but the cache could not be invalidated; retry",
    )
}

async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    // A revoked key is invalidated again: a retry after a 503 finishes it.
    let Some(hash) = state.store.revoke(id).await? else {
        return Err(ApiError(StatusCode::NOT_FOUND, "no key with this id"));
    };
    // Revoked in the table; now gone from the cache: the next request is
    // refused.
    state
        .auth
        .invalidate(&hash)
        .await
        .map_err(not_invalidated)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_owner(
    State(state): State<AppState>,
    Path(owner): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let revoked = state.store.revoke_owner(&owner).await?;
    // Always, even for none revoked now: a retry after a 503 finishes it.
    state
        .auth
        .invalidate_owner(&owner)
        .await
        .map_err(not_invalidated)?;
    Ok(Json(serde_json::json!({ "revoked": revoked })))
}

async fn stats(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut body = serde_json::to_value(state.auth.stats()).unwrap_or_default();
    let queries = state.store.queries();
    body["store"] = serde_json::json!({
        "lookups": queries.lookups.load(Ordering::Relaxed),
        "usage_updates": queries.usage_updates.load(Ordering::Relaxed),
    });
    let usage = state.usage.stats();
    body["usage"] = serde_json::json!({
        "batches": usage.batches,
        "recorded_keys": usage.recorded_keys,
        "failures": usage.failures,
        "pending": usage.pending,
    });
    Ok(Json(body))
}
