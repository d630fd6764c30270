//! A random-weight model with Phi-3.5-mini's shapes, written straight as
//! QINS codes, signs and ranges (benchmarks: speed, memory and load time do
//! not depend on what the weights say).
//!
//! No float copy of the model is ever built: each matrix's codes are drawn
//! from the code distribution that per-row encoding of Gaussian weights
//! produces, written to the container and dropped before the next one, so
//! peak memory stays about one tensor (the 98 MB embedding).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::json;

use super::tiny::{PHI3_CHAT_TEMPLATE, byte_symbol, fnv1a};
use qins_core::codec::{self, EncodeOptions, EncodedMatrix, LogRange};
use qins_core::container::config::{Architecture, LongRope, ModelConfig};
use qins_core::container::{
    Compression, ContainerError, ContainerWriter, GenerationDefaults, ModelHeader, SourceInfo,
};
use qins_core::rng::SplitMix64;

/// Seed of `qins-fixture phi35` when none is given.
pub const DEFAULT_SEED: u64 = 35;

/// Standard deviation of every generated matrix (Phi-3's initializer range);
/// rows are scaled by a factor in [0.5, 2) around it.
const WEIGHT_STD: f64 = 0.02;
/// `ln|w|` bounds of a row relative to its standard deviation: the 0.1%
/// quantile of |N(0, 1)| (the default clip) and a typical maximum of ~3000
/// draws.
const REL_LOG_MIN: f64 = -6.682; // ln(1.2533e-3)
const REL_LOG_MAX: f64 = 1.281; // ln(3.6)
/// Resolution of the code sampler: a 16-bit uniform picks a quantile.
const QUANTILES: usize = 1 << 16;
/// Ids above the regular vocabulary where Phi-3.5's specials start
/// (32000 of 32064 in the real model).
const SPECIALS_FROM_END: usize = 64;

/// What to write.
#[derive(Clone, Debug)]
pub struct Phi35Spec {
    pub config: ModelConfig,
    pub seed: u64,
    pub compression: Compression,
}

impl Phi35Spec {
    /// Phi-3.5-mini-instruct's exact shapes (3.82B parameters).
    pub fn full(seed: u64, compression: Compression) -> Self {
        Self {
            config: phi35_config(3072, 32, 8192, 32, 32064),
            seed,
            compression,
        }
    }

    /// The same architecture scaled down (tests). `heads` must divide
    /// `hidden`, and `vocab` must leave room for the special tokens.
    pub fn scaled(
        seed: u64,
        hidden: usize,
        heads: usize,
        intermediate: usize,
        layers: usize,
        vocab: usize,
    ) -> Self {
        Self {
            config: phi35_config(hidden, heads, intermediate, layers, vocab),
            seed,
            compression: Compression::None,
        }
    }
}

/// A Phi-3.5-style config: longrope with plausible factors, untied head,
/// eos `<|endoftext|>` and `<|end|>`.
pub fn phi35_config(
    hidden: usize,
    heads: usize,
    intermediate: usize,
    layers: usize,
    vocab: usize,
) -> ModelConfig {
    let head_dim = hidden / heads.max(1);
    let half = head_dim / 2;
    let ramp = |i: usize| i as f64 / (half.max(2) - 1) as f64;
    // Four decimals, as in Phi's config.json (and exact through the JSON header).
    let round = |x: f64| (x * 1e4).round() / 1e4;
    let specials = vocab.saturating_sub(SPECIALS_FROM_END) as u32;
    ModelConfig {
        architecture: Architecture::Phi3,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 131_072,
        rope_scaling: Some(LongRope {
            short_factor: (0..half)
                .map(|i| round(1.0 + 1.5 * ramp(i).powi(3)))
                .collect(),
            long_factor: (0..half)
                .map(|i| round(1.0 + 40.0 * ramp(i).powi(2)))
                .collect(),
            original_max_position_embeddings: 4096,
            attention_factor: None,
        }),
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![specials, specials + 7],
    }
}

/// What `write_phi35` produced.
#[derive(Clone, Debug)]
pub struct WriteReport {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub tensors: usize,
}

