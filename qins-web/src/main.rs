//! qins-web: serves the chat page, an OpenAI-compatible API, ollama's API
//! and Prometheus metrics, relaying to qinsd over its Unix socket.

// A bridge of safe libraries: no unsafe code of its own, ever.
#![forbid(unsafe_code)]

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use qins_web::app::{Config, router};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// qinsd's Unix socket [default: $XDG_RUNTIME_DIR/qins/qinsd.sock on Linux, ~/.qins/qinsd.sock on macOS]
    #[arg(long, env = "QINS_SOCKET")]
    socket: Option<PathBuf>,
    /// Address to serve HTTP on. A non-loopback address needs --public.
    #[arg(long, default_value = "127.0.0.1:7860")]
    listen: SocketAddr,
    /// Require `Authorization: Bearer KEY` on the API and /health (the page asks for it).
    #[arg(long, env = "QINS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Extra Host name to accept besides localhost, 127.0.0.1 and [::1] (repeatable).
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_hosts: Vec<String>,
    /// Origin allowed to call the API from another site (repeatable); no CORS without it.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Allow listening on a non-loopback address.
    #[arg(long)]
    public: bool,
    /// Largest accepted request body.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// Log filter (overrides RUST_LOG), e.g. info or qins_web=debug.
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with its causes; no backtrace for a user's mistake.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let filter = match &args.log_level {
        Some(level) => EnvFilter::try_new(level).context("bad --log-level")?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let mut allow_hosts = args.allow_hosts;
    if !args.listen.ip().is_loopback() {
        if !args.public {
            bail!(
                "refusing to listen on non-loopback address {}: anyone on the network could \
                 use the model; pass --public (and --api-key) to do it anyway",
                args.listen
            );
        }
        if args.api_key.as_deref().is_none_or(str::is_empty) {
            tracing::warn!(
                "listening publicly without --api-key: anyone who can reach {} can chat",
                args.listen
            );
        }
        // Browsers reaching a specific address send it as Host.
        if !args.listen.ip().is_unspecified() {
            allow_hosts.push(args.listen.ip().to_string());
        }
    }
    let socket = args.socket.unwrap_or_else(qins_proto::default_socket_path);
    let config = Config {
        socket: socket.clone(),
        api_key: args.api_key,
        allow_hosts,
        cors_origins: args.cors_origins,
        max_body_bytes: args.max_body_bytes,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        url = %format!("http://{}", listener.local_addr()?),
        qinsd = %socket.display(),
        "qins-web serving"
    );
    // Open reply streams end with the process rather than being awaited:
    // they can be long, and dropping them cancels the generations in qinsd.
    tokio::select! {
        served = axum::serve(listener, router(config)).into_future() => served.context("server failed"),
        () = shutdown() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
