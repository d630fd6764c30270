//! `qinsd bench`: load time, memory, prefill and decode speed of a .qins
//! model, per thread count, with the weight traffic that bounds decode.
//!
//! Decode of one token reads every weight matrix once (codes and sign bits;
//! the embedding is a single-row lookup), so `bytes/token x tokens/s` is the
//! memory bandwidth the decode loop sustains; comparing it with the machine's
//! read bandwidth says how far the kernels are from the memory bound.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use qins_core::container::Compression;
use qins_core::kernels::{dispatch, selected_kernel};
use qins_core::model::{Decoder, KvCache, Model, ModelError, SequenceCache, argmax, profile};
use qins_core::rng::SplitMix64;
use qins_core::weights::ResidentBytes;
use qins_engine::{OpenError, ResidentModel};

#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build a pool of {threads} threads: {message}")]
    Pool { threads: usize, message: String },
    #[error("a benchmark thread panicked")]
    Panicked,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub threads: Vec<usize>,
    /// Prompt tokens (random ids) run as one prefill.
    pub prompt: usize,
    /// Greedy decode steps after the prompt.
    pub decode: usize,
    /// Concurrent sequences for the aggregate-throughput figure (1: skip).
    pub batch: usize,
    /// Decode steps of each sequence in the concurrency figure.
    pub batch_decode: usize,
    /// Prompt tokens of each sequence in the concurrency figure.
    pub batch_prompt: usize,
    pub seed: u64,
    /// Verification passes to time against one decode step (tokens per
    /// pass, e.g. 2, 4, 8, 16; empty: skip), each after `verify_depth`
    /// cached tokens.
    pub verify_tokens: Vec<usize>,
    /// Cached tokens the decode step and the passes run after.
    pub verify_depth: usize,
    /// Timed repetitions of each; the medians are reported.
    pub verify_repetitions: usize,
}

/// The page cache state loads were measured in.
#[derive(Clone, Debug, Serialize)]
pub struct WarmUp {
    pub file_bytes: u64,
    /// A full sequential read of the file before the first load, so every
    /// load below is from the page cache.
    pub read_s: f64,
    pub read_gb_s: f64,
}

/// Memory of one run, bytes.
#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub codes: u64,
    pub signs: u64,
    /// Ranges and f32 tensors.
    pub other: u64,
    pub resident: u64,
    pub kv_cache: u64,
    /// VmHWM after the run (reset before it); mapped file pages count.
    pub peak_rss: Option<u64>,
    /// resident + kv_cache + 300 MB: the target peak.
    pub peak_rss_budget: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Concurrency {
    pub sequences: usize,
    pub prompt_tokens: usize,
    pub decode_steps: usize,
    /// One sequence alone, same prompt length and steps.
    pub single_tok_s: f64,
    /// All sequences decoding at once (each its own thread and KvCache,
    /// their steps batched by the model): total tokens / wall time.
    pub aggregate_tok_s: f64,
    pub speedup: f64,
    /// Decode steps per forward pass while they ran together (1 = no
    /// batching, `sequences` = every pass served all of them).
    pub steps_per_pass: f64,
}

/// Everything measured at one thread count.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub threads: usize,
    pub kernel: &'static str,
    pub open_s: f64,
    pub load_weights_s: f64,
    pub model_s: f64,
    /// open + load + Model::load.
    pub load_s: f64,
    pub memory: Memory,
    pub prefill_tokens: usize,
    pub prefill_s: f64,
    /// CPU seconds of the whole process during the prefill: on a shared
    /// machine, wall time far above cpu_s / threads means the run was
    /// starved by other processes.
    pub prefill_cpu_s: f64,
    pub prefill_tok_s: f64,
    pub decode_tokens: usize,
    pub decode_s: f64,
    pub decode_cpu_s: f64,
    pub decode_tok_s: f64,
    /// Codes + signs of every matrix one decode step reads (not the embedding).
    pub weight_bytes_per_token: u64,
    /// weight_bytes_per_token x decode_tok_s.
    pub effective_gb_s: f64,
    pub concurrency: Option<Concurrency>,
    /// Milliseconds per decoded token by stage (with `QINS_PROFILE=1`).
    pub decode_profile_ms: Option<Vec<(String, f64)>>,
    /// The cost of verifying drafted tokens (with `verify_tokens`).
    pub verification: Option<Verification>,
}

