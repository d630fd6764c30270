//! A model on the Hugging Face Hub (`owner/name[@revision]`), downloaded
//! into the standard Hugging Face cache (`HF_HOME`, default
//! `~/.cache/huggingface`) and then read as a local directory.

use std::path::{Path, PathBuf};

use hf_hub::api::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use super::hf_dir::HfDirSource;
use super::{ConvertError, ConvertEvent};
use qins_core::container::SourceInfo;

/// Files fetched besides the weights; the first two are required.
const REQUIRED_FILES: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL_FILES: [&str; 3] = [
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Whether `source` looks like a Hub id rather than a local path.
pub fn looks_like_hub_id(source: &str) -> bool {
    let id = source.split('@').next().unwrap_or(source);
    let mut parts = id.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    valid(owner) && valid(name) && !Path::new(source).exists()
}

/// Where the Hub is and where its downloads are cached.
#[derive(Clone, Debug)]
pub struct HubLocation {
    /// The Hub's address (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// The download cache (`HF_HOME/hub`, default `~/.cache/huggingface/hub`).
    pub cache: Cache,
}

impl HubLocation {
    /// What the Hugging Face tools use: `HF_ENDPOINT` and `HF_HOME`.
    pub fn from_env() -> Self {
        Self {
            endpoint: std::env::var("HF_ENDPOINT").ok(),
            cache: Cache::from_env(),
        }
    }
}

/// Downloads (or finds in the cache) everything needed to convert `source`,
/// from the Hub the environment names ([`HubLocation::from_env`]).
pub fn open_hub_model(
    source: &str,
    progress: &mut dyn FnMut(ConvertEvent),
) -> Result<HfDirSource, ConvertError> {
    open_hub_model_at(source, &HubLocation::from_env(), progress)
}

/// [`open_hub_model`] from an explicit Hub and cache (tests point it at a
/// local stand-in without touching the process environment).
pub fn open_hub_model_at(
    source: &str,
    location: &HubLocation,
    progress: &mut dyn FnMut(ConvertEvent),
) -> Result<HfDirSource, ConvertError> {
    let (id, revision) = match source.split_once('@') {
        Some((id, rev)) => (id.to_string(), rev.to_string()),
        None => (source.to_string(), "main".to_string()),
    };
    let repo = Repo::with_revision(id.clone(), RepoType::Model, revision.clone());
    let unreachable = |reason: String| ConvertError::HubUnreachable {
        id: id.clone(),
        reason,
    };
    let mut builder = ApiBuilder::from_cache(location.cache.clone()).with_progress(false);
    if let Some(endpoint) = &location.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| unreachable(e.to_string()))?;
    let api_repo = api.repo(repo.clone());
    let cache = location.cache.repo(repo);
    let fetch =
        |file: &str, progress: &mut dyn FnMut(ConvertEvent)| -> Result<PathBuf, ConvertError> {
            if let Some(path) = cache.get(file) {
                return Ok(path);
            }
            download(&api_repo, file, progress).map_err(|e| unreachable(format!("{file}: {e}")))
        };
    let mut snapshot_dir = None;
    for file in REQUIRED_FILES {
        let path = fetch(file, progress)?;
        snapshot_dir = path.parent().map(Path::to_path_buf);
    }
    for file in OPTIONAL_FILES {
        // Absent optional files are normal (404); anything else was reported above.
        let _ = fetch(file, progress);
    }
    for file in weight_files(&fetch, progress)? {
        fetch(&file, progress)?;
    }
    let dir = snapshot_dir.ok_or_else(|| unreachable("empty snapshot".into()))?;
    HfDirSource::open_as(
        &dir,
        SourceInfo {
            kind: "hub".into(),
            id,
            revision: Some(revision),
            dtype: String::new(),
        },
    )
}

/// Downloads one repository file (with progress) and returns its local path.
type FetchFile<'a> =
    &'a dyn Fn(&str, &mut dyn FnMut(ConvertEvent)) -> Result<PathBuf, ConvertError>;

/// Shard names from the index, or the single `model.safetensors`.
fn weight_files(
    fetch: FetchFile<'_>,
    progress: &mut dyn FnMut(ConvertEvent),
) -> Result<Vec<String>, ConvertError> {
    let Ok(index_path) = fetch("model.safetensors.index.json", progress) else {
        return Ok(vec!["model.safetensors".into()]);
    };
    let text =
        std::fs::read_to_string(&index_path).map_err(|e| ConvertError::io(&index_path, e))?;
    let index: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ConvertError::BadJson(index_path.clone(), e))?;
    let mut files: Vec<String> = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.dedup();
    Ok(files)
}

fn download(
    repo: &ApiRepo,
    file: &str,
    progress: &mut dyn FnMut(ConvertEvent),
) -> Result<PathBuf, hf_hub::api::sync::ApiError> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let reporter = ChannelProgress {
        sender,
        file: file.to_string(),
        total: 0,
        done: 0,
    };
    let result = std::thread::scope(|scope| {
        let handle = scope.spawn(|| repo.download_with_progress(file, reporter));
        for event in receiver {
            progress(event);
        }
        handle.join()
    });
    result.unwrap_or_else(|_| {
        Err(hf_hub::api::sync::ApiError::IoError(std::io::Error::other(
            "download thread panicked",
        )))
    })
}

/// Forwards hf-hub's download progress as `ConvertEvent::Download`.
struct ChannelProgress {
    sender: std::sync::mpsc::Sender<ConvertEvent>,
    file: String,
    total: u64,
    done: u64,
}

impl Progress for ChannelProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
        self.send();
    }

    fn update(&mut self, size: usize) {
        self.done += size as u64;
        self.send();
    }

    fn finish(&mut self) {
        self.done = self.total;
        self.send();
    }
}

impl ChannelProgress {
    fn send(&self) {
        let _ = self.sender.send(ConvertEvent::Download {
            file: self.file.clone(),
            bytes: self.done,
            total: self.total,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_hub_ids() {
        assert!(looks_like_hub_id("microsoft/Phi-3.5-mini-instruct"));
        assert!(looks_like_hub_id(
            "HuggingFaceTB/SmolLM2-135M-Instruct@main"
        ));
        assert!(!looks_like_hub_id("model.gguf"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("owner/na me"));
    }

    #[test]
    fn unreachable_hub_fails_with_one_clear_line() {
        // A closed local port as the Hub: no traffic leaves the machine, and
        // the process environment is left alone.
        let cache = tempfile::tempdir().unwrap();
        let location = HubLocation {
            endpoint: Some("http://127.0.0.1:9".into()),
            cache: Cache::new(cache.path().to_path_buf()),
        };
        let err = match open_hub_model_at("nobody/nothing", &location, &mut |_| {}) {
            Err(e) => e,
            Ok(_) => panic!("download from a closed port succeeded"),
        };
        let message = err.to_string();
        assert!(message.contains("nobody/nothing"), "{message}");
        assert!(
            message.contains("qinsd convert /path/to/model-dir"),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }
}
