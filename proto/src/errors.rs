//! The error contract of the qinsd API (written out in `proto/qins.proto`):
//! a status code, a message, and the reason in the `qins-error` trailer.
//! qinsd sets reasons through [`with_reason`]; clients read them with
//! [`reason_of`] and decide on the [`Reason`], never on the code alone.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// The trailer that carries the reason.
pub const REASON_KEY: &str = "qins-error";

/// Why a call failed, as far as a client needs to know to act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    NoModel,
    ModelsDir,
    LoadFailed,
    ConvertFailed,
    UnknownModel,
    Busy,
    NoSpace,
    BadArgument,
    Exists,
    ShuttingDown,
    Cancelled,
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::NoModel,
        Reason::ModelsDir,
        Reason::LoadFailed,
        Reason::ConvertFailed,
        Reason::UnknownModel,
        Reason::Busy,
        Reason::NoSpace,
        Reason::BadArgument,
        Reason::Exists,
        Reason::ShuttingDown,
        Reason::Cancelled,
        Reason::Internal,
    ];

    /// The trailer value.
    pub fn name(self) -> &'static str {
        match self {
            Reason::NoModel => "no-model",
            Reason::ModelsDir => "models-dir",
            Reason::LoadFailed => "load-failed",
            Reason::ConvertFailed => "convert-failed",
            Reason::UnknownModel => "unknown-model",
            Reason::Busy => "busy",
            Reason::NoSpace => "no-space",
            Reason::BadArgument => "bad-argument",
            Reason::Exists => "exists",
            Reason::ShuttingDown => "shutting-down",
            Reason::Cancelled => "cancelled",
            Reason::Internal => "internal",
        }
    }

    /// The status code that goes with the reason.
    pub fn code(self) -> Code {
        match self {
            Reason::NoModel | Reason::ModelsDir | Reason::LoadFailed | Reason::ConvertFailed => {
                Code::FailedPrecondition
            }
            Reason::UnknownModel => Code::NotFound,
            Reason::Busy | Reason::NoSpace => Code::ResourceExhausted,
            Reason::BadArgument => Code::InvalidArgument,
            Reason::Exists => Code::AlreadyExists,
            Reason::ShuttingDown => Code::Unavailable,
            Reason::Cancelled => Code::Cancelled,
            Reason::Internal => Code::Internal,
        }
    }

    fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// A status with the reason's code and trailer.
pub fn with_reason(reason: Reason, message: impl Into<String>) -> Status {
    let mut status = Status::new(reason.code(), message);
    status
        .metadata_mut()
        .insert(REASON_KEY, MetadataValue::from_static(reason.name()));
    status
}

/// The reason a status carries; `None` from a daemon that predates the
/// contract, or from the transport itself (which sets no trailer).
pub fn reason_of(status: &Status) -> Option<Reason> {
    let value = status.metadata().get(REASON_KEY)?.to_str().ok()?;
    Reason::from_name(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_the_trailer_with_its_code() {
        for reason in Reason::ALL {
            let status = with_reason(reason, "message");
            assert_eq!(reason_of(&status), Some(reason));
            assert_eq!(status.code(), reason.code());
            assert_eq!(status.message(), "message");
        }
        assert_eq!(reason_of(&Status::failed_precondition("old daemon")), None);
    }
}
