//! The chat defaults a conversion records in the .qins header, and where
//! each value came from.
//!
//! One rule, value by value, first match wins:
//!
//! 1. the conversion's own options (`qinsd convert --temperature/--top-p`,
//!    `qins convert`, the Convert RPC);
//! 2. what the source file states: `generation_config.json` of a Hugging
//!    Face model, the `general.sampling.*` keys of a GGUF file (written by
//!    llama.cpp's converter from that same file);
//! 3. the values the model's card recommends ([`MODEL_CARDS`]), for models
//!    whose files say nothing (GGUF files usually carry no sampling keys);
//! 4. qins' fallback, [`GenerationDefaults::default`].
//!
//! A chat uses the recorded values for whatever its request leaves unset
//! (`engine::ChatModel::request`).

use serde_json::Value;

use qins_core::container::GenerationDefaults;

/// Sampling values one place states; `None` where it is silent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SamplingHints {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f32>,
}

/// Sampling values and where they were read (`generation_config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct StatedDefaults {
    pub origin: String,
    pub hints: SamplingHints,
}

/// Where values given as conversion options are said to come from.
pub const CONVERSION_OPTIONS: &str = "set at conversion";
/// Where the values no source states are said to come from.
pub const FALLBACK: &str = "qins fallback";

/// A model card's recommended sampling, for the family whose names contain
/// `family` (lower-case letters and digits only).
struct ModelCard {
    family: &'static str,
    card: &'static str,
    hints: SamplingHints,
}

/// Recommendations read from model cards, for sources that carry none.
const MODEL_CARDS: &[ModelCard] = &[
    // The card's example: `model.generate(inputs, max_new_tokens=50,
    // temperature=0.2, top_p=0.9, do_sample=True)`; the 360M and 1.7B
    // cards give the same values.
    ModelCard {
        family: "smollm2",
        card: "HuggingFaceTB/SmolLM2-135M-Instruct",
        hints: SamplingHints {
            temperature: Some(0.2),
            top_p: Some(0.9),
            top_k: None,
            repetition_penalty: None,
        },
    },
    // The card's pipeline example: `"temperature": 0.0, "do_sample": False`.
    ModelCard {
        family: "phi35mini",
        card: "microsoft/Phi-3.5-mini-instruct",
        hints: SamplingHints {
            temperature: Some(0.0),
            top_p: None,
            top_k: None,
            repetition_penalty: None,
        },
    },
];

impl SamplingHints {
    /// What `generation_config.json` says. `"do_sample": false` is
    /// transformers' greedy decoding, so it records temperature 0; without
    /// `do_sample` the values present are taken as they are.
    pub fn from_generation_config(config: &Value) -> Self {
        let float = |key: &str| config.get(key).and_then(Value::as_f64).map(|v| v as f32);
        let greedy = config.get("do_sample").and_then(Value::as_bool) == Some(false);
        Self {
            temperature: if greedy {
                Some(0.0)
            } else {
                float("temperature")
            },
            top_p: float("top_p"),
            top_k: config
                .get("top_k")
                .and_then(Value::as_i64)
                .map(top_k_from_signed),
            repetition_penalty: float("repetition_penalty"),
        }
        .usable()
    }

    /// The values a chat can run with; out-of-range ones (a negative or
    /// non-finite temperature, top_p outside (0, 1], a repetition penalty
    /// <= 0) are dropped so the next source in line decides them.
    pub fn usable(self) -> Self {
        Self {
            temperature: self.temperature.filter(|t| t.is_finite() && *t >= 0.0),
            top_p: self.top_p.filter(|p| *p > 0.0 && *p <= 1.0),
            top_k: self.top_k,
            repetition_penalty: self
                .repetition_penalty
                .filter(|r| r.is_finite() && *r > 0.0),
        }
    }

