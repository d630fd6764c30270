//! Validating reader of .qins files.
//!
//! `QinsFile::open` maps the file and checks everything that is cheap
//! (magic, version, bounds, header and index checksums, that every section
//! fits the file and matches its tensor's shape) before anything is
//! allocated from a size the file claims. `QinsFile::load` then verifies the
//! checksum of every section in parallel and decodes entropy-coded ones.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

use super::ContainerError;
use super::format::{
    ALIGNMENT, Compression, FORMAT_VERSION, MAGIC, ModelHeader, PREAMBLE_LEN, Preamble, Section,
    TensorData, TensorEntry,
};
use crate::codec::{self, Granularity, LogRange};
use crate::weights::{Bytes, F32Tensor, QinsMatrix, ResidentWeights, Weight};

/// Largest dimension accepted for any tensor axis.
const MAX_DIM: u64 = 1 << 31;
/// Entropy-coded QINS sections shrink ~1.1x; anything claiming to expand far
/// more than this is refused before allocating.
const MAX_EXPANSION: u64 = 1024;

/// An opened and structurally validated .qins file.
pub struct QinsFile {
    path: PathBuf,
    map: Arc<Mmap>,
    pub header: ModelHeader,
    pub index: Vec<TensorEntry>,
}

impl std::fmt::Debug for QinsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QinsFile")
            .field("path", &self.path)
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl QinsFile {
    pub fn open(path: &Path) -> Result<Self, ContainerError> {
        let file = File::open(path).map_err(|e| ContainerError::io(path, e))?;
        // SAFETY: the map is read-only, and qins never modifies a file it
        // serves: conversions write a new file and rename it into place, so
        // the mapped inode keeps its bytes. Another process writing to or
        // truncating the served file in place breaks this (POSIX gives no
        // way to forbid it): changed bytes are read as they are, and pages
        // past a truncated end raise SIGBUS, which qinsd does not catch: it
        // dies, and launchd or systemd restarts it on the file as it now is.
        // TECHNICAL_SPEC (Reliability) says so to users.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ContainerError::io(path, e))?;
        let (header, index) = parse(path, &map)?;
        Ok(Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            header,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Verifies every section checksum and builds the resident weights
    /// (uncompressed sections stay in the map; others are decoded).
    pub fn load(&self) -> Result<ResidentWeights, ContainerError> {
        let weights: Vec<(String, Weight)> = self
            .index
            .par_iter()
            .map(|entry| Ok((entry.name.clone(), self.load_tensor(entry)?)))
            .collect::<Result<_, ContainerError>>()?;
        let mut resident = ResidentWeights::default();
        for (name, weight) in weights {
            resident.insert(name, weight);
        }
        Ok(resident)
    }

    fn load_tensor(&self, entry: &TensorEntry) -> Result<Weight, ContainerError> {
        match &entry.data {
            TensorData::Qins {
                codes,
                signs,
                ranges,
                ..
            } => {
                let (rows, cols) = (entry.shape[0] as usize, entry.shape[1] as usize);
                let (codes, signs, ranges) = rayon::join(
                    || self.section_bytes(entry, "codes", codes),
                    || {
                        rayon::join(
                            || self.section_bytes(entry, "signs", signs),
                            || self.section_bytes(entry, "ranges", ranges),
                        )
                    },
                )
                .map2();
                let ranges = self.parse_ranges(entry, &ranges?)?;
                Ok(Weight::Qins(QinsMatrix::new(
                    rows, cols, codes?, signs?, ranges,
                )))
            }
            TensorData::F32 { data } => {
                let bytes = self.section_bytes(entry, "data", data)?;
                let values: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(
                        self.invalid(format!("tensor '{}' value {i} is not finite", entry.name))
                    );
                }
                Ok(Weight::F32(F32Tensor {
                    shape: entry.shape.iter().map(|&d| d as usize).collect(),
                    data: values,
                }))
            }
        }
    }

    fn parse_ranges(
        &self,
        entry: &TensorEntry,
        bytes: &[u8],
    ) -> Result<Vec<LogRange>, ContainerError> {
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        floats
            .chunks_exact(2)
            .map(|pair| {
                let range = LogRange {
                    log_min: pair[0],
                    log_max: pair[1],
                };
                if range.log_min.is_finite()
                    && range.log_max.is_finite()
                    && range.log_min <= range.log_max
                {
                    Ok(range)
                } else {
                    Err(self.invalid(format!(
                        "tensor '{}' has an invalid range {range:?}",
                        entry.name
                    )))
                }
            })
            .collect()
    }

    fn section_bytes(
        &self,
        entry: &TensorEntry,
        what: &str,
        section: &Section,
    ) -> Result<Bytes, ContainerError> {
        let start = section.offset as usize;
        let stored = &self.map[start..start + section.stored_len as usize];
        if crc32fast::hash(stored) != section.crc32 {
            return Err(ContainerError::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "section '{what}' of tensor '{}' fails its checksum",
                    entry.name
                ),
            });
        }
        match section.compression {
            Compression::None => Ok(Bytes::Mapped {
                map: Arc::clone(&self.map),
                start,
                len: stored.len(),
            }),
            Compression::Zstd => {
                let raw =
                    zstd::bulk::decompress(stored, section.raw_len as usize).map_err(|e| {
                        ContainerError::Corrupt {
                            path: self.path.clone(),
                            what: format!(
                                "section '{what}' of tensor '{}' does not decompress: {e}",
                                entry.name
                            ),
                        }
                    })?;
                self.release(start, stored.len());
                if raw.len() as u64 != section.raw_len {
                    return Err(ContainerError::Corrupt {
                        path: self.path.clone(),
                        what: format!(
                            "section '{what}' of tensor '{}' decompresses to {} bytes, expected {}",
                            entry.name,
                            raw.len(),
                            section.raw_len
                        ),
                    });
                }
                Ok(Bytes::Owned(Arc::new(raw)))
            }
        }
    }

    /// Drops a decoded section's compressed pages from this process's
    /// resident set: they are never read again, and keeping them would
    /// double the memory of a compressed model while it loads (the pages stay
    /// in the page cache). Failure only costs memory, so it is ignored.
    #[cfg(unix)]
    fn release(&self, start: usize, len: usize) {
        // SAFETY: the map is a read-only file mapping; MADV_DONTNEED only
        // drops its pages, and any later access (a neighbouring section on a
        // shared page) faults them back in from the file unchanged.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
        };
    }

    #[cfg(not(unix))]
    fn release(&self, _start: usize, _len: usize) {}

    fn invalid(&self, reason: String) -> ContainerError {
        ContainerError::Invalid {
            path: self.path.clone(),
            reason,
        }
    }
}

