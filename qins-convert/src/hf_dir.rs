//! A local Hugging Face model directory: `config.json`, one or more
//! `*.safetensors` files (with `model.safetensors.index.json` when sharded),
//! `tokenizer.json`, and the chat template from `tokenizer_config.json` or
//! `chat_template.jinja`.
//!
//! Tensors are read with positioned reads (not mmap) so that only the tensor
//! being converted is ever resident.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::Value;

use super::ConvertError;
use super::defaults::{self, SamplingHints, StatedDefaults};
use super::source::{SourceModel, SourceTensor, TensorSource};
use qins_core::container::SourceInfo;
use qins_core::model::ModelConfig;

/// Safetensors headers larger than this are refused (real ones are < 1 MB).
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

#[derive(Clone, Debug)]
struct TensorLocation {
    file: PathBuf,
    dtype: String,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

pub struct HfDirSource {
    model: SourceModel,
    locations: HashMap<String, TensorLocation>,
}

impl HfDirSource {
    pub fn open(dir: &Path) -> Result<Self, ConvertError> {
        Self::open_as(
            dir,
            SourceInfo {
                kind: "hf-dir".into(),
                id: dir.display().to_string(),
                revision: None,
                dtype: String::new(),
            },
        )
    }

    /// Opens `dir` recording `info` as the model's origin (used for Hub snapshots).
    pub fn open_as(dir: &Path, mut info: SourceInfo) -> Result<Self, ConvertError> {
        let config_json = read_json(&dir.join("config.json"))?;
        let mut config = ModelConfig::from_hf_json(&config_json)
            .map_err(|e| ConvertError::Config(dir.join("config.json"), e))?;
        let generation_json = read_json_if_exists(&dir.join("generation_config.json"))?;
        merge_eos_ids(&mut config, generation_json.as_ref());
        let tokenizer_json = fs::read_to_string(dir.join("tokenizer.json")).map_err(|e| {
            ConvertError::MissingFile {
                path: dir.join("tokenizer.json"),
                hint: format!("qins needs the fast tokenizer file ({e})"),
            }
        })?;
        let chat_template = read_chat_template(dir)?;
        let locations = index_safetensors(dir)?;
        info.dtype = dominant_dtype(&locations);
        let expected = config.expected_tensors();
        let mut tensors = Vec::with_capacity(expected.len());
        for (name, shape) in expected {
            let location = locations
                .get(&name)
                .ok_or_else(|| ConvertError::MissingTensor {
                    source_path: dir.to_path_buf(),
                    name: name.clone(),
                })?;
            if location.shape != shape {
                return Err(ConvertError::TensorShape {
                    name,
                    expected: shape,
                    actual: location.shape.clone(),
                });
            }
            tensors.push(SourceTensor { name, shape });
        }
        let stated_defaults = stated_defaults(generation_json.as_ref(), &config_json, &info, dir);
        Ok(Self {
            model: SourceModel {
                config,
                tokenizer_json,
                chat_template,
                stated_defaults,
                info,
                tensors,
            },
            locations,
        })
    }
}

impl TensorSource for HfDirSource {
    fn model(&self) -> &SourceModel {
        &self.model
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, ConvertError> {
        let loc = self
            .locations
            .get(name)
            .ok_or_else(|| ConvertError::MissingTensor {
                source_path: PathBuf::from(&self.model.info.id),
                name: name.into(),
            })?;
        let len = usize::try_from(loc.end - loc.start)
            .map_err(|_| ConvertError::io(&loc.file, too_big()))?;
        let mut bytes = vec![0u8; len];
        let file = File::open(&loc.file).map_err(|e| ConvertError::io(&loc.file, e))?;
        file.read_exact_at(&mut bytes, loc.start)
            .map_err(|e| ConvertError::io(&loc.file, e))?;
        let count: usize = loc.shape.iter().product();
        let values =
            decode_dtype(&loc.dtype, &bytes).ok_or_else(|| ConvertError::UnsupportedDtype {
                name: name.into(),
                dtype: loc.dtype.clone(),
            })?;
        if values.len() != count {
            return Err(ConvertError::TensorShape {
                name: name.into(),
                expected: loc.shape.clone(),
                actual: vec![values.len()],
            });
        }
        Ok(values)
    }
}

fn too_big() -> std::io::Error {
    std::io::Error::other("tensor too large for this platform")
}

fn decode_dtype(dtype: &str, bytes: &[u8]) -> Option<Vec<f32>> {
    let values = match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(values)
}

fn element_size(dtype: &str) -> Option<u64> {
    match dtype {
        "F32" => Some(4),
        "F16" | "BF16" => Some(2),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value, ConvertError> {
    let text = fs::read_to_string(path).map_err(|e| ConvertError::MissingFile {
        path: path.to_path_buf(),
        hint: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ConvertError::BadJson(path.to_path_buf(), e))
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>, ConvertError> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// `generation_config.json` often lists more end tokens than `config.json`
/// (Phi-3.5: `<|end|>`, `<|assistant|>`, `<|endoftext|>`).
fn merge_eos_ids(config: &mut ModelConfig, generation: Option<&Value>) {
    let Some(eos) = generation.and_then(|g| g.get("eos_token_id")) else {
        return;
    };
    let ids: Vec<u32> = match eos {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as u32)
            .collect(),
        v => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
    };
    for id in ids {
        if !config.eos_token_ids.contains(&id) {
            config.eos_token_ids.push(id);
        }
    }
}

/// What the model states about sampling: `generation_config.json`, then
/// the card of its family, recognized by the Hub id or directory name or
/// the config's `_name_or_path`.
fn stated_defaults(
    generation: Option<&Value>,
    config: &Value,
    info: &SourceInfo,
    dir: &Path,
) -> Vec<StatedDefaults> {
    let mut stated = Vec::new();
    if let Some(hints) = generation.map(SamplingHints::from_generation_config)
        && !hints.is_empty()
    {
        stated.push(StatedDefaults {
            origin: "generation_config.json".into(),
            hints,
        });
    }
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let names = [
        Some(info.id.as_str()),
        dir_name.as_deref(),
        config.get("_name_or_path").and_then(Value::as_str),
    ];
    let names: Vec<&str> = names.into_iter().flatten().collect();
    stated.extend(defaults::model_card(&names));
    stated
}

fn read_chat_template(dir: &Path) -> Result<Option<String>, ConvertError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| ConvertError::io(&jinja, e));
    }
    let Some(config) = read_json_if_exists(&dir.join("tokenizer_config.json"))? else {
        return Ok(None);
    };
    Ok(match config.get("chat_template") {
        Some(Value::String(t)) => Some(t.clone()),
        // A list of named templates: take "default".
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(String::from),
        _ => None,
    })
}

/// Finds the safetensors files (index or directory listing) and reads each header.
fn index_safetensors(dir: &Path) -> Result<HashMap<String, TensorLocation>, ConvertError> {
    let files = safetensors_files(dir)?;
    let mut locations = HashMap::new();
    for file in files {
        locations.extend(read_safetensors_header(&file)?);
    }
    Ok(locations)
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ConvertError> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let index = read_json(&index_path)?;
        let weight_map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ConvertError::Invalid {
                path: index_path.clone(),
                reason: "no weight_map".into(),
            })?;
        let names: BTreeSet<&str> = weight_map.values().filter_map(Value::as_str).collect();
        return names
            .into_iter()
            .map(|name| safe_join(dir, name, &index_path))
            .collect();
    }
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| ConvertError::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConvertError::MissingFile {
            path: dir.join("model.safetensors"),
            hint: "no *.safetensors weights in this directory (PyTorch .bin checkpoints are not supported)".into(),
        });
    }
    Ok(files)
}

