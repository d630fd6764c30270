//! `POST /v1/embeddings`: OpenAI's embeddings over qinsd's `Embed`.
//!
//! `input` is a string, a list of strings, a list of token ids or a list
//! of such lists; each item gets one unit vector (mean-pooled final hidden
//! states, see qinsd's `Embed`). `encoding_format` is `float` (the
//! default) or `base64` (the little-endian f32 bytes). `dimensions` is
//! accepted only when it equals the model's size (no Matryoshka
//! truncation). `user` is accepted and unused, as OpenAI documents it
//! (an end-user id for abuse monitoring). `model` is resolved like every
//! dialect's ([`crate::edge::model`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use qins_proto::v1::{EmbedInput, EmbedRequest};
use serde_json::{Value, json};

use crate::edge::ApiJson;
use crate::edge::model::{self, Omitted};
use crate::edge::params::{self, invalid, refused};
use crate::error::ApiError;
use crate::state::AppState;

/// A parsed body.
#[derive(Debug, PartialEq)]
struct Body {
    inputs: Vec<EmbedInput>,
    model: Option<String>,
    base64: bool,
    dimensions: Option<u32>,
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let ApiJson(body) = body?;
    let body = parse(body)?;
    model::resolve(&state.daemon, body.model.as_deref(), Omitted::Refused).await?;
    let reply = state
        .daemon
        .embed(EmbedRequest {
            inputs: body.inputs,
            truncate: false,
        })
        .await?;
    if let Some(dimensions) = body.dimensions
        && dimensions != reply.dimensions
    {
        return Err(refused(
            "dimensions",
            &format!(
                "the model's embeddings have {} dimensions and are not shortened; \
                 leave dimensions unset or send {}",
                reply.dimensions, reply.dimensions
            ),
        ));
    }
    let data: Vec<Value> = reply
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let embedding = if body.base64 {
                let bytes: Vec<u8> = e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(STANDARD.encode(bytes))
            } else {
                json!(e.values)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": reply.model,
        "usage": { "prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens },
    })))
}

fn parse(body: Value) -> Result<Body, ApiError> {
    let mut inputs = None;
    let mut model = None;
    let mut base64 = false;
    let mut dimensions = None;
    for (name, value) in params::object(body)? {
        match name.as_str() {
            "input" => inputs = Some(input_items(value)?),
            "model" => model = Some(params::string(&name, value)?),
            "user" => {
                params::string(&name, value)?;
            }
            "encoding_format" => match value.as_str() {
                Some("float") => base64 = false,
                Some("base64") => base64 = true,
                _ => return Err(invalid(&name, "must be \"float\" or \"base64\"")),
            },
            "dimensions" => dimensions = Some(params::uint32(&name, &value)?),
            _ => return Err(refused(&name, "not a parameter of /v1/embeddings")),
        }
    }
    let inputs = inputs.ok_or_else(|| invalid("input", "is required"))?;
    Ok(Body {
        inputs,
        model,
        base64,
        dimensions,
    })
}

/// `input` as OpenAI takes it: a string, a list of strings, a list of token
/// ids, or a list of lists of token ids.
fn input_items(value: Value) -> Result<Vec<EmbedInput>, ApiError> {
    let items = match value {
        Value::String(text) => vec![text_input(text)?],
        Value::Array(items) if items.is_empty() => {
            return Err(invalid("input", "must not be empty"));
        }
        Value::Array(items) if items.iter().all(Value::is_number) => vec![tokens_input(&items)?],
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => text_input(text),
                Value::Array(ids) => tokens_input(&ids),
                _ => Err(invalid(
                    "input",
                    "items must be strings or lists of token ids",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid(
                "input",
                "must be a string, a list of strings, a list of token ids or a list of such lists",
            ));
        }
    };
    Ok(items)
}

fn text_input(text: String) -> Result<EmbedInput, ApiError> {
    if text.is_empty() {
        return Err(invalid("input", "a string must not be empty"));
    }
    Ok(EmbedInput {
        text,
        tokens: Vec::new(),
    })
}

fn tokens_input(ids: &[Value]) -> Result<EmbedInput, ApiError> {
    if ids.is_empty() {
        return Err(invalid("input", "a token list must not be empty"));
    }
    let tokens = ids
        .iter()
        .map(|id| params::uint32("input", id))
        .collect::<Result<_, _>>()?;
    Ok(EmbedInput {
        text: String::new(),
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::testing::param_of;

    fn texts(body: &Body) -> Vec<(&str, &[u32])> {
        body.inputs
            .iter()
            .map(|i| (i.text.as_str(), i.tokens.as_slice()))
            .collect()
    }

    #[test]
    fn every_input_shape_is_read() {
        let one = parse(json!({"model": "m", "input": "hi"})).unwrap();
        assert_eq!(texts(&one), vec![("hi", &[][..])]);
        let many = parse(json!({"input": ["a", "b"], "encoding_format": "base64"})).unwrap();
        assert_eq!(texts(&many), vec![("a", &[][..]), ("b", &[][..])]);
        assert!(many.base64);
        let ids = parse(json!({"input": [1, 2, 3]})).unwrap();
        assert_eq!(texts(&ids), vec![("", &[1, 2, 3][..])]);
        let lists = parse(json!({"input": [[1], [4, 5]], "dimensions": 576})).unwrap();
        assert_eq!(texts(&lists), vec![("", &[1][..]), ("", &[4, 5][..])]);
        assert_eq!(lists.dimensions, Some(576));
    }

    #[test]
    fn bad_and_unknown_fields_name_the_parameter() {
        assert_eq!(param_of(parse(json!({"model": "m"}))), "input");
        assert_eq!(param_of(parse(json!({"input": []}))), "input");
        assert_eq!(param_of(parse(json!({"input": [""]}))), "input");
        assert_eq!(param_of(parse(json!({"input": [-1]}))), "input");
        assert_eq!(param_of(parse(json!({"input": [{"a": 1}]}))), "input");
        assert_eq!(
            param_of(parse(json!({"input": "x", "encoding_format": "int8"}))),
            "encoding_format"
        );
        assert_eq!(
            param_of(parse(json!({"input": "x", "pooling": "cls"}))),
            "pooling"
        );
    }
}