/// Writes the model to `out` atomically, one tensor at a time.
pub fn write_phi35(out: &Path, spec: &Phi35Spec) -> Result<WriteReport, ContainerError> {
    let config = &spec.config;
    config.validate().map_err(|e| ContainerError::Invalid {
        path: out.to_path_buf(),
        reason: format!("model config: {e}"),
    })?;
    if config.vocab_size < 259 + SPECIALS_FROM_END {
        return Err(ContainerError::Invalid {
            path: out.to_path_buf(),
            reason: format!(
                "vocab_size {} leaves no room for the byte tokens and specials",
                config.vocab_size
            ),
        });
    }
    let sampler = CodeSampler::new(spec.seed);
    let mut writer = ContainerWriter::create(out, spec.compression)?;
    let tensors = config.expected_tensors();
    for (name, shape) in &tensors {
        match shape[..] {
            [rows, cols] => {
                let matrix = sampler.matrix(rows, cols, spec.seed ^ fnv1a(name.as_bytes()));
                writer.add_qins(name, &matrix)?;
            }
            // RMSNorm weights: ones (the fixture's content is irrelevant).
            _ => writer.add_f32(name, shape, &vec![1.0f32; shape.iter().product()])?,
        }
    }
    let file_bytes = writer.bytes_written();
    let header = ModelHeader {
        name: out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "phi35-random".into()),
        config: config.clone(),
        tokenizer_json: tokenizer_json(config.vocab_size).to_string(),
        chat_template: Some(PHI3_CHAT_TEMPLATE.to_string()),
        extra_stop_tokens: Vec::new(),
        generation: GenerationDefaults::default(),
        source: SourceInfo {
            kind: "generated".into(),
            id: format!("random Phi-3.5-mini-shaped weights, seed {}", spec.seed),
            revision: None,
            dtype: "qins".into(),
        },
        encode_options: EncodeOptions::default(),
        compression: spec.compression,
        quality: None,
        created_by: format!("qinsd {}", env!("CARGO_PKG_VERSION")),
    };
    let path = writer.finish(&header)?;
    Ok(WriteReport {
        path,
        file_bytes,
        tensors: tensors.len(),
    })
}

/// Draws codes with the distribution per-row encoding gives Gaussian
/// weights: a 64Ki-entry quantile table of codes, indexed by 16 random bits.
struct CodeSampler {
    quantile_codes: Vec<u8>,
}

impl CodeSampler {
    fn new(seed: u64) -> Self {
        // Sorted |N(0,1)| samples give the empirical quantiles; the encoding
        // is scale-invariant, so one table serves every row.
        const PER_QUANTILE: usize = 8;
        let mut rng = SplitMix64::new(seed ^ 0x5155_494E_5321);
        let mut samples: Vec<f64> = (0..QUANTILES * PER_QUANTILE)
            .map(|_| rng.next_normal().abs())
            .collect();
        samples.sort_unstable_by(f64::total_cmp);
        let range = LogRange {
            log_min: REL_LOG_MIN as f32,
            log_max: REL_LOG_MAX as f32,
        };
        let quantile_codes = samples
            .chunks(PER_QUANTILE)
            .map(|c| range.encode(c[PER_QUANTILE / 2].max(f64::MIN_POSITIVE) as f32))
            .collect();
        Self { quantile_codes }
    }

