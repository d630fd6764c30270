//! Opening the daemon connection, and turning failures into one line for the
//! user plus an exit code.

use std::path::Path;

use anyhow::Result;
use qins_proto::ConnectError;
use qins_proto::v1::qins_client::QinsClient;
use tonic::transport::Channel;

pub type Client = QinsClient<Channel>;

/// Exit code when no daemon listens on the socket (documented in `--help`).
pub const EXIT_NOT_RUNNING: i32 = 2;
/// Exit code for any other failure, gRPC errors included.
pub const EXIT_FAILURE: i32 = 1;

pub async fn client(socket: &Path) -> Result<Client> {
    Ok(QinsClient::new(qins_proto::connect(socket).await?))
}

/// Prints `err` as one `qins: ...` line on stderr and returns the exit code.
pub fn report(err: &anyhow::Error) -> i32 {
    let (message, code) = describe(err);
    eprintln!("qins: {message}");
    code
}

fn describe(err: &anyhow::Error) -> (String, i32) {
    for cause in err.chain() {
        if let Some(ConnectError::NotRunning { path }) = cause.downcast_ref::<ConnectError>() {
            return (
                format!(
                    "qinsd is not running on {}; start it with: qinsd --model NAME (or: qins service install)",
                    path.display()
                ),
                EXIT_NOT_RUNNING,
            );
        }
        // The daemon writes status messages for users: print them as they are.
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            let message = if status.message().is_empty() {
                format!("qinsd answered {:?}", status.code())
            } else {
                status.message().to_string()
            };
            return (message, EXIT_FAILURE);
        }
    }
    (format!("{err:#}"), EXIT_FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_running_is_exit_2_with_a_hint() {
        let err = anyhow::Error::from(ConnectError::NotRunning {
            path: "/tmp/x.sock".into(),
        });
        let (message, code) = describe(&err);
        assert_eq!(code, EXIT_NOT_RUNNING);
        assert!(message.contains("/tmp/x.sock") && message.contains("qins service install"));
    }

    #[test]
    fn status_messages_are_printed_verbatim_even_under_context() {
        let err =
            anyhow::Error::from(tonic::Status::not_found("no model named 'x'")).context("loading");
        assert_eq!(describe(&err), ("no model named 'x'".into(), EXIT_FAILURE));
    }
}
