//! OpenAI's request members over the edge's parameter table: the sampling
//! names both endpoints honour ([`SAMPLING`]) and the members they share
//! ([`Shared`]). Every member is honoured, accepted only at the value that
//! describes what qins does anyway (`n: 1`, `store: false`, ...), or
//! refused with a 400 that names it in the error's `param` (the table in
//! TECHNICAL_SPEC.md, "OpenAI's API", lists them all).

use qins_proto::v1::{ResponseFormat, Sampling, response_format};
use serde_json::Value;

use crate::edge::params::{SamplingField, SamplingTable, name_refused_param, read_sampling};
pub use crate::edge::params::{boolean, invalid, object, only, refused, string, uint, uint32};
use crate::error::ApiError;

/// OpenAI's sampling parameters, plus `top_k`, `min_p` and
/// `repetition_penalty` (vLLM's and llama.cpp's extensions). `max_tokens`
/// is each endpoint's own (chat also takes `max_completion_tokens`).
pub const SAMPLING: &SamplingTable = &[
    ("temperature", SamplingField::Temperature),
    ("top_p", SamplingField::TopP),
    ("top_k", SamplingField::TopK),
    ("min_p", SamplingField::MinP),
    ("presence_penalty", SamplingField::PresencePenalty),
    ("frequency_penalty", SamplingField::FrequencyPenalty),
    ("repetition_penalty", SamplingField::RepetitionPenalty),
    ("seed", SamplingField::Seed),
    ("stop", SamplingField::Stop),
    ("logit_bias", SamplingField::LogitBias),
];

/// qinsd's refusal of a field as a refusal of OpenAI's parameter for it
/// (`others`: the endpoint's names outside [`SAMPLING`]), so `param` names
/// it although the ranges are checked in qinsd only.
pub fn name_refused(error: ApiError, others: &[(&'static str, &str)]) -> ApiError {
    name_refused_param(error, SAMPLING, others)
}

/// The members both endpoints read the same way.
#[derive(Debug, Default)]
pub struct Shared {
    /// The requested model, resolved by the handler (`edge::model`).
    pub model: Option<String>,
    pub sampling: Sampling,
    pub stream: bool,
    pub include_usage: bool,
}

impl Shared {
    /// Reads `name` when both endpoints share it; gives `value` back when
    /// it is the endpoint's own.
    pub fn read(&mut self, name: &str, value: Value) -> Result<Option<Value>, ApiError> {
        if read_sampling(SAMPLING, &mut self.sampling, name, &value)? {
            return Ok(None);
        }
        match name {
            "model" => self.model = Some(string(name, value)?),
            "stream" => self.stream = boolean(name, &value)?,
            "stream_options" => self.include_usage = include_usage(value)?,
            // An end-user identifier: qins serves its local user and keeps
            // nothing per user.
            "user" => {
                string(name, value)?;
            }
            "n" => one_choice(name, &value)?,
            _ => return Ok(Some(value)),
        }
        Ok(None)
    }
}

/// `stream_options`: `include_usage` is honoured; obfuscation padding is
/// not done, so only `include_obfuscation: false` is accepted.
fn include_usage(value: Value) -> Result<bool, ApiError> {
    let Value::Object(options) = value else {
        return Err(invalid("stream_options", "must be an object"));
    };
    let mut include = false;
    for (name, value) in options {
        match name.as_str() {
            "include_usage" => include = boolean("stream_options.include_usage", &value)?,
            "include_obfuscation" => only(
                "stream_options.include_obfuscation",
                &value,
                Value::Bool(false),
                "qins-web does not pad stream chunks",
            )?,
            _ => return Err(refused(&format!("stream_options.{name}"), "unknown option")),
        }
    }
    Ok(include)
}

/// `n` and `best_of`: one choice per request.
pub fn one_choice(name: &str, value: &Value) -> Result<(), ApiError> {
    only(
        name,
        value,
        Value::from(1),
        "qins-web returns one choice per request; send several requests (with different seeds)",
    )
}

/// An output format (chat's `response_format`, the Responses API's
/// `text.format`; `param` names it): `text`, or JSON through qinsd's
/// grammar-constrained decoding, `json_object` or `json_schema` with the
/// schema found at `schema_path`. The schema is always enforced, `strict`
/// or not.
pub fn output_format(
    param: &str,
    format: &Value,
    schema: Option<&Value>,
    schema_path: &str,
) -> Result<Option<ResponseFormat>, ApiError> {
    let format = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => response_format::Format::JsonObject(true),
        Some("json_schema") => {
            let schema = schema
                .filter(|s| s.is_object() || s.is_boolean())
                .ok_or_else(|| {
                    invalid(
                        param,
                        &format!("{schema_path} is required (a JSON schema object)"),
                    )
                })?;
            response_format::Format::JsonSchema(schema.to_string())
        }
        _ => {
            return Err(invalid(
                param,
                "type must be \"text\", \"json_object\" or \"json_schema\"",
            ));
        }
    };
    Ok(Some(ResponseFormat {
        format: Some(format),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::testing::param_of;
    use serde_json::json;

    #[test]
    fn shared_members_are_read() {
        let mut shared = Shared::default();
        for (name, value) in [
            ("model", json!("m")),
            ("stream", json!(true)),
            ("stream_options", json!({ "include_usage": true })),
            ("user", json!("u")),
            ("n", json!(1)),
            ("temperature", json!(0.5)),
            ("seed", json!(-1)),
        ] {
            assert_eq!(shared.read(name, value).unwrap(), None, "{name}");
        }
        assert_eq!(shared.read("messages", json!([])).unwrap(), Some(json!([])));
        assert!(shared.stream && shared.include_usage);
        assert_eq!(shared.sampling.temperature, Some(0.5));
        assert_eq!(shared.sampling.seed, None, "-1 is a fresh seed");
    }

    #[test]
    fn stream_options_and_choices() {
        assert!(include_usage(json!({ "include_usage": true })).unwrap());
        assert!(!include_usage(json!({ "include_obfuscation": false })).unwrap());
        let refused = include_usage(json!({ "include_obfuscation": true }));
        assert_eq!(param_of(refused), "stream_options.include_obfuscation");
        assert_eq!(
            param_of(include_usage(json!({ "other": 1 }))),
            "stream_options.other"
        );
        assert!(one_choice("n", &json!(1)).is_ok());
        assert_eq!(param_of(one_choice("n", &json!(2))), "n");
    }
}
