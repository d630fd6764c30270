//! qinsd: serves a resident QINS model over gRPC on a Unix socket (the
//! default, with no subcommand), and converts, evaluates and tests models.

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "qinsd",
    version,
    about = "QINS model daemon and converter",
    long_about = "QINS model daemon and converter.\n\nWith no subcommand, qinsd serves: it keeps a model resident and answers \
                  `qins` and `qins-web` over a Unix socket (foreground unless --daemonize).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Log filter (overrides RUST_LOG), e.g. info or qinsd=debug.
    #[arg(long, global = true, env = "QINSD_LOG")]
    log_level: Option<String>,
    #[command(flatten)]
    serve: cmd::serve::Args,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Measure load time, memory, prefill and decode speed of a model (a .qins path, a name or a Hub id).
    Bench(cmd::bench::Args),
    /// Convert a Hugging Face directory, Hub id or GGUF file to .qins.
    Convert(cmd::convert::Args),
    /// Write a .qins model back out as a Hugging Face directory of decoded f32 weights.
    ExportHf(cmd::export_hf::Args),
    /// One chat turn from a model (a .qins path, a name or a Hub id), without the daemon.
    Generate(cmd::generate::Args),
    /// Perplexity on a text slice, with KL divergence and top-1 agreement against a reference model.
    Perplexity(cmd::perplexity::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let Some(command) = cli.command else {
        return cmd::serve::run(cli.serve);
    };
    match command {
        Command::Bench(args) => cmd::bench::run(args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::ExportHf(args) => cmd::export_hf::run(args),
        Command::Perplexity(args) => cmd::perplexity::run(args),
        Command::Generate(args) => cmd::generate::run(args),
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
