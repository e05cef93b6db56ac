//! Delayed replicas end to end with real processes and a short delay: visibility only
//! after the delay (checked by polling), delayed deletion, pause/resume, restart, and
//! promotion at an offset or a time followed by a new replica. Every wait is bounded.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{run, wait_until, Server};
use futures::StreamExt;
use spool::client::{AckMode, Client};
use spool_proto::v1 as pb;
use tonic::Code;

const DELAY: Duration = Duration::from_secs(2);
const NEVER_REACHED: &str = "log never reached the replica";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn delayed(upstream: &str, delay: &str) -> Vec<String> {
    [
        "--replica-of",
        upstream,
        "--delay",
        delay,
        "--replica-id",
        "delayed",
    ]
    .map(String::from)
    .to_vec()
}

fn start(dir: &Path, args: &[String]) -> Server {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(dir, &a)
}

/// Every record a delayed node returned was written at least `delay` before we got it.
fn assert_old_enough(records: &[pb::Record], delay: Duration) {
    let now = now_us();
    for r in records {
        assert!(
            r.timestamp_us + delay.as_micros() as u64 <= now,
            "record {} written at {} was visible at {now}, before the delay passed",
            r.offset,
            r.timestamp_us
        );
    }
}

async fn append(c: &Client, log: &str, values: &[&str]) -> pb::AppendResponse {
    let recs = values.iter().map(|v| Bytes::from(v.to_string())).collect();
    c.append(log, recs, AckMode::Async).await.unwrap()
}

/// Poll the delayed node until `log` shows `end` records, checking every read on the way.
async fn wait_visible(addr: &str, log: &str, end: u64, delay: Duration, limit: Duration) {
    let c = Client::connect(addr).await.unwrap();
    let what = format!("{addr} did not show {end} records of {log}");
    wait_until(&what, limit, || async {
        let r = c.read(log, 0, 10_000).await.ok()?;
        assert_old_enough(&r.records, delay);
        assert!(r.end_offset <= end, "{addr} shows {} > {end}", r.end_offset);
        (r.records.len() as u64 == end).then_some(())
    })
    .await
}

/// Wait until the delayed node has durably received `end` records (stored, maybe hidden).
async fn wait_stored(addr: &str, log: &str, end: u64) {
    let c = Client::connect(addr).await.unwrap();
    let what = format!("{addr} did not store {end} of {log}");
    wait_until(&what, Duration::from_secs(30), || async {
        let s = c.status().await.unwrap();
        let stored = s
            .logs
            .iter()
            .any(|l| l.name == log && l.stored_offset >= end);
        stored.then_some(())
    })
    .await
}

