//! Converts a model (Hugging Face directory, Hub id or GGUF file) into a
//! `.qins` file, streaming one tensor at a time.
//!
//! Peak memory is about one tensor in f32 plus its codes: the float model is
//! never held whole.

pub mod defaults;
pub mod export;
pub mod gguf;
pub mod gguf_vocab;
pub mod hf_dir;
pub mod hub;
pub mod source;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

pub use defaults::{SamplingHints, StatedDefaults};
use qins_core::codec::{self, CodecError, EncodeOptions, ErrorStats};
use qins_core::container::config::ConfigError;
use qins_core::container::{
    Compression, ContainerError, ContainerWriter, ModelHeader, QualityReport, TensorQuality,
};
pub use source::{SourceModel, SourceTensor, TensorSource};

#[derive(Debug, Error)]
pub enum ConvertError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{path}: missing ({hint})")]
    MissingFile { path: PathBuf, hint: String },
    #[error("{0}: invalid JSON: {1}")]
    BadJson(PathBuf, #[source] serde_json::Error),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{0}: {1}")]
    Config(PathBuf, #[source] ConfigError),
    #[error("{0}: cannot read GGUF: {1}")]
    Gguf(PathBuf, String),
    #[error("{0}: cannot build the tokenizer: {1}")]
    Tokenizer(PathBuf, String),
    #[error("{source_path}: tensor '{name}' is missing")]
    MissingTensor { source_path: PathBuf, name: String },
    #[error("tensor '{name}' has shape {actual:?}, the config implies {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("tensor '{name}' has unsupported dtype {dtype} (supported: F32, F16, BF16)")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("tensor '{name}': {source}")]
    Codec {
        name: String,
        #[source]
        source: CodecError,
    },
    #[error(
        "cannot download '{id}' from the Hugging Face Hub ({reason}); if you have the model locally, pass its directory instead: qinsd convert /path/to/model-dir -o model.qins"
    )]
    HubUnreachable { id: String, reason: String },
    #[error(
        "'{0}' is neither a model directory, a .gguf file nor a Hugging Face Hub id (owner/name)"
    )]
    UnknownSource(String),
    #[error("chat default: {0}")]
    BadDefault(String),
    #[error("{} exists; pass --force to replace it", .0.display())]
    OutputExists(PathBuf),
    #[error("conversion cancelled")]
    Cancelled,
    #[error(transparent)]
    Container(#[from] ContainerError),
}

impl ConvertError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io(path.to_path_buf(), source)
    }
}

/// Options of a conversion.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    pub encode: EncodeOptions,
    pub compression: Compression,
    /// Name recorded in the header (default: the output file stem).
    pub name: Option<String>,
    /// Keep matrices as f32 instead of QINS: a float reference model for
    /// quality comparisons (4x larger; not meant for serving).
    pub reference_f32: bool,
    /// Chat defaults to record, ahead of what the source states
    /// (`qinsd convert --temperature/--top-p`).
    pub defaults: SamplingHints,
}

/// Progress of a conversion, for progress bars and the daemon's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum ConvertEvent {
    /// Bytes of one file downloaded from the Hub so far.
    Download {
        file: String,
        bytes: u64,
        total: u64,
    },
    /// Source opened; `parameters` weights in `tensors` tensors to encode.
    Started { tensors: usize, parameters: u64 },
    /// Tensor `index` (1-based) of `count` written.
    Tensor {
        index: usize,
        count: usize,
        name: String,
        parameters_done: u64,
        bytes_written: u64,
    },
}

/// What a finished conversion produced.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    pub output: PathBuf,
    pub header: ModelHeader,
    pub file_bytes: u64,
    pub parameters: u64,
    pub elapsed: Duration,
}

/// Opens `source`: an existing directory (Hugging Face layout), an existing
/// GGUF file, or a Hub id (`owner/name[@revision]`).
pub fn open_source(
    source: &str,
    progress: &mut dyn FnMut(ConvertEvent),
) -> Result<Box<dyn TensorSource>, ConvertError> {
    let path = Path::new(source);
    if path.is_dir() {
        return Ok(Box::new(hf_dir::HfDirSource::open(path)?));
    }
    if path.is_file() {
        if is_gguf(path)? {
            return Ok(Box::new(gguf::GgufSource::open(path)?));
        }
        return Err(ConvertError::Invalid {
            path: path.to_path_buf(),
            reason: "not a GGUF file; pass a GGUF file, a Hugging Face model directory or a Hub id"
                .into(),
        });
    }
    if hub::looks_like_hub_id(source) {
        return Ok(Box::new(hub::open_hub_model(source, progress)?));
    }
    Err(ConvertError::UnknownSource(source.to_string()))
}

/// A file name for a converted model: the last path or Hub id component,
/// without revision or `.gguf` extension (`HuggingFaceTB/SmolLM2@main` ->
/// `SmolLM2`).
/// The one rule for where a conversion goes when no output is given:
/// `MODELS_DIR/<name>.qins`, named by [`default_model_name`]. `qinsd convert`,
/// `qins convert` (the Convert RPC) and a Hub id loaded by name all use it.
pub fn default_output_path(source: &str, models_dir: &Path) -> PathBuf {
    models_dir.join(format!("{}.qins", default_model_name(source)))
}

