//! Model management: list the models directory, load (replacing the
//! resident model), unload.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use qins_proto::v1::{
    ListModelsReply, LoadModelReply, LoadModelRequest, ModelInfo, UnloadModelReply,
};
use tonic::Status;

use super::status;
use crate::model_store;
use crate::scheduler::Scheduler;
use qins_core::container::QinsFile;

pub async fn list(scheduler: &Arc<Scheduler>) -> Result<ListModelsReply, Status> {
    let dir = scheduler.config().models_dir.clone();
    let loaded = scheduler.model().map(|m| m.path().to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut models = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ListModelsReply {
                    models_dir: dir.display().to_string(),
                    models,
                });
            }
            Err(source) => {
                return Err(status::from_model_store(
                    model_store::ModelStoreError::ModelsDir { dir, source },
                ));
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "qins") {
                let is_loaded = loaded.as_deref().is_some_and(|l| same_file(l, &path));
                models.push(describe(&path, is_loaded));
            }
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ListModelsReply {
            models_dir: dir.display().to_string(),
            models,
        })
    })
    .await
    .map_err(status::join_error)?
}

pub async fn load(
    scheduler: &Arc<Scheduler>,
    request: LoadModelRequest,
) -> Result<LoadModelReply, Status> {
    if request.model.trim().is_empty() {
        return Err(status::invalid(
            "model is empty: give a name from `qins models` or a path",
        ));
    }
    let started = Instant::now();
    let scheduler = Arc::clone(scheduler);
    tokio::task::spawn_blocking(move || {
        let models_dir = &scheduler.config().models_dir;
        let (path, model) = model_store::open_or_convert(
            models_dir,
            &request.model,
            &scheduler.config().device,
            &mut model_store::log_progress,
        )
        .map_err(status::from_model_store)?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(model = model.name(), path = %path.display(), seconds, "model loaded");
        scheduler.set_model(Some(Arc::new(model)));
        Ok(LoadModelReply {
            model: Some(describe(&path, true)),
            load_seconds: seconds,
        })
    })
    .await
    .map_err(status::join_error)?
}

pub fn unload(scheduler: &Scheduler) -> UnloadModelReply {
    let previous = scheduler.set_model(None);
    let unloaded = previous.map(|m| m.name().to_string()).unwrap_or_default();
    if !unloaded.is_empty() {
        tracing::info!(model = unloaded, "model unloaded");
    }
    UnloadModelReply { unloaded }
}

/// A model file's listing entry; a file that does not parse is listed with
/// its architecture saying so, rather than hidden.
fn describe(path: &Path, loaded: bool) -> ModelInfo {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = std::fs::metadata(path).ok();
    let mut info = ModelInfo {
        name,
        path: path.display().to_string(),
        file_bytes: metadata.as_ref().map_or(0, |m| m.len()),
        loaded,
        modified_unix_seconds: metadata
            .and_then(|m| m.modified().ok())
            .map_or(0.0, super::stats::unix_seconds),
        ..ModelInfo::default()
    };
    match QinsFile::open(path) {
        Ok(file) => {
            info.architecture = file.header.config.architecture.name().to_string();
            info.parameters = file
                .index
                .iter()
                .map(|t| t.shape.iter().product::<u64>())
                .sum();
        }
        Err(e) => info.architecture = format!("unreadable: {e}"),
    }
    info
}

pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
