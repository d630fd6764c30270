//! `GET /api/version`, `GET /api/tags`, `POST /api/show`, `GET /api/ps`:
//! the models qinsd has, and the one it keeps resident.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use qins_proto::v1::{ModelInfo, StatsReply};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{OllamaError, from_unix_seconds, parameter_size, tagged};
use crate::edge::ApiJson;
use crate::edge::model::{answers_to, listed};
use crate::error::ApiError;
use crate::state::AppState;

/// The ollama release whose API these routes follow. Clients gate on it
/// (VS Code's Copilot refuses servers older than 0.6.4), so it is ollama's
/// numbering, not qins-web's own version.
pub const OLLAMA_API_VERSION: &str = "0.12.0";

/// What `details.format` and `quantization_level` say of a .qins model:
/// 8-bit logarithmic codes plus a sign bit (TECHNICAL_SPEC.md, the codec).
const FORMAT: &str = "qins";
const QUANTIZATION: &str = "QINS8";

pub async fn version() -> Json<Value> {
    Json(json!({ "version": OLLAMA_API_VERSION }))
}

pub async fn tags(State(state): State<Arc<AppState>>) -> Result<Json<Value>, OllamaError> {
    let models: Vec<Value> = listed(&state.daemon).await?.iter().map(listing).collect();
    Ok(Json(json!({ "models": models })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowBody {
    model: Option<String>,
    /// ollama's older name for `model`.
    name: Option<String>,
    /// Asks for the tokenizer's full arrays, which this reply never holds
    /// (there is nothing verbose to add).
    #[serde(default)]
    #[allow(dead_code)]
    verbose: bool,
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    body: Result<ApiJson<ShowBody>, ApiError>,
) -> Result<Json<Value>, OllamaError> {
    let ApiJson(body) = body?;
    let Some(requested) = body.model.or(body.name).filter(|m| !m.is_empty()) else {
        return Err(ApiError::BadRequest("model is required".into()).into());
    };
    let models = listed(&state.daemon).await?;
    let Some(model) = models.iter().find(|m| answers_to(&m.name, &requested)) else {
        return Err(not_found(&requested).into());
    };
    let context = state.daemon.stats().await?.context_limit;
    let architecture = &model.architecture;
    let mut info = json!({
        "general.architecture": architecture,
        "general.parameter_count": model.parameters,
    });
    // ollama reports the model's trained context here; clients read it as
    // the most a request may use, which in qinsd is the daemon's --context.
    info[format!("{architecture}.context_length")] = json!(context);
    let mut show = json!({
        "details": details(architecture, model.parameters),
        "model_info": info,
        // Tool calls work for every model (qinsd's tool prompt format).
        "capabilities": ["completion", "tools"],
    });
    if let Some(modified) = from_unix_seconds(model.modified_unix_seconds) {
        show["modified_at"] = json!(modified);
    }
    Ok(Json(show))
}

pub async fn ps(State(state): State<Arc<AppState>>) -> Result<Json<Value>, OllamaError> {
    let stats = state.daemon.stats().await?;
    if stats.model.is_empty() {
        return Ok(Json(json!({ "models": [] })));
    }
    let listed = state.daemon.list_models().await?;
    // The resident model may have been loaded from outside the models dir.
    let file = listed.models.into_iter().find(|m| m.loaded);
    Ok(Json(json!({ "models": [running(&stats, file.as_ref())] })))
}

/// A 404 in ollama's words.
pub fn not_found(requested: &str) -> ApiError {
    ApiError::NotFound(format!("model '{requested}' not found"))
}

fn listing(m: &ModelInfo) -> Value {
    let name = tagged(&m.name);
    let mut entry = json!({
        "name": name,
        "model": name,
        "size": m.file_bytes,
        "digest": digest(&m.path, m.file_bytes, m.modified_unix_seconds),
        "details": details(&m.architecture, m.parameters),
    });
    if let Some(modified) = from_unix_seconds(m.modified_unix_seconds) {
        entry["modified_at"] = json!(modified);
    }
    entry
}

/// The `/api/ps` entry of the resident model. `size` is the resident
/// weights; `size_vram` is the part of it on a GPU: 0 on the CPU. There is
/// no `expires_at`: qinsd keeps a model until it is told to unload it.
fn running(stats: &StatsReply, file: Option<&ModelInfo>) -> Value {
    let resident = stats.model_code_bytes + stats.model_sign_bytes + stats.model_other_bytes;
    let name = tagged(&stats.model);
    let digest = match file {
        Some(m) => digest(&m.path, m.file_bytes, m.modified_unix_seconds),
        None => digest(&stats.model, 0, stats.model_loaded_unix_seconds),
    };
    json!({
        "name": name,
        "model": name,
        "size": resident,
        "size_vram": if stats.device == "cpu" { 0 } else { resident },
        "digest": digest,
        "details": details(&stats.architecture, stats.model_parameters),
        "context_length": stats.context_limit,
    })
}

fn details(architecture: &str, parameters: u64) -> Value {
    json!({
        "parent_model": "",
        "format": FORMAT,
        "family": architecture,
        "families": [architecture],
        "parameter_size": parameter_size(parameters),
        "quantization_level": QUANTIZATION,
    })
}

/// ollama's digest is the SHA-256 of the model's content. Hashing gigabytes
/// on every listing would be slow, so this is the SHA-256 of the file's
/// path, size and modification time: it tells models apart and changes when
/// the file does, which is what clients use it for.
fn digest(path: &str, bytes: u64, modified_unix_seconds: f64) -> String {
    let mut hash = Sha256::new();
    hash.update(path.as_bytes());
    hash.update([0]);
    hash.update(bytes.to_le_bytes());
    hash.update(modified_unix_seconds.to_le_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_has_every_field_clients_require() {
        let m = ModelInfo {
            name: "smollm2".into(),
            path: "/m/smollm2.qins".into(),
            file_bytes: 155_100_000,
            architecture: "llama".into(),
            parameters: 134_515_008,
            loaded: true,
            modified_unix_seconds: 1_700_000_000.0,
        };
        let entry = listing(&m);
        assert_eq!(entry["name"], "smollm2:latest");
        assert_eq!(entry["model"], "smollm2:latest");
        assert_eq!(entry["size"], 155_100_000);
        assert_eq!(entry["modified_at"], "2023-11-14T22:13:20Z");
        assert_eq!(entry["details"]["family"], "llama");
        assert_eq!(entry["details"]["parameter_size"], "134.5M");
        let digest = entry["digest"].as_str().expect("digest");
        assert_eq!(digest.len(), 64);
        let touched = ModelInfo {
            modified_unix_seconds: 1_700_000_001.0,
            ..m
        };
        assert_ne!(listing(&touched)["digest"], digest, "changes with the file");
    }

    #[test]
    fn ps_reports_the_resident_size_and_no_vram_on_the_cpu() {
        let stats = StatsReply {
            model: "tiny".into(),
            architecture: "phi3".into(),
            model_code_bytes: 100,
            model_sign_bytes: 20,
            model_other_bytes: 3,
            device: "cpu".into(),
            context_limit: 4096,
            ..StatsReply::default()
        };
        let entry = running(&stats, None);
        assert_eq!(entry["size"], 123);
        assert_eq!(entry["size_vram"], 0);
        assert_eq!(entry["context_length"], 4096);
        assert_eq!(entry["name"], "tiny:latest");
    }
}
