//! Where qinsd listens by default, and a tonic channel over a Unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

/// Longest socket path every platform accepts (`sun_path` is 104 bytes on
/// macOS, 108 on Linux, both counting the terminating NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 103;

/// The default socket: `$XDG_RUNTIME_DIR/qins/qinsd.sock` on Linux when that
/// directory is set, otherwise (macOS, or Linux without a runtime dir)
/// `~/.qins/qinsd.sock`.
pub fn default_socket_path() -> PathBuf {
    if cfg!(target_os = "linux")
        && let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty())
    {
        return PathBuf::from(runtime).join("qins").join("qinsd.sock");
    }
    home_dir().join(".qins").join("qinsd.sock")
}

/// The user's home directory (`$HOME`), or the current directory as a last resort.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no qinsd is running on {path}")]
    NotRunning { path: PathBuf },
    #[error(
        "socket path {path} is {len} bytes; Unix sockets allow at most {MAX_SOCKET_PATH_BYTES}"
    )]
    PathTooLong { path: PathBuf, len: usize },
    #[error("cannot connect to qinsd on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open a gRPC channel on {path}: {source}")]
    Transport {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// Checks that `path` fits in `sun_path`.
pub fn check_socket_path(path: &Path) -> Result<(), ConnectError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(ConnectError::PathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
}

/// Opens a gRPC channel to the daemon listening on `path`.
///
/// A missing socket file or a refused connection is [`ConnectError::NotRunning`],
/// so clients can tell the user how to start the daemon.
pub async fn connect(path: &Path) -> Result<Channel, ConnectError> {
    check_socket_path(path)?;
    // Probe first: tonic folds the cause of a failed connect into an opaque error.
    if let Err(source) = UnixStream::connect(path).await {
        return Err(match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ConnectError::NotRunning {
                    path: path.to_path_buf(),
                }
            }
            _ => ConnectError::Io {
                path: path.to_path_buf(),
                source,
            },
        });
    }
    let socket = path.to_path_buf();
    // tonic needs a URI; the connector ignores it and dials the socket.
    Endpoint::from_static("http://qinsd.local")
        .connect_with_connector(service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(|source| ConnectError::Transport {
            path: path.to_path_buf(),
            source,
        })
}
