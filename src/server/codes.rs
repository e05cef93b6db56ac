//! Codes for requests that never reach a handler: tonic answers a request too large to
//! decode with OUT_OF_RANGE (the code this API uses for offsets) and a malformed message
//! with INTERNAL. Both are the client's doing and are said so: RESOURCE_EXHAUSTED naming
//! the limit, and INVALID_ARGUMENT.

use http::{HeaderMap, Response};
use tonic::{Code, Status};

/// Rewrite the status of a trailers-only error response (a failed decode), if it is one of
/// those two.
pub fn fix_decode_errors<B>(mut resp: Response<B>) -> Response<B> {
    if let Some(fixed) = fixed_status(resp.headers()) {
        let _ = fixed.add_header(resp.headers_mut());
    }
    resp
}

fn fixed_status(headers: &HeaderMap) -> Option<Status> {
    let status = Status::from_header_map(headers)?;
    let msg = status.message();
    match status.code() {
        Code::OutOfRange if msg.contains("decoded message length too large") => {
            Some(Status::resource_exhausted(format!(
                "request too large: {}; split the append into smaller ones",
                msg.trim_start_matches("Error, ")
            )))
        }
        Code::Internal if msg.starts_with("failed to decode Protobuf message") => Some(
            Status::invalid_argument(format!("malformed request: {msg}")),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(s: Status) -> HeaderMap {
        let mut h = HeaderMap::new();
        s.add_header(&mut h).unwrap();
        h
    }

    #[test]
    fn decode_failures_get_the_clients_codes() {
        let too_large = Status::out_of_range(
            "Error, decoded message length too large: found 40000000 bytes, the limit is: 33554432 bytes",
        );
        let s = fixed_status(&headers_of(too_large)).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("33554432"), "{}", s.message());
        let malformed = Status::internal("failed to decode Protobuf message: invalid varint");
        assert_eq!(
            fixed_status(&headers_of(malformed)).unwrap().code(),
            Code::InvalidArgument
        );
        // Offsets out of range, and other internal errors, stay as they are.
        assert!(fixed_status(&headers_of(Status::out_of_range(
            "offset 9 is out of range"
        )))
        .is_none());
        assert!(fixed_status(&headers_of(Status::internal("io error"))).is_none());
    }
}
