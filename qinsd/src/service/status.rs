//! Typed errors to gRPC statuses, with messages that say what to do: the
//! daemon's half of the error contract in `proto/qins.proto` (a code, a
//! message, and the reason in the `qins-error` trailer). Every handler's
//! error comes through one of these functions.

use std::io::ErrorKind;
use std::path::Path;

use qins_proto::errors::{Reason, with_reason};
use tonic::Status;

use crate::model_store::ModelStoreError;
use crate::model_store::output::OutputError;
use crate::scheduler::SchedulerError;
use qins_convert::ConvertError;
use qins_core::container::ContainerError;
use qins_core::container::writer::temp_path_for;
use qins_engine::EngineError;

pub fn from_scheduler(error: SchedulerError) -> Status {
    let reason = match &error {
        SchedulerError::NoModel => Reason::NoModel,
        SchedulerError::Busy { .. } => Reason::Busy,
        SchedulerError::ShuttingDown => Reason::ShuttingDown,
        SchedulerError::Engine(e) => engine_reason(e),
    };
    with_reason(reason, error.to_string())
}

pub fn from_model_store(error: ModelStoreError) -> Status {
    let reason = match &error {
        ModelStoreError::Unknown { .. } | ModelStoreError::NoSuchFile { .. } => {
            Reason::UnknownModel
        }
        ModelStoreError::ModelsDir { .. } => Reason::ModelsDir,
        ModelStoreError::Load { .. }
        | ModelStoreError::Convert { .. }
        | ModelStoreError::Output { .. } => Reason::LoadFailed,
    };
    with_reason(reason, error.to_string())
}

fn engine_reason(error: &EngineError) -> Reason {
    match error {
        EngineError::PromptTooLong { .. }
        | EngineError::EmptyPrompt
        | EngineError::InputTooLong { .. }
        | EngineError::Unsupported(_)
        | EngineError::InvalidSampling { .. }
        | EngineError::InvalidRequest(_)
        | EngineError::Template(_) => Reason::BadArgument,
        EngineError::Cancelled => Reason::Cancelled,
        EngineError::LogitsSize { .. }
        | EngineError::Tokenizer(_)
        | EngineError::Grammar(_)
        | EngineError::Model(_) => Reason::Internal,
    }
}

/// A conversion to `output` failed. Writing the output onto a full or
/// read-only disk says so with the output path, not the hidden temporary
/// file (which the writer has removed by now): RESOURCE_EXHAUSTED when out
/// of space, FAILED_PRECONDITION when read-only.
pub fn from_convert(error: &ConvertError, output: &Path) -> Status {
    // An OS error on the output's path: its disk or directory is the problem.
    let output_io = io_failure(error)
        .filter(|(path, _)| writes_output(path, output))
        .map(|(_, io)| io);
    if let Some(io) = output_io {
        let disk = match io.kind() {
            ErrorKind::StorageFull => Some((
                Reason::NoSpace,
                "no space left on device",
                "free some space or convert to another disk",
            )),
            ErrorKind::QuotaExceeded => Some((
                Reason::NoSpace,
                "disk quota exceeded",
                "free some space or convert to another disk",
            )),
            ErrorKind::ReadOnlyFilesystem => Some((
                Reason::ModelsDir,
                "read-only file system",
                "convert to a writable directory",
            )),
            _ => None,
        };
        if let Some((reason, what, hint)) = disk {
            let os = io
                .raw_os_error()
                .map(|n| format!(" (os error {n})"))
                .unwrap_or_default();
            return with_reason(
                reason,
                format!(
                    "cannot write {}: {what}{os}; nothing was written, {hint}",
                    output.display()
                ),
            );
        }
    }
    let reason = match error {
        ConvertError::Cancelled => Reason::Cancelled,
        ConvertError::UnknownSource(_) => Reason::BadArgument,
        ConvertError::OutputExists(_) => Reason::Exists,
        _ if output_io.is_some() => Reason::ModelsDir,
        _ => Reason::ConvertFailed,
    };
    with_reason(reason, error.to_string())
}

/// The path and OS error of a conversion that failed on a file operation.
fn io_failure(error: &ConvertError) -> Option<(&Path, &std::io::Error)> {
    match error {
        ConvertError::Io(path, source)
        | ConvertError::Container(ContainerError::Io { path, source }) => Some((path, source)),
        _ => None,
    }
}

/// Whether `path` is `output`, the temporary file it is written through, or
/// a directory on the way to it.
fn writes_output(path: &Path, output: &Path) -> bool {
    let output = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
    path == output || path == temp_path_for(&output) || output.starts_with(path)
}

pub fn invalid(message: impl Into<String>) -> Status {
    with_reason(Reason::BadArgument, message)
}

/// A conversion may not write `output` ([`crate::model_store::output`]):
/// taken (a loaded model, another conversion's) or existing is ALREADY_EXISTS.
pub fn from_output(error: OutputError, output: &Path) -> Status {
    match error {
        OutputError::Convert(error) => from_convert(&error, output),
        taken @ (OutputError::Converting { .. } | OutputError::InUse(_)) => {
            with_reason(Reason::Exists, taken.to_string())
        }
    }
}

/// A blocking task that panicked or was cancelled: a daemon bug, not the caller's.
pub fn join_error(error: tokio::task::JoinError) -> Status {
    with_reason(Reason::Internal, format!("internal error: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_proto::errors::reason_of;
    use tonic::Code;

    fn container_io(path: &Path, errno: i32) -> ConvertError {
        ConvertError::Container(ContainerError::io(
            path,
            std::io::Error::from_raw_os_error(errno),
        ))
    }

    #[test]
    fn a_full_or_read_only_output_disk_names_the_output() {
        let output = Path::new("/models/m.qins");
        let status = from_convert(&container_io(&temp_path_for(output), libc::ENOSPC), output);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "cannot write /models/m.qins: no space left on device (os error 28); \
             nothing was written, free some space or convert to another disk"
        );
        assert_eq!(reason_of(&status), Some(Reason::NoSpace));
        let status = from_convert(&container_io(output, libc::EROFS), output);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&status), Some(Reason::ModelsDir));
        assert!(
            status
                .message()
                .starts_with("cannot write /models/m.qins: read-only file system"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn other_io_errors_keep_their_own_path() {
        let output = Path::new("/models/m.qins");
        let cache = Path::new("/cache/model.safetensors");
        let status = from_convert(
            &ConvertError::io(cache, std::io::Error::from_raw_os_error(libc::ENOSPC)),
            output,
        );
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&status), Some(Reason::ConvertFailed));
        assert!(
            status.message().starts_with("/cache/model.safetensors: "),
            "{}",
            status.message()
        );
        let status = from_convert(&container_io(output, libc::EACCES), output);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&status), Some(Reason::ModelsDir));
        assert!(
            status.message().starts_with("/models/m.qins: "),
            "{}",
            status.message()
        );
    }
}
