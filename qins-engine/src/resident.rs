//! The one way from a `.qins` file to a model on its resident weights:
//! open the container, load the weights (mapped in place, or decoded when
//! compressed), build the model. [`ChatModel`](crate::ChatModel) opens its
//! model here, and so do qinsd's `generate`, `perplexity` and `bench`.
//!
//! While a model is open its file holds a shared lock ([`ModelFileLease`]),
//! so a conversion does not replace a file that a running process has
//! loaded: the converter asks for the file exclusively
//! ([`ReplaceLock::take`]) and is refused while any lease is held. The locks
//! are advisory `flock`s on the file itself: they are released by the
//! kernel when their process ends, however it ends, and leave no file behind.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use qins_core::container::{ContainerError, ModelHeader, QinsFile};
use qins_core::model::{Model, ModelError};
use qins_core::weights::ResidentBytes;
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("{path}: {source}")]
    Model {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("{path}: the stored tokenizer does not load: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error(
        "{}: a conversion is replacing this file right now; load it when the conversion is done",
        path.display()
    )]
    BeingReplaced { path: PathBuf },
}

/// How long each step of [`ResidentModel::open`] took (what `qinsd bench`
/// reports as open + load + model).
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenTimings {
    pub open: Duration,
    pub weights: Duration,
    pub model: Duration,
}

impl OpenTimings {
    pub fn total(&self) -> Duration {
        self.open + self.weights + self.model
    }
}

/// A `.qins` file opened into a CPU [`Model`], with what the file says
/// about it. Holds the file's lease for as long as it (or what it is turned
/// into, see [`Self::into_parts`]) lives.
pub struct ResidentModel {
    pub path: PathBuf,
    pub header: ModelHeader,
    pub model: Model,
    pub resident: ResidentBytes,
    pub timings: OpenTimings,
    pub lease: ModelFileLease,
}

impl ResidentModel {
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let lease = ModelFileLease::take(path)?;
        let started = Instant::now();
        let file = QinsFile::open(path)?;
        let opened = started.elapsed();
        let weights = file.load()?;
        let loaded = started.elapsed();
        let resident = weights.resident_bytes();
        let model =
            Model::load(&file.header.config, weights).map_err(|source| OpenError::Model {
                path: path.to_path_buf(),
                source,
            })?;
        let built = started.elapsed();
        Ok(Self {
            path: path.to_path_buf(),
            header: file.header,
            model,
            resident,
            timings: OpenTimings {
                open: opened,
                weights: loaded - opened,
                model: built - loaded,
            },
            lease,
        })
    }

    /// The tokenizer stored in the file's header.
    pub fn tokenizer(&self) -> Result<Tokenizer, OpenError> {
        Tokenizer::from_str(&self.header.tokenizer_json).map_err(|e| OpenError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

/// A shared lock on an open model's file: no conversion replaces it while
/// this lives. Where the filesystem has no locks, there is no lease (and
/// the file is not protected), rather than no model.
#[derive(Debug)]
pub struct ModelFileLease {
    _file: Option<File>,
}

impl ModelFileLease {
    /// Refused only while a conversion holds the file ([`ReplaceLock`]).
    pub fn take(path: &Path) -> Result<Self, OpenError> {
        match try_lock(path, LockKind::Shared) {
            Ok(file) => Ok(Self { _file: file }),
            Err(Busy) => Err(OpenError::BeingReplaced {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// The exclusive lock a conversion holds on the file it replaces, until
/// its new file is renamed into place.
#[derive(Debug)]
pub struct ReplaceLock {
    _file: Option<File>,
}

/// Why a file cannot be replaced now.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} is open in a running qinsd (the daemon's loaded model, or a `qinsd generate`, \
     `perplexity` or `bench`): convert to another path, or `qins unload` (or stop that \
     process) first",
    path.display()
)]
pub struct InUse {
    pub path: PathBuf,
}

impl ReplaceLock {
    /// Locks `path` if it exists; refused while a [`ModelFileLease`] on it
    /// is held, in this process or another.
    pub fn take(path: &Path) -> Result<Self, InUse> {
        match try_lock(path, LockKind::Exclusive) {
            Ok(file) => Ok(Self { _file: file }),
            Err(Busy) => Err(InUse {
                path: path.to_path_buf(),
            }),
        }
    }
}

enum LockKind {
    Shared,
    Exclusive,
}

/// Another process (or another open in this one) holds a conflicting lock.
struct Busy;

/// The file at `path`, locked; None where there is nothing to lock (no such
/// file: its opener reports that) or the filesystem has no locks.
fn try_lock(path: &Path, kind: LockKind) -> Result<Option<File>, Busy> {
    let Ok(file) = File::open(path) else {
        return Ok(None);
    };
    let locked = match kind {
        LockKind::Shared => file.try_lock_shared(),
        LockKind::Exclusive => file.try_lock(),
    };
    match locked {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Err(Busy),
        Err(TryLockError::Error(error)) => {
            tracing::debug!(path = %path.display(), %error, "no lock on the model file");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_test_support::phi35::{Phi35Spec, write_phi35};

    fn tiny(dir: &Path) -> PathBuf {
        let path = dir.join("tiny.qins");
        write_phi35(&path, &Phi35Spec::scaled(2, 64, 4, 96, 2, 384)).unwrap();
        path
    }

    #[test]
    fn an_open_model_cannot_be_replaced_and_a_replaced_one_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny(dir.path());
        let opened = ResidentModel::open(&path).unwrap();
        assert_eq!(opened.model.config().vocab_size, 384);
        let err = ReplaceLock::take(&path).unwrap_err();
        assert!(err.to_string().contains("qins unload"), "{err}");
        // A second open shares the file.
        let again = ResidentModel::open(&path).unwrap();
        drop((opened, again));
        let replacing = ReplaceLock::take(&path).unwrap();
        let Err(err) = ResidentModel::open(&path) else {
            panic!("opened a file a conversion is replacing");
        };
        assert!(matches!(err, OpenError::BeingReplaced { .. }), "{err}");
        drop(replacing);
        ResidentModel::open(&path).unwrap();
    }

    #[test]
    fn a_missing_output_needs_no_lock_and_a_missing_model_is_the_containers_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.qins");
        ReplaceLock::take(&missing).unwrap();
        let Err(err) = ResidentModel::open(&missing) else {
            panic!("opened a missing file");
        };
        assert!(matches!(err, OpenError::Container(_)), "{err}");
    }
}
