//! `GET /metrics`: Prometheus metrics (see `crate::metrics` for the list).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::metrics::CONTENT_TYPE;
use crate::state::AppState;

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // qinsd down is a value to report (qinsd_up 0), not a failed scrape.
    let stats = state.daemon.stats().await.ok();
    match state.metrics.encode(stats.as_ref()) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        // Writing into a String cannot fail; report it rather than panic.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
