//! `qinsd bench MODEL [--threads 1,2] [--prompt 512] [--decode 128]
//! [--batch 2] [--verify-tokens 2,4,8,16] [--json]`: load time, memory,
//! prefill and decode speed, and what verifying k drafted tokens in one
//! pass costs against a decode step; `--device gpu` measures the GPU
//! instead (qins-gpu's bench).

use std::path::Path;

use anyhow::{Context, Result};
use qins_engine::ResidentModel;
use qinsd::bench::{self, BenchOptions, BenchReport};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Thread counts to measure, comma-separated (one rayon pool each).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Prompt tokens (random ids) in the prefill.
    #[arg(long, default_value_t = 512)]
    pub prompt: usize,
    /// Greedy decode steps after the prompt.
    #[arg(long, default_value_t = 128)]
    pub decode: usize,
    /// Sequences decoding concurrently for the aggregate-throughput figure
    /// (1 skips it); measured at the largest thread count only.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Decode steps per sequence in the concurrency figure.
    #[arg(long, default_value_t = 32)]
    pub batch_decode: usize,
    /// Prompt tokens per sequence in the concurrency figure.
    #[arg(long, default_value_t = 32)]
    pub batch_prompt: usize,
    /// Seed of the random prompt ids.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also time one forward pass of each of these token counts (drafted
    /// tokens checked at once, every token's logits) against one decode
    /// step, comma-separated, e.g. 2,4,8,16; the CPU kernel is the
    /// process's (`QINS_KERNEL` picks another).
    #[arg(long, value_delimiter = ',')]
    pub verify_tokens: Vec<usize>,
    /// Cached tokens the --verify-tokens passes and the decode step run after.
    #[arg(long, default_value_t = 512)]
    pub verify_depth: usize,
    /// Timed repetitions of each --verify-tokens pass (medians reported).
    #[arg(long, default_value_t = 7)]
    pub verify_repetitions: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// cpu: the CPU kernels at each --threads count; gpu: the best GPU
    /// adapter (software ones included), prefill --prompt then --decode steps.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: BenchDevice,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchDevice {
    Cpu,
    Gpu,
}

