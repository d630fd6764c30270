//! Deterministic tiny random-weight models in Hugging Face layout.
//!
//! `write_tiny_model` produces a complete model directory (config, weights,
//! byte-level BPE tokenizer with chat specials, chat template, generation
//! config) that `qinsd convert` and Hugging Face `transformers` both load.
//! Every byte comes from [`SplitMix64`], so the same spec gives the same
//! files on every run and platform, and golden logits computed from them
//! stay valid.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};
use thiserror::Error;

use qins_core::container::config::Architecture;
use qins_core::rng::SplitMix64;

#[derive(Debug, Error)]
pub enum FixtureError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialize safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    #[error("cannot serialize JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Storage type of the generated weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TinyDtype {
    F32,
    Bf16,
}

impl std::str::FromStr for TinyDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype '{other}' (expected f32 or bf16)")),
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TinySpec {
    pub arch: Architecture,
    pub seed: u64,
    /// Split the weights over two safetensors files plus an index.
    pub sharded: bool,
    pub dtype: TinyDtype,
}

/// Seed of the default specs (and of the golden files).
pub const DEFAULT_SEED: u64 = 42;

impl TinySpec {
    pub fn phi3() -> Self {
        Self::new(Architecture::Phi3)
    }

    pub fn llama() -> Self {
        Self::new(Architecture::Llama)
    }

    pub fn new(arch: Architecture) -> Self {
        Self {
            arch,
            seed: DEFAULT_SEED,
            sharded: false,
            dtype: TinyDtype::F32,
        }
    }
}

/// Sizes and tokens of one tiny architecture.
struct Layout {
    arch: Architecture,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    layers: usize,
    rope_theta: f64,
    tied: bool,
    /// Special tokens, in id order.
    specials: &'static [&'static str],
    /// Whether the specials take the first ids (SmolLM2) or the last (Phi-3).
    specials_first: bool,
    bos: &'static str,
    /// End-of-sequence tokens; the first is the tokenizer's eos token.
    eos: &'static [&'static str],
    chat_template: &'static str,
}

const MAX_POSITIONS: usize = 256;
/// Phi-3 longrope: prompts longer than this use the long factors.
const PHI3_ORIGINAL_MAX_POSITIONS: usize = 32;
const RMS_EPS: f64 = 1e-5;

/// Phi-3.5's chat format: an empty system prompt is dropped; without a
/// generation prompt the text ends with the eos token.
pub(crate) const PHI3_CHAT_TEMPLATE: &str = "{% for message in messages %}\
{% if message['role'] in ['user', 'assistant'] or (message['role'] == 'system' and message['content']) %}\
{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}\
{% endif %}{% endfor %}\
{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}";

/// ChatML, as used by SmolLM2 (without its default system prompt).
const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

impl Layout {
    fn of(arch: Architecture) -> Self {
        match arch {
            Architecture::Phi3 => Self {
                arch,
                hidden: 64,
                heads: 4,
                kv_heads: 4,
                head_dim: 16,
                intermediate: 128,
                layers: 2,
                rope_theta: 10_000.0,
                tied: false,
                specials: &[
                    "<s>",
                    "<|endoftext|>",
                    "<|system|>",
                    "<|user|>",
                    "<|assistant|>",
                    "<|end|>",
                ],
                specials_first: false,
                bos: "<s>",
                eos: &["<|endoftext|>", "<|end|>"],
                chat_template: PHI3_CHAT_TEMPLATE,
            },
            Architecture::Llama => Self {
                arch,
                hidden: 64,
                heads: 4,
                kv_heads: 2,
                head_dim: 16,
                intermediate: 96,
                layers: 2,
                rope_theta: 100_000.0,
                tied: true,
                specials: &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                specials_first: true,
                bos: "<|im_start|>",
                eos: &["<|im_end|>", "<|endoftext|>"],
                chat_template: CHATML_TEMPLATE,
            },
        }
    }
}

