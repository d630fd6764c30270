//! Export of a .qins model back to a Hugging Face directory.
//!
//! The weights are the DECODED QINS values as f32 safetensors, so loading the
//! directory in `transformers` runs exactly the model qins runs: the basis of
//! the golden-logit tests. `config.json` is rebuilt from the header's
//! [`ModelConfig`]; the tokenizer and chat template are the header's.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};
use thiserror::Error;

use qins_core::container::config::{Architecture, ModelConfig};
use qins_core::container::format::{ModelHeader, TensorEntry};
use qins_core::container::{ContainerError, QinsFile};
use qins_core::weights::{ResidentWeights, Weight};

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the index lists tensor '{0}' but it was not loaded")]
    MissingTensor(String),
    #[error("tensor '{name}' has {actual} values, its shape {shape:?} needs {expected}")]
    ShapeMismatch {
        name: String,
        shape: Vec<u64>,
        expected: usize,
        actual: usize,
    },
    #[error("the tokenizer stored in the model cannot be read: {0}")]
    Tokenizer(String),
    #[error("cannot write safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    #[error("cannot serialize JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    pub tensors: usize,
    /// Safetensors files written (1 means a single `model.safetensors`).
    pub shards: usize,
    /// Bytes of f32 weight data.
    pub weight_bytes: u64,
}

/// Largest safetensors file written: bounds the memory holding decoded
/// weights (a 3.8B-parameter model is 15 GB in f32).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 2 << 30;

/// Exports `qins_path` into `out_dir` (created if missing).
pub fn export_hf(qins_path: &Path, out_dir: &Path) -> Result<ExportSummary, ExportError> {
    export_hf_with_shard_limit(qins_path, out_dir, DEFAULT_MAX_SHARD_BYTES)
}

/// [`export_hf`] with weight files of at most `max_shard_bytes` each (a single
/// tensor larger than that gets a file of its own).
pub fn export_hf_with_shard_limit(
    qins_path: &Path,
    out_dir: &Path,
    max_shard_bytes: u64,
) -> Result<ExportSummary, ExportError> {
    let file = QinsFile::open(qins_path)?;
    let weights = file.load()?;
    fs::create_dir_all(out_dir).map_err(|e| io_error(out_dir, e))?;
    let shards = plan_shards(&file.index, max_shard_bytes);
    write_weight_shards(out_dir, &shards, &weights)?;
    write_metadata_files(out_dir, &file.header)?;
    Ok(ExportSummary {
        tensors: file.index.len(),
        shards: shards.len(),
        weight_bytes: file.index.iter().map(f32_bytes).sum(),
    })
}

fn f32_bytes(entry: &TensorEntry) -> u64 {
    4 * entry.shape.iter().product::<u64>()
}

/// Groups tensors, in file order, into shards of at most `max_bytes`.
fn plan_shards(index: &[TensorEntry], max_bytes: u64) -> Vec<Vec<&TensorEntry>> {
    let mut shards: Vec<Vec<&TensorEntry>> = Vec::new();
    let mut current_bytes = 0;
    for entry in index {
        let bytes = f32_bytes(entry);
        match shards.last_mut() {
            Some(shard) if current_bytes + bytes <= max_bytes => {
                shard.push(entry);
                current_bytes += bytes;
            }
            _ => {
                shards.push(vec![entry]);
                current_bytes = bytes;
            }
        }
    }
    shards
}

fn shard_file_name(shard: usize, shard_count: usize) -> String {
    if shard_count == 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{shard_count:05}.safetensors", shard + 1)
    }
}

