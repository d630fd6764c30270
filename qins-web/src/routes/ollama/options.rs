//! ollama's `options` object mapped onto qinsd's `Sampling`. Every option
//! ollama documents falls in one of four groups (the table in
//! TECHNICAL_SPEC.md, "ollama's API", lists them):
//! - honoured: mapped to a sampling field;
//! - accepted only at the value that describes what qinsd does anyway
//!   (`mirostat: 0`, `typical_p: 1`, `repeat_last_n: -1`, ...), refused at
//!   any other value;
//! - ignored and documented: `num_ctx` (the context is qinsd's `--context`);
//! - refused with a 400 naming it: load-time settings of ollama's runner,
//!   samplers qinsd does not have, and any option not in ollama's list.
//!
//! Unset options take the model's defaults (its generation config), not
//! ollama's built-in ones. The honoured ones are read through the edge's
//! parameter table (`SAMPLING`), as in every dialect; errors name them
//! `options.NAME`.

use qins_proto::v1::Sampling;
use serde_json::{Map, Value};

use crate::edge::params::{self, SamplingField, SamplingTable};
use crate::error::ApiError;

/// ollama's names for the sampling fields it honours as they are;
/// `num_predict` (max_tokens) has ollama's own special values.
const SAMPLING: &SamplingTable = &[
    ("temperature", SamplingField::Temperature),
    ("top_p", SamplingField::TopP),
    ("top_k", SamplingField::TopK),
    ("seed", SamplingField::Seed),
    ("stop", SamplingField::Stop),
    ("repeat_penalty", SamplingField::RepetitionPenalty),
    ("min_p", SamplingField::MinP),
    ("presence_penalty", SamplingField::PresencePenalty),
    ("frequency_penalty", SamplingField::FrequencyPenalty),
];

/// Settings ollama's runner takes when it loads a model; qinsd decides
/// them itself when it starts (threads, memory mapping, device).
const LOAD_TIME: [&str; 12] = [
    "numa",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mmap",
    "use_mlock",
    "embedding_only",
    "num_thread",
];

/// `options` as a request's sampling settings, or a 400 naming the first
/// option that qinsd cannot honour. JSON `null` means unset.
pub fn sampling(options: Option<Map<String, Value>>) -> Result<Sampling, ApiError> {
    let mut sampling = Sampling::default();
    let mut penalty_window_off = false;
    let mut mirostat_on = false;
    for (name, value) in options.into_iter().flatten() {
        if value.is_null() {
            continue;
        }
        let name = name.as_str();
        if let Some(&(_, field)) = SAMPLING.iter().find(|(known, _)| *known == name) {
            field.read(&mut sampling, &format!("options.{name}"), &value)?;
            continue;
        }
        match name {
            "num_predict" => sampling.max_tokens = Some(num_predict(int(name, &value)?)?),
            "repeat_last_n" => match int(name, &value)? {
                // qinsd's penalty looks at the whole context: ollama's -1.
                -1 => {}
                0 => penalty_window_off = true,
                n => {
                    return Err(refused(
                        name,
                        &format!(
                            "{n}: qinsd applies repeat_penalty over the whole context; only -1 \
                             (the whole context) and 0 (off) are supported"
                        ),
                    ));
                }
            },
            // qinsd's penalty covers every token, newlines included.
            "penalize_newline" => {
                if !boolean(name, &value)? {
                    return Err(refused(
                        name,
                        "false: qinsd's repeat penalty always covers newlines (true)",
                    ));
                }
            }
            // Accepted, not applied: see the module comment.
            "num_ctx" => {
                int(name, &value)?;
            }
            "mirostat" => mirostat_on = int(name, &value)? != 0,
            // Parameters of mirostat: without it ollama ignores them too.
            "mirostat_tau" | "mirostat_eta" => {
                float(name, &value)?;
            }
            "typical_p" | "tfs_z" => neutral(name, &value, 1.0)?,
            "num_keep" => {
                return Err(refused(
                    name,
                    "qinsd never shifts the context (a prompt that does not fit is refused), \
                     so there is nothing to keep",
                ));
            }
            _ if LOAD_TIME.contains(&name) => {
                return Err(refused(
                    name,
                    "it is a load-time setting of ollama's runner; qinsd sets threads, memory \
                     mapping and device itself (see `qinsd --help`)",
                ));
            }
            _ => return Err(refused(name, "it is not one of ollama's options")),
        }
    }
    if mirostat_on {
        return Err(refused(
            "mirostat",
            "qinsd has no mirostat sampler (only 0, off, is supported)",
        ));
    }
    if penalty_window_off {
        sampling.repetition_penalty = Some(1.0);
    }
    Ok(sampling)
}

