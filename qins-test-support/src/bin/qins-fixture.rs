//! `qins-fixture tiny --arch phi3|llama --out DIR`: writes a deterministic
//! tiny random-weight model in Hugging Face layout (tests, golden files).
//! `qins-fixture phi35 --out FILE`: a random-weight Phi-3.5-mini-shaped
//! .qins written directly in QINS form (benchmarks).
//!
//! A test tool, not part of the product: it ships in the unpublished
//! `qins-test-support` crate.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use qins_core::container::Compression;
use qins_core::model::Architecture;
use qins_test_support::phi35::{self, Phi35Spec, write_phi35};
use qins_test_support::tiny::{DEFAULT_SEED, TinyDtype, TinySpec, write_tiny_model};

/// Deterministic random-weight models for tests and benchmarks.
#[derive(clap::Parser)]
#[command(name = "qins-fixture", version)]
struct Args {
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
    /// A random-weight model with Phi-3.5-mini's shapes, as .qins (~4.3 GB).
    Phi35 {
        /// Output .qins file.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = phi35::DEFAULT_SEED)]
        seed: u64,
        /// zstd-code the codes and signs (measures compressed load time).
        #[arg(long)]
        compress: bool,
    },
}

fn parse_arch(s: &str) -> Result<Architecture, String> {
    Architecture::from_name(s).map_err(|e| e.to_string())
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let (arch, seed, sharded, dtype, out) = match args.kind {
        Kind::Tiny {
            arch,
            seed,
            sharded,
            dtype,
            out,
        } => (arch, seed, sharded, dtype, out),
        Kind::Phi35 {
            out,
            seed,
            compress,
        } => return run_phi35(out, seed, compress),
    };
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

fn run_phi35(out: PathBuf, seed: u64, compress: bool) -> Result<()> {
    let compression = if compress {
        Compression::Zstd
    } else {
        Compression::None
    };
    let started = Instant::now();
    let report = write_phi35(&out, &Phi35Spec::full(seed, compression))
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({} tensors, {:.2} GB) in {:.1} s",
        report.path.display(),
        report.tensors,
        report.file_bytes as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
