//! The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, `/api/status`,
//! `/api/dashboard`, `/api/cache/thresholds`, `/api/reload` and the
//! dashboard page at `/`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;

use super::Observed;

async fn metrics(State(o): State<Observed>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        super::render(&o),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(o): State<Observed>) -> Response {
    match o.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", e.reasons.join("; ")),
        )
            .into_response(),
    }
}

async fn status(State(o): State<Observed>) -> Json<super::Status> {
    Json(o.status())
}

/// `?since=<ms>` on `/api/dashboard`: only newer timeline samples.
#[derive(serde::Deserialize)]
struct Since {
    since: Option<u64>,
}

async fn dashboard(State(o): State<Observed>, Query(q): Query<Since>) -> Json<super::Dashboard> {
    Json(super::dashboard(&o, q.since).await)
}

/// The page: one self-contained file (no CDN, works offline).
async fn page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn get_thresholds(State(o): State<Observed>) -> Response {
    match &o.monitor {
        Some(m) => Json(json!({ "ok": true, "thresholds": m.thresholds() })).into_response(),
        None => no_monitor(),
    }
}

/// Changes thresholds from a partial JSON object (PUT or POST).
async fn set_thresholds(State(o): State<Observed>, body: Bytes) -> Response {
    let Some(m) = &o.monitor else {
        return no_monitor();
    };
    match m.update(&body) {
        Ok(t) => {
            tracing::info!(?t, "cache monitor thresholds changed over HTTP");
            Json(json!({ "ok": true, "thresholds": t })).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "ok": false, "error": e, "thresholds": m.thresholds() })),
        )
            .into_response(),
    }
}

/// A hot update from the files on disk (the body is ignored: a request can
/// only make the host read again what its operator put there).
async fn reload(State(o): State<Observed>) -> Response {
    let Some(updater) = &o.updater else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "ok": false, "error": "this host cannot be updated" })),
        )
            .into_response();
    };
    match updater.reload_logged("POST /api/reload").await {
        Ok(report) => Json(json!({ "ok": true, "components": report.components })).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "ok": false, "error": e.to_string() })),
        )
            .into_response(),
    }
}

fn no_monitor() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "ok": false, "error": "the cache monitor is off (cache.enabled and cache.monitoring)" })),
    )
        .into_response()
}

/// Serves the endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    observed: Observed,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/status", get(status))
        .route("/api/dashboard", get(dashboard))
        .route(
            "/api/cache/thresholds",
            get(get_thresholds).put(set_thresholds).post(set_thresholds),
        )
        .route("/api/reload", post(reload))
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .route("/dashboard", get(page))
        .with_state(observed);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!("HTTP server stopped: {e}");
    }
}
