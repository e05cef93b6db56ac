//! The three load shapes of `spool bench grpc`; each bumps the shared counters and hands
//! back its latency histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use spool::client::Client;
use spool_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

type AckReceiver = oneshot::Receiver<spool::client::Result<spool::client::AppendResponse>>;

use super::{AckArg, Counters, GrpcArgs, ModeResult, SubscribeDetail, Window};
use crate::bench::{new_histogram, record_payload, LatencyUs, LOG_NAME};

/// One unary append with the bench's ack mode (and semi-sync k).
async fn append_one(
    client: &Client,
    ack: AckArg,
    records: Vec<Bytes>,
) -> spool::client::Result<spool::client::AppendResponse> {
    let (mode, k) = ack.mode();
    client
        .append_with(pb::AppendRequest {
            log: LOG_NAME.to_owned(),
            records,
            ack: mode as i32,
            semi_sync_replicas: k,
            ..Default::default()
        })
        .await
}

/// `n` distinct records of `size` bytes (cheap to clone into requests).
fn records(n: usize, size: usize, seed: u64) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(record_payload(size, seed + i as u64)))
        .collect()
}

fn since_ns(base: Instant, t: Instant) -> u64 {
    (t - base).as_nanos() as u64
}

pub(super) async fn pipelined(
    args: &GrpcArgs,
    client: &Client,
    w: Window,
    counters: &Arc<Counters>,
) -> Result<ModeResult> {
    let (mode, k) = args.ack.mode();
    let min_confirmed = args.ack.min_confirmed();
    let mut appender = client.appender_with(LOG_NAME, mode, k).await?;
    let batch = records(args.records_per_append, args.record_bytes, 0xA11CE);
    let window = Arc::new(Semaphore::new(args.inflight));
    let (qtx, mut qrx) = mpsc::unbounded_channel::<(Instant, AckReceiver, OwnedSemaphorePermit)>();
    let c = counters.clone();
    // Acks come back in order: one task awaits them as they arrive and frees window slots.
    let collector = tokio::spawn(async move {
        let mut hist = new_histogram();
        while let Some((t0, rx, permit)) = qrx.recv().await {
            let ack = rx.await.map_err(|_| anyhow!("append stream closed"))??;
            let t1 = Instant::now();
            drop(permit);
            c.records.fetch_add(u64::from(ack.count), Ordering::Relaxed);
            c.requests.fetch_add(1, Ordering::Relaxed);
            c.note_ack(&ack, min_confirmed);
            if t0 >= w.warm_end && t1 <= w.end {
                hist.saturating_record((t1 - t0).as_nanos() as u64);
            }
        }
        anyhow::Ok(hist)
    });
    while Instant::now() < w.end {
        let permit = window.clone().acquire_owned().await?;
        let t0 = Instant::now();
        let rx = appender.send(batch.clone()).await?;
        if qtx.send((t0, rx, permit)).is_err() {
            break; // the collector failed; its error is reported below
        }
    }
    drop(qtx);
    drop(appender);
    let hist = collector.await??;
    Ok(ModeResult {
        hist,
        records_per_request: args.records_per_append,
        concurrency: args.inflight,
        connections: 1,
        subscribe: None,
    })
}

pub(super) async fn unary(
    args: &GrpcArgs,
    addr: &str,
    w: Window,
    counters: &Arc<Counters>,
) -> Result<ModeResult> {
    // One client: its pool spreads the calls over the connections.
    let client = crate::bench::connect(addr, Some(args.connections)).await?;
    let recs = records(args.clients, args.record_bytes, 0xB0B);
    let ack = args.ack;
    let min_confirmed = ack.min_confirmed();
    let mut tasks = Vec::with_capacity(args.clients);
    for rec in recs {
        let client = client.clone();
        let c = counters.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            loop {
                let t0 = Instant::now();
                if t0 >= w.end {
                    return anyhow::Ok(hist);
                }
                let reply = append_one(&client, ack, vec![rec.clone()]).await?;
                let t1 = Instant::now();
                c.records.fetch_add(1, Ordering::Relaxed);
                c.requests.fetch_add(1, Ordering::Relaxed);
                c.note_ack(&reply, min_confirmed);
                if t0 >= w.warm_end {
                    hist.saturating_record((t1 - t0).as_nanos() as u64);
                }
            }
        }));
    }
    let mut hist = new_histogram();
    for t in tasks {
        hist.add(&t.await??)?;
    }
    Ok(ModeResult {
        hist,
        records_per_request: 1,
        concurrency: args.clients,
        connections: args.connections,
        subscribe: None,
    })
}

