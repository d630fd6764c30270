//! `qinsd perplexity MODEL [--reference REF]`: perplexity on a fixed
//! text slice, plus KL divergence and top-1 agreement against a reference.

use qins_core::model::Decoder;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use qins_core::model::Model;
use qins_engine::ResidentModel;
use qins_engine::eval::corpus::wiki_summaries_text;
use qins_engine::eval::perplexity::{LogitsFn, WindowOptions, evaluate};

#[derive(clap::Args)]
pub struct Args {
    /// The model to evaluate.
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// A reference model (e.g. converted with --reference-f32) for KL and
    /// top-1, named as the model is.
    #[arg(long)]
    pub reference: Option<String>,
    /// The text to evaluate on: a plain-text file, or a `wiki-summaries.json`
    /// (the fixture the quality tables use: its extracts, ordered by title).
    #[arg(long)]
    pub text: PathBuf,
    /// Evaluate the first N tokens of the text.
    #[arg(long, default_value_t = 2048)]
    pub tokens: usize,
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    #[arg(long, default_value_t = 256)]
    pub stride: usize,
}

/// The model (kept open, so its file's lease lasts the run) and its tokenizer.
fn load(path: &Path) -> Result<(ResidentModel, tokenizers::Tokenizer)> {
    let opened =
        ResidentModel::open(path).with_context(|| format!("cannot load {}", path.display()))?;
    let tokenizer = opened.tokenizer()?;
    Ok((opened, tokenizer))
}

/// A `.json` file is read as Wikipedia summaries; anything else as plain text.
fn read_text(path: &Path) -> Result<String> {
    if path.extension().is_some_and(|e| e == "json") {
        return Ok(wiki_summaries_text(path)?);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn logits_fn(model: &Model) -> impl FnMut(&[u32]) -> Result<Vec<f32>, String> + '_ {
    move |tokens: &[u32]| {
        let mut cache = model.new_cache(tokens.len());
        model
            .forward_all(tokens, &mut cache, &AtomicBool::new(false))
            .map_err(|e| e.to_string())
    }
}

pub fn run(args: Args) -> Result<()> {
    let model_path = args.model.resolve()?;
    let reference_path = args
        .reference
        .as_deref()
        .map(|reference| args.model.resolve_other(reference))
        .transpose()?;
    let (opened, tokenizer) = load(&model_path)?;
    let model = &opened.model;
    let text = read_text(&args.text)?;
    // Tokenize a generous prefix only: the slice is the first N tokens.
    let prefix: String = text.chars().take(args.tokens * 12).collect();
    let encoding = tokenizer
        .encode(prefix, false)
        .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
    let ids: Vec<u32> = encoding
        .get_ids()
        .iter()
        .copied()
        .take(args.tokens)
        .collect();
    let reference = reference_path.as_deref().map(load).transpose()?;
    let options = WindowOptions {
        window: args.window,
        stride: args.stride,
    };
    let vocab = model.config().vocab_size;
    let mut model_fn = logits_fn(model);
    let mut reference_fn = reference.as_ref().map(|(r, _)| logits_fn(&r.model));
    let reference_dyn: Option<&mut LogitsFn> = reference_fn.as_mut().map(|f| f as &mut LogitsFn);
    let started = std::time::Instant::now();
    let report = evaluate(
        &ids,
        vocab,
        options,
        &mut model_fn,
        reference_dyn,
        |i, n| {
            eprint!("\rwindow {i}/{n}");
        },
    )?;
    eprintln!();
    let mut json = serde_json::to_value(&report)?;
    json["model"] = serde_json::json!(model_path);
    json["reference"] = serde_json::json!(reference_path);
    json["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
    json["window"] = serde_json::json!(args.window);
    json["stride"] = serde_json::json!(args.stride);
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
