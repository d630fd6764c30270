//! Streaming, atomic writer of .qins files.
//!
//! Tensors are appended one at a time (bounded memory). Everything goes to a
//! hidden temporary file in the output's directory; only `finish` fsyncs it
//! and renames it over the output path, so a crash or kill never leaves a
//! half-written file there. A writer dropped before `finish` deletes its
//! temporary file.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::ContainerError;
use super::format::{
    ALIGNMENT, Compression, FORMAT_VERSION, ModelHeader, PREAMBLE_LEN, Preamble, Section,
    TensorData, TensorEntry,
};
use crate::codec::{EncodedMatrix, LogRange};

/// zstd level: 3 is within 1% of the ratio of level 19 on QINS codes and many
/// times faster.
const ZSTD_LEVEL: i32 = 3;

/// Marker in temporary file names; `remove_stale_temp_files` looks for it.
pub const TEMP_MARKER: &str = ".partial-";

pub struct ContainerWriter {
    out: BufWriter<File>,
    temp_path: PathBuf,
    final_path: PathBuf,
    position: u64,
    compression: Compression,
    index: Vec<TensorEntry>,
    finished: bool,
}

/// Temporary path used while writing `final_path`: hidden, same directory
/// (so the rename is atomic), tagged with our pid.
pub fn temp_path_for(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.qins".into());
    final_path.with_file_name(format!(".{name}{TEMP_MARKER}{}", std::process::id()))
}

impl ContainerWriter {
    pub fn create(final_path: &Path, compression: Compression) -> Result<Self, ContainerError> {
        let io = |source| ContainerError::io(final_path, source);
        let final_path = absolute(final_path).map_err(io)?;
        let temp_path = temp_path_for(&final_path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp_path)
            .map_err(|e| ContainerError::io(&temp_path, e))?;
        let mut writer = Self {
            out: BufWriter::with_capacity(1 << 20, file),
            temp_path,
            final_path,
            position: 0,
            compression,
            index: Vec::new(),
            finished: false,
        };
        // Placeholder preamble; the real one is written by `finish`.
        writer.write_all(&[0u8; PREAMBLE_LEN])?;
        Ok(writer)
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.position
    }

    pub fn add_qins(&mut self, name: &str, matrix: &EncodedMatrix) -> Result<(), ContainerError> {
        let codes = self.write_section(&matrix.codes, self.compression)?;
        let signs = self.write_section(&matrix.signs, self.compression)?;
        let ranges = self.write_section(&ranges_to_bytes(&matrix.ranges), Compression::None)?;
        self.index.push(TensorEntry {
            name: name.to_string(),
            shape: vec![matrix.rows as u64, matrix.cols as u64],
            data: TensorData::Qins {
                granularity: matrix.granularity(),
                codes,
                signs,
                ranges,
            },
        });
        Ok(())
    }

    pub fn add_f32(
        &mut self,
        name: &str,
        shape: &[usize],
        values: &[f32],
    ) -> Result<(), ContainerError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let data = self.write_section(&bytes, Compression::None)?;
        self.index.push(TensorEntry {
            name: name.to_string(),
            shape: shape.iter().map(|&d| d as u64).collect(),
            data: TensorData::F32 { data },
        });
        Ok(())
    }

    /// Writes header and index, fsyncs, and renames into place.
    pub fn finish(mut self, header: &ModelHeader) -> Result<PathBuf, ContainerError> {
        let header_json = serde_json::to_vec(header).map_err(|e| self.invalid(e))?;
        let index_json = serde_json::to_vec(&self.index).map_err(|e| self.invalid(e))?;
        self.pad_to_alignment()?;
        let header_offset = self.position;
        self.write_all(&header_json)?;
        let index_offset = self.position;
        self.write_all(&index_json)?;
        let preamble = Preamble {
            version: FORMAT_VERSION,
            flags: 0,
            header_offset,
            header_len: header_json.len() as u64,
            header_crc: crc32fast::hash(&header_json),
            index_offset,
            index_len: index_json.len() as u64,
            index_crc: crc32fast::hash(&index_json),
        };
        let temp = self.temp_path.clone();
        let io = |e| ContainerError::io(&temp, e);
        self.out.flush().map_err(io)?;
        let file = self.out.get_mut();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&preamble.to_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&self.temp_path, &self.final_path)
            .map_err(|e| ContainerError::io(&self.final_path, e))?;
        self.finished = true;
        sync_parent_dir(&self.final_path);
        Ok(self.final_path.clone())
    }

    fn invalid(&self, e: serde_json::Error) -> ContainerError {
        ContainerError::Invalid {
            path: self.final_path.clone(),
            reason: format!("cannot serialize header: {e}"),
        }
    }

    fn write_section(
        &mut self,
        raw: &[u8],
        compression: Compression,
    ) -> Result<Section, ContainerError> {
        self.pad_to_alignment()?;
        let offset = self.position;
        let compressed;
        let stored: &[u8] = match compression {
            Compression::None => raw,
            Compression::Zstd => {
                compressed = zstd::bulk::compress(raw, ZSTD_LEVEL)
                    .map_err(|e| ContainerError::io(&self.temp_path, e))?;
                &compressed
            }
        };
        self.write_all(stored)?;
        Ok(Section {
            offset,
            stored_len: stored.len() as u64,
            raw_len: raw.len() as u64,
            compression,
            crc32: crc32fast::hash(stored),
        })
    }

    fn pad_to_alignment(&mut self) -> Result<(), ContainerError> {
        let padding = (ALIGNMENT - self.position % ALIGNMENT) % ALIGNMENT;
        self.write_all(&[0u8; ALIGNMENT as usize][..padding as usize])
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ContainerError> {
        self.out
            .write_all(bytes)
            .map_err(|e| ContainerError::io(&self.temp_path, e))?;
        self.position += bytes.len() as u64;
        Ok(())
    }
}

impl Drop for ContainerWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

pub fn ranges_to_bytes(ranges: &[LogRange]) -> Vec<u8> {
    ranges
        .iter()
        .flat_map(|r| [r.log_min.to_le_bytes(), r.log_max.to_le_bytes()])
        .flatten()
        .collect()
}

fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

/// Makes the rename durable (best effort: not every filesystem allows it).
fn sync_parent_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Removes temporary files left in `dir` by writers whose process is gone
/// (killed mid-conversion). Returns the removed paths.
pub fn remove_stale_temp_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, pid)) = name.rsplit_once(TEMP_MARKER) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if name.starts_with('.') && !process_alive(pid) && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