/// `rayon::join` of three results flattened into a tuple.
trait Map2<A, B, C> {
    fn map2(self) -> (A, B, C);
}

impl<A, B, C> Map2<A, B, C> for (A, (B, C)) {
    fn map2(self) -> (A, B, C) {
        let (a, (b, c)) = self;
        (a, b, c)
    }
}

/// Checks the preamble, header and index of a mapped file.
fn parse(path: &Path, bytes: &[u8]) -> Result<(ModelHeader, Vec<TensorEntry>), ContainerError> {
    let invalid = |reason: String| ContainerError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(ContainerError::NotQins { path: path.into() });
    }
    if bytes.len() < PREAMBLE_LEN {
        return Err(ContainerError::Truncated {
            path: path.into(),
            what: "preamble",
            needed: PREAMBLE_LEN as u64,
            actual: bytes.len() as u64,
        });
    }
    let mut raw = [0u8; PREAMBLE_LEN];
    raw.copy_from_slice(&bytes[..PREAMBLE_LEN]);
    let (preamble, crc_ok) = Preamble::from_bytes(&raw);
    // The version is checked before the checksum: a newer format may lay
    // out the rest of its preamble differently.
    if preamble.version > FORMAT_VERSION {
        return Err(ContainerError::UnsupportedVersion {
            path: path.into(),
            found: preamble.version,
            supported: FORMAT_VERSION,
        });
    }
    if !crc_ok {
        return Err(ContainerError::Corrupt {
            path: path.into(),
            what: "the preamble fails its checksum".into(),
        });
    }
    let file_len = bytes.len() as u64;
    let header = slice_checked(
        path,
        bytes,
        preamble.header_offset,
        preamble.header_len,
        "header",
    )?;
    let index = slice_checked(
        path,
        bytes,
        preamble.index_offset,
        preamble.index_len,
        "index",
    )?;
    if crc32fast::hash(header) != preamble.header_crc {
        return Err(ContainerError::Corrupt {
            path: path.into(),
            what: "the header fails its checksum".into(),
        });
    }
    if crc32fast::hash(index) != preamble.index_crc {
        return Err(ContainerError::Corrupt {
            path: path.into(),
            what: "the tensor index fails its checksum".into(),
        });
    }
    let header: ModelHeader =
        serde_json::from_slice(header).map_err(|e| invalid(format!("header is not valid: {e}")))?;
    let index: Vec<TensorEntry> = serde_json::from_slice(index)
        .map_err(|e| invalid(format!("tensor index is not valid: {e}")))?;
    header
        .config
        .validate()
        .map_err(|e| invalid(format!("model config: {e}")))?;
    let data_end = preamble.header_offset.min(preamble.index_offset);
    let mut names = HashSet::new();
    for entry in &index {
        if !names.insert(entry.name.as_str()) {
            return Err(invalid(format!("tensor '{}' appears twice", entry.name)));
        }
        validate_entry(entry, data_end)
            .map_err(|reason| invalid(format!("tensor '{}': {reason}", entry.name)))?;
    }
    debug_assert!(data_end <= file_len);
    Ok((header, index))
}

