//! A GGUF file (llama.cpp's format), any tensor type candle can dequantize.
//!
//! Tensors are renamed to Hugging Face names and brought back to Hugging
//! Face layout: llama.cpp's converter interleaves the rows of llama Q and K
//! projections (for its GPT-J style rotary), which is undone here so that one
//! model implementation serves both sources.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};

use super::ConvertError;
use super::defaults::{self, SamplingHints, StatedDefaults};
use super::source::{SourceModel, SourceTensor, TensorSource};
use crate::gguf_vocab::tokenizer_from_gguf;
use qins_core::container::SourceInfo;
use qins_core::container::config::LongRope;
use qins_core::model::{Architecture, ModelConfig};

pub struct GgufSource {
    path: PathBuf,
    content: Content,
    model: SourceModel,
    /// Hugging Face name -> GGUF name.
    gguf_names: HashMap<String, String>,
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<Self, ConvertError> {
        let mut reader = BufReader::new(File::open(path).map_err(|e| ConvertError::io(path, e))?);
        let content = Content::read(&mut reader)
            .map_err(|e| ConvertError::Gguf(path.to_path_buf(), e.to_string()))?;
        let meta = Metadata {
            path,
            values: &content.metadata,
        };
        let architecture = Architecture::from_name(meta.string("general.architecture")?)
            .map_err(|e| ConvertError::Config(path.to_path_buf(), e))?;
        let tokenizer = tokenizer_from_gguf(&content)
            .map_err(|e| ConvertError::Tokenizer(path.to_path_buf(), e.to_string()))?;
        let vocab_size = match content.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len(),
            _ => return Err(meta.missing("tokenizer.ggml.tokens")),
        };
        let tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
        let mut config =
            config_from_metadata(&meta, architecture, vocab_size, tie_word_embeddings)?;
        if architecture == Architecture::Phi3 {
            config.rope_scaling = read_longrope(path, &content, &meta, &config)?;
        }
        config.bos_token_id = tokenizer.bos_token_id;
        config.eos_token_ids = tokenizer.eos_token_id.into_iter().collect();
        config
            .validate()
            .map_err(|e| ConvertError::Config(path.to_path_buf(), e))?;

        let gguf_names = hf_to_gguf_names(&config);
        let mut tensors = Vec::new();
        for (name, shape) in config.expected_tensors() {
            let gguf_name = &gguf_names[&name];
            let info =
                content
                    .tensor_infos
                    .get(gguf_name)
                    .ok_or_else(|| ConvertError::MissingTensor {
                        source_path: path.to_path_buf(),
                        name: gguf_name.clone(),
                    })?;
            if info.shape.dims() != shape.as_slice() {
                return Err(ConvertError::TensorShape {
                    name: gguf_name.clone(),
                    expected: shape,
                    actual: info.shape.dims().to_vec(),
                });
            }
            tensors.push(SourceTensor { name, shape });
        }
        let dtype = content
            .tensor_infos
            .get("blk.0.ffn_down.weight")
            .map(|t| format!("{:?}", t.ggml_dtype))
            .unwrap_or_default();
        let model = SourceModel {
            config,
            tokenizer_json: tokenizer.tokenizer_json,
            chat_template: tokenizer.chat_template,
            stated_defaults: stated_defaults(&meta),
            info: SourceInfo {
                kind: "gguf".into(),
                id: meta
                    .values
                    .get("general.name")
                    .and_then(|v| v.to_string().ok())
                    .cloned()
                    .unwrap_or_else(|| path.display().to_string()),
                revision: None,
                dtype,
            },
            tensors,
        };
        Ok(Self {
            path: path.to_path_buf(),
            content,
            model,
            gguf_names,
        })
    }
}