    fn matrix(&self, rows: usize, cols: usize, seed: u64) -> EncodedMatrix {
        let sign_row = codec::sign_row_bytes(cols);
        let mut codes = vec![0u8; rows * cols];
        let mut signs = vec![0u8; rows * sign_row];
        let mut ranges = vec![LogRange::EMPTY; rows];
        codes
            .par_chunks_mut(cols)
            .zip(signs.par_chunks_mut(sign_row))
            .zip(ranges.par_iter_mut())
            .enumerate()
            .for_each(|(row, ((codes, signs), range))| {
                // One generator per row: the output does not depend on how
                // rayon splits the rows.
                let mut rng =
                    SplitMix64::new(seed ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let scale = WEIGHT_STD * 0.5 * 4f64.powf(rng.next_f64());
                *range = LogRange {
                    log_min: (scale.ln() + REL_LOG_MIN) as f32,
                    log_max: (scale.ln() + REL_LOG_MAX) as f32,
                };
                for chunk in codes.chunks_mut(4) {
                    let bits = rng.next_u64();
                    for (i, code) in chunk.iter_mut().enumerate() {
                        *code = self.quantile_codes[(bits >> (16 * i)) as usize & (QUANTILES - 1)];
                    }
                }
                for chunk in signs.chunks_mut(8) {
                    let bits = rng.next_u64().to_le_bytes();
                    chunk.copy_from_slice(&bits[..chunk.len()]);
                }
                // Padding bits past the last column stay clear.
                if !cols.is_multiple_of(8)
                    && let Some(last) = signs.last_mut()
                {
                    *last &= (1u8 << (cols % 8)) - 1;
                }
            });
        EncodedMatrix {
            rows,
            cols,
            codes,
            signs,
            ranges,
        }
    }
}

/// A minimal valid byte-level tokenizer with Phi-3.5's ids for `<unk>`,
/// `<s>`, `</s>` and the chat specials (benchmarks feed token ids directly;
/// this only has to load and round-trip text).
fn tokenizer_json(vocab_size: usize) -> serde_json::Value {
    let first_special = vocab_size - SPECIALS_FROM_END;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    let mut special = |content: &str, id: usize, vocab: &mut serde_json::Map<_, _>| {
        vocab.insert(content.to_string(), json!(id));
        added.push(
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}),
        );
    };
    special("<unk>", 0, &mut vocab);
    special("<s>", 1, &mut vocab);
    special("</s>", 2, &mut vocab);
    for byte in 0..=255u8 {
        vocab.insert(byte_symbol(byte).to_string(), json!(3 + usize::from(byte)));
    }
    for (offset, content) in [
        (0, "<|endoftext|>"),
        (1, "<|assistant|>"),
        (6, "<|system|>"),
        (7, "<|end|>"),
        (10, "<|user|>"),
    ] {
        special(content, first_special + offset, &mut vocab);
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": [],
        },
    })
}

#[cfg(test)]
mod tests {
    use qins_core::model::Decoder;
    use std::str::FromStr;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use qins_core::container::QinsFile;
    use qins_core::model::Model;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qins-phi35-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn scaled_phi35_loads_and_runs() {
        let dir = temp_dir("run");
        let path = dir.join("small.qins");
        let spec = Phi35Spec::scaled(7, 64, 4, 96, 2, 384);
        let report = write_phi35(&path, &spec).unwrap();
        assert_eq!(report.tensors, 2 + 2 * 6 + 1);
        let file = QinsFile::open(&path).unwrap();
        assert_eq!(file.header.config, spec.config);
        let model = Model::load(&file.header.config, file.load().unwrap()).unwrap();
        let mut cache = model.new_cache(16);
        let no = AtomicBool::new(false);
        let logits = model.forward(&[1, 50, 300], &mut cache, &no).unwrap();
        assert_eq!(logits.len(), 384);
        assert!(logits.iter().all(|v| v.is_finite()));
        let next = model.forward(&[7], &mut cache, &no).unwrap();
        assert!(next.iter().all(|v| v.is_finite()));
        // The header's tokenizer loads and knows the chat specials.
        let tokenizer = tokenizers::Tokenizer::from_str(&file.header.tokenizer_json).unwrap();
        assert_eq!(tokenizer.token_to_id("<|end|>"), Some(384 - 64 + 7));
        let encoding = tokenizer.encode("<|user|>\nhi<|end|>", false).unwrap();
        assert_eq!(encoding.get_ids().first(), Some(&(384 - 64 + 10)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn codes_look_like_encoded_gaussians_and_are_deterministic() {
        let sampler = CodeSampler::new(1);
        let a = sampler.matrix(16, 3072, 9);
        assert_eq!(a, sampler.matrix(16, 3072, 9));
        // Per-row encoding of N(0, s²) puts the median |w| near code 55 and
        // clips ~0.1% to the smallest code.
        let mut sorted = a.codes.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        assert!((45..=65).contains(&median), "median code {median}");
        let smallest = a.codes.iter().filter(|&&c| c == 255).count() as f64;
        assert!(smallest / (a.codes.len() as f64) < 0.005);
        assert!(!a.codes.contains(&0));
        let negative: u32 = a.signs.iter().map(|b| b.count_ones()).sum();
        let fraction = f64::from(negative) / a.codes.len() as f64;
        assert!(
            (fraction - 0.5).abs() < 0.01,
            "negative fraction {fraction}"
        );
    }
}
