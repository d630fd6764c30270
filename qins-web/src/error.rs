//! Every failure a handler can return, and its one mapping to an HTTP status
//! and an OpenAI-shaped JSON body (`{"error":{"message","type","code"}}`), so
//! the page and OpenAI clients parse errors the same way. ollama's routes
//! (`/api/`) give the same status with ollama's body, `{"error":"message"}`,
//! and Anthropic's (`/v1/messages`) with its `{"type":"error",...}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qins_proto::errors::{Reason, reason_of};
use serde_json::{Value, json};
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// qinsd is not listening, or the connection to it broke.
    #[error("qinsd is not reachable: {0}")]
    DaemonDown(String),
    /// qinsd runs but has no model resident. 503 rather than 409: it is a
    /// temporary condition of the service, not of the request, and clients
    /// treat 503 as "try again later".
    #[error("{0}")]
    NoModel(String),
    /// qinsd cannot read (or create) its models directory: the server's
    /// configuration is wrong, not the request.
    #[error("{0}")]
    ModelsDir(String),
    /// The model was found but did not load (corrupt file, failed Hub
    /// conversion).
    #[error("{0}")]
    LoadFailed(String),
    /// A malformed body, or a request qinsd refused as INVALID_ARGUMENT.
    #[error("{0}")]
    BadRequest(String),
    /// A request parameter that is refused or has a bad value: 400 with the
    /// parameter named in the body's `param`, as OpenAI does. `code` is
    /// OpenAI's: "unsupported_parameter", "unsupported_value" or
    /// "invalid_value".
    #[error("{message}")]
    Param {
        param: String,
        message: String,
        code: &'static str,
    },
    /// qinsd's request queue is full (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("request body is larger than the limit (--max-body-bytes)")]
    PayloadTooLarge,
    #[error("missing or wrong API key (send Authorization: Bearer KEY)")]
    Unauthorized,
    /// 403 rather than 421: the request is refused on purpose (DNS-rebinding
    /// defense), not sent to the wrong server.
    #[error("host {0:?} is not allowed (start qins-web with --allow-host to add it)")]
    HostNotAllowed(String),
    /// Anything else qinsd reported.
    #[error("qinsd error: {0}")]
    Upstream(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::DaemonDown(_) | Self::NoModel(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest(_) | Self::Param { .. } => StatusCode::BAD_REQUEST,
            Self::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::ModelsDir(_) | Self::LoadFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::HostNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// `(type, code)` of the JSON body; `type` follows OpenAI's names.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::DaemonDown(_) => ("server_error", "qinsd_unreachable"),
            Self::NoModel(_) => ("server_error", "no_model_loaded"),
            Self::BadRequest(_) => ("invalid_request_error", "invalid_request"),
            Self::Param { code, .. } => ("invalid_request_error", code),
            Self::Busy(_) => ("rate_limit_error", "queue_full"),
            Self::NotFound(_) => ("invalid_request_error", "not_found"),
            Self::ModelsDir(_) => ("server_error", "models_dir_unreadable"),
            Self::LoadFailed(_) => ("server_error", "model_load_failed"),
            Self::UnsupportedMediaType => ("invalid_request_error", "unsupported_media_type"),
            Self::PayloadTooLarge => ("invalid_request_error", "payload_too_large"),
            Self::Unauthorized => ("authentication_error", "invalid_api_key"),
            Self::HostNotAllowed(_) => ("permission_error", "host_not_allowed"),
            Self::Upstream(_) => ("server_error", "qinsd_error"),
        }
    }

    /// The JSON error object, also sent inside SSE streams.
    pub fn body(&self) -> Value {
        let (kind, code) = self.kind();
        let param = match self {
            Self::Param { param, .. } => Value::String(param.clone()),
            _ => Value::Null,
        };
        json!({ "error": {
            "message": self.to_string(), "type": kind, "param": param, "code": code,
        } })
    }

    /// ollama's error object, also the last line of a failed NDJSON stream.
    pub fn ollama_body(&self) -> Value {
        json!({ "error": self.to_string() })
    }

    /// Anthropic's error object (`/v1/messages`), also an `error` event of a
    /// failed stream: its type follows the status as Anthropic names them.
    pub fn anthropic_body(&self) -> Value {
        let kind = match self.status().as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        };
        json!({ "type": "error", "error": { "type": kind, "message": self.to_string() } })
    }

    /// The response to a request for `path`, for refusals made before a
    /// handler runs (Host, key, unknown route): each API family gets its
    /// own body shape.
    pub fn response_for(self, path: &str) -> Response {
        if path.starts_with("/api/") {
            (self.status(), Json(self.ollama_body())).into_response()
        } else if path.starts_with("/v1/messages") {
            (self.status(), Json(self.anthropic_body())).into_response()
        } else {
            self.into_response()
        }
    }
}