    /// Why these values cannot be used (for explicit conversion options,
    /// which are refused rather than dropped).
    pub fn check(&self) -> Result<(), String> {
        if let Some(t) = self.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(format!("temperature must be >= 0 (0 = greedy), not {t}"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(format!("top_p must be in (0, 1], not {p}"));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A top-k as llama.cpp and transformers write it, where 0 or a negative
/// value means "no limit" (qins' 0).
pub fn top_k_from_signed(k: i64) -> u32 {
    u32::try_from(k.max(0)).unwrap_or(u32::MAX)
}

/// The recommendations of the model card of the family that any of `names`
/// (a GGUF's `general.*` names, a Hub id, a directory name) belongs to.
pub fn model_card(names: &[&str]) -> Option<StatedDefaults> {
    let normalized: Vec<String> = names
        .iter()
        .map(|name| {
            name.chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect()
        })
        .collect();
    MODEL_CARDS
        .iter()
        .find(|card| normalized.iter().any(|name| name.contains(card.family)))
        .map(|card| StatedDefaults {
            origin: format!("model card of {}", card.card),
            hints: card.hints,
        })
}

/// The recorded defaults: each value from the first of `stated` that sets
/// it, else the fallback; `origin` says which value came from where.
pub fn resolve(stated: &[StatedDefaults]) -> GenerationDefaults {
    let fallback = GenerationDefaults::default();
    let temperature = first(stated, |h| h.temperature);
    let top_p = first(stated, |h| h.top_p);
    let top_k = first(stated, |h| h.top_k);
    let repetition_penalty = first(stated, |h| h.repetition_penalty);
    // Index into `stated` of each value's source; `stated.len()`: the fallback.
    let source = |index: Option<usize>| index.unwrap_or(stated.len());
    let sources = [
        ("temperature", source(temperature.map(|(i, _)| i))),
        ("top_p", source(top_p.map(|(i, _)| i))),
        ("top_k", source(top_k.map(|(i, _)| i))),
        (
            "repetition_penalty",
            source(repetition_penalty.map(|(i, _)| i)),
        ),
        ("max_tokens", stated.len()),
    ];
    GenerationDefaults {
        temperature: temperature.map_or(fallback.temperature, |(_, v)| v),
        top_p: top_p.map_or(fallback.top_p, |(_, v)| v),
        top_k: top_k.map_or(fallback.top_k, |(_, v)| v),
        repetition_penalty: repetition_penalty.map_or(fallback.repetition_penalty, |(_, v)| v),
        max_tokens: fallback.max_tokens,
        origin: describe_origins(stated, &sources),
    }
}

/// The first of `stated` that sets a value, and the value.
fn first<T>(
    stated: &[StatedDefaults],
    value: impl Fn(&SamplingHints) -> Option<T>,
) -> Option<(usize, T)> {
    stated
        .iter()
        .enumerate()
        .find_map(|(i, s)| value(&s.hints).map(|v| (i, v)))
}

/// `temperature, top_p: model card of X; top_k, ...: qins fallback`, the
/// sources in the order of precedence.
fn describe_origins(stated: &[StatedDefaults], sources: &[(&str, usize)]) -> String {
    let mut parts = Vec::new();
    for index in 0..=stated.len() {
        let names: Vec<&str> = sources
            .iter()
            .filter(|(_, i)| *i == index)
            .map(|(name, _)| *name)
            .collect();
        if names.is_empty() {
            continue;
        }
        let origin = stated.get(index).map_or(FALLBACK, |s| s.origin.as_str());
        parts.push(format!("{}: {origin}", names.join(", ")));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stated(origin: &str, hints: SamplingHints) -> StatedDefaults {
        StatedDefaults {
            origin: origin.into(),
            hints,
        }
    }

    #[test]
    fn each_value_comes_from_the_first_source_that_sets_it() {
        let options = stated(
            CONVERSION_OPTIONS,
            SamplingHints {
                temperature: Some(0.0),
                ..SamplingHints::default()
            },
        );
        let card = model_card(&["SmolLM2-135M-Instruct.Q4_1.gguf"]).expect("SmolLM2 is known");
        let defaults = resolve(&[options, card]);
        assert_eq!(defaults.temperature, 0.0);
        assert_eq!(defaults.top_p, 0.9);
        let fallback = GenerationDefaults::default();
        assert_eq!(defaults.top_k, fallback.top_k);
        assert_eq!(defaults.max_tokens, fallback.max_tokens);
        assert_eq!(
            defaults.origin,
            "temperature: set at conversion; top_p: model card of \
             HuggingFaceTB/SmolLM2-135M-Instruct; top_k, repetition_penalty, max_tokens: \
             qins fallback"
        );
    }

    #[test]
    fn nothing_stated_is_the_fallback() {
        let defaults = resolve(&[]);
        let fallback = GenerationDefaults::default();
        assert_eq!(
            (defaults.temperature, defaults.top_p, defaults.top_k),
            (fallback.temperature, fallback.top_p, fallback.top_k)
        );
        assert_eq!(
            defaults.origin,
            "temperature, top_p, top_k, repetition_penalty, max_tokens: qins fallback"
        );
    }

    #[test]
    fn model_cards_match_the_family_in_any_spelling() {
        for names in [
            &["Smollm2 135M 8k Lc100K Mix1 Ep2"][..],
            &["HuggingFaceTB/SmolLM2-360M-Instruct"],
            &["Phi 3.5 Mini Instruct"],
            &["", "/models/Phi-3.5-mini-instruct"],
        ] {
            assert!(model_card(names).is_some(), "{names:?}");
        }
        assert!(model_card(&["Phi3", "Llama-3.2-1B"]).is_none());
        let phi = model_card(&["Phi-3.5-mini-instruct"]).unwrap();
        assert_eq!(phi.hints.temperature, Some(0.0));
    }

    #[test]
    fn generation_config_values_and_greedy_do_sample() {
        let sampled = SamplingHints::from_generation_config(&json!({
            "do_sample": true, "temperature": 0.6, "top_p": 0.9, "top_k": 20,
            "repetition_penalty": 1.05
        }));
        assert_eq!(sampled.temperature, Some(0.6));
        assert_eq!(sampled.top_p, Some(0.9));
        assert_eq!(sampled.top_k, Some(20));
        assert_eq!(sampled.repetition_penalty, Some(1.05));
        let greedy = SamplingHints::from_generation_config(&json!({
            "do_sample": false, "temperature": 0.6
        }));
        assert_eq!(greedy.temperature, Some(0.0));
        let silent = SamplingHints::from_generation_config(&json!({ "eos_token_id": 2 }));
        assert!(silent.is_empty());
        let out_of_range = SamplingHints::from_generation_config(&json!({
            "temperature": -1.0, "top_p": 0.0, "top_k": -1, "repetition_penalty": 0.0
        }));
        assert_eq!(
            out_of_range,
            SamplingHints {
                top_k: Some(0),
                ..SamplingHints::default()
            }
        );
    }

    #[test]
    fn explicit_values_out_of_range_are_refused() {
        let bad = |temperature, top_p| SamplingHints {
            temperature,
            top_p,
            ..SamplingHints::default()
        };
        assert!(bad(Some(-0.5), None).check().unwrap_err().contains(">= 0"));
        assert!(bad(Some(f32::NAN), None).check().is_err());
        assert!(bad(None, Some(1.5)).check().unwrap_err().contains("(0, 1]"));
        assert!(bad(Some(0.0), Some(1.0)).check().is_ok());
    }
}