impl TensorSource for GgufSource {
    fn model(&self) -> &SourceModel {
        &self.model
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, ConvertError> {
        let gguf_name = self
            .gguf_names
            .get(name)
            .ok_or_else(|| ConvertError::MissingTensor {
                source_path: self.path.clone(),
                name: name.into(),
            })?;
        let gguf_error = |e: candle_core::Error| {
            ConvertError::Gguf(self.path.clone(), format!("tensor '{gguf_name}': {e}"))
        };
        let mut reader =
            BufReader::new(File::open(&self.path).map_err(|e| ConvertError::io(&self.path, e))?);
        let values = self
            .content
            .tensor(&mut reader, gguf_name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(gguf_error)?;
        let config = &self.model.config;
        Ok(match (config.architecture, gguf_name.rsplit('.').nth(1)) {
            (Architecture::Llama, Some("attn_q")) => {
                unpermute_rotary_rows(&values, config.num_attention_heads, config.hidden_size)
            }
            (Architecture::Llama, Some("attn_k")) => {
                unpermute_rotary_rows(&values, config.num_key_value_heads, config.hidden_size)
            }
            _ => values,
        })
    }
}

/// Undoes llama.cpp's row permutation of Q/K projections: within each head,
/// GGUF row `2*i + j` holds Hugging Face row `j*head_dim/2 + i`.
pub fn unpermute_rotary_rows(values: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0f32; values.len()];
    for head in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = head * head_dim + 2 * i + j;
                let dst = head * head_dim + j * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn hf_to_gguf_names(config: &ModelConfig) -> HashMap<String, String> {
    let mut names = HashMap::new();
    names.insert(
        "model.embed_tokens.weight".into(),
        "token_embd.weight".into(),
    );
    names.insert("model.norm.weight".into(), "output_norm.weight".into());
    names.insert("lm_head.weight".into(), "output.weight".into());
    let gate_up = match config.architecture {
        Architecture::Phi3 => ("mlp.gate_up_proj", "ffn_up"),
        Architecture::Llama => ("mlp.up_proj", "ffn_up"),
    };
    for i in 0..config.num_hidden_layers {
        for (hf, gguf) in [
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
            ("self_attn.qkv_proj", "attn_qkv"),
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("mlp.gate_proj", "ffn_gate"),
            gate_up,
            ("mlp.down_proj", "ffn_down"),
        ] {
            names.insert(
                format!("model.layers.{i}.{hf}.weight"),
                format!("blk.{i}.{gguf}.weight"),
            );
        }
    }
    names
}

/// What the file states about sampling: llama.cpp's `general.sampling.*`
/// keys, then the card of the model's family, recognized by the file's
/// `general.*` names or its file name.
fn stated_defaults(meta: &Metadata) -> Vec<StatedDefaults> {
    let mut stated = Vec::new();
    let hints = sampling_hints(meta);
    if !hints.is_empty() {
        stated.push(StatedDefaults {
            origin: "GGUF general.sampling metadata".into(),
            hints,
        });
    }
    let file_name = meta.path.file_name().map(|n| n.to_string_lossy());
    let mut names: Vec<&str> = [
        "general.name",
        "general.basename",
        "general.finetune",
        "general.size_label",
    ]
    .iter()
    .filter_map(|key| meta.values.get(*key)?.to_string().ok())
    .map(String::as_str)
    .collect();
    names.extend(file_name.as_deref());
    stated.extend(defaults::model_card(&names));
    stated
}

/// The `general.sampling.*` keys llama.cpp's converter writes from a
/// model's `generation_config.json` (`temp`, `top_p`, `top_k`,
/// `penalty_repeat`).
fn sampling_hints(meta: &Metadata) -> SamplingHints {
    let float = |key: &str| meta.number(key).map(|v| v as f32);
    SamplingHints {
        temperature: float("general.sampling.temp"),
        top_p: float("general.sampling.top_p"),
        top_k: meta
            .number("general.sampling.top_k")
            .map(|k| defaults::top_k_from_signed(k as i64)),
        repetition_penalty: float("general.sampling.penalty_repeat"),
    }
    .usable()
}

struct Metadata<'a> {
    path: &'a Path,
    values: &'a HashMap<String, Value>,
}

impl Metadata<'_> {
    fn missing(&self, key: &str) -> ConvertError {
        ConvertError::Gguf(
            self.path.to_path_buf(),
            format!("metadata key '{key}' is missing or has the wrong type"),
        )
    }

    fn string(&self, key: &str) -> Result<&str, ConvertError> {
        self.values
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .ok_or_else(|| self.missing(key))
    }

    fn number(&self, key: &str) -> Option<f64> {
        let v = self.values.get(key)?;
        v.to_f64()
            .ok()
            .or_else(|| v.to_f32().ok().map(f64::from))
            .or_else(|| v.to_u64().ok().map(|x| x as f64))
            .or_else(|| v.to_u32().ok().map(f64::from))
            .or_else(|| v.to_i64().ok().map(|x| x as f64))
            .or_else(|| v.to_i32().ok().map(f64::from))
    }

    fn usize(&self, key: &str) -> Result<usize, ConvertError> {
        self.number(key)
            .filter(|v| *v >= 0.0)
            .map(|v| v as usize)
            .ok_or_else(|| self.missing(key))
    }
}

