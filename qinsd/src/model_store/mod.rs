//! Where models come from: the one rule that turns a model argument into a
//! loaded [`ChatModel`].
//!
//! `qinsd --model` at startup and the LoadModel RPC (`qins load`) both call
//! [`open_or_convert`], so both accept the same three forms:
//! - a path to a `.qins` file;
//! - a name in the models directory (`NAME` or `NAME.qins`);
//! - a Hugging Face Hub id (`owner/name[@revision]`), downloaded and converted
//!   into the models directory on first use (at
//!   [`qins_convert::default_output_path`]) and found there afterwards.

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
}

/// `model` as a path when it names an existing file; otherwise a model name
/// looked up in `models_dir`. Never converts (see [`open_or_convert`]).
pub fn resolve_model_path(models_dir: &Path, model: &str) -> Result<PathBuf, ModelStoreError> {
    let as_path = Path::new(model);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
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

/// Resolves `model` (converting a Hub id on first use) and loads it onto
/// `device`. Blocking: downloads, conversion and the load (with the GPU
/// upload) are all CPU, disk or device work.
pub fn open_or_convert(
    models_dir: &Path,
    model: &str,
    device: &Device,
    progress: &mut dyn FnMut(ConvertEvent),
) -> Result<(PathBuf, ChatModel), ModelStoreError> {
    let path = match resolve_model_path(models_dir, model) {
        Ok(path) => path,
        Err(_) if qins_convert::hub::looks_like_hub_id(model) => {
            convert_from_hub(model, models_dir, progress).map_err(|e| match e {
                HubFailure::ModelsDir(source) => ModelStoreError::ModelsDir {
                    dir: models_dir.to_path_buf(),
                    source,
                },
                HubFailure::Convert(source) => ModelStoreError::Convert {
                    id: model.to_string(),
                    source,
                },
            })?
        }
        Err(unknown) => return Err(unknown),
    };
    let chat = ChatModel::open_on(&path, device).map_err(|source| ModelStoreError::Load {
        path: path.clone(),
        source: Box::new(source),
    })?;
    Ok((path, chat))
}

enum HubFailure {
    ModelsDir(std::io::Error),
    Convert(ConvertError),
}

/// First use of a Hub id: download and convert into the models directory.
/// A file already at the default output path is that earlier conversion.
fn convert_from_hub(
    id: &str,
    models_dir: &Path,
    progress: &mut dyn FnMut(ConvertEvent),
) -> Result<PathBuf, HubFailure> {
    let output = qins_convert::default_output_path(id, models_dir);
    if output.is_file() {
        return Ok(output);
    }
    std::fs::create_dir_all(models_dir).map_err(HubFailure::ModelsDir)?;
    tracing::info!(id, output = %output.display(), "converting from the Hugging Face Hub on first use");
    let source = qins_convert::open_source(id, progress).map_err(HubFailure::Convert)?;
    qins_convert::convert(
        source.as_ref(),
        &output,
        &ConvertOptions::default(),
        progress,
        &AtomicBool::new(false),
    )
    .map_err(HubFailure::Convert)?;
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
    fn a_missing_file_that_is_no_hub_id_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let Err(err) = open_or_convert(dir.path(), "nothing-here", &Device::Cpu, &mut |_| {})
        else {
            panic!("a missing model loaded");
        };
        assert!(matches!(err, ModelStoreError::Unknown { .. }), "{err}");
    }
}
