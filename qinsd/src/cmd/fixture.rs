//! `qinsd fixture tiny --arch phi3|llama --out DIR`: writes a deterministic
//! tiny random-weight model in Hugging Face layout (tests, golden files).

use std::path::PathBuf;

use anyhow::{Context, Result};
use qinsd::fixtures::tiny::{DEFAULT_SEED, TinyDtype, TinySpec, write_tiny_model};
use qinsd::model::Architecture;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(clap::Subcommand)]
enum Kind {
    /// A tiny phi3 or llama model.
    Tiny {
        /// phi3 or llama.
        #[arg(long, value_parser = parse_arch)]
        arch: Architecture,
        #[arg(long, default_value_t = DEFAULT_SEED)]
        seed: u64,
        /// Split the weights over two safetensors files with an index.
        #[arg(long)]
        sharded: bool,
        /// f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: TinyDtype,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_arch(s: &str) -> Result<Architecture, String> {
    Architecture::from_name(s).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> Result<()> {
    let Kind::Tiny {
        arch,
        seed,
        sharded,
        dtype,
        out,
    } = args.kind;
    let spec = TinySpec {
        arch,
        seed,
        sharded,
        dtype,
    };
    write_tiny_model(&out, &spec).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote tiny {} model to {}", arch.name(), out.display());
    Ok(())
}
