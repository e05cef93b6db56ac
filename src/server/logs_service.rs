//! spool.v1.Logs: create, list, describe, delete.

use std::sync::Arc;

use spool_proto::v1 as pb;
use spool_storage::{Compression, Log, LogConfig};
use tonic::{Request, Response, Status};

use super::auth;
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
        auth::check_log(&req, &req.get_ref().name)?;
        let req = req.into_inner();
        let storage = &self.node.storage();
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
        req: Request<pb::ListLogsRequest>,
    ) -> Result<Response<pb::ListLogsResponse>, Status> {
        let storage = &self.node.storage();
        let logs = storage
            .list_logs()
            .iter()
            .filter(|n| auth::sees_log(&req, n))
            .filter_map(|n| storage.log(n).ok())
            .map(|l| log_info(&self.node, &l))
            .collect();
        Ok(Response::new(pb::ListLogsResponse { logs }))
    }

    async fn describe(
        &self,
        req: Request<pb::DescribeLogRequest>,
    ) -> Result<Response<pb::LogInfo>, Status> {
        auth::check_log(&req, &req.get_ref().name)?;
        let log = self
            .node
            .storage()
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
            .storage()
            .delete_log(&name)
            .await
            .map_err(to_status)?;
        self.node.acks().forget_log(&name);
        self.node.catalog_changed();
        tracing::info!(log = %name, "log deleted");
        Ok(Response::new(pb::DeleteLogResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any config a client sends is either refused with INVALID_ARGUMENT or turned into
        /// one that validates; nothing panics.
        #[test]
        fn any_log_config_is_refused_or_valid(
            segment_bytes in any::<u64>(),
            retention_bytes in any::<u64>(),
            retention_ms in any::<u64>(),
            compression in any::<i32>(),
            zstd_level in any::<i32>(),
            compress_min_bytes in any::<u32>(),
            initial_segment_bytes in any::<u64>(),
            small in any::<bool>(),
        ) {
            let pick = |v: u64| if small { v % (4 << 20) } else { v };
            let c = pb::LogConfig {
                segment_bytes: pick(segment_bytes),
                retention_bytes,
                retention_ms,
                compression: compression % 4,
                zstd_level: zstd_level % 25,
                compress_min_bytes,
                initial_segment_bytes: pick(initial_segment_bytes),
            };
            match config_from_pb(Some(c), &LogConfig::default()) {
                Ok(cfg) => prop_assert!(cfg.validate().is_ok()),
                Err(s) => prop_assert_eq!(s.code(), tonic::Code::InvalidArgument),
            }
        }

        /// Log names: accepted exactly when they are 1..=200 bytes of the allowed
        /// characters, not starting with '.' or '-'; a refusal is short whatever the name.
        #[test]
        fn any_log_name_is_refused_or_valid(name in ".{0,300}") {
            let ok = spool_storage::validate_log_name(&name);
            let want = !name.is_empty()
                && name.len() <= 200
                && !name.starts_with(['.', '-'])
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            prop_assert_eq!(ok.is_ok(), want);
            if let Err(e) = ok {
                prop_assert!(e.to_string().len() < 400);
            }
        }
    }
}
