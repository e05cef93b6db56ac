//! Storage errors as gRPC statuses: a code that fits the cause and a message a person can
//! act on.

use spool_storage::StorageError;
use tonic::{Code, Status};

/// The last part of a path: clients are told which file, never where the data lives.
fn file_of(path: &std::path::Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// What a client is told: the error without the server's paths (the server's log has
/// them, see `to_status`).
fn public_message(e: &StorageError) -> String {
    match e {
        StorageError::Io { path, source } => format!(
            "io error on {} ({source}); the server's log has the details",
            file_of(path)
        ),
        StorageError::DiskFull { .. } => {
            "disk full on the server; free space, then retry (acknowledged data is intact)".into()
        }
        StorageError::Corrupt {
            path,
            position,
            reason,
        } => format!(
            "corrupt data in {} at byte {position}: {reason}",
            file_of(path)
        ),
        StorageError::CorruptMeta { path, reason } => {
            format!("corrupt metadata {}: {reason}", file_of(path))
        }
        StorageError::Poisoned { log, .. } => format!(
            "log {log:?} refuses writes after an IO failure on the server; it takes writes \
             again once the node restarts (the server's log has the cause)"
        ),
        other => other.to_string(),
    }
}

pub fn to_status(e: StorageError) -> Status {
    let code = match &e {
        StorageError::LogNotFound(name) => {
            return Status::not_found(format!(
                "log {name:?} not found; create it with `spool logs create {name}`"
            ))
        }
        StorageError::LogExists(_) => Code::AlreadyExists,
        StorageError::InvalidInput(_) | StorageError::RecordTooLarge { .. } => {
            Code::InvalidArgument
        }
        StorageError::OffsetOutOfRange { .. } => Code::OutOfRange,
        StorageError::DiskFull { .. } => Code::ResourceExhausted,
        StorageError::Corrupt { .. }
        | StorageError::CorruptMeta { .. }
        | StorageError::DataLoss(_) => Code::DataLoss,
        StorageError::FrameRejected { .. }
        | StorageError::Damaged { .. }
        | StorageError::SequenceOutOfOrder { .. }
        | StorageError::SequenceTooOld { .. } => Code::FailedPrecondition,
        StorageError::Poisoned { .. } | StorageError::Closed => Code::Unavailable,
        StorageError::Io { .. } => Code::Internal,
    };
    if matches!(code, Code::Internal | Code::DataLoss | Code::Unavailable) {
        tracing::warn!(error = %e, "request failed");
    }
    Status::new(code, public_message(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fit() {
        assert_eq!(
            to_status(StorageError::LogNotFound("a".into())).code(),
            Code::NotFound
        );
        assert_eq!(
            to_status(StorageError::RecordTooLarge { size: 2, max: 1 }).code(),
            Code::InvalidArgument
        );
        let full = StorageError::io("/x", std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(to_status(full).code(), Code::ResourceExhausted);
        assert_eq!(to_status(StorageError::Closed).code(), Code::Unavailable);
        let gap = to_status(StorageError::SequenceOutOfOrder {
            log: "a".into(),
            producer_id: 9,
            sequence: 12,
            expected: 10,
        });
        assert_eq!(gap.code(), Code::FailedPrecondition);
        assert!(gap.message().contains("12") && gap.message().contains("expected 10"));
    }
}
