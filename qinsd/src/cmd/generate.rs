//! `qinsd generate MODEL.qins "prompt"`: one chat turn without the daemon,
//! greedy, streamed to stdout. The prompt is rendered with the model's own
//! chat template.

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, anyhow};
use qinsd::container::QinsFile;
use qinsd::model::Model;

#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    pub prompt: String,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 2048)]
    pub context: usize,
}

pub fn run(args: Args) -> Result<()> {
    let started = std::time::Instant::now();
    let file = QinsFile::open(&args.model)?;
    let header = file.header.clone();
    let tokenizer = tokenizers::Tokenizer::from_str(&header.tokenizer_json)
        .map_err(|e| anyhow!("tokenizer: {e}"))?;
    let model = Model::load(&header.config, file.load()?).context("loading the model")?;
    let loaded = started.elapsed();
    let template = header
        .chat_template
        .as_deref()
        .context("the model has no chat template")?;
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.add_template("chat", template)?;
    let prompt = env.get_template("chat")?.render(minijinja::context! {
        messages => vec![minijinja::context! { role => "user", content => args.prompt }],
        add_generation_prompt => true,
        bos_token => "", eos_token => "",
    })?;
    let ids = tokenizer
        .encode(prompt, true)
        .map_err(|e| anyhow!("tokenizing: {e}"))?
        .get_ids()
        .to_vec();
    let mut stop: Vec<u32> = header.config.eos_token_ids.clone();
    stop.extend(
        header
            .extra_stop_tokens
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t)),
    );
    let mut cache = model.new_cache(args.context);
    let cancel = AtomicBool::new(false);
    let prefill = std::time::Instant::now();
    let mut logits = model.forward(&ids, &mut cache, &cancel)?;
    let prefill_time = prefill.elapsed();
    let (mut reply, mut printed) = (Vec::new(), 0);
    let decode = std::time::Instant::now();
    let mut out = std::io::stdout().lock();
    while reply.len() < args.max_tokens && cache.len() < args.context {
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32);
        if stop.contains(&next) {
            break;
        }
        reply.push(next);
        // Print whole characters only: hold back an incomplete UTF-8 tail.
        let text = tokenizer
            .decode(&reply, true)
            .map_err(|e| anyhow!("decoding: {e}"))?;
        if !text.ends_with('\u{FFFD}') && text.len() > printed {
            write!(out, "{}", &text[printed..])?;
            out.flush()?;
            printed = text.len();
        }
        logits = model.forward(&[next], &mut cache, &cancel)?;
    }
    writeln!(out)?;
    eprintln!(
        "[load {:.2} s, prompt {} tokens in {:.2} s, {} tokens at {:.1} tok/s]",
        loaded.as_secs_f64(),
        ids.len(),
        prefill_time.as_secs_f64(),
        reply.len(),
        reply.len() as f64 / decode.elapsed().as_secs_f64().max(1e-9)
    );
    Ok(())
}