fn slice_checked<'a>(
    path: &Path,
    bytes: &'a [u8],
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8], ContainerError> {
    let end = offset.saturating_add(len);
    if end > bytes.len() as u64 {
        return Err(ContainerError::Truncated {
            path: path.into(),
            what,
            needed: end,
            actual: bytes.len() as u64,
        });
    }
    Ok(&bytes[offset as usize..end as usize])
}

/// Checks that an entry's shape is sane and its sections are consistent with
/// it and lie inside the data region.
fn validate_entry(entry: &TensorEntry, data_end: u64) -> Result<(), String> {
    if entry.shape.is_empty() || entry.shape.len() > 4 {
        return Err(format!("unsupported rank {}", entry.shape.len()));
    }
    if entry.shape.iter().any(|&d| d == 0 || d > MAX_DIM) {
        return Err(format!("absurd shape {:?}", entry.shape));
    }
    let count = entry
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= 1 << 40)
        .ok_or_else(|| format!("absurd shape {:?}", entry.shape))?;
    match &entry.data {
        TensorData::Qins {
            granularity,
            codes,
            signs,
            ranges,
        } => {
            let [rows, cols] = entry.shape[..] else {
                return Err("QINS tensors must be 2-D".into());
            };
            let range_count = match granularity {
                Granularity::PerRow => rows,
                Granularity::PerTensor => 1,
            };
            check_section("codes", codes, count, data_end)?;
            check_section(
                "signs",
                signs,
                rows * codec::sign_row_bytes(cols as usize) as u64,
                data_end,
            )?;
            check_section("ranges", ranges, range_count * 8, data_end)?;
            if ranges.compression != Compression::None {
                return Err("ranges must be stored uncompressed".into());
            }
        }
        TensorData::F32 { data } => {
            check_section("data", data, count * 4, data_end)?;
            if data.compression != Compression::None {
                return Err("f32 data must be stored uncompressed".into());
            }
        }
    }
    Ok(())
}

fn check_section(what: &str, s: &Section, expected_raw: u64, data_end: u64) -> Result<(), String> {
    if s.raw_len != expected_raw {
        return Err(format!(
            "section '{what}' holds {} bytes, its shape needs {expected_raw}",
            s.raw_len
        ));
    }
    if !s.offset.is_multiple_of(ALIGNMENT) || s.offset < PREAMBLE_LEN as u64 {
        return Err(format!(
            "section '{what}' is misplaced at offset {}",
            s.offset
        ));
    }
    let end = s.offset.saturating_add(s.stored_len);
    if end > data_end {
        return Err(format!(
            "section '{what}' runs past the data region ({end} > {data_end})"
        ));
    }
    match s.compression {
        Compression::None if s.stored_len != s.raw_len => Err(format!(
            "uncompressed section '{what}' has stored {} != raw {}",
            s.stored_len, s.raw_len
        )),
        Compression::Zstd if s.raw_len > s.stored_len.saturating_mul(MAX_EXPANSION) + (1 << 20) => {
            Err(format!("section '{what}' claims an implausible expansion"))
        }
        _ => Ok(()),
    }
}
