//! OpenAI request bodies read parameter by parameter, so that none is
//! silently ignored: each one is honoured, accepted only at the value that
//! describes what qins does anyway (`n: 1`, `store: false`, ...), or refused
//! with a 400 that names it in the error's `param` (the table in
//! TECHNICAL_SPEC.md, "OpenAI's API", lists them all).
//!
//! JSON `null` means unset, as OpenAI's SDKs send it.

use std::collections::HashMap;

use qins_proto::v1::Sampling;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Most alternatives per token `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u64 = 20;

/// A request body: a JSON object, its `null` members dropped.
pub fn object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        _ => Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        )),
    }
}

/// A parameter qins-web does not honour: 400 with its name.
pub fn refused(param: &str, why: &str) -> ApiError {
    ApiError::Param {
        param: param.to_string(),
        message: format!("parameter {param} is not supported: {why}"),
        code: "unsupported_parameter",
    }
}

/// A parameter with a value qins-web cannot take.
pub fn invalid(param: &str, why: &str) -> ApiError {
    ApiError::Param {
        param: param.to_string(),
        message: format!("invalid {param}: {why}"),
        code: "invalid_request",
    }
}

/// Accepts `value` only when it equals `only` (the value that describes what
/// qins does); refuses it otherwise.
pub fn only(param: &str, value: &Value, only: Value, why: &str) -> Result<(), ApiError> {
    if *value == only {
        Ok(())
    } else {
        Err(refused(param, &format!("{why} (only {only} is accepted)")))
    }
}

pub fn float(param: &str, value: &Value) -> Result<f32, ApiError> {
    value
        .as_f64()
        .map(|v| v as f32)
        .ok_or_else(|| invalid(param, "must be a number"))
}

pub fn uint(param: &str, value: &Value) -> Result<u64, ApiError> {
    value
        .as_u64()
        .ok_or_else(|| invalid(param, "must be a non-negative integer"))
}

pub fn uint32(param: &str, value: &Value) -> Result<u32, ApiError> {
    u32::try_from(uint(param, value)?).map_err(|_| invalid(param, "is too large"))
}

pub fn boolean(param: &str, value: &Value) -> Result<bool, ApiError> {
    value
        .as_bool()
        .ok_or_else(|| invalid(param, "must be true or false"))
}

pub fn string(param: &str, value: Value) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(invalid(param, "must be a string")),
    }
}

/// `stop`: one string or a list of them.
fn stop(value: Value) -> Result<Vec<String>, ApiError> {
    let bad = || invalid("stop", "must be a string or a list of strings");
    match value {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// `logit_bias`: token ids (as JSON object keys) to biases.
fn logit_bias(value: &Value) -> Result<HashMap<u32, f32>, ApiError> {
    let Value::Object(map) = value else {
        return Err(invalid(
            "logit_bias",
            "must be an object of token id -> bias",
        ));
    };
    map.iter()
        .map(|(key, bias)| {
            let id = key
                .parse::<u32>()
                .map_err(|_| invalid("logit_bias", &format!("key {key:?} is not a token id")))?;
            let bias = bias.as_f64().ok_or_else(|| {
                invalid("logit_bias", &format!("the bias of {key} must be a number"))
            })?;
            Ok((id, bias as f32))
        })
        .collect()
}

/// `stream_options`: `include_usage` is honoured; obfuscation padding is
/// not done, so only `include_obfuscation: false` is accepted.
pub fn include_usage(value: Value) -> Result<bool, ApiError> {
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

/// Reads a sampling parameter both endpoints share into `sampling`; false
/// when `name` is not one. Besides OpenAI's own, `top_k`, `min_p` and
/// `repetition_penalty` are honoured (vLLM's and llama.cpp's extensions).
/// Ranges are qinsd's to check: it refuses with the name.
pub fn sampling_param(
    sampling: &mut Sampling,
    name: &str,
    value: &Value,
) -> Result<bool, ApiError> {
    match name {
        "temperature" => sampling.temperature = Some(float(name, value)?),
        "top_p" => sampling.top_p = Some(float(name, value)?),
        "top_k" => sampling.top_k = Some(uint32(name, value)?),
        "min_p" => sampling.min_p = Some(float(name, value)?),
        "presence_penalty" => sampling.presence_penalty = Some(float(name, value)?),
        "frequency_penalty" => sampling.frequency_penalty = Some(float(name, value)?),
        "repetition_penalty" => sampling.repetition_penalty = Some(float(name, value)?),
        "seed" => sampling.seed = Some(uint(name, value)?),
        "stop" => sampling.stop = stop(value.clone())?,
        "logit_bias" => sampling.logit_bias = logit_bias(value)?,
        _ => return Ok(false),
    }
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param_of(error: ApiError) -> String {
        match error {
            ApiError::Param { param, .. } => param,
            other => panic!("expected a parameter error, got {other:?}"),
        }
    }

    #[test]
    fn sampling_parameters_are_read() {
        let mut s = Sampling::default();
        for (name, value) in [
            ("temperature", json!(0.5)),
            ("top_p", json!(0.9)),
            ("top_k", json!(40)),
            ("min_p", json!(0.05)),
            ("presence_penalty", json!(0.5)),
            ("frequency_penalty", json!(-0.5)),
            ("repetition_penalty", json!(1.1)),
            ("seed", json!(7)),
            ("stop", json!("x")),
            ("logit_bias", json!({ "12": -100, "7": 2.5 })),
        ] {
            assert!(sampling_param(&mut s, name, &value).unwrap(), "{name}");
        }
        assert!(!sampling_param(&mut s, "messages", &json!([])).unwrap());
        assert_eq!(s.temperature, Some(0.5));
        assert_eq!(s.top_k, Some(40));
        assert_eq!(s.min_p, Some(0.05));
        assert_eq!(s.presence_penalty, Some(0.5));
        assert_eq!(s.frequency_penalty, Some(-0.5));
        assert_eq!(s.seed, Some(7));
        assert_eq!(s.stop, vec!["x".to_string()]);
        assert_eq!(s.logit_bias, HashMap::from([(12, -100.0), (7, 2.5)]));
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (name, value) in [
            ("temperature", json!("hot")),
            ("seed", json!(-1)),
            ("top_k", json!(1.5)),
            ("stop", json!([1])),
            ("logit_bias", json!({ "abc": 1 })),
            ("logit_bias", json!({ "1": "x" })),
            ("logit_bias", json!([1])),
        ] {
            let error = sampling_param(&mut Sampling::default(), name, &value).unwrap_err();
            assert_eq!(param_of(error), name);
        }
    }

    #[test]
    fn stream_options_and_choices() {
        assert!(include_usage(json!({ "include_usage": true })).unwrap());
        assert!(!include_usage(json!({ "include_obfuscation": false })).unwrap());
        let error = include_usage(json!({ "include_obfuscation": true })).unwrap_err();
        assert_eq!(param_of(error), "stream_options.include_obfuscation");
        let error = include_usage(json!({ "other": 1 })).unwrap_err();
        assert_eq!(param_of(error), "stream_options.other");
        assert!(one_choice("n", &json!(1)).is_ok());
        assert_eq!(param_of(one_choice("n", &json!(2)).unwrap_err()), "n");
    }

    #[test]
    fn nulls_are_unset() {
        let body = object(json!({ "a": null, "b": 1 })).unwrap();
        assert_eq!(body.len(), 1);
        assert!(object(json!([1])).is_err());
    }
}