/// What checking `k` drafted tokens in one forward pass costs against one
/// decode step, at the same cache depth: the price side of speculative
/// decoding (a pass of cost `c(k)` steps pays when it yields more than
/// `c(k)` tokens on average).
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    /// Cached tokens every step and pass ran after.
    pub depth: usize,
    pub repetitions: usize,
    /// Median of one [`Decoder::decode_step`], milliseconds.
    pub decode_step_ms: f64,
    pub passes: Vec<VerificationPass>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerificationPass {
    /// Tokens appended in the pass, each with its logits
    /// ([`Decoder::forward_all`]).
    pub tokens: usize,
    /// Median milliseconds per pass.
    pub ms: f64,
    /// `ms / decode_step_ms`: c(k).
    pub relative: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: PathBuf,
    pub compressed: bool,
    pub parameters: u64,
    pub warm_up: WarmUp,
    /// Why the runs' kernel was chosen (see [`dispatch::kernel_choice`]).
    pub kernel_reason: String,
    pub runs: Vec<RunReport>,
}

/// Peak resident set size of this process (VmHWM), Linux only.
pub fn peak_rss() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Resets the peak resident set size to the current one (Linux >= 4.0);
/// false where that is not possible.
pub fn reset_peak_rss() -> bool {
    // Hand the previous run's freed heap back first (glibc keeps it), so a
    // run's peak is its own, as in a daemon that loads one model.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers, for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Reads the whole file once so later loads find it in the page cache.
pub fn warm_page_cache(path: &Path) -> Result<WarmUp, BenchError> {
    let io = |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let started = Instant::now();
    let mut file = File::open(path).map_err(io)?;
    let mut buffer = vec![0u8; 8 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let read_s = started.elapsed().as_secs_f64();
    Ok(WarmUp {
        file_bytes: total,
        read_s,
        read_gb_s: total as f64 / read_s.max(1e-9) / 1e9,
    })
}

/// Runs the whole benchmark: a page-cache warm-up, then one run per thread
/// count, each in its own rayon pool and with a freshly loaded model.
pub fn run(path: &Path, options: &BenchOptions) -> Result<BenchReport, BenchError> {
    // The concurrency measurement runs on the global pool: give it the
    // largest thread count (a no-op if something already built it).
    if let Some(&most) = options.threads.iter().max() {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(most)
            .build_global();
    }
    let warm_up = warm_page_cache(path)?;
    let mut runs = Vec::new();
    let mut parameters = 0;
    let mut compressed = false;
    for &threads in &options.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| BenchError::Pool {
                threads,
                message: e.to_string(),
            })?;
        let (mut report, model, params, zstd) = pool.install(|| {
            let (mut report, model, params, zstd) = run_one(path, options, threads)?;
            report.verification = verification(&model, options)?;
            Ok::<_, BenchError>((report, model, params, zstd))
        })?;
        if options.batch > 1 {
            report.concurrency = concurrency(&model, options, threads)?;
            report.memory.peak_rss = peak_rss();
        }
        drop(model);
        parameters = params;
        compressed = zstd;
        runs.push(report);
    }
    Ok(BenchReport {
        model: path.to_path_buf(),
        compressed,
        parameters,
        warm_up,
        kernel_reason: dispatch::kernel_choice().reason.clone(),
        runs,
    })
}

