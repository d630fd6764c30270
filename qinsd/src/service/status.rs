//! Typed errors to gRPC status codes, with messages that say what to do.

use std::io::ErrorKind;
use std::path::Path;

use tonic::{Code, Status};

use crate::container::ContainerError;
use crate::container::writer::temp_path_for;
use crate::convert::ConvertError;
use crate::engine::{ChatModelError, EngineError};
use crate::scheduler::SchedulerError;

pub fn from_scheduler(error: SchedulerError) -> Status {
    let code = match &error {
        SchedulerError::NoModel => Code::FailedPrecondition,
        SchedulerError::Busy { .. } => Code::ResourceExhausted,
        SchedulerError::UnknownModel { .. } => Code::InvalidArgument,
        SchedulerError::ShuttingDown => Code::Unavailable,
        SchedulerError::Engine(e) => engine_code(e),
        SchedulerError::Load(e) => load_code(e),
    };
    Status::new(code, error.to_string())
}

fn engine_code(error: &EngineError) -> Code {
    match error {
        EngineError::PromptTooLong { .. }
        | EngineError::EmptyPrompt
        | EngineError::InvalidSampling { .. }
        | EngineError::InvalidRequest(_)
        | EngineError::Template(_) => Code::InvalidArgument,
        EngineError::Cancelled => Code::Cancelled,
        EngineError::LogitsSize { .. }
        | EngineError::Tokenizer(_)
        | EngineError::Grammar(_)
        | EngineError::Model(_) => Code::Internal,
    }
}

fn load_code(error: &ChatModelError) -> Code {
    match error {
        ChatModelError::Container(_) => Code::InvalidArgument,
        _ => Code::FailedPrecondition,
    }
}

/// A conversion to `output` failed. Writing the output onto a full or
/// read-only disk says so with the output path, not the hidden temporary
/// file (which the writer has removed by now): RESOURCE_EXHAUSTED when out
/// of space, FAILED_PRECONDITION when read-only.
pub fn from_convert(error: &ConvertError, output: &Path) -> Status {
    if let Some((path, io)) = io_failure(error)
        && writes_output(path, output)
    {
        let disk = match io.kind() {
            ErrorKind::StorageFull => Some((
                Code::ResourceExhausted,
                "no space left on device",
                "free some space or convert to another disk",
            )),
            ErrorKind::QuotaExceeded => Some((
                Code::ResourceExhausted,
                "disk quota exceeded",
                "free some space or convert to another disk",
            )),
            ErrorKind::ReadOnlyFilesystem => Some((
                Code::FailedPrecondition,
                "read-only file system",
                "convert to a writable directory",
            )),
            _ => None,
        };
        if let Some((code, what, hint)) = disk {
            let os = io
                .raw_os_error()
                .map(|n| format!(" (os error {n})"))
                .unwrap_or_default();
            return Status::new(
                code,
                format!(
                    "cannot write {}: {what}{os}; nothing was written, {hint}",
                    output.display()
                ),
            );
        }
    }
    let code = match error {
        ConvertError::Cancelled => Code::Cancelled,
        ConvertError::UnknownSource(_) => Code::InvalidArgument,
        _ => Code::FailedPrecondition,
    };
    Status::new(code, error.to_string())
}

/// The path and OS error of a conversion that failed on a file operation.
fn io_failure(error: &ConvertError) -> Option<(&Path, &std::io::Error)> {
    match error {
        ConvertError::Io(path, source)
        | ConvertError::Container(ContainerError::Io { path, source }) => Some((path, source)),
        _ => None,
    }
}

/// Whether `path` is `output` or the temporary file it is written through.
fn writes_output(path: &Path, output: &Path) -> bool {
    let output = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
    path == output || path == temp_path_for(&output)
}

pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// A blocking task that panicked or was cancelled: a daemon bug, not the caller's.
pub fn join_error(error: tokio::task::JoinError) -> Status {
    Status::internal(format!("internal error: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let status = from_convert(&container_io(output, libc::EROFS), output);
        assert_eq!(status.code(), Code::FailedPrecondition);
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
        assert!(
            status.message().starts_with("/cache/model.safetensors: "),
            "{}",
            status.message()
        );
        let status = from_convert(&container_io(output, libc::EACCES), output);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().starts_with("/models/m.qins: "),
            "{}",
            status.message()
        );
    }
}
