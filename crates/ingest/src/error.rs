//! The ingest service's one error type and how each error becomes a gRPC status.
//!
//! Handlers return [`IngestError`]; the RPC wrapper in `telemetry` turns it into a
//! [`tonic::Status`] with [`IngestError::to_status`] after counting it, so every RPC maps errors
//! the same way. Messages never contain an endpoint URL or an API key.

use pushfan_bus::BusError;
use pushfan_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// What can go wrong serving one request.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No `authorization: Bearer <key>` metadata, or a key no tenant has.
    #[error("missing or unknown API key (send `authorization: Bearer <key>`)")]
    Unauthenticated,
    /// A request field is invalid; `field` is its path, e.g. `keys.p256dh` or `items[3].topics[0]`.
    #[error("{field}: {description}")]
    InvalidArgument {
        /// Path of the field at fault.
        field: String,
        /// What is wrong with it.
        description: String,
    },
    /// The tenant has no such subscription or broadcast.
    #[error("{what} {id} not found")]
    NotFound {
        /// `subscription` or `broadcast`.
        what: &'static str,
        /// The id asked for (ids are safe to echo).
        id: String,
    },
    /// The store or the ledger failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The bus did not take the publish request; nothing was queued.
    #[error("the job bus did not take the broadcast, retry: {0}")]
    Bus(#[from] BusError),
    /// The client's request stream broke off (a client-streaming call).
    #[error("reading the request stream: {}", .0.message())]
    RequestStream(Status),
    /// The operating system's random number generator failed.
    #[error("no randomness for a broadcast id: {0}")]
    Entropy(String),
}

impl IngestError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), description: description.into() }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Self::Unauthenticated => Code::Unauthenticated,
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::Bus(_) => Code::Unavailable,
            Self::Entropy(_) => Code::Internal,
            Self::RequestStream(status) => status.code(),
            Self::Store(error) => store_code(error),
        }
    }

    /// The status sent to the client: invalid arguments also carry a `google.rpc.BadRequest`
    /// detail naming the field, so clients can highlight it without parsing the message.
    pub fn to_status(&self) -> Status {
        match self {
            Self::InvalidArgument { field, description } => Status::with_error_details(
                Code::InvalidArgument,
                self.to_string(),
                ErrorDetails::with_bad_request_violation(field.clone(), description.clone()),
            ),
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

impl From<IngestError> for Status {
    fn from(error: IngestError) -> Self {
        error.to_status()
    }
}

/// Store failures by cause: an outage is retryable (UNAVAILABLE), input the store refused is the
/// caller's (INVALID_ARGUMENT; ingest validates first, so this is rare), and anything else is
/// ours (INTERNAL). Matched exhaustively so a new store error has to be placed here.
fn store_code(error: &StoreError) -> Code {
    match error {
        StoreError::InvalidName { .. }
        | StoreError::TooManyTopics { .. }
        | StoreError::InvalidId(_)
        | StoreError::InvalidCursor
        | StoreError::ShardOutOfRange { .. } => Code::InvalidArgument,
        StoreError::RedisUnavailable(_)
        | StoreError::Contended { .. }
        | StoreError::Embedded(_)
        | StoreError::EmbeddedTask(_) => Code::Unavailable,
        StoreError::ZeroShards
        | StoreError::ShardCountMismatch { .. }
        | StoreError::CorruptRecord { .. }
        | StoreError::CorruptLedger { .. }
        | StoreError::Redis(_)
        | StoreError::UnexpectedReply(_)
        | StoreError::EmbeddedThread(_) => Code::Internal,
    }
}

/// A short, fixed label for a gRPC code, for metrics.
pub(crate) fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use pushfan_store::SubscriptionId;

    use super::*;

    #[test]
    fn invalid_arguments_name_the_field_in_message_and_details() {
        let status = IngestError::invalid("keys.auth", "must be 16 bytes, got 3").to_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "keys.auth: must be 16 bytes, got 3");
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("a BadRequest detail").field_violations;
        assert_eq!(violations[0].field, "keys.auth");
        assert_eq!(violations[0].description, "must be 16 bytes, got 3");
    }

    #[test]
    fn store_errors_map_by_cause() {
        assert_eq!(IngestError::from(StoreError::InvalidCursor).code(), Code::InvalidArgument);
        assert_eq!(IngestError::from(StoreError::CorruptLedger { what: "counts" }).code(), Code::Internal);
        let contended = StoreError::Contended { id: SubscriptionId::from_bytes([1; 14]), attempts: 5 };
        assert_eq!(IngestError::from(contended).code(), Code::Unavailable);
        assert_eq!(IngestError::NotFound { what: "broadcast", id: "x".into() }.code(), Code::NotFound);
        assert_eq!(code_label(Code::Unauthenticated), "unauthenticated");
    }
}
