//! The one rule for where a conversion may write, for `qinsd convert`, the
//! Convert RPC and a Hub id converted on first use ([`claim_output`]):
//! - the output is claimed for the conversion's whole run, so two
//!   conversions never write the same file, whichever processes run them;
//! - a file that a running process has loaded (the daemon's resident model,
//!   or a `qinsd generate`, `perplexity` or `bench`) is never replaced;
//! - an existing file is replaced only when asked (`--force`, `overwrite`).
//!
//! Both holds are `flock`s, so they work across processes (a `qinsd
//! convert` beside a running daemon) and are released by the kernel when
//! their process ends, however it ends. The claim is a hidden lock file
//! next to the output (`.NAME.qins.converting`), removed when the
//! conversion ends; one left by a killed process holds no lock and is taken
//! over by the next conversion, or removed when qinsd starts
//! ([`remove_stale_claims`]). "Loaded" is the model file's own shared lock
//! ([`qins_engine::resident`]), which every process holds while it has the
//! model open.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use qins_convert::ConvertError;
use qins_engine::resident::{InUse, ReplaceLock};
use thiserror::Error;

/// Marks a claim file: `.NAME.qins.converting`.
const CLAIM_SUFFIX: &str = ".converting";

#[derive(Debug, Error)]
pub enum OutputError {
    #[error(
        "a conversion to {} is already running (in a qinsd or a `qinsd convert`); \
         wait for it to finish, or convert to another path",
        path.display()
    )]
    Converting { path: PathBuf },
    #[error(transparent)]
    InUse(#[from] InUse),
    /// The overwrite rule ([`qins_convert::prepare_output`]) or the output's
    /// directory.
    #[error(transparent)]
    Convert(#[from] ConvertError),
}

/// A conversion's hold on its output: released (and its claim file
/// removed) on drop, after the new file is in place.
#[derive(Debug)]
pub struct OutputClaim {
    path: PathBuf,
    _claim: File,
    _replacing: ReplaceLock,
}

impl Drop for OutputClaim {
    fn drop(&mut self) {
        // Removed while still locked: a conversion that opened the old file
        // finds it unlinked and opens a new one (see `lock_claim_file`).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Claims `output` for a conversion: refused while another conversion
/// writes it, while a running process has it loaded, or when it exists and
/// `overwrite` is false. Creates the output's directory. Call it before any
/// download or read, and hold the claim until the conversion ends.
pub fn claim_output(output: &Path, overwrite: bool) -> Result<OutputClaim, OutputError> {
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ConvertError::io(dir, e))?;
    }
    let path = claim_path(output);
    let claim = lock_claim_file(&path).map_err(|error| match error {
        ClaimFailure::Taken => OutputError::Converting {
            path: output.to_path_buf(),
        },
        // Reported on the output: the claim file is written where the
        // output would be, so a read-only or full directory fails here.
        ClaimFailure::Io(source) => ConvertError::io(output, source).into(),
    })?;
    let replacing = match ReplaceLock::take(output) {
        Ok(lock) => lock,
        Err(in_use) => {
            let _ = std::fs::remove_file(&path);
            return Err(in_use.into());
        }
    };
    let claim = OutputClaim {
        path,
        _claim: claim,
        _replacing: replacing,
    };
    // Dropping the claim on a refusal removes its file.
    qins_convert::prepare_output(output, overwrite)?;
    Ok(claim)
}

fn claim_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.qins".into());
    output.with_file_name(format!(".{name}{CLAIM_SUFFIX}"))
}

enum ClaimFailure {
    Taken,
    Io(std::io::Error),
}

/// An exclusive lock on the claim file at `path`, created if need be.
fn lock_claim_file(path: &Path) -> Result<File, ClaimFailure> {
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(ClaimFailure::Io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(ClaimFailure::Taken),
            // No locks on this filesystem: the claim is the file alone.
            Err(TryLockError::Error(error)) => {
                tracing::debug!(path = %path.display(), %error, "no lock on the claim file");
                return Ok(file);
            }
        }
        // The conversion before us may have removed this file after we
        // opened it: our lock is then on a file nobody else sees. Retry.
        if is_still_at(&file, path) {
            return Ok(file);
        }
    }
}

fn is_still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Removes the claim files in `dir` that no conversion holds (left by a
/// process killed mid-conversion). Returns the removed paths.
pub fn remove_stale_claims(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with('.') && name.ends_with(CLAIM_SUFFIX)) {
            continue;
        }
        let path = entry.path();
        if let Ok(file) = lock_claim_file(&path) {
            // Locked, so unheld: removed like a finished conversion's.
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
            drop(file);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_engine::ResidentModel;
    use qins_test_support::phi35::{Phi35Spec, write_phi35};

    #[test]
    fn one_conversion_at_a_time_per_output_and_the_claim_file_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("sub").join("m.qins");
        let claim = claim_output(&output, false).unwrap();
        assert!(dir.path().join("sub").is_dir(), "the directory is created");
        let err = claim_output(&output, true).unwrap_err();
        assert!(matches!(err, OutputError::Converting { .. }), "{err}");
        assert!(err.to_string().contains("already running"), "{err}");
        drop(claim);
        assert!(!claim_path(&output).exists(), "the claim file is removed");
        drop(claim_output(&output, false).unwrap());
    }

    #[test]
    fn an_existing_output_needs_overwrite_and_a_loaded_one_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("tiny.qins");
        write_phi35(&output, &Phi35Spec::scaled(2, 64, 4, 96, 2, 384)).unwrap();
        let err = claim_output(&output, false).unwrap_err();
        assert!(err.to_string().contains("pass --force"), "{err}");
        drop(claim_output(&output, true).unwrap());
        let loaded = ResidentModel::open(&output).unwrap();
        // Loaded wins over "exists": it is the reason --force would not help.
        for overwrite in [false, true] {
            let err = claim_output(&output, overwrite).unwrap_err();
            assert!(matches!(err, OutputError::InUse(_)), "{err}");
            assert!(err.to_string().contains("qins unload"), "{err}");
        }
        assert!(
            !claim_path(&output).exists(),
            "a refused claim leaves no file"
        );
        drop(loaded);
        drop(claim_output(&output, true).unwrap());
    }

    #[test]
    fn a_claim_file_left_by_a_killed_conversion_is_taken_over_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("m.qins");
        std::fs::write(claim_path(&output), b"").unwrap();
        drop(claim_output(&output, false).unwrap());
        std::fs::write(claim_path(&output), b"").unwrap();
        let held = claim_output(&dir.path().join("held.qins"), false).unwrap();
        assert_eq!(remove_stale_claims(dir.path()), vec![claim_path(&output)]);
        assert!(claim_path(&dir.path().join("held.qins")).exists());
        drop(held);
    }
}