fn run_one(
    path: &Path,
    options: &BenchOptions,
    threads: usize,
) -> Result<(RunReport, Model, u64, bool), BenchError> {
    reset_peak_rss();
    let opened = ResidentModel::open(path)?;
    let (timings, resident) = (opened.timings, opened.resident);
    let compressed = opened.header.compression != Compression::None;
    let model = opened.model;
    let bytes_per_token = model.decode_weight_bytes();

    let vocab = model.config().vocab_size as u64;
    let mut rng = SplitMix64::new(options.seed);
    let prompt: Vec<u32> = (0..options.prompt.max(1))
        .map(|_| (rng.next_u64() % vocab) as u32)
        .collect();
    let mut cache = model.new_cache(prompt.len() + options.decode + 1);
    let cancel = AtomicBool::new(false);
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let logits = model.forward(&prompt, &mut cache, &cancel)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let prefill_cpu_s = cpu_seconds() - cpu;
    profile::reset();
    let (t, cpu) = (Instant::now(), cpu_seconds());
    decode(&model, &mut cache, logits, options.decode, &cancel)?;
    let decode_s = t.elapsed().as_secs_f64();
    let decode_cpu_s = cpu_seconds() - cpu;
    let per_token_ms = 1e3 / options.decode.max(1) as f64;
    let decode_profile_ms = profile::enabled().then(|| {
        profile::snapshot()
            .into_iter()
            .map(|(stage, s)| (stage.to_string(), s * per_token_ms))
            .collect()
    });
    let decode_tok_s = options.decode as f64 / decode_s.max(1e-9);
    let kv_cache = cache.bytes() as u64;
    drop(cache);

    let memory = memory(resident, kv_cache);
    let parameters = resident.parameters;
    Ok((
        RunReport {
            threads,
            kernel: selected_kernel().name(),
            open_s: timings.open.as_secs_f64(),
            load_weights_s: timings.weights.as_secs_f64(),
            model_s: timings.model.as_secs_f64(),
            load_s: timings.total().as_secs_f64(),
            memory,
            prefill_tokens: prompt.len(),
            prefill_s,
            prefill_cpu_s,
            prefill_tok_s: prompt.len() as f64 / prefill_s.max(1e-9),
            decode_tokens: options.decode,
            decode_s,
            decode_cpu_s,
            decode_tok_s,
            weight_bytes_per_token: bytes_per_token,
            effective_gb_s: bytes_per_token as f64 * decode_tok_s / 1e9,
            concurrency: None,
            decode_profile_ms,
            verification: None,
        },
        model,
        parameters,
        compressed,
    ))
}

fn memory(resident: ResidentBytes, kv_cache: u64) -> Memory {
    Memory {
        codes: resident.codes,
        signs: resident.signs,
        other: resident.other,
        resident: resident.total(),
        kv_cache,
        peak_rss: peak_rss(),
        peak_rss_budget: resident.total() + kv_cache + 300_000_000,
    }
}

/// `steps` greedy decode steps starting from the logits of the prompt.
fn decode(
    model: &Model,
    cache: &mut KvCache,
    mut logits: Vec<f32>,
    steps: usize,
    cancel: &AtomicBool,
) -> Result<(), ModelError> {
    for _ in 0..steps {
        let next = argmax(&logits) as u32;
        logits = model.decode_step(next, cache, cancel)?;
    }
    Ok(())
}

