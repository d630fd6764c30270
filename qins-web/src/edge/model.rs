//! What a request's `model` means, in every dialect: qinsd answers with
//! its one resident model, so a request either names that model or is
//! refused with a 404 that says which model is resident and how to load
//! another ([`resolve`]). Listings (`/v1/models`, `/api/tags`) come from
//! one list ([`listed`]), so every name they show is one [`resolve`]
//! knows.

use qins_proto::v1::ModelInfo;

use crate::daemon::Daemon;
use crate::error::ApiError;

/// ollama's default tag: `NAME` and `NAME:latest` are one model.
pub const LATEST: &str = ":latest";

/// The extension of a model file, which `qins load` also accepts.
const FILE_EXTENSION: &str = ".qins";

/// What a request that names no model (absent or `""`) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Omitted {
    /// The resident model (the `/ui` page, which has one model to talk to).
    Resident,
    /// A 400: OpenAI's and ollama's APIs require `model`.
    Refused,
}

/// The resident model's name, asking qinsd which it is.
pub async fn resolve(
    daemon: &Daemon,
    requested: Option<&str>,
    omitted: Omitted,
) -> Result<String, ApiError> {
    let resident = daemon.stats().await?.model;
    resolve_against(&resident, requested, omitted)
}

/// The one rule: `requested` must name `resident` (see [`answers_to`]).
pub fn resolve_against(
    resident: &str,
    requested: Option<&str>,
    omitted: Omitted,
) -> Result<String, ApiError> {
    if resident.is_empty() {
        return Err(ApiError::NoModel(
            "no model is loaded in qinsd; load one with `qins load NAME` (see /v1/models)".into(),
        ));
    }
    match requested.filter(|name| !name.is_empty()) {
        None if omitted == Omitted::Refused => {
            Err(ApiError::BadRequest("model is required".into()))
        }
        Some(name) if !answers_to(resident, name) => Err(ApiError::NotFound(format!(
            "model '{name}' is not loaded: the resident model is '{resident}'; \
             load another with `qins load NAME`"
        ))),
        _ => Ok(resident.to_string()),
    }
}

/// Whether `requested` names the model called `name`: `NAME` or
/// `NAME.qins`, either with ollama's `:latest` tag.
pub fn answers_to(name: &str, requested: &str) -> bool {
    let untagged = requested.strip_suffix(LATEST).unwrap_or(requested);
    let stem = untagged.strip_suffix(FILE_EXTENSION).unwrap_or(untagged);
    stem == name
}

/// The models qinsd can answer with or load: its models directory, plus
/// the resident model when it was loaded from elsewhere (a path), so both
/// listings always show the model every request is answered by.
pub async fn listed(daemon: &Daemon) -> Result<Vec<ModelInfo>, ApiError> {
    let mut models = daemon.list_models().await?.models;
    let stats = daemon.stats().await?;
    if !stats.model.is_empty() && !models.iter().any(|m| m.name == stats.model) {
        models.push(ModelInfo {
            name: stats.model,
            architecture: stats.architecture,
            parameters: stats.model_parameters,
            loaded: true,
            modified_unix_seconds: stats.model_loaded_unix_seconds,
            ..ModelInfo::default()
        });
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_model_answers_to_its_name_and_aliases() {
        for name in ["tiny", "tiny:latest", "tiny.qins", "tiny.qins:latest"] {
            let resolved = resolve_against("tiny", Some(name), Omitted::Refused);
            assert_eq!(resolved.ok().as_deref(), Some("tiny"), "{name}");
        }
        for name in ["tiny:7b", "Tiny", "gpt-4o", "tinyx"] {
            assert!(!answers_to("tiny", name), "{name}");
        }
    }

    #[test]
    fn another_model_is_a_404_that_says_how_to_load_it() {
        let Err(ApiError::NotFound(message)) =
            resolve_against("tiny", Some("gpt-4o"), Omitted::Resident)
        else {
            panic!("not a 404");
        };
        assert!(message.contains("'gpt-4o'"), "{message}");
        assert!(message.contains("'tiny'"), "{message}");
        assert!(message.contains("qins load"), "{message}");
    }

    #[test]
    fn an_omitted_model_is_the_dialects_choice() {
        for omitted in [None, Some("")] {
            assert_eq!(
                resolve_against("tiny", omitted, Omitted::Resident).ok(),
                Some("tiny".into())
            );
            assert!(matches!(
                resolve_against("tiny", omitted, Omitted::Refused),
                Err(ApiError::BadRequest(_))
            ));
        }
    }

    #[test]
    fn no_resident_model_comes_first() {
        assert!(matches!(
            resolve_against("", Some("tiny"), Omitted::Refused),
            Err(ApiError::NoModel(_))
        ));
    }
}
