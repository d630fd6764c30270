//! Where models come from and where conversions go: every path to a
//! resident model passes here.
//!
//! [`resolve`] is the one rule that turns a model argument into a file;
//! `qinsd --model` at startup, the LoadModel RPC (`qins load`), `qinsd
//! generate`, `perplexity` and `bench` all take it, so all accept the same
//! three forms:
//! - a path to a `.qins` file;
//! - a name in the models directory (`NAME` or `NAME.qins`);
//! - a Hugging Face Hub id (`owner/name[@revision]`), downloaded and converted
//!   into the models directory on first use (at
//!   [`qins_convert::default_output_path`]) and found there afterwards.
//!
//! The file is then opened by the engine's one opener
//! ([`qins_engine::resident`]; [`open_or_convert`] for a chat model).
//! Every conversion, a Hub id's first use included, claims its output
//! through [`output::claim_output`].

pub mod output;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use qins_convert::{ConvertError, ConvertEvent, ConvertOptions};
use qins_engine::{ChatModel, ChatModelError, Device};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelStoreError {
    #[error(
        "model '{name}' is not in {dir}: give a .qins path, a name from `qins models`, or a Hub id (owner/name)"
    )]
    Unknown { name: String, dir: PathBuf },
    #[error(
        "no model file at {}: check the path, or give a name from `qins models` or a Hub id (owner/name)",
        path.display()
    )]
    NoSuchFile { path: PathBuf },
    #[error("cannot convert '{id}' from the Hugging Face Hub: {source}")]
    Convert {
        id: String,
        #[source]
        source: ConvertError,
    },
    #[error("cannot load {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: Box<ChatModelError>,
    },
    #[error("cannot use the models directory {}: {source}", dir.display())]
    ModelsDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A Hub id's first conversion could not claim its output.
    #[error("cannot convert '{id}' from the Hugging Face Hub: {source}")]
    Output {
        id: String,
        #[source]
        source: output::OutputError,
    },
}

/// `model` as a path when it names an existing file; otherwise a model name
/// looked up in `models_dir`. Never converts (see [`open_or_convert`]).
pub fn resolve_model_path(models_dir: &Path, model: &str) -> Result<PathBuf, ModelStoreError> {
    let as_path = Path::new(model);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    if names_a_file(model) {
        return Err(ModelStoreError::NoSuchFile {
            path: as_path.to_path_buf(),
        });
    }
    let is_plain_name =
        !model.is_empty() && !model.contains(['/', '\\']) && model != "." && model != "..";
    if is_plain_name {
        let file = if model.ends_with(".qins") {
            models_dir.join(model)
        } else {
            models_dir.join(format!("{model}.qins"))
        };
        if file.is_file() {
            return Ok(file);
        }
    }
    Err(ModelStoreError::Unknown {
        name: model.to_string(),
        dir: models_dir.to_path_buf(),
    })
}

/// Whether `model` can only mean a file: absolute, explicitly relative, or
/// a `.qins` file in some directory (a Hub id is `owner/name`, never these).
fn names_a_file(model: &str) -> bool {
    Path::new(model).is_absolute()
        || model.starts_with("./")
        || model.starts_with("../")
        || (model.contains(['/', '\\']) && model.ends_with(".qins"))
}

/// The file `model` names (see the module's doc), converting a Hub id on
/// first use. Blocking: a download and a conversion are CPU, disk and
/// network work.
pub fn resolve(
    models_dir: &Path,
    model: &str,
    progress: &mut dyn FnMut(ConvertEvent),
) -> Result<PathBuf, ModelStoreError> {
    match resolve_model_path(models_dir, model) {
        Ok(path) => Ok(path),
        Err(_) if qins_convert::hub::looks_like_hub_id(model) => {
            convert_from_hub(model, models_dir, progress)
        }
        Err(unknown) => Err(unknown),
    }
}

/// Resolves `model` ([`resolve`]) and loads it onto `device` as a chat
/// model. Blocking: downloads, conversion and the load (with the GPU
/// upload) are all CPU, disk or device work.
pub fn open_or_convert(
    models_dir: &Path,
    model: &str,
    device: &Device,
    progress: &mut dyn FnMut(ConvertEvent),
) -> Result<(PathBuf, ChatModel), ModelStoreError> {
    let path = resolve(models_dir, model, progress)?;
    let chat = ChatModel::open_on(&path, device).map_err(|source| ModelStoreError::Load {
        path: path.clone(),
        source: Box::new(source),
    })?;
    Ok((path, chat))
}