fn config_from_metadata(
    meta: &Metadata,
    architecture: Architecture,
    vocab_size: usize,
    tie_word_embeddings: bool,
) -> Result<ModelConfig, ConvertError> {
    let arch = architecture.name();
    let key = |k: &str| format!("{arch}.{k}");
    let hidden_size = meta.usize(&key("embedding_length"))?;
    let num_attention_heads = meta.usize(&key("attention.head_count"))?;
    let num_key_value_heads = meta
        .usize(&key("attention.head_count_kv"))
        .unwrap_or(num_attention_heads);
    let head_dim = meta
        .usize(&key("attention.key_length"))
        .or_else(|_| meta.usize(&key("rope.dimension_count")))
        .unwrap_or(hidden_size / num_attention_heads.max(1));
    Ok(ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: meta.usize(&key("feed_forward_length"))?,
        num_hidden_layers: meta.usize(&key("block_count"))?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: meta
            .number(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        rope_theta: meta.number(&key("rope.freq_base")).unwrap_or(10_000.0),
        max_position_embeddings: meta.usize(&key("context_length"))?,
        rope_scaling: None,
        tie_word_embeddings,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    })
}

/// Phi-3 GGUFs carry longrope factors as `rope_factors_{short,long}.weight`.
fn read_longrope(
    path: &Path,
    content: &Content,
    meta: &Metadata,
    config: &ModelConfig,
) -> Result<Option<LongRope>, ConvertError> {
    let read = |name: &str| -> Result<Option<Vec<f64>>, ConvertError> {
        if !content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        let mut reader = BufReader::new(File::open(path).map_err(|e| ConvertError::io(path, e))?);
        let values = content
            .tensor(&mut reader, name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| ConvertError::Gguf(path.to_path_buf(), format!("tensor '{name}': {e}")))?;
        Ok(Some(values.into_iter().map(f64::from).collect()))
    };
    let (Some(short_factor), Some(long_factor)) = (
        read("rope_factors_short.weight")?,
        read("rope_factors_long.weight")?,
    ) else {
        return Ok(None);
    };
    Ok(Some(LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: meta
            .usize("phi3.rope.scaling.original_context_length")
            .unwrap_or(config.max_position_embeddings),
        attention_factor: meta.number("phi3.rope.scaling.attn_factor"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_restores_half_split_rows() {
        // One head of head_dim 4: Hugging Face rows [a0 a1 | b0 b1] (rotate_half
        // pairs a_i with b_i) are stored by llama.cpp interleaved as [a0 b0 a1 b1].
        let gguf = [10.0, 20.0, 11.0, 21.0];
        assert_eq!(
            unpermute_rotary_rows(&gguf, 1, 1),
            vec![10.0, 11.0, 20.0, 21.0]
        );
        // Two heads, two columns: each head is handled on its own.
        let gguf = [
            0., 0., 2., 2., 1., 1., 3., 3., 4., 4., 6., 6., 5., 5., 7., 7.,
        ];
        let hf = unpermute_rotary_rows(&gguf, 2, 2);
        assert_eq!(
            hf,
            vec![
                0., 0., 1., 1., 2., 2., 3., 3., 4., 4., 5., 5., 6., 6., 7., 7.
            ]
        );
    }

    #[test]
    fn sampling_keys_come_before_the_model_card() {
        let mut values = HashMap::from([
            ("general.sampling.temp".to_string(), Value::F32(0.6)),
            ("general.sampling.top_p".to_string(), Value::F32(0.95)),
            ("general.sampling.top_k".to_string(), Value::I32(-1)),
            (
                "general.basename".to_string(),
                Value::String("SmolLM2".into()),
            ),
        ]);
        let path = Path::new("/models/model.gguf");
        let stated = stated_defaults(&Metadata {
            path,
            values: &values,
        });
        assert_eq!(stated.len(), 2, "{stated:?}");
        assert_eq!(stated[0].origin, "GGUF general.sampling metadata");
        assert_eq!(
            stated[0].hints,
            SamplingHints {
                temperature: Some(0.6),
                top_p: Some(0.95),
                top_k: Some(0),
                repetition_penalty: None,
            }
        );
        assert!(stated[1].origin.contains("SmolLM2"), "{stated:?}");

        values.clear();
        let file_only = stated_defaults(&Metadata {
            path: Path::new("/x/SmolLM2-135M-Instruct.Q4_1.gguf"),
            values: &values,
        });
        assert_eq!(file_only.len(), 1);
        assert_eq!(file_only[0].hints.temperature, Some(0.2));
        let unknown = stated_defaults(&Metadata {
            path: Path::new("/x/other.gguf"),
            values: &values,
        });
        assert!(unknown.is_empty());
    }
}