/// Writes the model directory `dir` (created if missing; files in it are overwritten).
pub fn write_tiny_model(dir: &Path, spec: &TinySpec) -> Result<(), FixtureError> {
    let layout = Layout::of(spec.arch);
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let tokenizer = TinyTokenizer::build(&layout);
    let vocab_size = padded_vocab_size(tokenizer.len());
    let tensors = generate_tensors(&layout, vocab_size, spec.seed);
    write_weights(dir, &layout, &tensors, spec)?;
    write_json(
        &dir.join("config.json"),
        &config_json(&layout, &tokenizer, vocab_size, spec.dtype),
    )?;
    write_json(&dir.join("tokenizer.json"), &tokenizer.to_json())?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(&layout),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &generation_config_json(&layout, &tokenizer),
    )?;
    Ok(())
}

/// Embedding rows for a few unused ids, as real models have.
fn padded_vocab_size(tokenizer_len: usize) -> usize {
    tokenizer_len.next_multiple_of(32)
}

// ---------------------------------------------------------------- tokenizer

/// Merges learned from `MERGE_CORPUS`: enough that common words become
/// single tokens, few enough to keep the vocabulary small.
const MERGE_COUNT: usize = 64;

const MERGE_CORPUS: &str = "The quick brown fox jumps over the lazy dog. \
The system is ready and the user asks the assistant a question. \
What is the capital of France? The capital of France is Paris. \
Hello there, how are you today? I am fine, thank you for asking. \
Tell me a story about the sea and the stars in the night. \
There is nothing on the table, and the other one is in the kitchen.";

/// A byte-level BPE vocabulary: the 256 byte symbols, learned merges and
/// the special tokens.
struct TinyTokenizer {
    /// Token string -> id, specials included.
    vocab: BTreeMap<String, u32>,
    merges: Vec<(String, String)>,
    specials: Vec<(String, u32)>,
}

impl TinyTokenizer {
    fn build(layout: &Layout) -> Self {
        let byte_symbols: Vec<String> = (0..=255u8).map(|b| byte_symbol(b).to_string()).collect();
        let merges = learn_merges(MERGE_CORPUS, MERGE_COUNT);
        let special_count = layout.specials.len() as u32;
        let first_regular_id = if layout.specials_first {
            special_count
        } else {
            0
        };
        let mut vocab = BTreeMap::new();
        let regular = byte_symbols
            .into_iter()
            .chain(merges.iter().map(|(a, b)| format!("{a}{b}")));
        for (i, token) in regular.enumerate() {
            vocab.insert(token, first_regular_id + i as u32);
        }
        let first_special_id = if layout.specials_first {
            0
        } else {
            vocab.len() as u32
        };
        let specials: Vec<(String, u32)> = layout
            .specials
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), first_special_id + i as u32))
            .collect();
        vocab.extend(specials.iter().cloned());
        Self {
            vocab,
            merges,
            specials,
        }
    }

    fn len(&self) -> usize {
        self.vocab.len()
    }

    fn id(&self, token: &str) -> u32 {
        self.vocab[token]
    }

    fn to_json(&self) -> Value {
        let added_tokens: Vec<Value> = self
            .specials
            .iter()
            .map(|(content, id)| {
                json!({
                    "id": id, "content": content, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true,
                })
            })
            .collect();
        // "a b" strings: the merge format every tokenizers version reads
        // (byte-level symbols never contain a space).
        let merges: Vec<String> = self
            .merges
            .iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect();
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": self.vocab, "merges": merges,
            },
        })
    }
}

/// GPT-2's reversible byte -> printable character map used by byte-level BPE.
pub(crate) fn byte_symbol(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let shifted = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + shifted).unwrap_or('?')
}

/// Classic BPE training on a small corpus: repeatedly merge the most
/// frequent adjacent pair (ties broken by the pair's text, for determinism).
fn learn_merges(corpus: &str, count: usize) -> Vec<(String, String)> {
    let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for word in split_words(corpus) {
        let symbols = word.bytes().map(|b| byte_symbol(b).to_string()).collect();
        *words.entry(symbols).or_default() += 1;
    }
    let mut merges = Vec::with_capacity(count);
    while merges.len() < count {
        let Some(best) = most_frequent_pair(&words) else {
            break;
        };
        words = words
            .into_iter()
            .map(|(symbols, n)| (apply_merge(&symbols, &best), n))
            .fold(BTreeMap::new(), |mut acc, (symbols, n)| {
                *acc.entry(symbols).or_default() += n;
                acc
            });
        merges.push(best);
    }
    merges
}