fn write_weight_shards(
    out_dir: &Path,
    shards: &[Vec<&TensorEntry>],
    weights: &ResidentWeights,
) -> Result<(), ExportError> {
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0;
    for (i, shard) in shards.iter().enumerate() {
        let file_name = shard_file_name(i, shards.len());
        write_shard(&out_dir.join(&file_name), shard, weights)?;
        for entry in shard {
            weight_map.insert(entry.name.clone(), file_name.clone());
            total_size += f32_bytes(entry);
        }
    }
    if shards.len() > 1 {
        let index = json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        write_json(&out_dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(())
}

/// Decodes the shard's tensors and writes them as one f32 safetensors file.
fn write_shard(
    path: &Path,
    entries: &[&TensorEntry],
    weights: &ResidentWeights,
) -> Result<(), ExportError> {
    let decoded = entries
        .iter()
        .map(|entry| Ok((*entry, f32_le_bytes(&decoded_values(entry, weights)?))))
        .collect::<Result<Vec<_>, ExportError>>()?;
    let views = decoded
        .iter()
        .map(|(entry, bytes)| {
            let shape = entry.shape.iter().map(|&d| d as usize).collect();
            Ok((
                entry.name.as_str(),
                TensorView::new(Dtype::F32, shape, bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, ExportError>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(metadata), path)?;
    Ok(())
}

fn decoded_values(entry: &TensorEntry, weights: &ResidentWeights) -> Result<Vec<f32>, ExportError> {
    let values = match weights.get(&entry.name) {
        Some(Weight::Qins(matrix)) => matrix.decode(),
        Some(Weight::F32(tensor)) => tensor.data.clone(),
        None => return Err(ExportError::MissingTensor(entry.name.clone())),
    };
    let expected = entry.shape.iter().product::<u64>() as usize;
    if values.len() != expected {
        return Err(ExportError::ShapeMismatch {
            name: entry.name.clone(),
            shape: entry.shape.clone(),
            expected,
            actual: values.len(),
        });
    }
    Ok(values)
}

fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn write_metadata_files(out_dir: &Path, header: &ModelHeader) -> Result<(), ExportError> {
    let tokenizer = tokenizers::Tokenizer::from_str(&header.tokenizer_json)
        .map_err(|e| ExportError::Tokenizer(e.to_string()))?;
    let token = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
    let config = &header.config;
    let bos = token(config.bos_token_id);
    let eos = token(config.eos_token_ids.first().copied());
    write_json(&out_dir.join("config.json"), &hf_config_json(config))?;
    let tokenizer_path = out_dir.join("tokenizer.json");
    fs::write(&tokenizer_path, &header.tokenizer_json).map_err(|e| io_error(&tokenizer_path, e))?;
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": eos,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": config.max_position_embeddings,
        "chat_template": header.chat_template,
    });
    write_json(&out_dir.join("tokenizer_config.json"), &tokenizer_config)?;
    let generation = &header.generation;
    let generation_config = json!({
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_ids,
        "do_sample": true,
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "top_k": generation.top_k,
        "repetition_penalty": generation.repetition_penalty,
    });
    write_json(&out_dir.join("generation_config.json"), &generation_config)
}

/// A Hugging Face `config.json` for `config` (f32 weights); parsing it with
/// [`ModelConfig::from_hf_json`] gives `config` back.
pub fn hf_config_json(config: &ModelConfig) -> Value {
    let (class, model_type) = match config.architecture {
        Architecture::Phi3 => ("Phi3ForCausalLM", "phi3"),
        Architecture::Llama => ("LlamaForCausalLM", "llama"),
    };
    let eos = match config.eos_token_ids.as_slice() {
        [] => Value::Null,
        [single] => json!(single),
        many => json!(many),
    };
    let mut json = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": null,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": false,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos,
        // Explicitly none: Phi3Config would otherwise default to 32000, past
        // the vocabulary of small models (torch refuses that padding index).
        "pad_token_id": null,
        "torch_dtype": "float32",
    });
    if let Some(rope) = &config.rope_scaling {
        json["original_max_position_embeddings"] = json!(rope.original_max_position_embeddings);
        let mut scaling = json!({
            "type": "longrope",
            "short_factor": rope.short_factor,
            "long_factor": rope.long_factor,
        });
        if let Some(factor) = rope.attention_factor {
            scaling["attention_factor"] = json!(factor);
        }
        json["rope_scaling"] = scaling;
    }
    json
}

fn write_json(path: &Path, value: &Value) -> Result<(), ExportError> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    fs::write(path, text).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, source: std::io::Error) -> ExportError {
    ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_core::codec::{self, EncodeOptions};
    use qins_core::container::config::LongRope;
    use qins_core::container::{Compression, ContainerWriter, GenerationDefaults, SourceInfo};
    use qins_test_support::tiny::{TinySpec, write_tiny_model};
    use safetensors::SafeTensors;

    /// Tensor name -> (shape, f32 values).
    type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qins-export-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    }

    fn f32_values(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Every f32 tensor of the safetensors files in `dir`.
    fn read_safetensors(dir: &Path) -> Tensors {
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                let bytes = fs::read(&path).unwrap();
                for (name, view) in SafeTensors::deserialize(&bytes).unwrap().tensors() {
                    assert_eq!(view.dtype(), Dtype::F32, "{name}");
                    out.insert(name, (view.shape().to_vec(), f32_values(view.data())));
                }
            }
        }
        out
    }

    /// Converts a tiny model into a .qins (QINS matrices, f32 vectors) and
    /// returns its path, header and the values a reader must decode.
    fn tiny_qins(
        spec: &TinySpec,
        work: &Path,
        compression: Compression,
    ) -> (PathBuf, ModelHeader, Tensors) {
        let hf = work.join("hf");
        write_tiny_model(&hf, spec).unwrap();
        let qins = work.join("tiny.qins");
        let mut writer = ContainerWriter::create(&qins, compression).unwrap();
        let mut expected = BTreeMap::new();
        for (name, (shape, values)) in read_safetensors(&hf) {
            let decoded = if let [rows, cols] = shape[..] {
                let encoded =
                    codec::encode_matrix(&values, rows, cols, &EncodeOptions::default()).unwrap();
                writer.add_qins(&name, &encoded).unwrap();
                encoded.decode()
            } else {
                writer.add_f32(&name, &shape, &values).unwrap();
                values
            };
            expected.insert(name, (shape, decoded));
        }
        let tokenizer_config = read_json(&hf.join("tokenizer_config.json"));
        let header = ModelHeader {
            name: "tiny".into(),
            config: ModelConfig::from_hf_json(&read_json(&hf.join("config.json"))).unwrap(),
            tokenizer_json: fs::read_to_string(hf.join("tokenizer.json")).unwrap(),
            chat_template: tokenizer_config["chat_template"]
                .as_str()
                .map(str::to_string),
            extra_stop_tokens: Vec::new(),
            generation: GenerationDefaults::default(),
            source: SourceInfo {
                kind: "generated".into(),
                ..SourceInfo::default()
            },
            encode_options: EncodeOptions::default(),
            compression,
            quality: None,
            created_by: "test".into(),
        };
        writer.finish(&header).unwrap();
        (qins, header, expected)
    }

    #[test]
    fn exports_decoded_weights_config_and_tokenizer() {
        for (spec, compression) in [
            (TinySpec::phi3(), Compression::None),
            (TinySpec::llama(), Compression::Zstd),
        ] {
            let work = scratch(spec.arch.name());
            let (qins, header, expected) = tiny_qins(&spec, &work, compression);
            let out = work.join("exported");
            let summary = export_hf(&qins, &out).unwrap();
            assert_eq!(summary.shards, 1);
            assert_eq!(summary.tensors, expected.len());
            let exported = read_safetensors(&out);
            assert_eq!(exported, expected);
            // QINS is lossy: the export holds the decoded values, not the originals.
            let original = read_safetensors(&work.join("hf"));
            assert_ne!(
                exported["model.layers.0.self_attn.o_proj.weight"],
                original["model.layers.0.self_attn.o_proj.weight"]
            );

            let config_json = read_json(&out.join("config.json"));
            assert_eq!(
                ModelConfig::from_hf_json(&config_json).unwrap(),
                header.config
            );
            assert_eq!(
                fs::read_to_string(out.join("tokenizer.json")).unwrap(),
                header.tokenizer_json
            );
            let tokenizer_config = read_json(&out.join("tokenizer_config.json"));
            assert_eq!(
                tokenizer_config["chat_template"].as_str(),
                header.chat_template.as_deref()
            );
            let generation = read_json(&out.join("generation_config.json"));
            assert_eq!(
                generation["eos_token_id"],
                json!(header.config.eos_token_ids)
            );
            match spec.arch {
                Architecture::Phi3 => {
                    assert_eq!(config_json["original_max_position_embeddings"], 32);
                    assert_eq!(config_json["rope_scaling"]["type"], "longrope");
                    assert_eq!(tokenizer_config["eos_token"], "<|endoftext|>");
                    assert!(exported.contains_key("lm_head.weight"));
                }
                Architecture::Llama => {
                    assert_eq!(config_json["tie_word_embeddings"], true);
                    assert_eq!(tokenizer_config["bos_token"], "<|im_start|>");
                    assert_eq!(tokenizer_config["eos_token"], "<|im_end|>");
                    assert!(!exported.contains_key("lm_head.weight"));
                }
            }
        }
    }

    #[test]
    fn large_models_are_split_into_indexed_shards() {
        let work = scratch("shards");
        let (qins, _, expected) = tiny_qins(&TinySpec::llama(), &work, Compression::None);
        let out = work.join("exported");
        let max_bytes = 100 * 1024;
        let summary = export_hf_with_shard_limit(&qins, &out, max_bytes).unwrap();
        assert!(summary.shards > 2, "{summary:?}");
        assert!(!out.join("model.safetensors").exists());
        let index = read_json(&out.join("model.safetensors.index.json"));
        let weight_map = index["weight_map"].as_object().unwrap();
        assert_eq!(weight_map.len(), expected.len());
        assert_eq!(
            index["metadata"]["total_size"].as_u64(),
            Some(summary.weight_bytes)
        );
        for shard in 1..=summary.shards {
            let name = format!("model-{shard:05}-of-{:05}.safetensors", summary.shards);
            let bytes = fs::read(out.join(&name)).unwrap();
            let tensors = SafeTensors::deserialize(&bytes).unwrap();
            let data: usize = tensors.tensors().iter().map(|(_, v)| v.data().len()).sum();
            // Only a tensor larger than the limit may exceed it, alone.
            assert!(
                data as u64 <= max_bytes || tensors.len() == 1,
                "{name}: {data} bytes"
            );
            for (tensor, _) in tensors.tensors() {
                assert_eq!(weight_map[&tensor], name.as_str());
            }
        }
        assert_eq!(read_safetensors(&out), expected);
    }

    #[test]
    fn config_round_trips_through_hf_json() {
        let config = ModelConfig {
            architecture: Architecture::Phi3,
            vocab_size: 100,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 12345.5,
            max_position_embeddings: 512,
            rope_scaling: Some(LongRope {
                short_factor: vec![1.0, 1.25, 1.5, 1.75],
                long_factor: vec![2.0, 3.0, 4.5, 6.0],
                original_max_position_embeddings: 64,
                attention_factor: Some(1.1),
            }),
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![7, 9],
        };
        assert_eq!(
            ModelConfig::from_hf_json(&hf_config_json(&config)).unwrap(),
            config
        );
        let llama = ModelConfig {
            architecture: Architecture::Llama,
            rope_scaling: None,
            tie_word_embeddings: true,
            eos_token_ids: vec![2],
            ..config
        };
        let json = hf_config_json(&llama);
        assert_eq!(json["eos_token_id"], 2);
        assert_eq!(ModelConfig::from_hf_json(&json).unwrap(), llama);
    }

    #[test]
    fn a_missing_model_file_is_a_container_error() {
        let work = scratch("missing");
        let err = export_hf(&work.join("absent.qins"), &work.join("out")).unwrap_err();
        assert!(
            matches!(err, ExportError::Container(ContainerError::Io { .. })),
            "{err}"
        );
        assert!(!work.join("out").exists());
    }
}
