//! `qins convert SRC`: asks the daemon to convert a model, with a progress bar.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use qins_proto::v1::{ConvertDone, ConvertOptions, ConvertRequest, convert_event};

use crate::connect;
use crate::format::{bytes, count};

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
    print!("{}", report(&done));
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
        out.push_str(&format!(
            "  quality over {} weights: relative error mean {:.3}% · max {:.3}% · rms {:.3}%\n  \
             signs kept {:.4}% · zeros {:.3}% · code entropy {:.2} bits\n",
            count(q.weights),
            q.mean_rel_err * 100.0,
            q.max_rel_err * 100.0,
            q.rel_rms_err * 100.0,
            q.sign_preservation * 100.0,
            q.zero_fraction * 100.0,
            q.code_entropy_bits
        ));
    }
    out
}
