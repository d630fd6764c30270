//! `qins`: the command-line client of the qinsd daemon.

// First: the other modules use its `outln!`.
#[macro_use]
mod output;

mod ask;
mod chat;
mod connect;
mod convert;
mod embed;
mod format;
mod models;
mod ps;
mod reply;
mod sampling;
mod service;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "qins",
    version,
    about = "Chat with and manage the local qinsd daemon",
    after_help = "Exit status: 0 success, 1 error (the daemon's message is printed), \
                  2 qinsd is not running on the socket, 64 bad command line."
)]
struct Cli {
    /// qinsd's Unix socket [default: $XDG_RUNTIME_DIR/qins/qinsd.sock on Linux,
    /// ~/.qins/qinsd.sock otherwise].
    #[arg(long, env = "QINS_SOCKET", global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Interactive chat (type /help inside).
    Chat(chat::Args),
    /// One prompt, the reply streamed to stdout.
    Ask(ask::Args),
    /// Embeddings of texts from the resident model, one JSON array a line.
    Embed(embed::Args),
    /// Memory, model and throughput of the daemon.
    Stats {
        /// Raw fields as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Convert a model to .qins (run by the daemon).
    Convert(convert::Args),
    /// Models in the daemon's models directory (* = loaded).
    Models,
    /// The resident model: name, size in memory, device, context, loaded since.
    Ps,
    /// Load a model, replacing the resident one.
    Load {
        /// A name from `qins models` or a path to a .qins file.
        model: String,
    },
    /// Drop the resident model.
    Unload,
    /// Run qinsd at login (launchd on macOS, systemd on Linux).
    Service(service::Args),
}

/// Usage errors get their own code so scripts can tell them from "not running" (2).
const EXIT_USAGE: i32 = 64;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = err.print();
            std::process::exit(code);
        }
    };
    if let Err(err) = run(cli) {
        if output::is_broken_pipe(&err) {
            return;
        }
        std::process::exit(connect::report(&err));
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(qins_proto::default_socket_path);
    // One worker is plenty for a client, but it must be a worker thread: the
    // connection task has to keep running while `chat` blocks in readline,
    // or the reset that cancels a stopped reply would not reach the daemon
    // until the next request.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Chat(args) => chat::run(runtime, &socket, args),
        Cmd::Ask(args) => runtime.block_on(ask::run(&socket, args)),
        Cmd::Embed(args) => runtime.block_on(embed::run(&socket, args)),
        Cmd::Stats { json } => runtime.block_on(stats::run(&socket, json)),
        Cmd::Convert(args) => runtime.block_on(convert::run(&socket, args)),
        Cmd::Models => runtime.block_on(models::list(&socket)),
        Cmd::Ps => runtime.block_on(ps::run(&socket)),
        Cmd::Load { model } => runtime.block_on(models::load(&socket, model)),
        Cmd::Unload => runtime.block_on(models::unload(&socket)),
        Cmd::Service(args) => service::run(args, &socket, cli.socket.as_deref()),
    }
}
