//! spool.v1.Admin: manual promotion.

use std::sync::Arc;

use spool_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::node::Node;
use super::status_map::to_status;

#[derive(Debug, Clone)]
pub struct AdminService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    /// Stop following (if a replica), persist epoch + 1, start it in every log, then take
    /// writes. Replicas of the old primary that are pointed here follow the new epoch; the
    /// old primary, if it returns, is fenced by the first higher-epoch node it meets.
    async fn promote(
        &self,
        _req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteResponse>, Status> {
        self.node.check_accepting()?;
        let role = &self.node.role;
        let epoch = role.epoch() + 1;
        role.set_epoch(epoch)
            .map_err(|e| Status::internal(format!("persisting epoch {epoch}: {e:#}")))?;
        // Stop the follower before the first write of the new epoch.
        role.become_primary();
        self.node.mark_promoted();
        let storage = &self.node.storage;
        for name in storage.list_logs() {
            let log = storage.log(&name).map_err(to_status)?;
            log.begin_epoch(epoch).await.map_err(to_status)?;
        }
        tracing::warn!(epoch, "promoted to primary");
        Ok(Response::new(pb::PromoteResponse { epoch }))
    }
}
