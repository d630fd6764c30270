//! The .qins container: one self-contained file holding a converted model.
//!
//! See [`format`] for the byte layout, [`config`] for the model
//! configuration the header stores, [`writer`] for atomic streaming writes
//! and [`reader`] for validated, zero-copy loading.

pub mod config;
pub mod format;
pub mod reader;
pub mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use format::{
    Compression, GenerationDefaults, ModelHeader, QualityReport, SourceInfo, TensorQuality,
};
pub use reader::QinsFile;
pub use writer::{ContainerWriter, remove_stale_temp_files};

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a .qins file (wrong magic bytes); convert a model first with `qinsd convert`"
    )]
    NotQins { path: PathBuf },
    #[error(
        "{path}: written in .qins format version {found}, this build reads up to version {supported}; upgrade qins or re-convert the model"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "{path}: truncated: the {what} needs at least {needed} bytes but the file has {actual}; the file was cut short, convert it again"
    )]
    Truncated {
        path: PathBuf,
        /// The part that does not fit: preamble, header or index.
        what: &'static str,
        needed: u64,
        actual: u64,
    },
    #[error("{path}: corrupted: {what}; convert the model again")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: invalid .qins file: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl ContainerError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
