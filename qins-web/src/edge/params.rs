//! The one parameter table: how every dialect reads request members.
//!
//! A body is a JSON object read member by member ([`object`], JSON `null`
//! is unset), so that none is silently ignored: each is honoured, accepted
//! only at the value that describes what qins does anyway, or refused with
//! a 400 that names it ([`refused`], [`invalid`]: OpenAI's `param`, the
//! message in the others).
//!
//! The sampling fields each have one reader ([`SamplingField::read`]); a
//! dialect lists its names for them in a table of `(name, field)` pairs.
//! The readers check types only; ranges are qinsd's one rule (the engine's
//! `GenerationRequest::validate`), whose INVALID_ARGUMENT names the field
//! and the rule. Two conventions hold in every dialect: `top_k` <= 0 is no
//! limit (ollama's and vLLM's), and `seed: -1` is a fresh seed per request
//! (ollama's and llama.cpp's); any other negative seed is refused.

use std::collections::HashMap;

use qins_proto::v1::Sampling;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A sampling field and the one way its value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplingField {
    Temperature,
    TopP,
    TopK,
    MinP,
    PresencePenalty,
    FrequencyPenalty,
    RepetitionPenalty,
    Seed,
    MaxTokens,
    Stop,
    LogitBias,
}

/// A dialect's names for the sampling fields it honours.
pub type SamplingTable = [(&'static str, SamplingField)];

impl SamplingField {
    /// Reads `value` into `sampling`; `param` is the dialect's name for it.
    pub fn read(self, sampling: &mut Sampling, param: &str, value: &Value) -> Result<(), ApiError> {
        match self {
            Self::Temperature => sampling.temperature = Some(float(param, value)?),
            Self::TopP => sampling.top_p = Some(float(param, value)?),
            Self::TopK => sampling.top_k = Some(top_k(param, value)?),
            Self::MinP => sampling.min_p = Some(float(param, value)?),
            Self::PresencePenalty => sampling.presence_penalty = Some(float(param, value)?),
            Self::FrequencyPenalty => sampling.frequency_penalty = Some(float(param, value)?),
            Self::RepetitionPenalty => sampling.repetition_penalty = Some(float(param, value)?),
            Self::Seed => sampling.seed = seed(param, value)?,
            Self::MaxTokens => sampling.max_tokens = Some(uint32(param, value)?),
            Self::Stop => sampling.stop = stop(param, value)?,
            Self::LogitBias => sampling.logit_bias = logit_bias(param, value)?,
        }
        Ok(())
    }
}

impl SamplingField {
    pub const ALL: [SamplingField; 11] = [
        Self::Temperature,
        Self::TopP,
        Self::TopK,
        Self::MinP,
        Self::PresencePenalty,
        Self::FrequencyPenalty,
        Self::RepetitionPenalty,
        Self::Seed,
        Self::MaxTokens,
        Self::Stop,
        Self::LogitBias,
    ];

    /// qinsd's name for the field (`Sampling`'s, as its refusals name it).
    pub fn qinsd_name(self) -> &'static str {
        match self {
            Self::Temperature => "temperature",
            Self::TopP => "top_p",
            Self::TopK => "top_k",
            Self::MinP => "min_p",
            Self::PresencePenalty => "presence_penalty",
            Self::FrequencyPenalty => "frequency_penalty",
            Self::RepetitionPenalty => "repetition_penalty",
            Self::Seed => "seed",
            Self::MaxTokens => "max_tokens",
            Self::Stop => "stop",
            Self::LogitBias => "logit_bias",
        }
    }
}

/// qinsd's refusal of a request field (INVALID_ARGUMENT, its message naming
/// the field and the rule) as a refusal of the dialect's parameter, so that
/// OpenAI's `param` names it although the limit is checked in qinsd only.
/// `table` gives the sampling fields' names, `others` pairs qinsd's name of
/// any other field with the dialect's. Other errors pass unchanged, as does
/// a refusal that names none of them (a prompt that does not fit).
pub fn name_refused_param(
    error: ApiError,
    table: &SamplingTable,
    others: &[(&'static str, &str)],
) -> ApiError {
    let ApiError::BadRequest(message) = error else {
        return error;
    };
    let names = table
        .iter()
        .map(|&(name, field)| (field.qinsd_name(), name))
        .chain(others.iter().copied());
    let named = names
        .filter_map(|(qinsd, dialect)| word_at(&message, qinsd).map(|at| (at, dialect)))
        .min_by_key(|&(at, _)| at);
    match named {
        Some((_, param)) => ApiError::Param {
            param: param.to_string(),
            message,
            code: "invalid_request",
        },
        None => ApiError::BadRequest(message),
    }
}

/// Where `word` first stands alone in `text` (not inside a longer name).
fn word_at(text: &str, word: &str) -> Option<usize> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).map(|(at, _)| at).find(|&at| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_name) && !after.is_some_and(is_name)
    })
}

