//! `GET /ui/stats`: qinsd's `Stats` reply as JSON, every field, same names.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use qins_proto::v1::StatsReply;

use crate::error::ApiError;
use crate::state::AppState;

pub async fn stats(State(state): State<Arc<AppState>>) -> Result<Json<StatsReply>, ApiError> {
    Ok(Json(state.daemon.stats().await?))
}
