//! `qinsd [--model M] [--socket S] ...`: the daemon. Foreground by default
//! (what launchd and systemd want); `--daemonize` detaches with a pid file
//! and a log file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use qins_engine::Device;
use qinsd::model_store;
use qinsd::scheduler::{Scheduler, SchedulerConfig};
use qinsd::server;
use qinsd::service::DaemonInfo;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Model to keep resident: a .qins path, a name in the models directory,
    /// or a Hub id (owner/name) converted into the models directory on first use.
    #[arg(long, env = "QINS_MODEL")]
    pub model: Option<String>,
    /// Unix socket to serve on [default: $XDG_RUNTIME_DIR/qins/qinsd.sock on
    /// Linux, ~/.qins/qinsd.sock on macOS].
    #[arg(long, env = "QINS_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Where models are listed, loaded by name, and converted to.
    #[arg(long, env = "QINS_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Kernel threads [default: all cores].
    #[arg(long, env = "QINS_THREADS")]
    pub threads: Option<usize>,
    /// Context limit per conversation, in tokens.
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// Compute device, for the startup model and every LoadModel.
    #[arg(long, env = "QINS_DEVICE", value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Replies generated at once; further requests wait in the queue.
    #[arg(long, default_value_t = 2)]
    pub max_active: usize,
    /// Requests that may wait for a free slot; more are refused (RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 8)]
    pub max_queued: usize,
    /// Conversations whose K/V cache is kept for prefix reuse.
    #[arg(long, default_value_t = 4)]
    pub max_sessions: usize,
    /// Lookup decoding for requests that do not say: verify drafts copied
    /// from earlier in the conversation when that pays (the reply is
    /// distributed exactly as without it).
    #[arg(long, value_enum, default_value = "on")]
    pub lookup: Switch,
    /// Detach from the terminal (writes --pid-file, logs to --log-file).
    #[arg(long)]
    pub daemonize: bool,
    /// [default: next to the socket, qinsd.pid]
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// [default: next to the socket, qinsd.log]
    #[arg(long)]
    pub log_file: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn is_on(self) -> bool {
        self == Switch::On
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A real GPU (never a software one such as lavapipe), else the CPU.
    Auto,
    /// The CPU kernels.
    Cpu,
    /// The GPU (Metal, Vulkan or DX12), software adapters included; fails
    /// at startup when there is none.
    Gpu,
}

impl From<DeviceChoice> for qins_gpu::DeviceChoice {
    fn from(choice: DeviceChoice) -> Self {
        match choice {
            DeviceChoice::Auto => qins_gpu::DeviceChoice::Auto,
            DeviceChoice::Cpu => qins_gpu::DeviceChoice::Cpu,
            DeviceChoice::Gpu => qins_gpu::DeviceChoice::Gpu,
        }
    }
}

/// Settles the device once, before anything is served; the adapter, if
/// any, is logged.
fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    // The error already names the flag to change: one line, no chain.
    let device = Device::open(choice.into()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(gpu) = device.gpu() {
        tracing::info!(adapter = %gpu.adapter(), "running models on the GPU");
    }
    Ok(device)
}

pub fn run(args: Args) -> Result<()> {
    let socket = match &args.socket {
        Some(path) => absolute(path)?,
        None => qins_proto::default_socket_path(),
    };
    let models_dir = absolute(&args.models_dir)?;
    let run_dir = socket
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    if args.daemonize {
        // Refuse here, while the user still sees the terminal.
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            bail!("a qinsd is already running on {}", socket.display());
        }
        daemonize(&args, &run_dir)?;
    }
    // After the fork: a GPU device does not survive one.
    let device = resolve_device(args.device)?;
    let threads = start_kernel_threads(args.threads)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = server::bind_socket(&socket)?;
        // A conversion killed mid-write (SIGKILL, power loss) left only a temp file.
        for stale in qins_core::container::remove_stale_temp_files(&models_dir) {
            tracing::info!(file = %stale.display(), "removed an unfinished conversion");
        }
        for stale in model_store::output::remove_stale_claims(&models_dir) {
            tracing::info!(file = %stale.display(), "removed an unfinished conversion's claim");
        }
        let scheduler = Scheduler::new(SchedulerConfig {
            context: args.context,
            max_active: args.max_active,
            max_queued: args.max_queued,
            max_sessions: args.max_sessions,
            models_dir: models_dir.clone(),
            device: device.clone(),
            lookup: args.lookup.is_on(),
        });
        if let Some(model) = &args.model {
            // Connections wait in the listen backlog while the model loads.
            let loaded = load_startup_model(&scheduler, model, &models_dir).await;
            if let Err(e) = loaded {
                let _ = std::fs::remove_file(&socket);
                return Err(e);
            }
        }
        let info = DaemonInfo {
            device: device.kind().to_string(),
            threads,
            started: Instant::now(),
        };
        server::serve(listener, socket, scheduler, info)
            .await
            .context("qinsd stopped with an error")
    })
}

/// The one rule for the kernel thread pool (`--threads`, `QINS_THREADS`):
/// that many threads, all cores when unset; `qinsd` and `qinsd generate`
/// both start it here. Returns the count.
pub fn start_kernel_threads(threads: Option<usize>) -> Result<usize> {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("cannot start the kernel thread pool")?;
    Ok(threads)
}

async fn load_startup_model(
    scheduler: &Arc<Scheduler>,
    model: &str,
    models_dir: &Path,
) -> Result<()> {
    let started = Instant::now();
    let (model, dir) = (model.to_string(), models_dir.to_path_buf());
    let device = scheduler.config().device.clone();
    let (path, chat) = tokio::task::spawn_blocking(move || {
        model_store::open_or_convert(&dir, &model, &device, &mut model_store::log_progress)
    })
    .await??;
    tracing::info!(
        model = chat.name(),
        path = %path.display(),
        seconds = started.elapsed().as_secs_f64(),
        resident_mb = chat.resident_bytes().total() as f64 / 1e6,
        device = chat.model().kind(),
        "model loaded"
    );
    scheduler.set_model(Some(Arc::new(chat)));
    Ok(())
}

fn daemonize(args: &Args, run_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let pid_file = args
        .pid_file
        .clone()
        .unwrap_or_else(|| run_dir.join("qinsd.pid"));
    let log_file = args
        .log_file
        .clone()
        .unwrap_or_else(|| run_dir.join("qinsd.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .with_context(|| format!("cannot open the log file {}", log_file.display()))?;
    let log_err = log.try_clone()?;
    let cwd = std::env::current_dir()?;
    eprintln!(
        "qinsd: detaching (pid file {}, log {})",
        pid_file.display(),
        log_file.display()
    );
    daemonize::Daemonize::new()
        .pid_file(&pid_file)
        .working_directory(cwd)
        .stdout(log)
        .stderr(log_err)
        .start()
        .with_context(|| format!("cannot daemonize (pid file {})", pid_file.display()))?;
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))
}