/// Per-record instants, nanoseconds since `base` plus one (0: not yet).
struct Marks(Vec<AtomicU64>);

impl Marks {
    fn new(n: usize) -> Self {
        Marks((0..n).map(|_| AtomicU64::new(0)).collect())
    }
    fn set(&self, i: u64, base: Instant, t: Instant) {
        if let Some(m) = self.0.get(i as usize) {
            m.store(since_ns(base, t) + 1, Ordering::Relaxed);
        }
    }
    fn get(&self, i: usize) -> Option<u64> {
        Some(self.0[i].load(Ordering::Relaxed)).filter(|&v| v > 0)
    }
}

pub(super) async fn subscribe(
    args: &GrpcArgs,
    addr: &str,
    w: Window,
    counters: &Arc<Counters>,
) -> Result<ModeResult> {
    let base = Instant::now();
    let total = (args.rate * (args.warmup + args.seconds)).ceil() as usize + 16;
    let (sent, acked, seen) = (
        Arc::new(Marks::new(total)),
        Arc::new(Marks::new(total)),
        Arc::new(Marks::new(total)),
    );
    // Subscriber and writer on connections of their own, like separate processes.
    let sub_client = crate::bench::connect(addr, None).await?;
    let writer = crate::bench::connect(addr, None).await?;
    let mut stream = Box::pin(sub_client.subscribe(LOG_NAME, None).await?);
    let received = Arc::new(AtomicU64::new(0));
    let subscriber = {
        let (seen, received, c) = (seen.clone(), received.clone(), counters.clone());
        tokio::spawn(async move {
            while let Some(rec) = stream.next().await {
                let t = Instant::now();
                let rec = rec?;
                let head = rec
                    .value
                    .get(..8)
                    .context("a record shorter than 8 bytes")?;
                let seq = u64::from_le_bytes(head.try_into()?);
                seen.set(seq, base, t);
                received.fetch_add(1, Ordering::Relaxed);
                c.records.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    };

    let template = record_payload(args.record_bytes, 0x5EB);
    let ack = args.ack;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut appends = Vec::new();
    let mut seq = 0u64;
    while (seq as usize) < total - 16 {
        let t = tick.tick().await;
        if t.into_std() >= w.end || Instant::now() >= w.end {
            break;
        }
        let mut value = template.clone();
        value[..8].copy_from_slice(&seq.to_le_bytes());
        let (writer, sent, acked, c) = (
            writer.clone(),
            sent.clone(),
            acked.clone(),
            counters.clone(),
        );
        appends.push(tokio::spawn(async move {
            let t0 = Instant::now();
            sent.set(seq, base, t0);
            append_one(&writer, ack, vec![Bytes::from(value)]).await?;
            acked.set(seq, base, Instant::now());
            c.requests.fetch_add(1, Ordering::Relaxed);
            anyhow::Ok(())
        }));
        seq += 1;
    }
    for a in appends {
        a.await??;
    }
    // Give the subscriber a moment for the tail, then stop it.
    let deadline = Instant::now() + Duration::from_secs(2);
    while received.load(Ordering::Relaxed) < seq && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    subscriber.abort();
    if let Ok(Err(e)) = subscriber.await {
        return Err(e.context("subscriber failed"));
    }

    let warm_ns = since_ns(base, w.warm_end) + 1;
    let end_ns = since_ns(base, w.end) + 1;
    let (mut delay, mut e2e, mut lat) = (new_histogram(), new_histogram(), new_histogram());
    let (mut n_acked, mut early, mut missing) = (0u64, 0u64, 0u64);
    for i in 0..seq as usize {
        let (Some(s), Some(a)) = (sent.get(i), acked.get(i)) else {
            continue;
        };
        if s < warm_ns || s > end_ns {
            continue;
        }
        n_acked += 1;
        lat.saturating_record(a - s);
        let Some(r) = seen.get(i) else {
            missing += 1;
            continue;
        };
        e2e.saturating_record(r.saturating_sub(s));
        if r < a {
            early += 1;
        }
        delay.saturating_record(r.saturating_sub(a));
    }
    Ok(ModeResult {
        hist: delay,
        records_per_request: 1,
        concurrency: 1,
        connections: 2,
        subscribe: Some(SubscribeDetail {
            rate_per_s: args.rate,
            acked: n_acked,
            seen_before_ack: early,
            missing,
            append_latency_us: LatencyUs::from_hist(&lat),
            end_to_end_us: LatencyUs::from_hist(&e2e),
        }),
    })
}
