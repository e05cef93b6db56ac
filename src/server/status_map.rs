//! Storage errors as gRPC statuses: a code that fits the cause and a message a person can
//! act on.

use spool_storage::StorageError;
use tonic::{Code, Status};

pub fn to_status(e: StorageError) -> Status {
    let msg = e.to_string();
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
    Status::new(code, msg)
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