/// Times one decode step and one [`Decoder::forward_all`] pass of each
/// `options.verify_tokens` count, all after the same `verify_depth` cached
/// (random) tokens: each pass appends its tokens and the cache is cut back
/// to the depth after it, as a rejected draft is. The step and the passes
/// alternate within each repetition, so a slow spell of a shared machine
/// falls on all of them; a first, untimed repetition warms them up.
fn verification(model: &Model, options: &BenchOptions) -> Result<Option<Verification>, BenchError> {
    let Some(&most) = options.verify_tokens.iter().max() else {
        return Ok(None);
    };
    let depth = options.verify_depth.max(1);
    let repetitions = options.verify_repetitions.max(1);
    let vocab = model.config().vocab_size as u64;
    let mut rng = SplitMix64::new(options.seed ^ 0x7e51f1);
    let mut random_tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect() };
    let cancel = AtomicBool::new(false);
    let mut cache = model.new_cache(depth + most.max(1));
    model.forward(&random_tokens(depth), &mut cache, &cancel)?;
    let mut step_ms = Vec::with_capacity(repetitions);
    let mut pass_ms = vec![Vec::with_capacity(repetitions); options.verify_tokens.len()];
    for repetition in 0..=repetitions {
        let token = random_tokens(1)[0];
        let t = Instant::now();
        model.decode_step(token, &mut cache, &cancel)?;
        let step = t.elapsed().as_secs_f64() * 1e3;
        cache.truncate(depth);
        let mut passes = Vec::with_capacity(options.verify_tokens.len());
        for &k in &options.verify_tokens {
            let tokens = random_tokens(k.max(1));
            let t = Instant::now();
            model.forward_all(&tokens, &mut cache, &cancel)?;
            passes.push(t.elapsed().as_secs_f64() * 1e3);
            cache.truncate(depth);
        }
        if repetition > 0 {
            step_ms.push(step);
            for (times, ms) in pass_ms.iter_mut().zip(passes) {
                times.push(ms);
            }
        }
    }
    let decode_step_ms = median(&mut step_ms);
    let passes = options
        .verify_tokens
        .iter()
        .zip(&mut pass_ms)
        .map(|(&tokens, times)| {
            let ms = median(times);
            VerificationPass {
                tokens: tokens.max(1),
                ms,
                relative: ms / decode_step_ms.max(1e-9),
            }
        })
        .collect();
    Ok(Some(Verification {
        depth,
        repetitions,
        decode_step_ms,
        passes,
    }))
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Aggregate decode throughput of `options.batch` sequences decoding at
/// once vs one alone, as the daemon runs them: each sequence is its own
/// thread with its own cache, and their decode steps go through
/// [`Decoder::decode_step`], which batches steps taken together into one pass.
///
/// The sequences run on plain threads, like the daemon's reply threads: a
/// sequence blocked in the batcher (or a barrier) inside a rayon worker
/// could be stacked under another pool job it waits for, a deadlock. Their
/// kernels therefore run on the global pool, so this is measured only for
/// the thread count that pool has (see [`run`]); `None` for the others.
fn concurrency(
    model: &Model,
    options: &BenchOptions,
    threads: usize,
) -> Result<Option<Concurrency>, BenchError> {
    if rayon::current_num_threads() != threads {
        return Ok(None);
    }
    let ready = std::sync::Barrier::new(options.batch.max(1));
    let steps = options.batch_decode.max(1);
    let prompt_len = options.batch_prompt.max(1);
    let sequence = |seed: u64, ready: Option<&std::sync::Barrier>| -> Result<f64, ModelError> {
        let vocab = model.config().vocab_size as u64;
        let mut rng = SplitMix64::new(seed);
        let prompt: Vec<u32> = (0..prompt_len)
            .map(|_| (rng.next_u64() % vocab) as u32)
            .collect();
        let cancel = AtomicBool::new(false);
        let mut cache = model.new_cache(prompt_len + steps + 1);
        let logits = model.forward(&prompt, &mut cache, &cancel)?;
        if let Some(ready) = ready {
            ready.wait();
        }
        let t = Instant::now();
        decode(model, &mut cache, logits, steps, &cancel)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let single_s = sequence(options.seed ^ 1, None)?;
    let (passes_before, steps_before) = model.decode_pass_counts();
    // The sequences prefill, wait for each other, then time their decode;
    // the aggregate uses the slowest, which covers the whole overlap.
    let times: Vec<std::thread::Result<Result<f64, ModelError>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..options.batch)
            .map(|i| {
                let (sequence, ready) = (&sequence, &ready);
                scope.spawn(move || sequence(options.seed ^ (i as u64 + 2), Some(ready)))
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut slowest: f64 = 0.0;
    for time in times {
        slowest = slowest.max(time.map_err(|_| BenchError::Panicked)??);
    }
    let (passes, batched_steps) = model.decode_pass_counts();
    let steps_per_pass =
        (batched_steps - steps_before) as f64 / (passes - passes_before).max(1) as f64;
    let single_tok_s = steps as f64 / single_s.max(1e-9);
    let aggregate_tok_s = (options.batch * steps) as f64 / slowest.max(1e-9);
    Ok(Some(Concurrency {
        sequences: options.batch,
        prompt_tokens: prompt_len,
        decode_steps: steps,
        single_tok_s,
        aggregate_tok_s,
        speedup: aggregate_tok_s / single_tok_s.max(1e-9),
        steps_per_pass,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_core::codec::sign_row_bytes;
    use qins_core::container::QinsFile;
    use qins_test_support::phi35::{Phi35Spec, write_phi35};

    #[test]
    fn bytes_per_token_is_every_matrix_but_the_embedding() {
        const EMBEDDING: &str = "model.embed_tokens.weight";
        let dir = std::env::temp_dir().join(format!("qins-bench-bytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.qins");
        let spec = Phi35Spec::scaled(3, 64, 4, 96, 2, 384);
        write_phi35(&path, &spec).unwrap();
        let file = QinsFile::open(&path).unwrap();
        let config = file.header.config.clone();
        // Independently from the shapes: rows x cols codes plus byte-padded
        // sign rows, for each matrix except the (untied) embedding.
        let expected: u64 = config
            .expected_tensors()
            .iter()
            .filter(|(name, shape)| shape.len() == 2 && name != EMBEDDING)
            .map(|(_, s)| (s[0] * s[1] + s[0] * sign_row_bytes(s[1])) as u64)
            .sum();
        let model = Model::load(&config, file.load().unwrap()).unwrap();
        assert_eq!(model.decode_weight_bytes(), expected);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bench_runs_on_a_small_model() {
        let dir = std::env::temp_dir().join(format!("qins-bench-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("small.qins");
        write_phi35(&path, &Phi35Spec::scaled(4, 64, 4, 96, 2, 384)).unwrap();
        let options = BenchOptions {
            threads: vec![1, 2],
            prompt: 8,
            decode: 4,
            batch: 2,
            batch_decode: 3,
            batch_prompt: 4,
            seed: 1,
            verify_tokens: Vec::new(),
            verify_depth: 0,
            verify_repetitions: 0,
        };
        let report = run(&path, &options).unwrap();
        assert_eq!(report.runs.len(), 2);
        for r in &report.runs {
            assert!(r.decode_tok_s > 0.0 && r.prefill_tok_s > 0.0);
            let entry = if selected_kernel().rounds_operands() {
                2
            } else {
                4
            };
            assert_eq!(r.memory.kv_cache, 2 * 2 * 64 * 13 * entry);
            // Measured on the global pool's thread count only.
            if r.threads == rayon::current_num_threads() {
                assert_eq!(r.concurrency.as_ref().unwrap().sequences, 2);
            } else {
                assert!(r.concurrency.is_none());
            }
            assert!(r.verification.is_none(), "not asked for");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn verification_times_each_pass_against_a_decode_step_in_the_order_asked() {
        let dir = std::env::temp_dir().join(format!("qins-bench-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("small.qins");
        write_phi35(&path, &Phi35Spec::scaled(2, 64, 4, 96, 2, 384)).unwrap();
        let file = QinsFile::open(&path).unwrap();
        let model = Model::load(&file.header.config, file.load().unwrap()).unwrap();
        let options = BenchOptions {
            threads: vec![1],
            prompt: 1,
            decode: 1,
            batch: 1,
            batch_decode: 1,
            batch_prompt: 1,
            seed: 3,
            verify_tokens: vec![2, 4, 1],
            verify_depth: 24,
            verify_repetitions: 3,
        };
        let report = verification(&model, &options).unwrap().unwrap();
        assert_eq!((report.depth, report.repetitions), (24, 3));
        assert!(report.decode_step_ms > 0.0);
        let tokens: Vec<usize> = report.passes.iter().map(|p| p.tokens).collect();
        assert_eq!(tokens, [2, 4, 1], "in the order asked");
        for pass in &report.passes {
            assert!(pass.ms > 0.0);
            assert!((pass.relative - pass.ms / report.decode_step_ms).abs() < 1e-9);
        }
        let none = BenchOptions {
            verify_tokens: Vec::new(),
            ..options
        };
        assert!(verification(&model, &none).unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn median_takes_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