/// qinsd's half of the contract is in `proto/qins.proto` (Errors): the
/// reason in the `qins-error` trailer decides; the code is the fallback for
/// a status without one (the transport's own, or an older daemon's).
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_string();
        if let Some(reason) = reason_of(&status) {
            return match reason {
                Reason::NoModel => Self::NoModel(message),
                Reason::ModelsDir => Self::ModelsDir(message),
                Reason::LoadFailed | Reason::ConvertFailed => Self::LoadFailed(message),
                Reason::UnknownModel => Self::NotFound(message),
                Reason::Busy => Self::Busy(message),
                Reason::BadArgument | Reason::Exists => Self::BadRequest(message),
                Reason::ShuttingDown => Self::DaemonDown(message),
                Reason::NoSpace | Reason::Cancelled | Reason::Internal => {
                    Self::Upstream(format!("{}: {message}", status.code()))
                }
            };
        }
        // No reason, and made here by tonic from a local error (kept as the
        // status's source): the connection to qinsd failed under the call,
        // whatever code tonic picked. A connection that closed before the
        // bridge noticed qinsd was gone (killed, restarted) gives UNKNOWN
        // ("connection closed", h2 without a reason) or INTERNAL (a broken
        // pipe), not only UNAVAILABLE or CANCELLED.
        if std::error::Error::source(&status).is_some() {
            return Self::DaemonDown(format!("the connection to qinsd broke: {message}"));
        }
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Self::BadRequest(message),
            Code::ResourceExhausted => Self::Busy(message),
            Code::NotFound => Self::NotFound(message),
            // UNAVAILABLE is also what tonic reports for a broken transport;
            // qinsd itself never answers CANCELLED without its reason (only
            // a client cancels).
            Code::Unavailable | Code::Cancelled => Self::DaemonDown(message),
            _ => Self::Upstream(format!("{}: {message}", status.code())),
        }
    }
}

impl From<qins_proto::ConnectError> for ApiError {
    fn from(e: qins_proto::ConnectError) -> Self {
        Self::DaemonDown(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_proto::errors::with_reason;

    /// One case per reason of the contract: the HTTP status and the OpenAI
    /// error type a client sees.
    #[test]
    fn every_reason_maps_to_its_http_status_and_error_type() {
        let cases = [
            (Reason::NoModel, 503, "server_error", "no_model_loaded"),
            (
                Reason::ModelsDir,
                500,
                "server_error",
                "models_dir_unreadable",
            ),
            (Reason::LoadFailed, 500, "server_error", "model_load_failed"),
            (
                Reason::ConvertFailed,
                500,
                "server_error",
                "model_load_failed",
            ),
            (
                Reason::UnknownModel,
                404,
                "invalid_request_error",
                "not_found",
            ),
            (Reason::Busy, 429, "rate_limit_error", "queue_full"),
            (Reason::NoSpace, 502, "server_error", "qinsd_error"),
            (
                Reason::BadArgument,
                400,
                "invalid_request_error",
                "invalid_request",
            ),
            (
                Reason::Exists,
                400,
                "invalid_request_error",
                "invalid_request",
            ),
            (
                Reason::ShuttingDown,
                503,
                "server_error",
                "qinsd_unreachable",
            ),
            (Reason::Cancelled, 502, "server_error", "qinsd_error"),
            (Reason::Internal, 502, "server_error", "qinsd_error"),
        ];
        assert_eq!(cases.len(), Reason::ALL.len());
        for (reason, http, kind, code) in cases {
            let error = ApiError::from(with_reason(reason, "why"));
            assert_eq!(error.status().as_u16(), http, "{reason:?}");
            let body = error.body();
            assert_eq!(body["error"]["type"], kind, "{reason:?}");
            assert_eq!(body["error"]["code"], code, "{reason:?}");
            assert!(
                body["error"]["message"].as_str().unwrap().contains("why"),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn failed_precondition_without_a_reason_is_not_taken_for_no_model() {
        let error = ApiError::from(tonic::Status::failed_precondition("disk on fire"));
        assert_eq!(error.status().as_u16(), 502);
    }

    /// The race behind a once-failed `daemon_down_gives_503_and_restart_recovers`:
    /// the first call after qinsd died can go out on the cached connection
    /// before the bridge saw it close, and tonic then reports UNKNOWN or
    /// INTERNAL, made from the transport's error. That is qinsd unreachable
    /// (503), not a qinsd error (502).
    #[test]
    fn a_transport_failure_is_unreachable_whatever_its_code() {
        use std::io::{Error, ErrorKind};
        for kind in [
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
            ErrorKind::Other,
        ] {
            let status = tonic::Status::from_error(Box::new(Error::new(kind, "closed")));
            let error = ApiError::from(status);
            assert_eq!(error.status().as_u16(), 503, "{kind:?}");
            assert_eq!(error.body()["error"]["code"], "qinsd_unreachable");
        }
        // The same codes from qinsd's own trailers stay qinsd's errors.
        let error = ApiError::from(tonic::Status::unknown("qinsd panicked"));
        assert_eq!(error.status().as_u16(), 502);
        let error = ApiError::from(tonic::Status::cancelled("connection cut"));
        assert_eq!(error.status().as_u16(), 503);
    }
}
