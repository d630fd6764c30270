//! On-disk layout of a .qins file.
//!
//! ```text
//! offset 0   preamble (64 bytes, little-endian)
//!              magic[8] version:u32 flags:u32
//!              header_offset:u64 header_len:u64 header_crc:u32
//!              index_offset:u64 index_len:u64 index_crc:u32
//!              preamble_crc:u32 (of the 56 bytes before it) pad[4]
//! offset 64  tensor data sections, each starting on a 64-byte boundary
//! ...        header JSON (ModelHeader), then index JSON (Vec<TensorEntry>)
//! ```
//!
//! The header and index come last because the quality report is only known
//! once every tensor has been written; the preamble is rewritten at the end.

use serde::{Deserialize, Serialize};

use crate::codec::{EncodeOptions, ErrorSummary, Granularity};
use crate::container::config::ModelConfig;

pub const MAGIC: [u8; 8] = *b"\x89QINS\r\n\x1a";
pub const FORMAT_VERSION: u32 = 1;
pub const PREAMBLE_LEN: usize = 64;
pub const ALIGNMENT: u64 = 64;

/// The fixed-size start of every .qins file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Preamble {
    pub version: u32,
    pub flags: u32,
    pub header_offset: u64,
    pub header_len: u64,
    pub header_crc: u32,
    pub index_offset: u64,
    pub index_len: u64,
    pub index_crc: u32,
}

impl Preamble {
    pub fn to_bytes(&self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.header_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.header_len.to_le_bytes());
        b[32..36].copy_from_slice(&self.header_crc.to_le_bytes());
        b[36..44].copy_from_slice(&self.index_offset.to_le_bytes());
        b[44..52].copy_from_slice(&self.index_len.to_le_bytes());
        b[52..56].copy_from_slice(&self.index_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses the fields; magic, version and checksum are checked by the caller
    /// so that each failure gets its own message.
    pub fn from_bytes(b: &[u8; PREAMBLE_LEN]) -> (Self, bool) {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let preamble = Self {
            version: u32_at(8),
            flags: u32_at(12),
            header_offset: u64_at(16),
            header_len: u64_at(24),
            header_crc: u32_at(32),
            index_offset: u64_at(36),
            index_len: u64_at(44),
            index_crc: u32_at(52),
        };
        let crc_ok = crc32fast::hash(&b[0..56]) == u32_at(56);
        (preamble, crc_ok)
    }
}

/// Lossless coding applied to a stored section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is: usable in place through mmap.
    #[default]
    None,
    /// zstd (its literal stage is Huffman coding, which is what QINS codes need).
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "uncompressed",
            Self::Zstd => "zstd",
        })
    }
}

/// Where one byte section lives in the file and how to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub offset: u64,
    /// Bytes in the file.
    pub stored_len: u64,
    /// Bytes after decompression.
    pub raw_len: u64,
    pub compression: Compression,
    /// CRC-32 of the stored bytes.
    pub crc32: u32,
}

/// How a tensor is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "encoding", rename_all = "lowercase")]
pub enum TensorData {
    /// QINS: codes (u8, row-major), signs (bits, rows byte-padded), ranges
    /// ((log_min, log_max) f32 pairs: one per row, or one for the tensor).
    Qins {
        granularity: Granularity,
        codes: Section,
        signs: Section,
        ranges: Section,
    },
    /// Little-endian f32 values (norms and other 1-D tensors).
    F32 { data: Section },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<u64>,
    #[serde(flatten)]
    pub data: TensorData,
}

impl TensorEntry {
    pub fn sections(&self) -> Vec<(&'static str, &Section)> {
        match &self.data {
            TensorData::Qins {
                codes,
                signs,
                ranges,
                ..
            } => vec![("codes", codes), ("signs", signs), ("ranges", ranges)],
            TensorData::F32 { data } => vec![("data", data)],
        }
    }
}

/// Where the weights came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct SourceInfo {
    /// "hf-dir", "hub", "gguf" or "generated".
    pub kind: String,
    /// Path, Hub id or description.
    pub id: String,
    pub revision: Option<String>,
    /// Storage type of the source weights (bf16, f16, f32, Q4_1...).
    pub dtype: String,
}

/// Sampling a chat uses for whatever its request leaves unset, recorded at
/// conversion (see `convert::defaults` for where the values come from).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationDefaults {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub repetition_penalty: f32,
    pub max_tokens: u32,
    /// Which value came from where, e.g. `temperature, top_p: model card of
    /// HuggingFaceTB/SmolLM2-135M-Instruct; top_k, repetition_penalty,
    /// max_tokens: qins fallback`.
    #[serde(default = "origin_not_recorded")]
    pub origin: String,
}

/// The origin of defaults in files written before qins recorded it.
fn origin_not_recorded() -> String {
    "not recorded (a file from an older qins)".into()
}

/// qins' fallback when neither the conversion, the source file nor the
/// model card says (and for files without recorded defaults).
impl Default for GenerationDefaults {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            repetition_penalty: 1.0,
            max_tokens: 512,
            origin: "qins fallback".into(),
        }
    }
}

/// Per-tensor line of the quality report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorQuality {
    pub name: String,
    #[serde(flatten)]
    pub error: ErrorSummary,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    pub model: ErrorSummary,
    pub tensors: Vec<TensorQuality>,
}

/// Everything about the model except the tensor bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    /// Short name shown to users (the output file stem by default).
    pub name: String,
    pub config: ModelConfig,
    /// Hugging Face tokenizer.json, verbatim or built from GGUF metadata.
    pub tokenizer_json: String,
    /// Jinja chat template.
    pub chat_template: Option<String>,
    /// Token strings that end a turn besides the config's eos ids.
    #[serde(default)]
    pub extra_stop_tokens: Vec<String>,
    /// Chat defaults; a header without them gets qins' fallback.
    #[serde(default)]
    pub generation: GenerationDefaults,
    pub source: SourceInfo,
    pub encode_options: EncodeOptions,
    pub compression: Compression,
    pub quality: Option<QualityReport>,
    /// qins version that wrote the file.
    pub created_by: String,
}
