//! spool.v1.Status: role, epoch, per-log positions, uptime, version.

use std::sync::Arc;

use spool_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::node::Node;

#[derive(Debug, Clone)]
pub struct StatusService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl pb::status_server::Status for StatusService {
    async fn get(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let storage = &self.node.storage;
        let mut epoch = 0;
        let logs = storage
            .list_logs()
            .iter()
            .filter_map(|n| storage.log(n).ok())
            .map(|l| {
                let p = l.positions();
                epoch = epoch.max(l.current_epoch());
                pb::LogPositions {
                    name: l.name().to_owned(),
                    start_offset: p.start,
                    end_offset: p.durable,
                    written_offset: p.written,
                    epoch: l.current_epoch(),
                    size_bytes: l.size_bytes().0,
                }
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            role: "primary".into(),
            epoch,
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_ms: self.node.started.elapsed().as_millis() as u64,
            io_backend: storage.backend_name().into(),
            data_dir: storage.config().data_dir.display().to_string(),
            logs,
        }))
    }
}