#[test]
fn records_become_visible_only_after_the_delay() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start_toml(
        &d.path().join("p"),
        "[replication]\nack_timeout_ms = 500\n",
        &[],
    );
    let r = start(&d.path().join("r"), &delayed(&p.addr, "2s"));
    run(120, async {
        let c = Client::connect(&p.addr).await.unwrap();
        c.create_log("v", None).await.unwrap();
        let rc = Client::connect(&r.addr).await.unwrap();
        // A subscriber from offset 0 checks every record it is pushed.
        let mut sub = wait_until(NEVER_REACHED, Duration::from_secs(10), || async {
            rc.subscribe("v", Some(0)).await.ok().map(Box::pin)
        })
        .await;
        let subscriber = tokio::spawn(async move {
            let mut n = 0u64;
            while n < 25 {
                let rec = sub.next().await.unwrap().unwrap();
                assert_eq!(rec.offset, n);
                assert_old_enough(std::slice::from_ref(&rec), DELAY);
                n += 1;
            }
        });
        // Five batches 300 ms apart; reads right after each append see none of it.
        let mut token = 0;
        for b in 0..5 {
            let vals: Vec<String> = (0..5).map(|i| format!("b{b}-{i}")).collect();
            let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
            let a = append(&c, "v", &refs).await;
            token = a.read_token;
            let got = rc.read("v", 0, 1000).await.unwrap();
            assert_old_enough(&got.records, DELAY);
            assert!(got.end_offset <= a.first_offset, "{got:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // The delayed replica does not count toward semi-sync acks: with no other replica
        // the append is refused before anything is written.
        let e = c
            .append("v", vec![Bytes::from("semi")], AckMode::SemiSync)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
        // ...but reports what it received in the primary's status.
        wait_until("acks never reported", Duration::from_secs(10), || async {
            let s = c.status().await.unwrap();
            let rep = &s.replicas[0];
            assert!(rep.delayed && !rep.counts_for_acks, "{rep:?}");
            let acked = rep
                .logs
                .iter()
                .any(|l| l.name == "v" && l.acked_offset == 25);
            acked.then_some(())
        })
        .await;
        // A read token waits for the horizon, not just for the data.
        let asked = Instant::now();
        let got = rc
            .read_with(pb::ReadRequest {
                log: "v".into(),
                from_offset: token - 1,
                min_offset: token,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_old_enough(&got.records, DELAY);
        assert_eq!(got.records[0].offset, token - 1);
        assert!(asked.elapsed() < Duration::from_secs(5));
        wait_visible(&r.addr, "v", 25, DELAY, Duration::from_secs(15)).await;
        tokio::time::timeout(Duration::from_secs(10), subscriber)
            .await
            .unwrap()
            .unwrap();
        let s = rc.status().await.unwrap();
        assert_eq!(s.delay_ms, 2000);
        let l = &s.logs[0];
        assert_eq!(
            (l.end_offset, l.horizon_offset, l.stored_offset),
            (25, 25, 25)
        );
        assert!(l.horizon_time_us > 0 && l.horizon_time_us <= now_us() - 2_000_000);
    });
    r.stop();
    p.stop();
}

#[test]
fn deleted_log_stays_readable_until_the_delay_passes() {
    let delay = Duration::from_secs(3);
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let r = start(&d.path().join("r"), &delayed(&p.addr, "3s"));
    let r = run(120, async move {
        let c = Client::connect(&p.addr).await.unwrap();
        c.create_log("x", None).await.unwrap();
        c.create_log("keep", None).await.unwrap();
        append(&c, "x", &["one", "two", "three"]).await;
        wait_visible(&r.addr, "x", 3, delay, Duration::from_secs(15)).await;
        let deleted_at = Instant::now();
        c.delete_log("x").await.unwrap();
        // A restart in the middle keeps the pending deletion.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = r.restart();
        let rc = Client::connect(&r.addr).await.unwrap();
        let s = rc.status().await.unwrap();
        let x = s
            .logs
            .iter()
            .find(|l| l.name == "x")
            .expect("x still there");
        assert!(x.pending_delete_at_us > 0, "{x:?}");
        loop {
            match rc.read("x", 0, 10).await {
                Ok(got) => {
                    assert_eq!(got.records.len(), 3);
                    assert_eq!(got.records[2].value, Bytes::from("three"));
                }
                Err(e) => {
                    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
                    break;
                }
            }
            assert!(
                deleted_at.elapsed() < delay + Duration::from_secs(5),
                "x was never deleted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            deleted_at.elapsed() >= delay - Duration::from_millis(100),
            "deleted after {:?}, before the delay",
            deleted_at.elapsed()
        );
        // Other logs are untouched, and the deletion is not re-applied after a restart.
        rc.describe_log("keep").await.unwrap();
        (r, p)
    });
    let (r, p) = r;
    let r = r.restart();
    run(30, async {
        let rc = Client::connect(&r.addr).await.unwrap();
        assert_eq!(
            rc.describe_log("x").await.unwrap_err().code(),
            Some(Code::NotFound)
        );
        rc.describe_log("keep").await.unwrap();
    });
    r.stop();
    p.stop();
}

#[test]
fn pause_holds_the_horizon_across_a_restart_and_resume_catches_up() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let r = start(&d.path().join("r"), &delayed(&p.addr, "2s"));
    let (r, p) = run(120, async move {
        let c = Client::connect(&p.addr).await.unwrap();
        c.create_log("h", None).await.unwrap();
        append(&c, "h", &["a0", "a1"]).await;
        wait_visible(&r.addr, "h", 2, DELAY, Duration::from_secs(15)).await;
        common::stdout(&r.cli(&["admin", "pause"]));
        let rc = Client::connect(&r.addr).await.unwrap();
        assert!(rc.status().await.unwrap().paused);
        let frozen = rc.describe_log("h").await.unwrap().end_offset;
        assert_eq!(frozen, 2);
        append(&c, "h", &["b0", "b1", "b2"]).await;
        // Data keeps arriving and is stored, but the horizon holds past the delay.
        wait_stored(&r.addr, "h", 5).await;
        let until = Instant::now() + DELAY + Duration::from_millis(1000);
        while Instant::now() < until {
            let got = rc.read("h", 0, 100).await.unwrap();
            assert_eq!(
                got.records.len() as u64,
                frozen,
                "the horizon moved while paused"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Still paused and frozen after a restart.
        let r = r.restart();
        let rc = Client::connect(&r.addr).await.unwrap();
        let s = rc.status().await.unwrap();
        assert!(s.paused);
        for _ in 0..10 {
            assert_eq!(rc.describe_log("h").await.unwrap().end_offset, frozen);
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        common::stdout(&r.cli(&["admin", "resume"]));
        wait_visible(&r.addr, "h", 5, DELAY, Duration::from_secs(10)).await;
        assert!(!rc.status().await.unwrap().paused);
        // Pause is refused on a node that is not delayed.
        let e = c.pause().await.unwrap_err();
        assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
        (r, p)
    });
    r.stop();
    p.stop();
}

#[test]
fn restarted_delayed_replica_keeps_its_horizon() {
    let delay = Duration::from_secs(3);
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let r = start(&d.path().join("r"), &delayed(&p.addr, "3s"));
    let (r, p) = run(120, async move {
        let c = Client::connect(&p.addr).await.unwrap();
        c.create_log("k", None).await.unwrap();
        append(&c, "k", &["old"]).await;
        wait_visible(&r.addr, "k", 1, delay, Duration::from_secs(15)).await;
        append(&c, "k", &["new0", "new1"]).await;
        wait_stored(&r.addr, "k", 3).await;
        let r = r.restart();
        // Right after the restart nothing hidden shows up early (checked on every poll).
        wait_visible(&r.addr, "k", 3, delay, Duration::from_secs(15)).await;
        (r, p)
    });
    r.stop();
    p.stop();
}

/// Promote the delayed replica at a point, write in the new epoch, and have another
/// replica follow it to an identical log.
fn promote_then_follow(at: &str, expect_end: impl FnOnce(u64) -> u64) {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let r = start(&d.path().join("r"), &delayed(&p.addr, "2s"));
    let point = run(60, async {
        let c = Client::connect(&p.addr).await.unwrap();
        c.create_log("g", None).await.unwrap();
        for i in 0..10 {
            append(&c, "g", &[&format!("good{i}")]).await;
        }
        wait_visible(&r.addr, "g", 10, DELAY, Duration::from_secs(15)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let point = now_us();
        tokio::time::sleep(Duration::from_millis(200)).await;
        append(&c, "g", &["garbage0", "garbage1", "garbage2"]).await;
        wait_stored(&r.addr, "g", 13).await;
        point
    });
    let at_arg = at.replace("POINT", &point.to_string());
    let mut args = vec!["admin", "promote", "--yes"];
    args.extend(at_arg.split(' '));
    common::stdout(&r.cli(&args));
    let want = expect_end(10);
    let r2 = Server::start(
        &d.path().join("r2"),
        &["--replica-of", &r.addr, "--replica-id", "r2"],
    );
    run(60, async {
        let rc = Client::connect(&r.addr).await.unwrap();
        let s = rc.status().await.unwrap();
        assert_eq!(s.role, "primary");
        assert_eq!(s.delay_ms, 0);
        let info = rc.describe_log("g").await.unwrap();
        assert_eq!(info.end_offset, want, "the log ends exactly at the point");
        let got = rc.read("g", 0, 100).await.unwrap();
        assert!(got.records.iter().all(|r| !r.value.starts_with(b"garbage")));
        let a = append(&rc, "g", &["after"]).await;
        assert_eq!(a.first_offset, want);
        assert!(a.epoch >= 2, "{a:?}");
        assert_eq!(a.epoch, s.epoch);
        let r2c = Client::connect(&r2.addr).await.unwrap();
        wait_until(
            "r2 did not follow the promoted node",
            Duration::from_secs(30),
            || async {
                let end = r2c.describe_log("g").await.map_or(0, |i| i.end_offset);
                (end > want).then_some(())
            },
        )
        .await;
    });
    r2.stop();
    r.stop();
    p.stop();
    let want = common::digests(&d.path().join("r"));
    assert_eq!(want[0].2, 11);
    assert_eq!(common::digests(&d.path().join("r2")), want);
}

#[test]
fn promote_at_offset_cuts_there_and_others_follow() {
    promote_then_follow("--at-offset 10", |good| good);
}

#[test]
fn promote_at_time_cuts_before_newer_records() {
    promote_then_follow("--at-time POINTus", |good| good);
}

#[test]
fn retention_by_age_waits_the_delay_too() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let r = start(&d.path().join("r"), &delayed(&p.addr, "2s"));
    run(60, async {
        let c = Client::connect(&p.addr).await.unwrap();
        let cfg = pb::LogConfig {
            retention_ms: 60_000,
            ..Default::default()
        };
        c.create_log("aged", Some(cfg)).await.unwrap();
        let rc = Client::connect(&r.addr).await.unwrap();
        let info = wait_until(NEVER_REACHED, Duration::from_secs(20), || async {
            rc.describe_log("aged").await.ok()
        })
        .await;
        // Segments age out of the delayed replica one delay after they do upstream.
        assert_eq!(info.config.unwrap().retention_ms, 62_000);
    });
    r.stop();
    p.stop();
}

#[test]
fn a_replica_of_a_delayed_replica_sees_only_the_delayed_view() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let dl = start(&d.path().join("d"), &delayed(&p.addr, "2s"));
    let below = Server::start(
        &d.path().join("below"),
        &["--replica-of", &dl.addr, "--replica-id", "below"],
    );
    run(120, async {
        let c = Client::connect(&p.addr).await.unwrap();
        c.create_log("c", None).await.unwrap();
        for i in 0..5 {
            append(&c, "c", &[&format!("r{i}")]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The replica below the delayed node is bounded by the delayed node's horizon: it
        // never holds (let alone shows) a record younger than the delay.
        wait_stored(&dl.addr, "c", 5).await;
        wait_visible(&below.addr, "c", 5, DELAY, Duration::from_secs(30)).await;
        let s = common::status(&below.addr).await;
        assert_eq!(s.primary_addr, p.addr, "the primary's address travels down");
    });
    below.stop();
    dl.stop();
    p.stop();
}

/// A subscriber on a delayed replica that was sent records past the point the node is then
/// promoted at is told (ABORTED, with the offset to subscribe from again): those offsets
/// will hold other records.
#[test]
fn a_subscriber_past_a_promotion_point_is_told() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let r = start(&d.path().join("r"), &delayed(&p.addr, "1s"));
    run(60, async {
        let c = Client::connect(&p.addr).await.unwrap();
        c.create_log("s", None).await.unwrap();
        for i in 0..10 {
            append(&c, "s", &[&format!("v{i}")]).await;
        }
        wait_stored(&r.addr, "s", 10).await;
        let rc = Client::connect(&r.addr).await.unwrap();
        let mut sub = Box::pin(rc.subscribe("s", Some(0)).await.unwrap());
        for i in 0..10u64 {
            let rec = tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .expect("records become visible after the delay")
                .unwrap()
                .unwrap();
            assert_eq!(rec.offset, i);
        }
        common::stdout(&r.cli(&["admin", "promote", "--at-offset", "6", "--yes"]));
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the subscriber hears of the cut")
            .unwrap()
            .unwrap_err();
        let s = match e {
            spool::client::ClientError::Rpc(s) => s,
            other => panic!("{other}"),
        };
        assert_eq!(s.code(), Code::Aborted, "{s:?}");
        assert!(
            s.message().contains("subscribe again from 6"),
            "{}",
            s.message()
        );
    });
    r.stop();
    p.stop();
}

/// A replica below a delayed node, far behind inside that node's active segment, fetches
/// the durable span only up to the node's horizon: what it receives is never younger
/// than the delay, and it ends identical once the delay has passed.
#[test]
fn a_replica_below_a_delayed_node_fetches_a_span_only_up_to_the_horizon() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start_toml(&d.path().join("p"), &common::fixed_segments(67108864), &[]);
    let dl = start(&d.path().join("d"), &delayed(&p.addr, "2s"));
    let below_dir = d.path().join("below");
    let (below, end) = run(120, async {
        let c = Client::connect(&p.addr).await.unwrap();
        c.create_log("big", None).await.unwrap();
        // 24 MiB visible on the delayed node, then 8 MiB that are not yet when the replica
        // below it starts.
        let visible = common::load_records(&p.addr, "big", 0..48, 32 << 10, "f").await;
        common::reach_end(&dl.addr, "big", visible).await;
        let end = common::load_records(&p.addr, "big", 48..64, 32 << 10, "f").await;
        wait_stored(&dl.addr, "big", end).await;
        let below = Server::start(
            &below_dir,
            &["--replica-of", &dl.addr, "--replica-id", "below"],
        );
        common::reach_end(&below.addr, "big", visible).await;
        let bc = Client::connect(&below.addr).await.unwrap();
        let last = bc.describe_log("big").await.unwrap().end_offset;
        let got = bc.read("big", last - 1, 1).await.unwrap().records;
        assert_old_enough(&got, DELAY);
        common::reach_end(&below.addr, "big", end).await;
        let l = common::upstream_log(&bc, "big").await.unwrap();
        assert!(
            l.segment_bytes_fetched >= 16 << 20,
            "the visible span was not fetched: {l:?}"
        );
        (below, end)
    });
    below.stop();
    dl.stop();
    p.stop();
    let digests = common::digests(&below_dir);
    assert_eq!(digests, common::digests(&d.path().join("p")));
    assert_eq!(digests[0].2, end);
}
