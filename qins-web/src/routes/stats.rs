//! `GET /api/stats`: qinsd's `Stats` reply as JSON, every field, same names.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use qins_proto::v1::StatsReply;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;

pub async fn stats(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(stats_json(&state.daemon.stats().await?)))
}

pub fn stats_json(s: &StatsReply) -> Value {
    json!({
        "process_rss_bytes": s.process_rss_bytes,
        "model_code_bytes": s.model_code_bytes,
        "model_sign_bytes": s.model_sign_bytes,
        "model_other_bytes": s.model_other_bytes,
        "model_parameters": s.model_parameters,
        "bf16_equivalent_bytes": s.bf16_equivalent_bytes,
        "f32_equivalent_bytes": s.f32_equivalent_bytes,
        "compression_vs_f32": s.compression_vs_f32,
        "device": s.device,
        "model": s.model,
        "architecture": s.architecture,
        "context_limit": s.context_limit,
        "uptime_seconds": s.uptime_seconds,
        "requests_served": s.requests_served,
        "tokens_generated": s.tokens_generated,
        "last_tokens_per_second": s.last_tokens_per_second,
        "average_tokens_per_second": s.average_tokens_per_second,
        "active_requests": s.active_requests,
        "queued_requests": s.queued_requests,
        "kv_cache_bytes": s.kv_cache_bytes,
        "version": s.version,
        "threads": s.threads,
    })
}
