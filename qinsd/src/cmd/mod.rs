//! One module per `qinsd` subcommand: argument parsing and reporting only;
//! the work is done by the library.

pub mod bench;
pub mod convert;
pub mod export_hf;
pub mod generate;
pub mod perplexity;
pub mod serve;

use std::path::PathBuf;

use anyhow::Result;
use qinsd::model_store;

/// The model a subcommand runs, named the way `qinsd --model` names it.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// The model: a .qins path, a name in the models directory, or a Hub id
    /// (owner/name[@revision]) converted into the models directory on first use.
    pub model: String,
    /// Where models are found by name and Hub ids are converted to.
    #[arg(long, env = "QINS_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
}

impl ModelArgs {
    /// The model's file ([`model_store::resolve`]).
    pub fn resolve(&self) -> Result<PathBuf> {
        self.resolve_other(&self.model)
    }

    /// Another model named in the same way (e.g. a reference model).
    pub fn resolve_other(&self, model: &str) -> Result<PathBuf> {
        Ok(model_store::resolve(
            &self.models_dir,
            model,
            &mut model_store::log_progress,
        )?)
    }
}
