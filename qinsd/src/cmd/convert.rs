//! `qinsd convert SRC [-o OUT]`: convert a model to .qins with a progress bar
//! and print the quality report. The output is claimed by the model store's
//! one rule, as for the Convert RPC ([`claim_output`]): `--force` replaces
//! an existing file, never one a running qinsd has loaded.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use qins_convert::{ConvertEvent, ConvertOptions, ConvertSummary, SamplingHints};
use qins_core::codec::{DEFAULT_CLIP_QUANTILE, EncodeOptions, Granularity};
use qins_core::container::{Compression, QualityReport};
use qinsd::model_store::output::claim_output;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model directory, GGUF file, or Hub id (owner/name[@revision]).
    pub source: String,
    /// Output file (default: MODELS_DIR/<name>.qins).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Where converted models go when no output is given.
    #[arg(long, env = "QINS_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Range granularity: per-row (default) or per-tensor.
    #[arg(long, default_value = "per-row")]
    pub granularity: Granularity,
    /// Fraction of the smallest magnitudes of each range clipped up to its minimum.
    #[arg(long, default_value_t = DEFAULT_CLIP_QUANTILE)]
    pub clip: f64,
    /// Lossy: store magnitudes below this threshold as exact zeros.
    #[arg(long)]
    pub prune_below: Option<f32>,
    /// Entropy-code the code and sign sections with zstd (smaller file, decoded at load).
    #[arg(long)]
    pub compress: bool,
    /// Keep matrices in f32 (a float reference for `qinsd perplexity --reference`).
    #[arg(long)]
    pub reference_f32: bool,
    /// Chat default temperature recorded in the file (0 = greedy)
    /// [default: the source's generation_config.json or GGUF sampling keys,
    /// else its model card's recommendation, else 0.7].
    #[arg(long, value_parser = parse_temperature)]
    pub temperature: Option<f32>,
    /// Chat default top-p recorded in the file, in (0, 1] [default: as for
    /// --temperature, else 0.9].
    #[arg(long, value_parser = parse_top_p)]
    pub top_p: Option<f32>,
    /// Replace the output file if it exists (never a model a running qinsd
    /// has loaded: `qins unload` it first).
    #[arg(long)]
    pub force: bool,
    /// Model name recorded in the file (default: the output file stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Print the per-tensor quality lines too.
    #[arg(long)]
    pub verbose: bool,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let options = ConvertOptions {
        encode: EncodeOptions {
            granularity: args.granularity,
            clip_quantile: args.clip,
            prune_below: args.prune_below,
        },
        compression: if args.compress {
            Compression::Zstd
        } else {
            Compression::None
        },
        name: args.name.clone(),
        reference_f32: args.reference_f32,
        defaults: SamplingHints {
            temperature: args.temperature,
            top_p: args.top_p,
            ..SamplingHints::default()
        },
    };
    let output = match &args.output {
        Some(path) => path.clone(),
        None => qins_convert::default_output_path(&args.source, &args.models_dir),
    };
    // Claimed before downloading or reading anything; held to the end.
    let _claim = claim_output(&output, args.force)?;
    let bar = ProgressBar::new(0);
    let mut on_event = |event: ConvertEvent| show_progress(&bar, event);
    let source = qins_convert::open_source(&args.source, &mut on_event)
        .with_context(|| format!("cannot open '{}'", args.source))?;
    let summary = qins_convert::convert(
        source.as_ref(),
        &output,
        &options,
        &mut on_event,
        &AtomicBool::new(false),
    )
    .with_context(|| format!("converting '{}' to {}", args.source, output.display()))?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary_json(&summary))?);
    } else {
        print!("{}", report(&summary, args.verbose));
    }
    Ok(())
}

