//! Architecture configuration, normalized from Hugging Face `config.json` or
//! GGUF metadata into one typed form stored in the .qins header.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(
        "unsupported architecture '{0}': qins runs phi3 (Phi-3/3.5) and llama (Llama, SmolLM2, TinyLlama)"
    )]
    UnsupportedArchitecture(String),
    #[error("config.json: missing or invalid field '{0}'")]
    MissingField(&'static str),
    #[error("config.json: {0}")]
    Invalid(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Phi3,
    Llama,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Self::Phi3 => "phi3",
            Self::Llama => "llama",
        }
    }

    /// Maps a Hugging Face `model_type`/`architectures` entry or a GGUF
    /// `general.architecture` value.
    pub fn from_name(name: &str) -> Result<Self, ConfigError> {
        match name.to_ascii_lowercase().as_str() {
            "phi3" | "phi3forcausallm" => Ok(Self::Phi3),
            "llama" | "llamaforcausallm" => Ok(Self::Llama),
            _ => Err(ConfigError::UnsupportedArchitecture(name.to_string())),
        }
    }
}

/// Phi-3.5's "longrope" (LongRoPE / su) scaling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    /// Context the model was pre-trained with; longer sequences use `long_factor`.
    pub original_max_position_embeddings: usize,
    /// Overrides sqrt(1 + ln(scale) / ln(original_max)) when present.
    pub attention_factor: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub rope_scaling: Option<LongRope>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(json: &Value) -> Result<Self, ConfigError> {
        let arch_name = json
            .get("model_type")
            .and_then(Value::as_str)
            .or_else(|| {
                json.get("architectures")
                    .and_then(|a| a.get(0))
                    .and_then(Value::as_str)
            })
            .ok_or(ConfigError::MissingField("model_type"))?;
        let architecture = Architecture::from_name(arch_name)?;
        let usize_field = |name: &'static str| -> Result<usize, ConfigError> {
            json.get(name)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or(ConfigError::MissingField(name))
        };
        let hidden_size = usize_field("hidden_size")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        let num_key_value_heads = usize_field("num_key_value_heads").unwrap_or(num_attention_heads);
        let head_dim = usize_field("head_dim").unwrap_or(hidden_size / num_attention_heads.max(1));
        let max_position_embeddings = usize_field("max_position_embeddings")?;
        let rope_theta = json
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| {
                json.get("rope_parameters")
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        let original_max = json
            .get("original_max_position_embeddings")
            .and_then(Value::as_u64)
            .map(|v| v as usize);
        let rope_scaling = parse_rope_scaling(json, original_max, max_position_embeddings)?;
        let config = ModelConfig {
            architecture,
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: json
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            rope_theta,
            max_position_embeddings,
            rope_scaling,
            tie_word_embeddings: json
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: json
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            eos_token_ids: token_ids(json.get("eos_token_id")),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the invariants the model code relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || self.num_hidden_layers == 0
            || self.hidden_size == 0
            || self.vocab_size == 0
            || self.head_dim == 0
        {
            return invalid("sizes and counts must be non-zero".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return invalid(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return invalid(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if let Some(rope) = &self.rope_scaling {
            let half = self.head_dim / 2;
            if rope.short_factor.len() != half || rope.long_factor.len() != half {
                return invalid(format!(
                    "longrope factors must have head_dim/2 = {half} entries (short {}, long {})",
                    rope.short_factor.len(),
                    rope.long_factor.len()
                ));
            }
        }
        Ok(())
    }

    /// Every tensor the architecture needs, with its shape, in file order.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let ff = self.intermediate_size;
        let mut tensors = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            tensors.push((format!("{p}.input_layernorm.weight"), vec![h]));
            match self.architecture {
                Architecture::Phi3 => {
                    tensors.push((
                        format!("{p}.self_attn.qkv_proj.weight"),
                        vec![q + 2 * kv, h],
                    ));
                }
                Architecture::Llama => {
                    tensors.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
                    tensors.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
                    tensors.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
                }
            }
            tensors.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            tensors.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            match self.architecture {
                Architecture::Phi3 => {
                    tensors.push((format!("{p}.mlp.gate_up_proj.weight"), vec![2 * ff, h]));
                }
                Architecture::Llama => {
                    tensors.push((format!("{p}.mlp.gate_proj.weight"), vec![ff, h]));
                    tensors.push((format!("{p}.mlp.up_proj.weight"), vec![ff, h]));
                }
            }
            tensors.push((format!("{p}.mlp.down_proj.weight"), vec![h, ff]));
        }
        tensors.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            tensors.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        tensors
    }

    /// Parameters in the weight matrices and vectors of this architecture.
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let ff = self.intermediate_size as u64;
        let per_layer = h * (q + 2 * kv) + q * h + 3 * h * ff + 2 * h;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + h + per_layer * self.num_hidden_layers as u64
    }
}

fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads `rope_scaling` (transformers < 4.56) or `rope_parameters` (newer).
fn parse_rope_scaling(
    json: &Value,
    original_max: Option<usize>,
    max_position_embeddings: usize,
) -> Result<Option<LongRope>, ConfigError> {
    let scaling = json
        .get("rope_scaling")
        .filter(|v| !v.is_null())
        .or_else(|| json.get("rope_parameters").filter(|v| !v.is_null()));
    let Some(scaling) = scaling else {
        return Ok(None);
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "longrope" | "su" => {
            let factors = |name: &'static str| -> Result<Vec<f64>, ConfigError> {
                scaling
                    .get(name)
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_f64).collect())
                    .ok_or(ConfigError::MissingField(name))
            };
            let original = original_max
                .or_else(|| {
                    scaling
                        .get("original_max_position_embeddings")
                        .and_then(Value::as_u64)
                        .map(|v| v as usize)
                })
                .unwrap_or(max_position_embeddings);
            Ok(Some(LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor: scaling.get("attention_factor").and_then(Value::as_f64),
            }))
        }
        other => Err(ConfigError::Invalid(format!(
            "rope scaling type '{other}' is not supported (supported: default, longrope)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn phi35_json(scaling_key: &str) -> Value {
        let mut v = json!({
            "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
            "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
            "bos_token_id": 1, "eos_token_id": 32000,
        });
        v[scaling_key] = json!({"type": "longrope", "short_factor": vec![1.0; 48], "long_factor": vec![2.0; 48]});
        v
    }

    #[test]
    fn parses_phi35_with_either_scaling_key() {
        for key in ["rope_scaling", "rope_parameters"] {
            let c = ModelConfig::from_hf_json(&phi35_json(key)).unwrap();
            assert_eq!(c.architecture, Architecture::Phi3);
            assert_eq!(c.head_dim, 96);
            let rope = c.rope_scaling.unwrap();
            assert_eq!(rope.original_max_position_embeddings, 4096);
            assert_eq!(rope.long_factor.len(), 48);
        }
    }

    #[test]
    fn phi35_has_3_8b_parameters() {
        let c = ModelConfig::from_hf_json(&phi35_json("rope_scaling")).unwrap();
        assert_eq!(c.parameter_count(), 3_821_079_552);
    }

    #[test]
    fn expected_tensors_add_up_to_the_parameter_count() {
        let c = ModelConfig::from_hf_json(&phi35_json("rope_scaling")).unwrap();
        let total: usize = c
            .expected_tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(total as u64, c.parameter_count());
        assert_eq!(c.expected_tensors().len(), 2 + 32 * 6 + 1);
    }

    #[test]
    fn refuses_unknown_architecture() {
        let err = ModelConfig::from_hf_json(&json!({"model_type": "mamba"})).unwrap_err();
        assert!(err.to_string().contains("unsupported architecture 'mamba'"));
    }
}