fn refused(name: &str, why: &str) -> ApiError {
    ApiError::BadRequest(format!("option {name} is not supported: {why}"))
}

fn float(name: &str, value: &Value) -> Result<f32, ApiError> {
    params::float(&format!("options.{name}"), value)
}

fn int(name: &str, value: &Value) -> Result<i64, ApiError> {
    params::integer(&format!("options.{name}"), value)
}

fn boolean(name: &str, value: &Value) -> Result<bool, ApiError> {
    params::boolean(&format!("options.{name}"), value)
}

/// An option for a sampler qinsd does not have: accepted at the value that
/// turns it off, refused at any other.
fn neutral(name: &str, value: &Value, off: f32) -> Result<(), ApiError> {
    let v = float(name, value)?;
    if v == off {
        Ok(())
    } else {
        Err(refused(
            name,
            &format!("qinsd does not have this sampler (only {off}, off, is accepted)"),
        ))
    }
}

/// ollama's -1 (until the end) and -2 (fill the context) both run to the
/// context limit, where qinsd stops with `length`.
fn num_predict(n: i64) -> Result<u32, ApiError> {
    match n {
        -2 | -1 => Ok(u32::MAX),
        n if n >= 1 => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
        n => Err(ApiError::BadRequest(format!(
            "option num_predict must be at least 1, or -1 (until the context is full) (got {n})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(options: Value) -> Result<Sampling, ApiError> {
        match options {
            Value::Object(map) => sampling(Some(map)),
            _ => panic!("options must be an object"),
        }
    }

    fn refusal(options: Value) -> String {
        match parse(options) {
            Err(error) if error.status().as_u16() == 400 => error.to_string(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn honoured_options_map_to_sampling() {
        let s = parse(json!({
            "temperature": 0.5, "top_p": 0.9, "top_k": 40, "seed": 7,
            "num_predict": 12, "stop": ["\n", "user:"], "repeat_penalty": 1.1,
            "num_ctx": 2048, "repeat_last_n": -1, "penalize_newline": true,
            "mirostat": 0, "mirostat_tau": 5.0, "typical_p": 1.0, "tfs_z": 1.0,
            "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": 0.25,
            "numa": null,
        }))
        .expect("accepted");
        assert_eq!(s.min_p, Some(0.05));
        assert_eq!(s.presence_penalty, Some(0.5));
        assert_eq!(s.frequency_penalty, Some(0.25));
        assert_eq!(s.temperature, Some(0.5));
        assert_eq!(s.top_p, Some(0.9));
        assert_eq!(s.top_k, Some(40));
        assert_eq!(s.seed, Some(7));
        assert_eq!(s.max_tokens, Some(12));
        assert_eq!(s.stop, vec!["\n".to_string(), "user:".to_string()]);
        assert_eq!(s.repetition_penalty, Some(1.1));
    }

    #[test]
    fn ollama_special_values() {
        let s = parse(json!({ "seed": -1, "top_k": -1, "num_predict": -1, "stop": "x" }))
            .expect("accepted");
        assert_eq!(s.seed, None, "seed -1 is a fresh one");
        assert_eq!(s.top_k, Some(0), "<= 0: no limit");
        assert_eq!(s.max_tokens, Some(u32::MAX), "until the context is full");
        assert_eq!(s.stop, vec!["x".to_string()]);
        let off = parse(json!({ "repeat_penalty": 1.3, "repeat_last_n": 0 })).expect("accepted");
        assert_eq!(off.repetition_penalty, Some(1.0), "window 0 turns it off");
        assert_eq!(parse(json!({})).expect("empty"), Sampling::default());
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        for (options, name) in [
            (json!({ "mirostat": 2 }), "mirostat"),
            (json!({ "typical_p": 0.7 }), "typical_p"),
            (json!({ "min_p": "high" }), "min_p"),
            (json!({ "repeat_last_n": 64 }), "repeat_last_n"),
            (json!({ "penalize_newline": false }), "penalize_newline"),
            (json!({ "num_keep": 5 }), "num_keep"),
            (json!({ "num_gpu": 1 }), "num_gpu"),
            (json!({ "num_thread": 8 }), "num_thread"),
            (json!({ "use_mmap": true }), "use_mmap"),
            (json!({ "frobnicate": 1 }), "frobnicate"),
            (json!({ "num_predict": 0 }), "num_predict"),
            (json!({ "temperature": "hot" }), "temperature"),
            (json!({ "stop": [1] }), "options.stop"),
            (json!({ "seed": -2 }), "options.seed"),
        ] {
            let message = refusal(options);
            assert!(message.contains(name), "{name}: {message}");
        }
    }
}
