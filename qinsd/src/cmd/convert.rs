//! `qinsd convert SRC [-o OUT]`: convert a model to .qins with a progress bar
//! and print the quality report.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use qinsd::codec::{DEFAULT_CLIP_QUANTILE, EncodeOptions, Granularity};
use qinsd::container::Compression;
use qinsd::convert::{self, ConvertEvent, ConvertOptions, ConvertSummary};

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
    };
    let bar = ProgressBar::new(0);
    let mut on_event = |event: ConvertEvent| show_progress(&bar, event);
    let source = convert::open_source(&args.source, &mut on_event)
        .with_context(|| format!("cannot open '{}'", args.source))?;
    let output = match &args.output {
        Some(path) => path.clone(),
        None => {
            std::fs::create_dir_all(&args.models_dir)
                .with_context(|| format!("cannot create {}", args.models_dir.display()))?;
            args.models_dir.join(format!(
                "{}.qins",
                convert::default_model_name(&args.source)
            ))
        }
    };
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    }
    let summary = convert::convert(
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
        print_report(&summary, args.verbose);
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
        "compression": s.header.compression,
    })
}

fn bits_per_weight(s: &ConvertSummary) -> f64 {
    s.file_bytes as f64 * 8.0 / s.parameters.max(1) as f64
}

fn print_report(s: &ConvertSummary, verbose: bool) {
    let h = &s.header;
    let c = &h.config;
    println!("wrote {}", s.output.display());
    println!(
        "  model        {} ({}, {} layers, hidden {}, vocab {})",
        h.name,
        c.architecture.name(),
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size
    );
    println!(
        "  source       {} {} ({})",
        h.source.kind, h.source.id, h.source.dtype
    );
    println!(
        "  size         {:.1} MB for {:.1}M parameters = {:.2} bits/weight ({:?})",
        s.file_bytes as f64 / 1e6,
        s.parameters as f64 / 1e6,
        bits_per_weight(s),
        h.compression
    );
    println!(
        "  encoding     {:?}, clip {}, prune {}",
        h.encode_options.granularity,
        h.encode_options.clip_quantile,
        h.encode_options
            .prune_below
            .map_or("off".into(), |t| t.to_string())
    );
    println!("  time         {:.1} s", s.elapsed.as_secs_f64());
    let Some(q) = &h.quality else { return };
    let m = &q.model;
    println!("quality (QINS matrices vs source weights)");
    println!("  relative RMS error   {:.4}%", m.rel_rms_err * 100.0);
    println!("  mean relative error  {:.4}%", m.mean_rel_err * 100.0);
    println!("  max relative error   {:.4}", m.max_rel_err);
    println!("  sign preservation    {:.4}%", m.sign_preservation * 100.0);
    println!("  exact zeros          {:.4}%", m.zero_fraction * 100.0);
    println!(
        "  code entropy         {:.3} bits/weight",
        m.code_entropy_bits
    );
    let mut tensors: Vec<_> = q.tensors.iter().collect();
    tensors.sort_by(|a, b| b.error.rel_rms_err.total_cmp(&a.error.rel_rms_err));
    let shown = if verbose {
        tensors.len()
    } else {
        tensors.len().min(5)
    };
    println!(
        "  {} tensors with the largest relative RMS error:",
        if verbose { "all" } else { "the 5" }
    );
    for t in &tensors[..shown] {
        println!(
            "    {:<48} rms {:.4}%  mean {:.4}%  entropy {:.2}",
            t.name,
            t.error.rel_rms_err * 100.0,
            t.error.mean_rel_err * 100.0,
            t.error.code_entropy_bits
        );
    }
}
