//! Typed errors to gRPC status codes, with messages that say what to do.

use tonic::{Code, Status};

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
        EngineError::LogitsSize { .. } | EngineError::Tokenizer(_) | EngineError::Model(_) => {
            Code::Internal
        }
    }
}

fn load_code(error: &ChatModelError) -> Code {
    match error {
        ChatModelError::Container(_) => Code::InvalidArgument,
        _ => Code::FailedPrecondition,
    }
}

pub fn from_convert(error: &ConvertError) -> Status {
    let code = match error {
        ConvertError::Cancelled => Code::Cancelled,
        ConvertError::UnknownSource(_) => Code::InvalidArgument,
        _ => Code::FailedPrecondition,
    };
    Status::new(code, error.to_string())
}

pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// A blocking task that panicked or was cancelled: a daemon bug, not the caller's.
pub fn join_error(error: tokio::task::JoinError) -> Status {
    Status::internal(format!("internal error: {error}"))
}
