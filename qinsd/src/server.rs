//! The Unix-socket server: socket directory and permissions, the
//! one-daemon-per-socket rule, peer uid checks, the `:authority` fix that
//! lets stock gRPC clients in ([`crate::authority`]), gRPC health and
//! reflection, and a clean exit on SIGTERM/SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::authority::AuthorityFixingStream;
use crate::scheduler::Scheduler;
use crate::service::{DaemonInfo, QinsServer, QinsService};

/// How long streams may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("a qinsd is already running on {0}; stop it first (or pass another --socket)")]
    AlreadyRunning(PathBuf),
    #[error(
        "socket path {path} is {len} bytes; Unix sockets allow at most {max} (pass a shorter --socket)"
    )]
    PathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServerError {
    let path = path.to_path_buf();
    move |source| ServerError::Io { what, path, source }
}

/// Creates the socket's directory (owner-only), refuses to start when a
/// live daemon answers on `path`, removes a stale socket file, and binds.
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServerError> {
    let len = path.as_os_str().len();
    if len > qins_proto::socket::MAX_SOCKET_PATH_BYTES {
        return Err(ServerError::PathTooLong {
            path: path.to_path_buf(),
            len,
            max: qins_proto::socket::MAX_SOCKET_PATH_BYTES,
        });
    }
    // A directory made here for the socket is the owner's alone; one that
    // exists (/tmp, a runtime dir) keeps its mode: the socket's own 0600
    // and the peer uid check guard it there, and restricting /tmp would lock
    // every other user out of it.
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir).map_err(io_error("cannot create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error("cannot restrict", dir))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::AlreadyRunning(path.to_path_buf()));
        }
        tracing::info!(socket = %path.display(), "removing a stale socket");
        std::fs::remove_file(path).map_err(io_error("cannot remove the stale socket", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_error("cannot listen on", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error("cannot restrict", path))?;
    Ok(listener)
}

/// Serves until SIGTERM or SIGINT, then cancels running generations, lets
/// the streams close, and removes the socket file.
pub async fn serve(
    listener: UnixListener,
    socket: PathBuf,
    scheduler: Arc<Scheduler>,
    info: DaemonInfo,
) -> Result<(), ServerError> {
    let service = QinsService::new(Arc::clone(&scheduler), info);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<QinsServer<QinsService>>()
        .await;
    // Both reflection versions: grpcurl and older tools still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(qins_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let incoming = accept_same_user(listener);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(QinsServer::new(service))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tracing::info!(socket = %socket.display(), "qinsd listening");
    let mut server = std::pin::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down");
            scheduler.shut_down();
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("streams did not finish in time; exiting anyway");
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = std::fs::remove_file(&socket)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(socket = %socket.display(), error = %e, "cannot remove the socket");
    }
    tracing::info!("qinsd stopped");
    Ok(result?)
}

/// Accepted connections from this process's own user; others are dropped
/// (the socket is owner-only already; this also covers a loosened mode).
/// Each one reaches h2 through the `:authority` fix.
pub(crate) fn accept_same_user(
    listener: UnixListener,
) -> ReceiverStream<std::io::Result<AuthorityFixingStream<UnixStream>>> {
    let (tx, rx) = mpsc::channel(16);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == own_uid => {}
                Ok(cred) => {
                    tracing::warn!(uid = cred.uid(), "refused a connection from another user");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read peer credentials; connection refused");
                    continue;
                }
            }
            if tx
                .send(Ok(AuthorityFixingStream::new(stream)))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop qinsd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777
    }

    #[tokio::test]
    async fn a_socket_in_an_existing_directory_leaves_its_mode_alone() {
        let shared = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        let _listener = bind_socket(&shared.path().join("qinsd.sock")).expect("binds");
        assert_eq!(mode(shared.path()), 0o1777);
        assert_eq!(mode(&shared.path().join("qinsd.sock")) & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_directory_made_for_the_socket_is_the_owners_alone() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("run").join("qins");
        let _listener = bind_socket(&dir.join("qinsd.sock")).expect("binds");
        assert_eq!(mode(&dir), 0o700);
    }
}