/// Joins a shard name from the index, refusing names that escape the directory.
fn safe_join(dir: &Path, name: &str, index_path: &Path) -> Result<PathBuf, ConvertError> {
    let candidate = Path::new(name);
    if candidate.components().count() != 1 || candidate.is_absolute() {
        return Err(ConvertError::Invalid {
            path: index_path.to_path_buf(),
            reason: format!("shard name '{name}' is not a plain file name"),
        });
    }
    Ok(dir.join(candidate))
}

fn read_safetensors_header(path: &Path) -> Result<Vec<(String, TensorLocation)>, ConvertError> {
    let invalid = |reason: String| ConvertError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| ConvertError::io(path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| ConvertError::io(path, e))?
        .len();
    let mut len_bytes = [0u8; 8];
    file.read_exact_at(&mut len_bytes, 0)
        .map_err(|_| invalid("too short to be a safetensors file".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_SAFETENSORS_HEADER || 8 + header_len > file_len {
        return Err(invalid(format!("implausible header length {header_len}")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| ConvertError::io(path, e))?;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&header)
        .map_err(|e| ConvertError::BadJson(path.to_path_buf(), e))?;
    let data_start = 8 + header_len;
    let mut out = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info
            .get("dtype")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|d| d as usize)
                    .collect()
            })
            .ok_or_else(|| invalid(format!("tensor '{name}' has no shape")))?;
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let [begin, end] = offsets[..] else {
            return Err(invalid(format!("tensor '{name}' has no data_offsets")));
        };
        // Offsets come from the file: checked, like the container reader's.
        let (Some(start), Some(end)) = (data_start.checked_add(begin), data_start.checked_add(end))
        else {
            return Err(invalid(format!(
                "tensor '{name}' has data_offsets past any file size"
            )));
        };
        let count = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let consistent = match (element_size(&dtype), count) {
            (Some(size), Some(count)) => count.checked_mul(size) == end.checked_sub(start),
            // Other dtypes are reported only if the tensor is actually needed.
            (None, _) => end >= start,
            _ => false,
        };
        if !consistent || end > file_len {
            return Err(invalid(format!(
                "tensor '{name}' has inconsistent offsets or shape"
            )));
        }
        out.push((
            name,
            TensorLocation {
                file: path.to_path_buf(),
                dtype,
                shape,
                start,
                end,
            },
        ));
    }
    Ok(out)
}

fn dominant_dtype(locations: &HashMap<String, TensorLocation>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for loc in locations.values() {
        *counts.entry(loc.dtype.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(d, _)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file whose header is `header` and whose data is `data_len` zero bytes.
    fn safetensors_file(dir: &Path, header: &str, data_len: usize) -> PathBuf {
        let path = dir.join("model.safetensors");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn data_offsets_near_the_u64_limit_are_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let max = u64::MAX;
        let header =
            format!(r#"{{"w":{{"dtype":"F32","shape":[1],"data_offsets":[{max},{max}]}}}}"#);
        let path = safetensors_file(dir.path(), &header, 4);
        let error = read_safetensors_header(&path).unwrap_err().to_string();
        assert!(error.contains("data_offsets"), "{error}");
        let good = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let path = safetensors_file(dir.path(), good, 4);
        assert_eq!(read_safetensors_header(&path).unwrap().len(), 1);
    }
}