/// Words with their leading space, as the byte-level pre-tokenizer cuts them.
fn split_words(text: &str) -> Vec<String> {
    text.split(' ')
        .enumerate()
        .filter(|(_, w)| !w.is_empty())
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

fn most_frequent_pair(words: &BTreeMap<Vec<String>, usize>) -> Option<(String, String)> {
    let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (symbols, n) in words {
        for pair in symbols.windows(2) {
            *pairs
                .entry((pair[0].as_str(), pair[1].as_str()))
                .or_default() += n;
        }
    }
    // BTreeMap order + strict `>` keeps the first (smallest) pair among equals.
    let mut best: Option<((&str, &str), usize)> = None;
    for (pair, n) in pairs {
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((pair, n));
        }
    }
    best.map(|((a, b), _)| (a.to_string(), b.to_string()))
}

fn apply_merge(symbols: &[String], (left, right): &(String, String)) -> Vec<String> {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && symbols[i] == *left && symbols[i + 1] == *right {
            out.push(format!("{left}{right}"));
            i += 2;
        } else {
            out.push(symbols[i].clone());
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------- weights

/// One generated tensor, row-major f32.
struct Tensor {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// Standard deviation range of projection matrices: wide enough that
/// attention and softmax are far from uniform.
const MATRIX_STD: (f64, f64) = (0.05, 0.2);
/// Embeddings (and the lm_head) are larger so the logits are peaked.
const EMBEDDING_STD: (f64, f64) = (0.2, 0.3);

fn generate_tensors(layout: &Layout, vocab_size: usize, seed: u64) -> Vec<Tensor> {
    let h = layout.hidden;
    let q = layout.heads * layout.head_dim;
    let kv = layout.kv_heads * layout.head_dim;
    let ff = layout.intermediate;
    let mut tensors = vec![matrix(
        "model.embed_tokens.weight",
        vocab_size,
        h,
        EMBEDDING_STD,
        seed,
    )];
    for i in 0..layout.layers {
        let p = format!("model.layers.{i}");
        tensors.push(norm(&format!("{p}.input_layernorm.weight"), h, seed));
        match layout.arch {
            Architecture::Phi3 => tensors.push(matrix(
                &format!("{p}.self_attn.qkv_proj.weight"),
                q + 2 * kv,
                h,
                MATRIX_STD,
                seed,
            )),
            Architecture::Llama => {
                tensors.push(matrix(
                    &format!("{p}.self_attn.q_proj.weight"),
                    q,
                    h,
                    MATRIX_STD,
                    seed,
                ));
                tensors.push(matrix(
                    &format!("{p}.self_attn.k_proj.weight"),
                    kv,
                    h,
                    MATRIX_STD,
                    seed,
                ));
                tensors.push(matrix(
                    &format!("{p}.self_attn.v_proj.weight"),
                    kv,
                    h,
                    MATRIX_STD,
                    seed,
                ));
            }
        }
        tensors.push(matrix(
            &format!("{p}.self_attn.o_proj.weight"),
            h,
            q,
            MATRIX_STD,
            seed,
        ));
        tensors.push(norm(
            &format!("{p}.post_attention_layernorm.weight"),
            h,
            seed,
        ));
        match layout.arch {
            Architecture::Phi3 => tensors.push(matrix(
                &format!("{p}.mlp.gate_up_proj.weight"),
                2 * ff,
                h,
                MATRIX_STD,
                seed,
            )),
            Architecture::Llama => {
                tensors.push(matrix(
                    &format!("{p}.mlp.gate_proj.weight"),
                    ff,
                    h,
                    MATRIX_STD,
                    seed,
                ));
                tensors.push(matrix(
                    &format!("{p}.mlp.up_proj.weight"),
                    ff,
                    h,
                    MATRIX_STD,
                    seed,
                ));
            }
        }
        tensors.push(matrix(
            &format!("{p}.mlp.down_proj.weight"),
            h,
            ff,
            MATRIX_STD,
            seed,
        ));
    }
    tensors.push(norm("model.norm.weight", h, seed));
    if !layout.tied {
        tensors.push(matrix("lm_head.weight", vocab_size, h, EMBEDDING_STD, seed));
    }
    tensors
}

/// Each tensor has its own generator, seeded from the model seed and its
/// name, so adding a tensor never changes the others.
fn tensor_rng(name: &str, seed: u64) -> SplitMix64 {
    SplitMix64::new(seed ^ fnv1a(name.as_bytes()))
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// Normal weights with a per-tensor std drawn from `std_range` and a
/// per-row scale in [0.5, 2), so rows differ in magnitude as in trained
/// models (and per-row QINS ranges matter).
fn matrix(name: &str, rows: usize, cols: usize, std_range: (f64, f64), seed: u64) -> Tensor {
    let mut rng = tensor_rng(name, seed);
    let std = std_range.0 + (std_range.1 - std_range.0) * rng.next_f64();
    let mut values = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let row_scale = 0.5 * 4f64.powf(rng.next_f64());
        values.extend((0..cols).map(|_| (std * row_scale * rng.next_normal()) as f32));
    }
    Tensor {
        name: name.to_string(),
        shape: vec![rows, cols],
        values,
    }
}

/// RMSNorm weights near 1.
fn norm(name: &str, len: usize, seed: u64) -> Tensor {
    let mut rng = tensor_rng(name, seed);
    Tensor {
        name: name.to_string(),
        shape: vec![len],
        values: (0..len)
            .map(|_| (1.0 + 0.1 * rng.next_normal()) as f32)
            .collect(),
    }
}

fn tensor_bytes(values: &[f32], dtype: TinyDtype) -> Vec<u8> {
    match dtype {
        TinyDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        TinyDtype::Bf16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

fn write_weights(
    dir: &Path,
    layout: &Layout,
    tensors: &[Tensor],
    spec: &TinySpec,
) -> Result<(), FixtureError> {
    if !spec.sharded {
        return write_safetensors(&dir.join("model.safetensors"), tensors.iter(), spec.dtype);
    }
    // Shard 1: embeddings and the first half of the layers; shard 2: the rest.
    let boundary = format!("model.layers.{}.", layout.layers / 2);
    let split = tensors
        .iter()
        .position(|t| t.name.starts_with(&boundary))
        .unwrap_or(tensors.len());
    let shards = [&tensors[..split], &tensors[split..]];
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0usize;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        write_safetensors(&dir.join(&file), shard.iter(), spec.dtype)?;
        for t in shard.iter() {
            total_size += t.values.len() * dtype_size(spec.dtype);
            weight_map.insert(t.name.clone(), file.clone());
        }
    }
    let index = json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
    write_json(&dir.join("model.safetensors.index.json"), &index)
}

fn dtype_size(dtype: TinyDtype) -> usize {
    match dtype {
        TinyDtype::F32 => 4,
        TinyDtype::Bf16 => 2,
    }
}

fn write_safetensors<'a>(
    path: &Path,
    tensors: impl Iterator<Item = &'a Tensor>,
    dtype: TinyDtype,
) -> Result<(), FixtureError> {
    let st_dtype = match dtype {
        TinyDtype::F32 => Dtype::F32,
        TinyDtype::Bf16 => Dtype::BF16,
    };
    let encoded: Vec<(&Tensor, Vec<u8>)> = tensors
        .map(|t| (t, tensor_bytes(&t.values, dtype)))
        .collect();
    let views = encoded
        .iter()
        .map(|(t, bytes)| {
            Ok((
                t.name.as_str(),
                TensorView::new(st_dtype, t.shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, FixtureError>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::tensor::serialize(views, Some(metadata))?;
    fs::write(path, bytes).map_err(|e| io_error(path, e))
}

// ---------------------------------------------------------------- JSON files

fn config_json(
    layout: &Layout,
    tokenizer: &TinyTokenizer,
    vocab_size: usize,
    dtype: TinyDtype,
) -> Value {
    let eos_ids: Vec<u32> = layout.eos.iter().map(|t| tokenizer.id(t)).collect();
    let mut config = json!({
        "vocab_size": vocab_size,
        "hidden_size": layout.hidden,
        "intermediate_size": layout.intermediate,
        "num_hidden_layers": layout.layers,
        "num_attention_heads": layout.heads,
        "num_key_value_heads": layout.kv_heads,
        "head_dim": layout.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": layout.rope_theta,
        "tie_word_embeddings": layout.tied,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "bos_token_id": tokenizer.id(layout.bos),
        "pad_token_id": tokenizer.id(layout.eos[0]),
        "torch_dtype": match dtype {
            TinyDtype::F32 => "float32",
            TinyDtype::Bf16 => "bfloat16",
        },
    });
    match layout.arch {
        Architecture::Phi3 => {
            config["architectures"] = json!(["Phi3ForCausalLM"]);
            config["model_type"] = json!("phi3");
            config["eos_token_id"] = json!(eos_ids);
            config["original_max_position_embeddings"] = json!(PHI3_ORIGINAL_MAX_POSITIONS);
            config["rope_scaling"] = phi3_rope_scaling(layout.head_dim);
            config["resid_pdrop"] = json!(0.0);
            config["embd_pdrop"] = json!(0.0);
        }
        Architecture::Llama => {
            config["architectures"] = json!(["LlamaForCausalLM"]);
            config["model_type"] = json!("llama");
            // SmolLM2 style: one eos id here, the full list in generation_config.json.
            config["eos_token_id"] = json!(eos_ids[0]);
            config["rope_scaling"] = Value::Null;
            config["mlp_bias"] = json!(false);
            config["pretraining_tp"] = json!(1);
        }
    }
    config
}

/// Distinct, non-trivial longrope factors (head_dim / 2 of each): short in
/// [1.0, 1.5], long in [2, 6], both rising with the frequency index as in
/// Phi-3.5. Exactly three fields, as older transformers versions require.
fn phi3_rope_scaling(head_dim: usize) -> Value {
    let half = head_dim / 2;
    let ramp = |lo: f64, hi: f64| -> Vec<f64> {
        (0..half)
            .map(|i| lo + (hi - lo) * i as f64 / (half - 1).max(1) as f64)
            .collect()
    };
    json!({"type": "longrope", "short_factor": ramp(1.0, 1.5), "long_factor": ramp(2.0, 6.0)})
}

fn tokenizer_config_json(layout: &Layout) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": layout.bos,
        "eos_token": layout.eos[0],
        "pad_token": layout.eos[0],
        "unk_token": null,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": MAX_POSITIONS,
        "chat_template": layout.chat_template,
    })
}

fn generation_config_json(layout: &Layout, tokenizer: &TinyTokenizer) -> Value {
    let eos_ids: Vec<u32> = layout.eos.iter().map(|t| tokenizer.id(t)).collect();
    json!({
        "bos_token_id": tokenizer.id(layout.bos),
        "eos_token_id": eos_ids,
        "pad_token_id": eos_ids[0],
        "do_sample": true,
        "temperature": 0.7,
        "top_p": 0.9,
    })
}

fn write_json(path: &Path, value: &Value) -> Result<(), FixtureError> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    fs::write(path, text).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, source: std::io::Error) -> FixtureError {
    FixtureError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_core::container::config::ModelConfig;
    use safetensors::SafeTensors;
    use std::str::FromStr;

    /// A fresh, empty scratch directory unique to this process and test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qins-tiny-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    }

    fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    /// Every tensor of the model directory as (shape, f32 values).
    fn load_tensors(dir: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        let mut out = BTreeMap::new();
        for (name, bytes) in files_of(dir) {
            if !name.ends_with(".safetensors") {
                continue;
            }
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (tensor_name, view) in st.tensors() {
                let values: Vec<f32> = match view.dtype() {
                    Dtype::F32 => view
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    Dtype::BF16 => view
                        .data()
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                    other => panic!("unexpected dtype {other:?}"),
                };
                out.insert(tensor_name, (view.shape().to_vec(), values));
            }
        }
        out
    }

    #[test]
    fn two_writes_are_byte_identical_and_the_seed_matters() {
        for (i, spec) in [
            TinySpec::phi3(),
            TinySpec {
                sharded: true,
                dtype: TinyDtype::Bf16,
                ..TinySpec::llama()
            },
        ]
        .into_iter()
        .enumerate()
        {
            let (a, b) = (scratch(&format!("det-a{i}")), scratch(&format!("det-b{i}")));
            write_tiny_model(&a, &spec).unwrap();
            write_tiny_model(&b, &spec).unwrap();
            assert_eq!(files_of(&a), files_of(&b));
            let c = scratch(&format!("det-c{i}"));
            write_tiny_model(
                &c,
                &TinySpec {
                    seed: spec.seed + 1,
                    ..spec
                },
            )
            .unwrap();
            assert_ne!(load_tensors(&a), load_tensors(&c));
        }
    }

    #[test]
    fn config_parses_and_matches_the_weights() {
        for spec in [TinySpec::phi3(), TinySpec::llama()] {
            let dir = scratch(&format!("cfg-{}", spec.arch.name()));
            write_tiny_model(&dir, &spec).unwrap();
            let config = ModelConfig::from_hf_json(&read_json(&dir.join("config.json"))).unwrap();
            let tensors = load_tensors(&dir);
            let elements: usize = tensors.values().map(|(_, v)| v.len()).sum();
            assert_eq!(config.architecture, spec.arch);
            assert_eq!(config.parameter_count(), elements as u64);
            assert_eq!(
                tensors["model.embed_tokens.weight"].0,
                vec![config.vocab_size, config.hidden_size]
            );
            assert_eq!(
                tensors.contains_key("lm_head.weight"),
                !config.tie_word_embeddings
            );
            let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
            let tokenizer_size = tokenizer.get_vocab_size(true);
            assert!((tokenizer_size..tokenizer_size + 64).contains(&config.vocab_size));
            assert!(
                (320..=400).contains(&tokenizer_size),
                "tokenizer size {tokenizer_size}"
            );
            assert!(!config.eos_token_ids.is_empty());
            match spec.arch {
                Architecture::Phi3 => {
                    assert_eq!(
                        (config.num_attention_heads, config.num_key_value_heads),
                        (4, 4)
                    );
                    assert!(tensors.contains_key("model.layers.1.self_attn.qkv_proj.weight"));
                    assert_eq!(
                        tensors["model.layers.0.mlp.gate_up_proj.weight"].0,
                        vec![256, 64]
                    );
                    let rope = config.rope_scaling.unwrap();
                    assert_eq!(rope.original_max_position_embeddings, 32);
                    assert_eq!(rope.short_factor.len(), 8);
                    assert_ne!(rope.short_factor, rope.long_factor);
                    let end = tokenizer.token_to_id("<|end|>").unwrap();
                    let eot = tokenizer.token_to_id("<|endoftext|>").unwrap();
                    assert!(
                        config.eos_token_ids.contains(&end) && config.eos_token_ids.contains(&eot)
                    );
                }
                Architecture::Llama => {
                    assert_eq!(
                        (config.num_attention_heads, config.num_key_value_heads),
                        (4, 2)
                    );
                    assert_eq!(
                        tensors["model.layers.0.self_attn.k_proj.weight"].0,
                        vec![32, 64]
                    );
                    assert!(config.tie_word_embeddings && config.rope_scaling.is_none());
                    assert_eq!(config.rope_theta, 100_000.0);
                    assert_eq!(
                        config.eos_token_ids,
                        vec![tokenizer.token_to_id("<|im_end|>").unwrap()]
                    );
                }
            }
        }
    }

    #[test]
    fn weights_have_varied_non_trivial_scales() {
        let dir = scratch("scales");
        write_tiny_model(&dir, &TinySpec::phi3()).unwrap();
        let tensors = load_tensors(&dir);
        let rms =
            |v: &[f32]| (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64).sqrt();
        let lm = rms(&tensors["lm_head.weight"].1);
        assert!((0.15..0.5).contains(&lm), "lm_head rms {lm}");
        let norm = &tensors["model.norm.weight"].1;
        let mean = norm.iter().sum::<f32>() / norm.len() as f32;
        assert!((mean - 1.0).abs() < 0.05 && norm.iter().any(|&x| (x - 1.0).abs() > 0.05));
        let qkv = rms(&tensors["model.layers.0.self_attn.qkv_proj.weight"].1);
        let down = rms(&tensors["model.layers.0.mlp.down_proj.weight"].1);
        assert!(
            (qkv - down).abs() > 1e-3,
            "per-tensor scales should differ: {qkv} vs {down}"
        );
    }

    #[test]
    fn sharded_bf16_holds_the_same_weights_rounded() {
        let (plain, sharded) = (scratch("plain"), scratch("sharded"));
        write_tiny_model(&plain, &TinySpec::llama()).unwrap();
        let spec = TinySpec {
            sharded: true,
            dtype: TinyDtype::Bf16,
            ..TinySpec::llama()
        };
        write_tiny_model(&sharded, &spec).unwrap();
        assert!(!sharded.join("model.safetensors").exists());
        let index = read_json(&sharded.join("model.safetensors.index.json"));
        let weight_map = index["weight_map"].as_object().unwrap();
        let (f32s, bf16s) = (load_tensors(&plain), load_tensors(&sharded));
        assert_eq!(
            weight_map.keys().collect::<Vec<_>>(),
            f32s.keys().collect::<Vec<_>>()
        );
        let files: std::collections::BTreeSet<_> =
            weight_map.values().filter_map(Value::as_str).collect();
        assert_eq!(
            files.into_iter().collect::<Vec<_>>(),
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        assert_eq!(
            index["metadata"]["total_size"].as_u64().unwrap() as usize,
            2 * bf16s.values().map(|t| t.1.len()).sum::<usize>()
        );
        for (name, (shape, values)) in &f32s {
            let (bf_shape, bf_values) = &bf16s[name];
            assert_eq!(shape, bf_shape);
            let rounded: Vec<f32> = values
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect();
            assert_eq!(&rounded, bf_values, "{name}");
        }
    }

    #[test]
    fn tokenizer_round_trips_text_with_chat_specials_as_single_tokens() {
        for spec in [TinySpec::phi3(), TinySpec::llama()] {
            let dir = scratch(&format!("tok-{}", spec.arch.name()));
            write_tiny_model(&dir, &spec).unwrap();
            let json = fs::read_to_string(dir.join("tokenizer.json")).unwrap();
            let tokenizer = tokenizers::Tokenizer::from_str(&json).unwrap();
            let (open_special, open, close) = match spec.arch {
                Architecture::Phi3 => ("<|user|>", "<|user|>\n", "<|end|>\n<|assistant|>\n"),
                Architecture::Llama => (
                    "<|im_start|>",
                    "<|im_start|>user\n",
                    "<|im_end|>\n<|im_start|>assistant\n",
                ),
            };
            let text = format!("{open}Hello wörld, the 123 dogs\tran ✓ 🦀!{close}");
            let encoding = tokenizer.encode(text.as_str(), false).unwrap();
            let ids = encoding.get_ids();
            assert_eq!(tokenizer.decode(ids, false).unwrap(), text);
            assert_eq!(ids[0], tokenizer.token_to_id(open_special).unwrap());
            for special in Layout::of(spec.arch).specials {
                let ids = tokenizer
                    .encode(*special, false)
                    .unwrap()
                    .get_ids()
                    .to_vec();
                assert_eq!(
                    ids,
                    vec![tokenizer.token_to_id(special).unwrap()],
                    "{special}"
                );
            }
            // The merges apply: common words are shorter than their bytes.
            let the = tokenizer.encode(" the capital of France", false).unwrap();
            assert!(
                the.get_ids().len() < " the capital of France".len() / 2,
                "{:?}",
                the.get_tokens()
            );
        }
    }

    #[test]
    fn chat_templates_render_the_expected_prompt() {
        let messages = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ]);
        for (arch, expected) in [
            (
                Architecture::Phi3,
                "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n",
            ),
            (
                Architecture::Llama,
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            ),
        ] {
            let mut env = minijinja::Environment::new();
            env.add_template("chat", Layout::of(arch).chat_template)
                .unwrap();
            let ctx = json!({"messages": messages, "add_generation_prompt": true, "eos_token": "<|endoftext|>"});
            assert_eq!(
                env.get_template("chat").unwrap().render(ctx).unwrap(),
                expected
            );
        }
    }

    #[test]
    fn byte_symbols_are_distinct_and_printable() {
        let symbols: std::collections::BTreeSet<char> = (0..=255u8).map(byte_symbol).collect();
        assert_eq!(symbols.len(), 256);
        assert_eq!(byte_symbol(b' '), 'Ġ');
        assert_eq!(byte_symbol(b'\n'), 'Ċ');
        assert!(
            symbols
                .iter()
                .all(|c| !c.is_whitespace() && !c.is_control())
        );
    }
}
