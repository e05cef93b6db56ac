//! FetchFrames: whole frames as stored, for a peer repairing damaged records or a primary
//! taking back records only a replica still holds. The asker checks every frame.

use spool_proto::v1 as pb;
use tonic::Status;

use super::upstream::check_cluster;
use crate::server::node::Node;
use crate::server::status_map::to_status;

/// Most bytes of frames one answer carries (its messages stay under the decoding limit).
const ANSWER_BYTES_MAX: usize = 8 << 20;
const ANSWER_BYTES_DEFAULT: usize = 4 << 20;

pub fn fetch_frames(
    node: &Node,
    req: pb::FetchFramesRequest,
) -> Result<pb::FetchFramesResponse, Status> {
    check_cluster(node, &req.cluster_id)?;
    let log = node.storage().log(&req.log).map_err(to_status)?;
    let ours = log.incarnation();
    if req.incarnation != 0 && ours != 0 && req.incarnation != ours {
        return Err(Status::failed_precondition(format!(
            "log {:?} here is incarnation {ours:016x}, the asker's {:016x}: not the same log",
            req.log, req.incarnation
        )));
    }
    let visible = node.visible(&log);
    let end = visible.end();
    let until = if req.to_offset == 0 {
        end
    } else {
        req.to_offset.min(end)
    };
    let max = match req.max_bytes as usize {
        0 => ANSWER_BYTES_DEFAULT,
        n => n.min(ANSWER_BYTES_MAX),
    };
    let reader = log.reader();
    let mut frames = Vec::new();
    let mut next = req.from_offset;
    while next < until && frames.len() < max {
        let chunk = reader
            .read_frames_until(next, max - frames.len(), until)
            .map_err(to_status)?;
        if chunk.bytes.is_empty() {
            break;
        }
        if chunk.first_offset != next {
            return Err(Status::invalid_argument(format!(
                "offset {next} of log {:?} is not where a frame starts here (the frame holding it starts at {})",
                req.log, chunk.first_offset
            )));
        }
        frames.extend_from_slice(&chunk.bytes);
        next = chunk.next_offset;
    }
    Ok(pb::FetchFramesResponse {
        frames: frames.into(),
        first_offset: req.from_offset,
        next_offset: next,
        end_offset: end,
        epochs: super::plan::epoch_starts(log.epochs().entries()),
        incarnation: ours,
    })
}
