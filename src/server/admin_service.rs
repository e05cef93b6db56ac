//! spool.v1.Admin: promotion (plain, or at a point on a delayed replica), and pausing and
//! resuming a delayed replica's horizon.

use std::sync::Arc;

use spool_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::failover::AdminOp;
use super::node::Node;
use super::promote::{promote_scoped, PromoteAt, Scope};
use super::quarantine;
use super::repair::repair_log;
use super::replication::delay::Delay;
use super::status_map::to_status;

#[derive(Debug, Clone)]
pub struct AdminService {
    pub node: Arc<Node>,
}

impl AdminService {
    fn delay(&self) -> Result<&Arc<Delay>, Status> {
        self.node.active_delay().ok_or_else(|| {
            Status::failed_precondition(
                "this node is not a delayed replica (start it with --replica-of and --delay); \
                 pause and resume apply to delayed replicas only",
            )
        })
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    /// Stop following (if a replica), persist epoch + 1, start it in every log, then take
    /// writes. Replicas of the old primary that are pointed here follow the new epoch; the
    /// old primary, if it returns, is fenced by the first higher-epoch node it meets.
    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteResponse>, Status> {
        let req = req.into_inner();
        let at = PromoteAt::from_pb(req.at);
        let role = self.node.role();
        if at == PromoteAt::Everything && role.is_primary() && !role.is_fenced() {
            return Err(Status::failed_precondition(format!(
                "this node is already the primary (epoch {}): nothing to promote (a new epoch \
                 would only drop its replicas); promote a replica instead",
                role.epoch()
            )));
        }
        let scope = Scope {
            logs: req.logs,
            dry_run: req.dry_run,
        };
        if at == PromoteAt::Everything && scope.dry_run {
            return Err(Status::invalid_argument(
                "a dry run needs a point (at_offset or at_time_us): a plain promotion cuts nothing",
            ));
        }
        Ok(Response::new(
            promote_scoped(&self.node, at, None, &scope).await?,
        ))
    }

    async fn scrub(
        &self,
        req: Request<pb::ScrubRequest>,
    ) -> Result<Response<pb::ScrubResponse>, Status> {
        self.node.check_accepting()?;
        let log = req.into_inner().log;
        let report = self
            .node
            .storage()
            .scrub_now((!log.is_empty()).then_some(log.as_str()))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ScrubResponse {
            segments: report.segments,
            bytes: report.bytes,
            index_rebuilt: report.index_rebuilt,
            found: report
                .damage
                .into_iter()
                .map(|(log, base, h)| pb::ScrubFinding {
                    log,
                    range: Some(pb::DamagedRange {
                        first_offset: h.first_offset,
                        next_offset: h.next_offset().unwrap_or(0),
                        segment_base: base,
                        reason: h.reason.to_string(),
                    }),
                })
                .collect(),
        }))
    }

    async fn repair(
        &self,
        req: Request<pb::RepairRequest>,
    ) -> Result<Response<pb::RepairResponse>, Status> {
        self.node.check_accepting()?;
        let req = req.into_inner();
        let names = if req.log.is_empty() {
            self.node.storage().list_logs()
        } else {
            vec![req.log.clone()]
        };
        let from = (!req.from_addr.is_empty()).then_some(req.from_addr.as_str());
        let mut out = pb::RepairResponse::default();
        for name in names {
            let log = self.node.storage().log(&name).map_err(to_status)?;
            let r = repair_log(&self.node, &log, from).await;
            out.repaired.extend(r.repaired);
            out.left.extend(r.left);
            out.errors.extend(r.errors);
        }
        Ok(Response::new(out))
    }

    async fn pause(
        &self,
        _req: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        let cutoff = self
            .delay()?
            .pause()
            .await
            .map_err(|e| Status::internal(format!("pausing: {e}")))?;
        Ok(Response::new(pb::PauseResponse {
            horizon_time_us: cutoff,
        }))
    }

    async fn resume(
        &self,
        _req: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::ResumeResponse>, Status> {
        self.delay()?
            .resume()
            .await
            .map_err(|e| Status::internal(format!("resuming: {e}")))?;
        Ok(Response::new(pb::ResumeResponse {}))
    }

    async fn quarantine_list(
        &self,
        req: Request<pb::QuarantineListRequest>,
    ) -> Result<Response<pb::QuarantineListResponse>, Status> {
        let log = req.into_inner().log;
        let tails = quarantine::list(&self.node, (!log.is_empty()).then_some(log))
            .await
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        Ok(Response::new(pb::QuarantineListResponse { tails }))
    }

    async fn quarantine_read(
        &self,
        req: Request<pb::QuarantineReadRequest>,
    ) -> Result<Response<pb::QuarantineReadResponse>, Status> {
        quarantine::read(&self.node, req.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| Status::not_found(format!("{e:#}")))
    }

    async fn switchover(
        &self,
        req: Request<pb::SwitchoverRequest>,
    ) -> Result<Response<pb::SwitchoverResponse>, Status> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let to = req.into_inner().to;
        self.node
            .cluster_op(AdminOp::Switchover { to, reply })
            .await?;
        let paused = rx
            .await
            .map_err(|_| Status::unavailable("the cluster agent stopped"))??;
        Ok(Response::new(pb::SwitchoverResponse {
            paused_ms: paused.as_millis() as u64,
        }))
    }

    async fn failover(
        &self,
        req: Request<pb::FailoverRequest>,
    ) -> Result<Response<pb::FailoverResponse>, Status> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let r = req.into_inner();
        let op = AdminOp::Failover {
            to: r.to,
            force: r.force,
            reply,
        };
        self.node.cluster_op(op).await?;
        rx.await
            .map_err(|_| Status::unavailable("the cluster agent stopped"))??;
        Ok(Response::new(pb::FailoverResponse {}))
    }
}
