//! `spool-loadgen spool-append`: unary appends against a Spool node the caller started
//! (`spool bench grpc` starts its own servers, so it cannot measure a node started with
//! `--cluster`). `--clients` tasks, one append of one record at a time each, over one
//! HTTP/2 connection; ack async when `--wait-replicas 0`, else semi-sync:N. For
//! `benches/cluster_overhead.sh`: the same load against nodes with and without a
//! coordinator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use spool::client::Client;
use spool::measure::{new_histogram, record_payload, runtime};
use spool_proto::v1 as pb;

use crate::peer::{check, measured, report, PeerArgs};

const LOG: &str = "bench";

pub fn run_spool_append(args: &PeerArgs) -> Result<()> {
    let rt = runtime(args.threads)?;
    let run = rt.block_on(async {
        let client = Client::connect(&args.addr)
            .await
            .with_context(|| format!("connecting to spool at {}", args.addr))?;
        if client.describe_log(LOG).await.is_err() {
            client.create_log(LOG, None).await?;
        }
        let (mode, k) = match args.wait_replicas {
            0 => (pb::AckMode::Async, 0),
            k => (pb::AckMode::SemiSync, k),
        };
        let w = check(args)?;
        let records = Arc::new(AtomicU64::new(0));
        let under = Arc::new(AtomicU64::new(0));
        let value = Bytes::from(record_payload(args.record_bytes, 0x5B001));
        let mut tasks = Vec::new();
        for _ in 0..args.clients {
            let (client, records, under, value) = (
                client.clone(),
                records.clone(),
                under.clone(),
                value.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut hist = new_histogram();
                loop {
                    let t0 = Instant::now();
                    if t0 >= w.end {
                        return anyhow::Ok(hist);
                    }
                    let r = client
                        .append_with(pb::AppendRequest {
                            log: LOG.into(),
                            records: vec![value.clone()],
                            ack: mode as i32,
                            semi_sync_replicas: k,
                            ..Default::default()
                        })
                        .await;
                    let t1 = Instant::now();
                    match r {
                        Ok(r) if r.replicas_confirmed < k || r.degraded => {
                            under.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => bail!("append: {e}"),
                    }
                    records.fetch_add(1, Ordering::Relaxed);
                    if t0 >= w.warm_end && t1 <= w.end {
                        hist.saturating_record((t1 - t0).as_nanos() as u64);
                    }
                }
            }));
        }
        let load = async {
            let mut hist = new_histogram();
            for t in tasks {
                hist.add(&t.await??)?;
            }
            Ok(hist)
        };
        let shape = match k {
            0 => "unary async".to_owned(),
            k => format!("unary semi-sync:{k}"),
        };
        measured(args, "spool", shape, records, under, w, load).await
    })?;
    report(args, &run)
}
