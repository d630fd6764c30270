//! ollama's `POST /api/embed` (`input`: a string or a list of strings;
//! `truncate`, true by default, cuts an input to the context instead of
//! failing) and the older `POST /api/embeddings` (`prompt` in, one
//! `embedding` out, never truncated). The vectors are qinsd's `Embed`:
//! mean-pooled final hidden states, L2-normalized. `keep_alive` is
//! accepted and ignored as on `/api/chat` (qinsd keeps its model resident);
//! `options` must be empty (no option applies to an embedding);
//! `dimensions` only equal to the model's size.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use qins_proto::v1::{EmbedInput, EmbedReply, EmbedRequest};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::OllamaError;
use crate::edge::ApiJson;
use crate::edge::model::{self, Omitted};
use crate::edge::params::{invalid, refused};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedBody {
    model: String,
    input: Value,
    truncate: Option<bool>,
    options: Option<Map<String, Value>>,
    dimensions: Option<u32>,
    /// Ignored: see the module comment.
    #[allow(dead_code)]
    keep_alive: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsBody {
    model: String,
    prompt: String,
    options: Option<Map<String, Value>>,
    /// Ignored: see the module comment.
    #[allow(dead_code)]
    keep_alive: Option<Value>,
}

pub async fn embed(
    State(state): State<Arc<AppState>>,
    body: Result<ApiJson<EmbedBody>, ApiError>,
) -> Result<Json<Value>, OllamaError> {
    let started = Instant::now();
    let ApiJson(body) = body?;
    no_options(body.options.as_ref())?;
    let texts = match body.input {
        Value::String(text) => vec![text],
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(invalid("input", "items must be strings")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(invalid("input", "must be a string or a list of strings").into()),
    };
    let reply = run(&state, &body.model, texts, body.truncate.unwrap_or(true)).await?;
    if let Some(dimensions) = body.dimensions
        && dimensions != reply.dimensions
    {
        return Err(refused(
            "dimensions",
            &format!(
                "the model's embeddings have {} dimensions and are not shortened",
                reply.dimensions
            ),
        )
        .into());
    }
    let embeddings: Vec<&[f32]> = reply
        .embeddings
        .iter()
        .map(|e| e.values.as_slice())
        .collect();
    Ok(Json(json!({
        "model": body.model,
        "embeddings": embeddings,
        "total_duration": nanos(started),
        "load_duration": 0,
        "prompt_eval_count": reply.prompt_tokens,
    })))
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<ApiJson<EmbeddingsBody>, ApiError>,
) -> Result<Json<Value>, OllamaError> {
    let ApiJson(body) = body?;
    no_options(body.options.as_ref())?;
    let reply = run(&state, &body.model, vec![body.prompt], false).await?;
    let embedding = reply.embeddings.first().map(|e| e.values.as_slice());
    Ok(Json(json!({ "embedding": embedding.unwrap_or_default() })))
}

async fn run(
    state: &AppState,
    model: &str,
    texts: Vec<String>,
    truncate: bool,
) -> Result<EmbedReply, ApiError> {
    if texts.is_empty() {
        return Err(invalid("input", "must not be empty"));
    }
    if texts.iter().any(String::is_empty) {
        return Err(invalid("input", "a string must not be empty"));
    }
    model::resolve(&state.daemon, Some(model), Omitted::Refused).await?;
    let inputs = texts
        .into_iter()
        .map(|text| EmbedInput {
            text,
            tokens: Vec::new(),
        })
        .collect();
    let reply = state
        .daemon
        .embed(EmbedRequest { inputs, truncate })
        .await?;
    Ok(reply)
}

fn no_options(options: Option<&Map<String, Value>>) -> Result<(), ApiError> {
    match options.and_then(|o| o.keys().next()) {
        Some(name) => Err(refused(
            &format!("options.{name}"),
            "no option applies to embeddings",
        )),
        None => Ok(()),
    }
}

fn nanos(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
