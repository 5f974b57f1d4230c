//! What Qdrant's errors mean to the port: gRPC statuses (by number, so they are tested without
//! a server) and the client's own errors, as [`VectorError`]s.

use qdrant_client::QdrantError;

use imgfleet_core::ports::vectors::VectorError;

/// gRPC status codes (numbered by the gRPC spec; `tonic::Code` converts to these).
pub mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// What a gRPC status from Qdrant means to the port. `collection` is the (unprefixed) collection
/// the request was about, if any.
///
/// - `NOT_FOUND`: a missing point (`No point with id …`) is bad input; otherwise the collection is
///   missing.
/// - `ALREADY_EXISTS` (and an `INVALID_ARGUMENT` saying "already exists", as older servers send):
///   the collection exists.
/// - `INVALID_ARGUMENT`: the request does not fit the collection.
/// - `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `CANCELLED` (tonic's client-side timeout),
///   `RESOURCE_EXHAUSTED` (rate limit), `UNAUTHENTICATED` / `PERMISSION_DENIED` (API key), and the
///   client's own connection failures (`INTERNAL`/`UNKNOWN` "Failed to connect", "transport
///   error"): the store cannot be used right now.
/// - anything else: internal.
pub fn status_error(code: i32, message: &str, collection: Option<&str>) -> VectorError {
    use grpc_code::*;
    let lower = message.to_ascii_lowercase();
    if lower.contains("no space left on device") {
        return VectorError::StorageFull(message.to_owned());
    }
    match code {
        NOT_FOUND if lower.contains("no point") || lower.contains("point with id") => VectorError::Invalid(message.to_owned()),
        NOT_FOUND => match collection {
            Some(name) => VectorError::CollectionNotFound(name.to_owned()),
            None => VectorError::Internal(format!("not found: {message}")),
        },
        ALREADY_EXISTS => match collection {
            Some(name) => VectorError::CollectionExists(name.to_owned()),
            None => VectorError::Internal(format!("already exists: {message}")),
        },
        INVALID_ARGUMENT if lower.contains("already exists") && collection.is_some() => {
            VectorError::CollectionExists(collection.expect("checked").to_owned())
        }
        INVALID_ARGUMENT => VectorError::Invalid(message.to_owned()),
        UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | RESOURCE_EXHAUSTED => VectorError::Unavailable(message.to_owned()),
        UNAUTHENTICATED | PERMISSION_DENIED => {
            VectorError::Unavailable(format!("Qdrant refused the credentials (check the API key): {message}"))
        }
        INTERNAL | UNKNOWN if lower.contains("failed to connect") || lower.contains("transport error") || lower.contains("connection") => {
            VectorError::Unavailable(message.to_owned())
        }
        FAILED_PRECONDITION => VectorError::Internal(format!("failed precondition: {message}")),
        _ => VectorError::Internal(format!("grpc status {code}: {message}")),
    }
}

/// A client error as a port error; statuses go through [`status_error`].
pub fn error(e: QdrantError, collection: Option<&str>) -> VectorError {
    match e {
        QdrantError::ResponseError { status } | QdrantError::ResourceExhaustedError { status, .. } => {
            status_error(i32::from(status.code()), status.message(), collection)
        }
        QdrantError::InvalidUri(e) => VectorError::Invalid(e.to_string()),
        QdrantError::Io(e) => VectorError::Unavailable(e.to_string()),
        other => VectorError::Internal(other.to_string()),
    }
}

pub(super) fn internal(e: impl std::fmt::Display) -> VectorError {
    VectorError::Internal(e.to_string())
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// A real `tonic::Status` as the client hands it over (tonic maps io error kinds to codes).
    fn status(kind: io::ErrorKind, message: &str) -> QdrantError {
        QdrantError::ResponseError { status: io::Error::new(kind, message.to_owned()).into() }
    }

    #[test]
    fn statuses_map_to_port_errors() {
        use io::ErrorKind::*;
        let nf = status(NotFound, "Not found: Collection `x_c` doesn't exist!");
        assert!(matches!(error(nf, Some("c")), VectorError::CollectionNotFound(n) if n == "c"));
        let point = status(NotFound, "Not found: No point with id 00000000-0000-0000-0000-000000000309 found");
        assert!(matches!(error(point, Some("c")), VectorError::Invalid(_)));
        let nf_no_context = status(NotFound, "Not found: something");
        assert!(matches!(error(nf_no_context, None), VectorError::Internal(_)));
        let exists = status(AlreadyExists, "Wrong input: Collection `c` already exists!");
        assert!(matches!(error(exists, Some("c")), VectorError::CollectionExists(n) if n == "c"));
        let invalid = status(InvalidInput, "Wrong input: Vector dimension error: expected dim: 4, got 2");
        assert!(matches!(error(invalid, Some("c")), VectorError::Invalid(m) if m.contains("dimension")));
        let old_exists = status(InvalidInput, "Wrong input: Collection `c` already exists!");
        assert!(matches!(error(old_exists, Some("c")), VectorError::CollectionExists(_)));
        assert!(matches!(error(status(ConnectionRefused, "refused"), Some("c")), VectorError::Unavailable(_)));
        assert!(matches!(error(status(TimedOut, "deadline"), Some("c")), VectorError::Unavailable(_)));
        assert!(matches!(error(status(PermissionDenied, "bad key"), None), VectorError::Unavailable(m) if m.contains("API key")));
        assert!(matches!(error(status(InvalidData, "data loss"), Some("c")), VectorError::Internal(_)));
        assert!(matches!(error(status(BrokenPipe, "Service internal error: boom"), Some("c")), VectorError::Internal(_)));
        assert!(matches!(error(QdrantError::ConversionError("x".into()), None), VectorError::Internal(_)));
    }

    #[test]
    fn status_codes_map_by_number() {
        use grpc_code::*;
        let c = Some("c");
        assert!(matches!(status_error(CANCELLED, "Timeout expired", c), VectorError::Unavailable(_)));
        assert!(matches!(status_error(RESOURCE_EXHAUSTED, "rate limit", c), VectorError::Unavailable(_)));
        assert!(matches!(status_error(UNAUTHENTICATED, "no key", c), VectorError::Unavailable(_)));
        assert!(matches!(status_error(UNAVAILABLE, "down", c), VectorError::Unavailable(_)));
        assert!(matches!(status_error(DEADLINE_EXCEEDED, "slow", c), VectorError::Unavailable(_)));
        // The client reports a refused connection as INTERNAL "Failed to connect to …".
        assert!(matches!(
            status_error(INTERNAL, "Failed to connect to http://127.0.0.1:1/: tonic::transport::Error(Transport, ConnectError)", c),
            VectorError::Unavailable(_)
        ));
        assert!(matches!(status_error(UNKNOWN, "transport error", c), VectorError::Unavailable(_)));
        assert!(matches!(status_error(INTERNAL, "Service internal error: disk full", c), VectorError::Internal(_)));
        assert!(matches!(status_error(FAILED_PRECONDITION, "locked", c), VectorError::Internal(_)));
        assert!(matches!(status_error(12, "unimplemented", c), VectorError::Internal(_)));
        assert!(matches!(status_error(ALREADY_EXISTS, "alias already exists", None), VectorError::Internal(_)));
    }
}