/// The one overwrite rule: an existing output is replaced only when the
/// caller asked for it (`--force`; `overwrite` in the Convert RPC). Creates
/// the output's directory, so that a refusal comes before any work.
pub fn prepare_output(output: &Path, overwrite: bool) -> Result<(), ConvertError> {
    if output.exists() && !overwrite {
        return Err(ConvertError::OutputExists(output.to_path_buf()));
    }
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ConvertError::io(dir, e))?;
    }
    Ok(())
}

pub fn default_model_name(source: &str) -> String {
    let last = source
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(source);
    let last = last.split('@').next().unwrap_or(last);
    last.strip_suffix(".gguf").unwrap_or(last).to_string()
}

fn is_gguf(path: &Path) -> Result<bool, ConvertError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))?;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}

/// Encodes every tensor of `source` into a new `.qins` file at `output`
/// (written atomically). `cancel` is checked between tensors.
pub fn convert(
    source: &dyn TensorSource,
    output: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(ConvertEvent),
    cancel: &AtomicBool,
) -> Result<ConvertSummary, ConvertError> {
    let started = Instant::now();
    options
        .encode
        .validate()
        .map_err(|source| ConvertError::Codec {
            name: "(options)".into(),
            source,
        })?;
    options.defaults.check().map_err(ConvertError::BadDefault)?;
    let model = source.model();
    let parameters: u64 = model
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    progress(ConvertEvent::Started {
        tensors: model.tensors.len(),
        parameters,
    });
    let mut writer = ContainerWriter::create(output, options.compression)?;
    let mut total = ErrorStats::default();
    let mut per_tensor = Vec::new();
    let mut parameters_done = 0u64;
    for (i, tensor) in model.tensors.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(ConvertError::Cancelled);
        }
        let values = source.read_f32(&tensor.name)?;
        if let ([rows, cols], false) = (&tensor.shape[..], options.reference_f32) {
            let (rows, cols) = (*rows, *cols);
            let encoded =
                codec::encode_matrix(&values, rows, cols, &options.encode).map_err(|source| {
                    ConvertError::Codec {
                        name: tensor.name.clone(),
                        source,
                    }
                })?;
            let stats = ErrorStats::measure(&values, &encoded);
            total.merge(&stats);
            per_tensor.push(TensorQuality {
                name: tensor.name.clone(),
                error: stats.summary(),
            });
            writer.add_qins(&tensor.name, &encoded)?;
        } else {
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                return Err(ConvertError::Codec {
                    name: tensor.name.clone(),
                    source: CodecError::NonFinite {
                        index,
                        value: values[index],
                    },
                });
            }
            writer.add_f32(&tensor.name, &tensor.shape, &values)?;
        }
        parameters_done += values.len() as u64;
        progress(ConvertEvent::Tensor {
            index: i + 1,
            count: model.tensors.len(),
            name: tensor.name.clone(),
            parameters_done,
            bytes_written: writer.bytes_written(),
        });
    }
    let header = build_header(model, output, options, total, per_tensor);
    let output = writer.finish(&header)?;
    let file_bytes = std::fs::metadata(&output)
        .map_err(|e| ConvertError::io(&output, e))?
        .len();
    Ok(ConvertSummary {
        output,
        header,
        file_bytes,
        parameters,
        elapsed: started.elapsed(),
    })
}

fn build_header(
    model: &SourceModel,
    output: &Path,
    options: &ConvertOptions,
    total: ErrorStats,
    tensors: Vec<TensorQuality>,
) -> ModelHeader {
    let name = options.name.clone().unwrap_or_else(|| {
        output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    ModelHeader {
        name,
        config: model.config.clone(),
        tokenizer_json: model.tokenizer_json.clone(),
        chat_template: model.chat_template.clone(),
        extra_stop_tokens: source::stop_tokens_of_template(model.chat_template.as_deref()),
        generation: recorded_defaults(model, &options.defaults),
        source: model.info.clone(),
        encode_options: options.encode,
        compression: options.compression,
        quality: (!options.reference_f32).then(|| QualityReport {
            model: total.summary(),
            tensors,
        }),
        created_by: format!("qins {}", env!("CARGO_PKG_VERSION")),
    }
}

/// The chat defaults recorded for `model`: the conversion's options first,
/// then what the source states (see [`defaults`]).
fn recorded_defaults(
    model: &SourceModel,
    options: &SamplingHints,
) -> qins_core::container::GenerationDefaults {
    let mut stated = Vec::with_capacity(model.stated_defaults.len() + 1);
    if !options.is_empty() {
        stated.push(StatedDefaults {
            origin: defaults::CONVERSION_OPTIONS.into(),
            hints: *options,
        });
    }
    stated.extend(model.stated_defaults.iter().cloned());
    defaults::resolve(&stated)
}