/// Reads `name` into `sampling` when `table` names it; false when not.
pub fn read_sampling(
    table: &SamplingTable,
    sampling: &mut Sampling,
    name: &str,
    value: &Value,
) -> Result<bool, ApiError> {
    match table.iter().find(|(known, _)| *known == name) {
        Some(&(_, field)) => field.read(sampling, name, value).map(|()| true),
        None => Ok(false),
    }
}

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

pub fn integer(param: &str, value: &Value) -> Result<i64, ApiError> {
    value
        .as_i64()
        .ok_or_else(|| invalid(param, "must be an integer"))
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

/// `top_k`: <= 0 is no limit (qinsd's 0).
fn top_k(param: &str, value: &Value) -> Result<u32, ApiError> {
    let k = integer(param, value)?;
    Ok(u32::try_from(k.max(0)).unwrap_or(u32::MAX))
}

/// `seed`: -1 is a fresh seed per request, as unset.
fn seed(param: &str, value: &Value) -> Result<Option<u64>, ApiError> {
    match value.as_i64() {
        Some(-1) => Ok(None),
        _ => uint(param, value).map(Some).map_err(|_| {
            invalid(
                param,
                "must be a non-negative integer, or -1 for a fresh seed",
            )
        }),
    }
}

/// `stop`: one string or a list of them.
fn stop(param: &str, value: &Value) -> Result<Vec<String>, ApiError> {
    let bad = || invalid(param, "must be a string or a list of strings");
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// `logit_bias`: token ids (as JSON object keys) to biases.
fn logit_bias(param: &str, value: &Value) -> Result<HashMap<u32, f32>, ApiError> {
    let Value::Object(map) = value else {
        return Err(invalid(param, "must be an object of token id -> bias"));
    };
    map.iter()
        .map(|(key, bias)| {
            let id = key
                .parse::<u32>()
                .map_err(|_| invalid(param, &format!("key {key:?} is not a token id")))?;
            let bias = bias
                .as_f64()
                .ok_or_else(|| invalid(param, &format!("the bias of {key} must be a number")))?;
            Ok((id, bias as f32))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::testing::param_of;
    use serde_json::json;

    /// Every field under qinsd's name, but one renamed as ollama does.
    fn table() -> Vec<(&'static str, SamplingField)> {
        SamplingField::ALL
            .into_iter()
            .map(|field| match field {
                SamplingField::RepetitionPenalty => ("repeat_penalty", field),
                _ => (field.qinsd_name(), field),
            })
            .collect()
    }

    #[test]
    fn every_field_is_read_under_the_dialect_name() {
        let mut s = Sampling::default();
        for (name, value) in [
            ("temperature", json!(0.5)),
            ("top_p", json!(0.9)),
            ("top_k", json!(40)),
            ("min_p", json!(0.05)),
            ("presence_penalty", json!(0.5)),
            ("frequency_penalty", json!(-0.5)),
            ("repeat_penalty", json!(1.1)),
            ("seed", json!(7)),
            ("max_tokens", json!(12)),
            ("stop", json!("x")),
            ("logit_bias", json!({ "12": -100, "7": 2.5 })),
        ] {
            assert!(
                read_sampling(&table(), &mut s, name, &value).unwrap(),
                "{name}"
            );
        }
        assert!(!read_sampling(&table(), &mut s, "repetition_penalty", &json!(1.0)).unwrap());
        assert_eq!(s.temperature, Some(0.5));
        assert_eq!(s.top_k, Some(40));
        assert_eq!(s.min_p, Some(0.05));
        assert_eq!(s.frequency_penalty, Some(-0.5));
        assert_eq!(s.repetition_penalty, Some(1.1));
        assert_eq!(s.seed, Some(7));
        assert_eq!(s.max_tokens, Some(12));
        assert_eq!(s.stop, vec!["x".to_string()]);
        assert_eq!(s.logit_bias, HashMap::from([(12, -100.0), (7, 2.5)]));
    }

    #[test]
    fn negative_top_k_is_no_limit_and_seed_minus_one_is_fresh() {
        let mut s = Sampling::default();
        for k in [json!(0), json!(-1), json!(-40)] {
            SamplingField::TopK.read(&mut s, "top_k", &k).unwrap();
            assert_eq!(s.top_k, Some(0), "{k}");
        }
        s.seed = Some(3);
        SamplingField::Seed
            .read(&mut s, "seed", &json!(-1))
            .unwrap();
        assert_eq!(s.seed, None);
        let refused = SamplingField::Seed.read(&mut s, "seed", &json!(-2));
        assert_eq!(param_of(refused), "seed");
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (name, value) in [
            ("temperature", json!("hot")),
            ("seed", json!(1.5)),
            ("top_k", json!(1.5)),
            ("max_tokens", json!(-1)),
            ("stop", json!([1])),
            ("logit_bias", json!({ "abc": 1 })),
            ("logit_bias", json!({ "1": "x" })),
            ("logit_bias", json!([1])),
        ] {
            let refused = read_sampling(&table(), &mut Sampling::default(), name, &value);
            assert_eq!(param_of(refused), name);
        }
    }

    #[test]
    fn ranges_are_left_to_qinsd() {
        let mut s = Sampling::default();
        for (name, value) in [
            ("temperature", json!(-1)),
            ("top_p", json!(1.5)),
            ("min_p", json!(2)),
            ("presence_penalty", json!(3)),
            ("logit_bias", json!({ "1": 500 })),
        ] {
            assert!(
                read_sampling(&table(), &mut s, name, &value).unwrap(),
                "{name}"
            );
        }
        assert_eq!(s.min_p, Some(2.0));
    }

    #[test]
    fn qinsd_s_refusals_name_the_dialect_s_parameter() {
        let refusal = |message: &str| {
            let error = ApiError::BadRequest(message.into());
            name_refused_param(error, &table(), &[("top_logprobs", "logprobs")])
        };
        let sampling = refusal("invalid sampling parameter top_p = 1.5: must be in (0, 1]");
        assert_eq!(param_of(Err::<(), _>(sampling)), "top_p");
        let renamed = refusal("invalid sampling parameter repetition_penalty = 0: must be > 0");
        assert_eq!(param_of(Err::<(), _>(renamed)), "repeat_penalty");
        let other = refusal("invalid request: top_logprobs must be at most 20 (got 21)");
        assert_eq!(param_of(Err::<(), _>(other)), "logprobs");
        assert!(matches!(
            refusal("the prompt (90 tokens) does not fit the context of 64 tokens"),
            ApiError::BadRequest(_)
        ));
        // `top_p` inside `top_probability` is not the field.
        assert!(matches!(
            refusal("top_probability"),
            ApiError::BadRequest(_)
        ));
        let busy = name_refused_param(ApiError::Busy("full".into()), &table(), &[]);
        assert!(matches!(busy, ApiError::Busy(_)));
    }

    #[test]
    fn nulls_are_unset() {
        let body = object(json!({ "a": null, "b": 1 })).unwrap();
        assert_eq!(body.len(), 1);
        assert!(object(json!([1])).is_err());
    }
}
