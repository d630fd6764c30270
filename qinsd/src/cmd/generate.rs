//! `qinsd generate MODEL "prompt"`: one chat turn without the daemon,
//! streamed to stdout, through the same engine the daemon uses, with the
//! same defaults: what the file recorded at conversion, unless
//! `--temperature` or `--top-p` says otherwise.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use qins_engine::{
    self, ChatMessage, Device, GenerationEvent, LookupMode, RequestOptions, Session,
};
use qinsd::model_store;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// The user prompt (or give --prompt-file).
    #[arg(
        required_unless_present = "prompt_file",
        conflicts_with = "prompt_file"
    )]
    pub prompt: Option<String>,
    /// Read the user prompt from this file instead.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy [default: the model's].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass, in (0, 1] [default: the model's].
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 2048)]
    pub context: usize,
    /// Compute device (as `qinsd --device`; the CPU unless asked).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: super::serve::DeviceChoice,
    /// Kernel threads, as `qinsd --threads` [default: all cores].
    #[arg(long, env = "QINS_THREADS")]
    pub threads: Option<usize>,
    /// Lookup decoding: on verifies drafts when that pays, off decodes
    /// one token at a time, always verifies every draft found (to measure
    /// verification itself).
    #[arg(long, value_enum, default_value = "on")]
    pub lookup: Lookup,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    On,
    Off,
    Always,
}

impl Lookup {
    fn mode(self) -> LookupMode {
        match self {
            Lookup::On => LookupMode::Auto,
            Lookup::Off => LookupMode::Off,
            Lookup::Always => LookupMode::Always,
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (_, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the prompt from {}", path.display()))?,
        (Some(prompt), None) => prompt.clone(),
        (None, None) => anyhow::bail!("give a prompt or --prompt-file"),
    };
    super::serve::start_kernel_threads(args.threads)?;
    let started = Instant::now();
    let device = Device::open(args.device.into()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, chat) = model_store::open_or_convert(
        &args.model.models_dir,
        &args.model.model,
        &device,
        &mut model_store::log_progress,
    )?;
    let loaded = started.elapsed();
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", &prompt));
    let options = RequestOptions {
        temperature: args.temperature,
        top_p: args.top_p,
        max_tokens: Some(args.max_tokens),
        seed: args.seed,
        ..RequestOptions::default()
    };
    let mut request = chat.request(&messages, &options)?;
    request.lookup = args.lookup.mode();
    let mut session = Session::new(chat.model(), args.context);
    let cancel = AtomicBool::new(false);
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    let finished = qins_engine::generate(
        chat.model(),
        &mut session,
        chat.tokenizer(),
        &request,
        &cancel,
        |event| {
            if let GenerationEvent::Delta(text) = event
                && let Err(e) = write!(out, "{text}").and_then(|()| out.flush())
            {
                write_error.get_or_insert(e);
            }
        },
    )?;
    if let Some(e) = write_error {
        return Err(e).context("writing to stdout");
    }
    writeln!(out)?;
    eprintln!(
        "[{}, load {:.2} s, prompt {} tokens, first token after {:.2} s, {} tokens at {:.1} tok/s, finish: {:?}, lookup: drafted {} accepted {}]",
        chat.model().kind(),
        loaded.as_secs_f64(),
        finished.usage.prompt_tokens,
        finished.timings.time_to_first_token.as_secs_f64(),
        finished.usage.completion_tokens,
        finished.timings.tokens_per_second,
        finished.reason,
        finished.timings.draft_tokens,
        finished.timings.accepted_draft_tokens,
    );
    Ok(())
}
