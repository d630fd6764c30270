//! qinsd's per-token logprobs in OpenAI's two shapes: the chat one
//! (`{"content": [{token, logprob, bytes, top_logprobs}]}`) and the legacy
//! completions one (parallel `tokens` / `token_logprobs` / `top_logprobs` /
//! `text_offset` lists).

use qins_proto::v1::TokenLogprob;
use serde_json::{Map, Value, json};

/// One token as chat completions list it; `top_logprobs` only on the
/// sampled token, not on its alternatives.
fn chat_token(token: &TokenLogprob, with_top: bool) -> Value {
    let mut entry = json!({
        "token": token.text,
        "logprob": token.logprob,
        "bytes": token.bytes,
    });
    if with_top {
        entry["top_logprobs"] = token.top.iter().map(|t| chat_token(t, false)).collect();
    }
    entry
}

/// A choice's (or a chunk's) `logprobs` object.
pub fn chat_logprobs(tokens: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = tokens.iter().map(|t| chat_token(t, true)).collect();
    json!({ "content": content, "refusal": Value::Null })
}

/// The legacy shape of `/v1/completions`; `offset` is where the first
/// token's text starts in the choice's text (after an echoed prompt), in
/// characters. Returns the object and the offset after the last token.
pub fn completion_logprobs(tokens: &[TokenLogprob], mut offset: usize) -> (Value, usize) {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for token in tokens {
        text_offset.push(offset);
        offset += token.text.chars().count();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let alternatives: Map<String, Value> = t
                .top
                .iter()
                .map(|a| (a.text.clone(), json!(a.logprob)))
                .collect();
            Value::Object(alternatives)
        })
        .collect();
    let value = json!({
        "tokens": tokens.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    });
    (value, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str, logprob: f32, top: Vec<TokenLogprob>) -> TokenLogprob {
        TokenLogprob {
            id: 0,
            text: text.into(),
            bytes: text.as_bytes().to_vec(),
            logprob,
            top,
        }
    }

    fn sample() -> Vec<TokenLogprob> {
        vec![
            token(
                "Hé",
                -0.5,
                vec![token("Hé", -0.5, vec![]), token("A", -1.5, vec![])],
            ),
            token(" x", -2.0, vec![token(" y", -0.25, vec![])]),
        ]
    }

    #[test]
    fn chat_shape() {
        let v = chat_logprobs(&sample());
        let content = v["content"].as_array().expect("content list");
        assert_eq!(content.len(), 2);
        assert_eq!(content[0]["token"], "Hé");
        assert_eq!(content[0]["logprob"], -0.5);
        assert_eq!(content[0]["bytes"], json!([72, 195, 169]));
        assert_eq!(content[0]["top_logprobs"][1]["token"], "A");
        assert!(content[0]["top_logprobs"][1].get("top_logprobs").is_none());
        assert!(v["refusal"].is_null());
    }

    #[test]
    fn legacy_shape_with_offsets_in_characters() {
        let (v, end) = completion_logprobs(&sample(), 3);
        assert_eq!(v["tokens"], json!(["Hé", " x"]));
        assert_eq!(v["token_logprobs"], json!([-0.5, -2.0]));
        assert_eq!(v["top_logprobs"][0]["A"], -1.5);
        assert_eq!(v["text_offset"], json!([3, 5]));
        assert_eq!(end, 7);
    }
}
