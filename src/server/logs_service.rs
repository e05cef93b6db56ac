//! spool.v1.Logs: create, list, describe, delete.

use std::sync::Arc;

use spool_proto::v1 as pb;
use spool_storage::{Compression, Log, LogConfig};
use tonic::{Request, Response, Status};

use super::node::Node;
use super::status_map::to_status;

#[derive(Debug, Clone)]
pub struct LogsService {
    pub node: Arc<Node>,
}

/// A proto config over the server's defaults (0 / UNSPECIFIED keep the default).
pub fn config_from_pb(c: Option<pb::LogConfig>, base: &LogConfig) -> Result<LogConfig, Status> {
    let mut out = base.clone();
    let Some(c) = c else { return Ok(out) };
    if c.segment_bytes != 0 {
        out.segment_bytes = c.segment_bytes;
    }
    if c.retention_bytes != 0 {
        out.retention_bytes = Some(c.retention_bytes);
    }
    if c.retention_ms != 0 {
        out.retention_ms = Some(c.retention_ms);
    }
    match pb::Compression::try_from(c.compression) {
        Ok(pb::Compression::Unspecified) => {}
        Ok(pb::Compression::None) => out.compression = Compression::None,
        Ok(pb::Compression::Zstd) => {
            out.compression = Compression::Zstd {
                level: if c.zstd_level == 0 { 1 } else { c.zstd_level },
            }
        }
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown compression {}",
                c.compression
            )))
        }
    }
    if c.initial_segment_bytes != 0 {
        out.initial_segment_bytes = c.initial_segment_bytes;
    }
    if c.compress_min_bytes != 0 {
        out.compress_min_bytes = c.compress_min_bytes;
    }
    out.validate().map_err(to_status)?;
    Ok(out)
}

pub fn config_to_pb(c: &LogConfig) -> pb::LogConfig {
    let (compression, zstd_level) = match c.compression {
        Compression::None => (pb::Compression::None, 0),
        Compression::Zstd { level } => (pb::Compression::Zstd, level),
    };
    pb::LogConfig {
        segment_bytes: c.segment_bytes,
        retention_bytes: c.retention_bytes.unwrap_or(0),
        retention_ms: c.retention_ms.unwrap_or(0),
        compression: compression as i32,
        zstd_level,
        compress_min_bytes: c.compress_min_bytes,
        initial_segment_bytes: c.initial_segment_bytes,
    }
}

pub fn log_info(node: &Node, log: &Log) -> pb::LogInfo {
    let p = log.positions();
    let end = node.visible(log).end();
    let (size, disk) = log.size_bytes();
    pb::LogInfo {
        name: log.name().to_owned(),
        config: Some(config_to_pb(log.config())),
        start_offset: p.start,
        end_offset: end,
        epoch: log.current_epoch(),
        size_bytes: size,
        disk_bytes: disk,
        segments: log.segment_count() as u32,
        incarnation: super::status_service::incarnation_hex(log),
        damaged: log
            .damage()
            .iter()
            .map(super::repair::damaged_range)
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::logs_server::Logs for LogsService {
    async fn create(
        &self,
        req: Request<pb::CreateLogRequest>,
    ) -> Result<Response<pb::LogInfo>, Status> {
        self.node.check_writable()?;
        let req = req.into_inner();
        let storage = &self.node.storage;
        let config = config_from_pb(req.config, &storage.config().default_log)?;
        let log = storage
            .create_log_with(&req.name, config)
            .await
            .map_err(to_status)?;
        self.node.catalog_changed();
        tracing::info!(log = %req.name, "log created");
        Ok(Response::new(log_info(&self.node, &log)))
    }

    async fn list(
        &self,
        _req: Request<pb::ListLogsRequest>,
    ) -> Result<Response<pb::ListLogsResponse>, Status> {
        let storage = &self.node.storage;
        let logs = storage
            .list_logs()
            .iter()
            .filter_map(|n| storage.log(n).ok())
            .map(|l| log_info(&self.node, &l))
            .collect();
        Ok(Response::new(pb::ListLogsResponse { logs }))
    }

    async fn describe(
        &self,
        req: Request<pb::DescribeLogRequest>,
    ) -> Result<Response<pb::LogInfo>, Status> {
        let log = self
            .node
            .storage
            .log(&req.into_inner().name)
            .map_err(to_status)?;
        Ok(Response::new(log_info(&self.node, &log)))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteLogRequest>,
    ) -> Result<Response<pb::DeleteLogResponse>, Status> {
        self.node.check_writable()?;
        let name = req.into_inner().name;
        self.node
            .storage
            .delete_log(&name)
            .await
            .map_err(to_status)?;
        self.node.acks.forget_log(&name);
        self.node.catalog_changed();
        tracing::info!(log = %name, "log deleted");
        Ok(Response::new(pb::DeleteLogResponse {}))
    }
}