fn show_progress(bar: &ProgressBar, event: ConvertEvent) {
    match event {
        ConvertEvent::Download { file, bytes, total } => {
            if bar.length() != Some(total) {
                bar.set_style(style(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
                ));
                bar.set_length(total);
            }
            bar.set_message(format!("downloading {file}"));
            bar.set_position(bytes);
        }
        ConvertEvent::Started { parameters, .. } => {
            bar.set_style(style(
                "{msg:40!} [{bar:40}] {percent:>3}% {elapsed}/{duration}",
            ));
            bar.set_length(parameters);
            bar.set_position(0);
        }
        ConvertEvent::Tensor {
            index,
            count,
            name,
            parameters_done,
            ..
        } => {
            bar.set_message(format!("{index}/{count} {name}"));
            bar.set_position(parameters_done);
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn summary_json(s: &ConvertSummary) -> serde_json::Value {
    serde_json::json!({
        "output": s.output,
        "file_bytes": s.file_bytes,
        "parameters": s.parameters,
        "bits_per_weight": bits_per_weight(s),
        "seconds": s.elapsed.as_secs_f64(),
        "quality": s.header.quality,
        "encode_options": s.header.encode_options,
        "generation_defaults": s.header.generation,
        "compression": s.header.compression,
    })
}

fn bits_per_weight(s: &ConvertSummary) -> f64 {
    s.file_bytes as f64 * 8.0 / s.parameters.max(1) as f64
}

/// Parses a temperature the way `qins` does: finite and >= 0.
fn parse_temperature(value: &str) -> Result<f32, String> {
    let t = parse_finite(value)?;
    if t < 0.0 {
        return Err(format!("must be >= 0 (0 = greedy), not {value}"));
    }
    Ok(t)
}

fn parse_top_p(value: &str) -> Result<f32, String> {
    let p = parse_finite(value)?;
    if !(p > 0.0 && p <= 1.0) {
        return Err(format!("must be in (0, 1], not {value}"));
    }
    Ok(p)
}

fn parse_finite(value: &str) -> Result<f32, String> {
    match value.trim().parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("'{value}' is not a finite number")),
    }
}

/// The report printed after a conversion: what was written, the chat
/// defaults recorded, and the figures that say how faithful the weights are.
fn report(s: &ConvertSummary, verbose: bool) -> String {
    let mut out = summary_lines(s);
    if let Some(q) = &s.header.quality {
        out.push_str(&quality_lines(q, verbose));
    }
    out
}

fn summary_lines(s: &ConvertSummary) -> String {
    let h = &s.header;
    let c = &h.config;
    let e = &h.encode_options;
    let g = &h.generation;
    let prune = e.prune_below.map_or("off".into(), |t| format!("below {t}"));
    [
        format!("wrote {}", s.output.display()),
        format!(
            "  model          {} ({}, {} layers, hidden {}, vocab {})",
            h.name,
            c.architecture.name(),
            c.num_hidden_layers,
            c.hidden_size,
            c.vocab_size
        ),
        format!(
            "  source         {} {} ({})",
            h.source.kind, h.source.id, h.source.dtype
        ),
        format!(
            "  size           {:.1} MB for {:.1}M parameters = {:.2} bits/weight ({})",
            s.file_bytes as f64 / 1e6,
            s.parameters as f64 / 1e6,
            bits_per_weight(s),
            h.compression
        ),
        format!(
            "  encoding       {} ranges, clip {}, prune {prune}",
            e.granularity, e.clip_quantile
        ),
        format!(
            "  chat defaults  temperature {}, top_p {}, top_k {}, repetition_penalty {}, max_tokens {}",
            g.temperature, g.top_p, g.top_k, g.repetition_penalty, g.max_tokens
        ),
        format!("                 ({})", g.origin),
        format!("  time           {:.1} s", s.elapsed.as_secs_f64()),
    ]
    .iter()
    .map(|line| format!("{line}\n"))
    .collect()
}

/// The whole-model figures, then the tensors with the largest error. The raw
/// largest relative error is left out: it is that of a clipped tiny weight
/// (see `ErrorSummary::max_rel_err`), stored in the file and in --json.
fn quality_lines(q: &QualityReport, verbose: bool) -> String {
    let m = &q.model;
    let mut lines = vec![
        "quality (QINS matrices vs the source weights)".to_string(),
        format!(
            "  relative RMS error      {:.4}%  ||w - w'|| / ||w||, the figure to judge by",
            m.rel_rms_err * 100.0
        ),
        format!(
            "  largest error in range  {:.4}%  a weight inside its range: half a code step",
            m.max_rel_err_in_range * 100.0
        ),
        format!(
            "  clipped                 {:.4}%  of weights: below their range, stored at its minimum",
            m.clipped_fraction * 100.0
        ),
        format!(
            "  exact zeros             {:.4}%  of weights: true zeros and pruned ones",
            m.zero_fraction * 100.0
        ),
        format!(
            "  signs kept              {:.4}%",
            m.sign_preservation * 100.0
        ),
        format!(
            "  code entropy            {:.3} bits/weight",
            m.code_entropy_bits
        ),
    ];
    let mut tensors: Vec<_> = q.tensors.iter().collect();
    tensors.sort_by(|a, b| b.error.rel_rms_err.total_cmp(&a.error.rel_rms_err));
    let shown = if verbose {
        tensors.len()
    } else {
        tensors.len().min(5)
    };
    lines.push(format!(
        "  {} tensors with the largest relative RMS error:",
        if verbose { "all" } else { "the 5" }
    ));
    for t in &tensors[..shown] {
        lines.push(format!(
            "    {:<48} rms {:.4}%  clipped {:.4}%  entropy {:.2}",
            t.name,
            t.error.rel_rms_err * 100.0,
            t.error.clipped_fraction * 100.0,
            t.error.code_entropy_bits
        ));
    }
    lines.iter().map(|line| format!("{line}\n")).collect()
}
