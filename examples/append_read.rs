//! Append records to a log and read them back with the Rust client
//! (`spool::client::Client`): a unary append, a pipelined appender, a read and a
//! subscription.
//!
//! Start a node (`spool serve`, or `spool dev-cluster`), then:
//!
//!     cargo run --example append_read -- [ADDR]
//!
//! ADDR defaults to $SPOOL_ADDR, else 127.0.0.1:7070; several comma-separated addresses
//! (a cluster's nodes) make the client find the primary and follow a failover.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use spool::client::{AckMode, Client};

const LOG: &str = "example";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SPOOL_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:7070".to_owned());
    let client = Client::connect(&addr).await?;

    // Create the log, or use it if an earlier run made it.
    match client.create_log(LOG, None).await {
        Ok(info) => println!("created {}", info.name),
        Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => println!("{LOG} exists"),
        Err(e) => return Err(e.into()),
    }

    // One batch, acknowledged once durable on the primary (async). The ack says where it
    // landed; its read token lets a read on any node wait until it holds these records.
    let records = vec![Bytes::from("hello"), Bytes::from("world")];
    let ack = client.append(LOG, records, AckMode::Async).await?;
    println!(
        "appended {} record(s) at offset {} (epoch {}, read token {})",
        ack.count, ack.first_offset, ack.epoch, ack.read_token
    );
    let first = ack.first_offset;

    // Many batches in flight on one stream: each send returns a receiver for its ack,
    // and the acks come back in the order the batches were sent.
    let mut appender = client.appender(LOG, AckMode::Async).await?;
    let mut acks = Vec::new();
    for i in 0..10 {
        acks.push(
            appender
                .send(vec![Bytes::from(format!("batch {i}"))])
                .await?,
        );
    }
    for ack in acks {
        let ack = ack.await??;
        println!("batch acked at offset {}", ack.first_offset);
    }

    // Read back from the first record appended above.
    let read = client.read(LOG, first, 100).await?;
    for r in &read.records {
        println!("{:>6}  {}", r.offset, String::from_utf8_lossy(&r.value));
    }
    println!("the log ends at {}", read.end_offset);

    // Follow the log: the records from `first` on, then new ones as they arrive. Here we
    // stop after the ones we know about, or after two seconds.
    let mut follow = Box::pin(client.subscribe(LOG, Some(first)).await?);
    let want = read.records.len();
    let got = tokio::time::timeout(Duration::from_secs(2), async {
        let mut n = 0;
        while let Some(r) = follow.next().await {
            r?;
            n += 1;
            if n == want {
                break;
            }
        }
        Ok::<_, spool::client::ClientError>(n)
    })
    .await
    .unwrap_or(Ok(0))?;
    println!("subscription delivered {got} record(s)");
    Ok(())
}