pub fn run(args: Args) -> Result<()> {
    let path = args.model.resolve()?;
    if args.device == BenchDevice::Gpu {
        return run_gpu(&args, &path);
    }
    let options = options(&args)?;
    let report =
        bench::run(&path, &options).with_context(|| format!("benchmarking {}", path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
        print!("{}", verification_table(&report));
    }
    Ok(())
}

/// The CPU bench's options, checked.
fn options(args: &Args) -> Result<BenchOptions> {
    anyhow::ensure!(
        !args.threads.is_empty() && args.threads.iter().all(|&t| t > 0),
        "--threads needs positive counts, e.g. 1,2"
    );
    anyhow::ensure!(
        args.verify_tokens.iter().all(|&k| k > 0),
        "--verify-tokens needs positive token counts, e.g. 2,4,8,16"
    );
    Ok(BenchOptions {
        threads: args.threads.clone(),
        prompt: args.prompt,
        decode: args.decode,
        batch: args.batch,
        batch_decode: args.batch_decode,
        batch_prompt: args.batch_prompt,
        seed: args.seed,
        verify_tokens: args.verify_tokens.clone(),
        verify_depth: args.verify_depth,
        verify_repetitions: args.verify_repetitions,
    })
}

/// The GPU bench: upload, prefill and greedy decode on the best adapter,
/// the cache in the daemon's precision ([`qins_engine::gpu_cache_type`]).
fn run_gpu(args: &Args, path: &Path) -> Result<()> {
    use qins_gpu::device::{DeviceChoice, open};
    let opened =
        ResidentModel::open(path).with_context(|| format!("cannot load {}", path.display()))?;
    let context = open(DeviceChoice::Gpu)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .context("no GPU adapter")?;
    let kv = qins_engine::gpu_cache_type(&context);
    let report = qins_gpu::bench::bench(
        std::sync::Arc::new(context),
        &opened.model,
        kv,
        args.prompt,
        args.decode,
        args.seed,
    )
    .with_context(|| format!("benchmarking {} on the GPU", path.display()))?;
    if args.json {
        let value = serde_json::json!({
            "model": path,
            "adapter": report.adapter,
            "backend": report.backend,
            "kv": format!("{:?}", report.kv),
            "upload_s": report.upload_s,
            "gpu_bytes": report.gpu_bytes,
            "prompt_tokens": report.prompt_tokens,
            "prefill_tok_s": report.prefill_tok_s,
            "decode_steps": report.decode_steps,
            "decode_tok_s": report.decode_tok_s,
            "weight_bytes_per_token": report.weight_bytes_per_token,
            "effective_gb_s": report.effective_gb_s,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("model         {}", path.display());
        println!("{report}");
    }
    Ok(())
}

/// Bytes in GB, or MB below one GB (small models).
/// "12.34 tok/s (512 tok, 41.50 s, cpu 82.90 s)".
fn throughput(tok_s: f64, tokens: usize, seconds: f64, cpu_seconds: f64) -> String {
    format!("{tok_s:.2} tok/s ({tokens} tok, {seconds:.2} s, cpu {cpu_seconds:.2} s)")
}

fn gb(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.3} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

fn print_table(r: &BenchReport) {
    println!(
        "model {} ({:.2}B parameters, {})",
        r.model.display(),
        r.parameters as f64 / 1e9,
        if r.compressed {
            "zstd-compressed"
        } else {
            "uncompressed"
        }
    );
    println!(
        "page cache: warmed by reading all {} in {:.2} s ({:.2} GB/s) before the first load",
        gb(r.warm_up.file_bytes),
        r.warm_up.read_s,
        r.warm_up.read_gb_s
    );
    if let Some(run) = r.runs.first() {
        println!("kernel {}: {}", run.kernel, r.kernel_reason);
    }
    type Cell = Box<dyn Fn(&bench::RunReport) -> String>;
    let rows: Vec<(&str, Cell)> = vec![
        ("kernel", Box::new(|x| x.kernel.to_string())),
        (
            "load (open+load+model)",
            Box::new(|x| {
                format!(
                    "{:.2} s ({:.2}+{:.2}+{:.2})",
                    x.load_s, x.open_s, x.load_weights_s, x.model_s
                )
            }),
        ),
        (
            "resident codes/signs/other",
            Box::new(|x| {
                format!(
                    "{} / {} / {}",
                    gb(x.memory.codes),
                    gb(x.memory.signs),
                    gb(x.memory.other)
                )
            }),
        ),
        ("kv cache", Box::new(|x| gb(x.memory.kv_cache))),
        (
            "peak RSS (budget)",
            Box::new(|x| {
                let peak = x.memory.peak_rss.map_or("n/a".into(), gb);
                format!("{peak} ({})", gb(x.memory.peak_rss_budget))
            }),
        ),
        (
            "prefill",
            Box::new(|x| {
                throughput(
                    x.prefill_tok_s,
                    x.prefill_tokens,
                    x.prefill_s,
                    x.prefill_cpu_s,
                )
            }),
        ),
        (
            "decode",
            Box::new(|x| throughput(x.decode_tok_s, x.decode_tokens, x.decode_s, x.decode_cpu_s)),
        ),
        (
            "weight bytes/token",
            Box::new(|x| gb(x.weight_bytes_per_token)),
        ),
        (
            "effective bandwidth",
            Box::new(|x| format!("{:.2} GB/s", x.effective_gb_s)),
        ),
        (
            "concurrent decode",
            Box::new(|x| match &x.concurrency {
                Some(c) => format!(
                    "{} seqs {:.2} tok/s vs 1 seq {:.2} = {:.2}x ({:.2} steps/pass)",
                    c.sequences, c.aggregate_tok_s, c.single_tok_s, c.speedup, c.steps_per_pass
                ),
                None => "-".into(),
            }),
        ),
    ];
    let mut rows: Vec<(String, Cell)> = rows
        .into_iter()
        .map(|(label, cell)| (label.to_string(), cell))
        .collect();
    let stages = r.runs.first().and_then(|x| x.decode_profile_ms.clone());
    for (i, (stage, _)) in stages.unwrap_or_default().into_iter().enumerate() {
        rows.push((
            format!("  decode {stage} ms/tok"),
            Box::new(move |x| {
                x.decode_profile_ms
                    .as_ref()
                    .and_then(|p| p.get(i))
                    .map_or("-".into(), |(_, ms)| format!("{ms:.2}"))
            }),
        ));
    }
    print!("{:<28}", "threads");
    for run in &r.runs {
        print!(" | {:<44}", run.threads);
    }
    println!();
    for (label, cell) in &rows {
        print!("{label:<28}");
        for run in &r.runs {
            print!(" | {:<44}", cell(run));
        }
        println!();
    }
}

/// The --verify-tokens figures of every run, one row per pass: k, the
/// median milliseconds and c(k), the cost in decode steps; empty when
/// none were measured.
fn verification_table(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for run in &r.runs {
        let Some(v) = &run.verification else {
            continue;
        };
        let _ = writeln!(
            out,
            "\nverification, kernel {}, {} threads, depth {} (median of {}): decode step {:.3} ms",
            run.kernel, run.threads, v.depth, v.repetitions, v.decode_step_ms
        );
        let _ = writeln!(out, "{:>4} | {:>10} | {:>6}", "k", "ms/pass", "c(k)");
        for pass in &v.passes {
            let _ = writeln!(
                out,
                "{:>4} | {:>10.3} | {:>6.2}",
                pass.tokens, pass.ms, pass.relative
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use qins_test_support::phi35::{Phi35Spec, write_phi35};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: Args,
    }

    fn parse(args: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .expect("arguments parse")
            .bench
    }

    #[test]
    fn verify_tokens_parse_as_a_list_and_default_to_none() {
        let plain = parse(&["m.qins"]);
        assert!(plain.verify_tokens.is_empty());
        assert_eq!((plain.verify_depth, plain.verify_repetitions), (512, 7));
        let asked = parse(&[
            "m.qins",
            "--verify-tokens",
            "2,4,8,16",
            "--verify-depth",
            "64",
        ]);
        assert_eq!(asked.verify_tokens, [2, 4, 8, 16]);
        assert_eq!(asked.verify_depth, 64);
        assert!(Cli::try_parse_from(["bench", "m.qins", "--verify-tokens", "2,x"]).is_err());
        let zero = parse(&["m.qins", "--verify-tokens", "0,2"]);
        assert!(options(&zero).is_err(), "a pass of no tokens");
    }

    #[test]
    fn verify_tokens_print_one_row_per_pass_with_its_cost_in_decode_steps() {
        let dir = std::env::temp_dir().join(format!("qinsd-bench-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("small.qins");
        write_phi35(&path, &Phi35Spec::scaled(2, 64, 4, 96, 2, 384)).expect("model");
        let args = parse(&[
            path.to_str().expect("utf-8"),
            "--threads",
            "1",
            "--prompt",
            "2",
            "--decode",
            "1",
            "--verify-tokens",
            "2,8",
            "--verify-depth",
            "16",
            "--verify-repetitions",
            "2",
        ]);
        let options = options(&args).expect("valid options");
        let report = bench::run(&path, &options).expect("bench runs");
        let table = verification_table(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].contains("1 threads, depth 16 (median of 2)"),
            "{table}"
        );
        let ks: Vec<&str> = lines[3..]
            .iter()
            .map(|l| l.split('|').next().unwrap_or_default().trim())
            .collect();
        assert_eq!(ks, ["2", "8"], "{table}");
        let v = report.runs[0].verification.as_ref().expect("measured");
        assert!(
            lines[3].contains(&format!("{:.2}", v.passes[0].relative)),
            "{table}"
        );
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
