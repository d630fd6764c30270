//! `GET /health`: 200 when qinsd answers, 503 when it does not.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use crate::state::AppState;

pub async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    match state.daemon.stats().await {
        Ok(stats) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "qinsd": "reachable", "model": stats.model })),
        ),
        Err(e) => {
            let mut body = e.body();
            body["status"] = json!("unavailable");
            body["qinsd"] = json!("unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}
