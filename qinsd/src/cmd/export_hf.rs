use std::path::PathBuf;

use anyhow::{Context, Result};
use qins_convert::export::export_hf;

#[derive(clap::Args)]
pub struct Args {
    /// The .qins model to export.
    model: PathBuf,
    /// Output directory (created if missing; existing files are overwritten).
    #[arg(long, short)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let summary = export_hf(&args.model, &args.out).with_context(|| {
        format!(
            "cannot export {} to {}",
            args.model.display(),
            args.out.display()
        )
    })?;
    println!(
        "exported {} tensors ({:.1} MB of f32, {} file{}) to {}",
        summary.tensors,
        summary.weight_bytes as f64 / 1e6,
        summary.shards,
        if summary.shards == 1 { "" } else { "s" },
        args.out.display()
    );
    Ok(())
}