/// First use of a Hub id: download and convert into the models directory,
/// under the same claim as any conversion. A file already at the default
/// output path is that earlier conversion.
fn convert_from_hub(
    id: &str,
    models_dir: &Path,
    progress: &mut dyn FnMut(ConvertEvent),
) -> Result<PathBuf, ModelStoreError> {
    let output = qins_convert::default_output_path(id, models_dir);
    if output.is_file() {
        return Ok(output);
    }
    let convert_error = |source| ModelStoreError::Convert {
        id: id.to_string(),
        source,
    };
    let _claim = match output::claim_output(&output, false) {
        Ok(claim) => claim,
        // Finished by another conversion since the check above.
        Err(output::OutputError::Convert(ConvertError::OutputExists(_))) => return Ok(output),
        Err(output::OutputError::Convert(ConvertError::Io(_, source))) => {
            return Err(ModelStoreError::ModelsDir {
                dir: models_dir.to_path_buf(),
                source,
            });
        }
        Err(source) => {
            return Err(ModelStoreError::Output {
                id: id.to_string(),
                source,
            });
        }
    };
    tracing::info!(id, output = %output.display(), "converting from the Hugging Face Hub on first use");
    let source = qins_convert::open_source(id, progress).map_err(convert_error)?;
    qins_convert::convert(
        source.as_ref(),
        &output,
        &ConvertOptions::default(),
        progress,
        &AtomicBool::new(false),
    )
    .map_err(convert_error)?;
    Ok(output)
}

/// Logs a long conversion's progress every 32 tensors (the daemon has no
/// terminal to draw a bar on).
pub fn log_progress(event: ConvertEvent) {
    if let ConvertEvent::Tensor { index, count, .. } = event
        && (index == count || index % 32 == 0)
    {
        tracing::info!(index, count, "converting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_names_and_unknown_models() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tiny.qins");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(resolve_model_path(dir.path(), "tiny").unwrap(), file);
        assert_eq!(resolve_model_path(dir.path(), "tiny.qins").unwrap(), file);
        assert_eq!(
            resolve_model_path(dir.path(), file.to_str().unwrap()).unwrap(),
            file
        );
        for missing in [
            "/no/such/model.qins",
            "./gone.qins",
            "../gone",
            "sub/tiny.qins",
        ] {
            let err = resolve_model_path(dir.path(), missing).unwrap_err();
            assert!(
                matches!(err, ModelStoreError::NoSuchFile { .. }),
                "{missing}: {err}"
            );
            assert!(err.to_string().contains("no model file at"), "{err}");
        }
        for bad in ["", ".", "..", "other", "sub/tiny", "owner/name"] {
            let err = resolve_model_path(dir.path(), bad).unwrap_err();
            assert!(
                matches!(err, ModelStoreError::Unknown { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_hub_id_already_converted_is_found_without_the_network() {
        let dir = tempfile::tempdir().unwrap();
        // Not a real model: found, then refused by the loader, proving no
        // download was attempted.
        std::fs::write(dir.path().join("Phi-3.5-mini-instruct.qins"), b"x").unwrap();
        let Err(err) = open_or_convert(
            dir.path(),
            "microsoft/Phi-3.5-mini-instruct",
            &Device::Cpu,
            &mut |_| {},
        ) else {
            panic!("a one-byte file loaded as a model");
        };
        let ModelStoreError::Load { path, .. } = err else {
            panic!("expected a load error, got {err}");
        };
        assert_eq!(path, dir.path().join("Phi-3.5-mini-instruct.qins"));
    }

    #[test]
    fn a_hub_ids_first_conversion_claims_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let output = qins_convert::default_output_path("owner/Model-1", dir.path());
        // Another conversion (a `qinsd convert` or the Convert RPC) is
        // writing the file a first use would convert to: the Hub is not
        // asked, and the message says what to do.
        let running = output::claim_output(&output, false).unwrap();
        let err = resolve(dir.path(), "owner/Model-1", &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                ModelStoreError::Output {
                    source: output::OutputError::Converting { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("wait for it to finish"), "{err}");
        drop(running);
    }

    #[test]
    fn a_missing_file_that_is_no_hub_id_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let Err(err) = open_or_convert(dir.path(), "nothing-here", &Device::Cpu, &mut |_| {})
        else {
            panic!("a missing model loaded");
        };
        assert!(matches!(err, ModelStoreError::Unknown { .. }), "{err}");
    }
}
