//! `qins convert SRC`: asks the daemon to convert a model, with a progress bar.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use qins_proto::v1::{ConvertDone, ConvertOptions, ConvertRequest, QualityReport, convert_event};

use crate::connect;
use crate::format::{bytes, count, generation_defaults};
use crate::sampling::{parse_temperature, parse_top_p};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face directory, GGUF file, or Hub id owner/name[@revision].
    pub source: String,
    /// Output .qins file [default: MODELS_DIR/<name>.qins on the daemon].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Scale granularity.
    #[arg(long, value_enum, default_value = "per-row")]
    pub granularity: Granularity,
    /// Fraction of the smallest magnitudes clipped [default: 0.001].
    #[arg(long)]
    pub clip: Option<f64>,
    /// Store magnitudes below this as exact zeros (lossy).
    #[arg(long)]
    pub prune_below: Option<f32>,
    /// Entropy-code the sections with zstd.
    #[arg(long)]
    pub compress: bool,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Chat default temperature recorded in the file (0 = greedy)
    /// [default: what the model states, else its card's, else 0.7].
    #[arg(long, value_parser = parse_temperature)]
    pub temperature: Option<f32>,
    /// Chat default top-p recorded in the file [default: as for --temperature, else 0.9].
    #[arg(long, value_parser = parse_top_p)]
    pub top_p: Option<f32>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Granularity {
    PerRow,
    PerTensor,
}

pub async fn run(socket: &Path, args: Args) -> Result<()> {
    let request = request(args)?;
    let mut client = connect::client(socket).await?;
    let mut events = client.convert(request).await?.into_inner();
    let bar = ProgressBar::new(0);
    let mut done = None;
    while let Some(event) = events.message().await? {
        match event.event {
            Some(convert_event::Event::Download(d)) => {
                if bar.length() != Some(d.total) {
                    bar.set_style(style("{bar:30} {bytes}/{total_bytes} {wide_msg}"));
                    bar.set_length(d.total);
                }
                bar.set_position(d.bytes);
                bar.set_message(format!("downloading {}", d.file));
            }
            Some(convert_event::Event::Started(s)) => {
                bar.set_style(style("{bar:30} {percent:>3}% {elapsed} {wide_msg}"));
                bar.set_length(s.parameters);
                bar.set_position(0);
                bar.set_message(format!("{} tensors", s.tensors));
            }
            Some(convert_event::Event::Tensor(t)) => {
                bar.set_position(t.parameters_done);
                bar.set_message(format!("[{}/{}] {}", t.index, t.count, t.name));
            }
            Some(convert_event::Event::Done(d)) => done = Some(d),
            None => {}
        }
    }
    bar.finish_and_clear();
    let Some(done) = done else {
        bail!("qinsd ended the conversion without a result");
    };
    crate::output::print(&report(&done))?;
    Ok(())
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants; fall back to the default rather than fail.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The daemon resolves paths from its own working directory, so local paths
/// are made absolute here; anything else (a Hub id) goes as typed.
fn request(args: Args) -> Result<ConvertRequest> {
    let local = Path::new(&args.source);
    let source = if local.exists() {
        std::path::absolute(local)
            .with_context(|| format!("cannot resolve {}", local.display()))?
            .to_string_lossy()
            .into_owned()
    } else {
        args.source
    };
    let output = match args.output {
        Some(o) => std::path::absolute(&o)
            .with_context(|| format!("cannot resolve {}", o.display()))?
            .to_string_lossy()
            .into_owned(),
        None => String::new(),
    };
    Ok(ConvertRequest {
        source,
        output,
        options: Some(ConvertOptions {
            granularity: match args.granularity {
                Granularity::PerRow => "per-row",
                Granularity::PerTensor => "per-tensor",
            }
            .into(),
            clip: args.clip,
            prune_below: args.prune_below,
            compress: args.compress,
            overwrite: args.force,
            temperature: args.temperature,
            top_p: args.top_p,
        }),
    })
}

fn report(d: &ConvertDone) -> String {
    let bits = if d.parameters > 0 {
        d.file_bytes as f64 * 8.0 / d.parameters as f64
    } else {
        0.0
    };
    let mut out = format!(
        "wrote {}\n  {} · {} parameters · {bits:.2} bits/weight · {:.1} s\n",
        d.output,
        bytes(d.file_bytes),
        count(d.parameters),
        d.seconds
    );
    if let Some(q) = &d.quality {
        out.push_str(&quality(q));
    }
    if let Some(g) = &d.defaults {
        out.push_str(&format!(
            "  chat defaults: {}\n    ({})\n",
            generation_defaults(g),
            g.origin
        ));
    }
    out
}

/// What says how faithful the weights are. The raw largest relative error
/// (`max_rel_err`) is left out: it is that of a clipped tiny weight.
fn quality(q: &QualityReport) -> String {
    format!(
        "  quality over {} weights: relative RMS error {:.3}% · largest error in range {:.2}%\n  \
         clipped {:.3}% · exact zeros {:.3}% · signs kept {:.4}% · code entropy {:.2} bits\n",
        count(q.weights),
        q.rel_rms_err * 100.0,
        q.max_rel_err_in_range * 100.0,
        q.clipped_fraction * 100.0,
        q.zero_fraction * 100.0,
        q.sign_preservation * 100.0,
        q.code_entropy_bits
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_proto::v1::GenerationDefaults;

    #[test]
    fn the_report_judges_by_rms_and_clipping_not_the_raw_maximum() {
        let done = ConvertDone {
            output: "/m/smollm2.qins".into(),
            file_bytes: 155_100_000,
            parameters: 134_515_008,
            seconds: 2.8,
            quality: Some(QualityReport {
                weights: 134_000_000,
                mean_rel_err: 0.00705,
                max_rel_err: 303.0,
                rel_rms_err: 0.007566,
                sign_preservation: 1.0,
                zero_fraction: 0.0,
                code_entropy_bits: 7.39,
                max_rel_err_in_range: 0.0195,
                clipped_fraction: 0.0017,
            }),
            defaults: Some(GenerationDefaults {
                temperature: 0.2,
                top_p: 0.9,
                top_k: 40,
                repetition_penalty: 1.0,
                max_tokens: 512,
                origin: "temperature, top_p: model card".into(),
            }),
        };
        let text = report(&done);
        assert!(text.contains("9.22 bits/weight"), "{text}");
        assert!(text.contains("relative RMS error 0.757%"), "{text}");
        assert!(text.contains("largest error in range 1.95%"), "{text}");
        assert!(text.contains("clipped 0.170%"), "{text}");
        assert!(!text.contains("30300"), "no raw maximum: {text}");
        assert!(
            text.contains("chat defaults: temperature 0.2 · top_p 0.9 · top_k 40 · max_tokens 512"),
            "{text}"
        );
        assert!(text.contains("(temperature, top_p: model card)"), "{text}");
    }
}
