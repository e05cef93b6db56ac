//! Acknowledged records are never lost, invented or silently different between nodes, with
//! real processes on loopback: a flipped byte in synced data is damage (kept, reported,
//! repaired from a peer), never a torn tail cut with everything after it; a replica holding
//! records its primary lost keeps them and gives them back; a replica cut back is counted
//! only for what it holds; identities (cluster, log incarnation) are checked at every
//! handshake; a promoted node does not follow its own follower. Each case fails on the
//! code before these checks.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{describe, replica_of, run, wait_until, Server};
use futures::StreamExt;
use spool::client::{AckMode, Client};
use spool_proto::v1 as pb;
use tonic::Code;

fn value(tag: &str, i: u64) -> Bytes {
    Bytes::from(format!("{tag}-{i:04}-{}", "v".repeat(200)))
}

/// Append `n` one-record batches of `tag` to `log` (async acks); returns the end.
async fn append_each(addr: &str, log: &str, tag: &str, n: u64) -> u64 {
    let c = Client::connect(addr).await.unwrap();
    let mut end = 0;
    for i in 0..n {
        let r = c
            .append(log, vec![value(tag, i)], AckMode::Async)
            .await
            .unwrap();
        end = r.first_offset + u64::from(r.count);
    }
    end
}

/// Create `log` on the primary at `paddr`, append `n` batches of `tag` and wait until the
/// replica at `raddr` has them all; returns the end.
async fn replicated(paddr: &str, raddr: &str, log: &str, tag: &str, n: u64) -> u64 {
    common::create_log(paddr, log).await;
    let end = append_each(paddr, log, tag, n).await;
    common::reach_end(raddr, log, end).await;
    end
}

/// A primary under `d/p` and its replica under `d/r`.
fn primary_and_replica(d: &Path) -> (Server, Server) {
    let p = Server::start(&d.join("p"), &[]);
    let r = Server::start(&d.join("r"), &replica_of(&p.addr, &[]));
    (p, r)
}

/// Records of `log` on `addr` from `from`, until the end or an error (returned too).
async fn read_from(addr: &str, log: &str, from: u64) -> (Vec<pb::Record>, Option<tonic::Status>) {
    let c = Client::connect(addr).await.unwrap();
    let mut out: Vec<pb::Record> = Vec::new();
    loop {
        let at = out.last().map_or(from, |r| r.offset + 1);
        match c.read(log, at, 1000).await {
            Ok(r) if r.records.is_empty() => return (out, None),
            Ok(r) => out.extend(r.records),
            Err(spool::client::ClientError::Rpc(s)) => return (out, Some(s)),
            Err(e) => panic!("{e}"),
        }
    }
}

/// The active (last) segment file of `log` under a data directory, and its base offset.
fn active_segment(data: &Path, log: &str) -> (PathBuf, u64) {
    let dir = data.join("logs").join(log);
    let (name, _) = common::segment_files(&dir).pop().unwrap();
    let base = spool_storage::segment::parse_segment_name(&name).unwrap();
    (dir.join(name), base)
}

/// Byte positions of the frames of a segment file (in order).
fn frame_starts(seg: &Path, base: u64) -> Vec<u64> {
    let bytes = std::fs::read(seg).unwrap();
    let s = spool_storage::segment::scan(&bytes, 0, base, None, 1, None);
    s.entries.iter().map(|e| u64::from(e.pos)).collect()
}

fn flip(path: &Path, pos: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[pos as usize] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// Flip a payload byte of frames `frames` of the active segment of `log`.
fn flip_frames(data: &Path, log: &str, frames: &[usize]) {
    let (seg, base) = active_segment(data, log);
    let starts = frame_starts(&seg, base);
    for &i in frames {
        flip(
            &seg,
            starts[i] + spool_storage::format::HEADER_BYTES as u64 + 5,
        );
    }
}

/// A byte flipped in a synced batch of the active segment, after a clean stop or a kill:
/// the log keeps every record (none cut), the damaged one reads as DATA_LOSS naming its
/// offsets and where to read on, the others read back, appends go on, and `spool check`
/// still reports the damage.
#[test]
fn a_flipped_byte_in_synced_data_is_damage_kept_and_reported_not_cut() {
    for kill in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a");
        let a = Server::start(&dir, &[]);
        let addr = a.addr.clone();
        let end = run(30, async {
            common::create_log(&addr, "k").await;
            append_each(&addr, "k", "x", 20).await
        });
        if kill {
            a.kill9();
        } else {
            a.stop();
        }
        // After a clean stop even the last batch is known synced.
        flip_frames(&dir, "k", if kill { &[10] } else { &[10, 19] });
        let a = Server::start(&dir, &[]);
        run(30, async {
            assert_eq!(
                describe(&a.addr, "k").await.end_offset,
                end,
                "nothing cut (kill={kill})"
            );
            let (good, err) = read_from(&a.addr, "k", 0).await;
            assert_eq!(good.len(), 10, "every record before the damage first");
            let err = err.expect("the damaged record fails");
            assert_eq!(err.code(), Code::DataLoss, "{err:?}");
            assert!(
                err.message().contains("from offset 10 to 11")
                    && err.message().contains("read on from offset 11"),
                "{}",
                err.message()
            );
            // A subscriber from 0 gets every good record first, then the error.
            let c = Client::connect(&a.addr).await.unwrap();
            let mut sub = Box::pin(c.subscribe("k", Some(0)).await.unwrap());
            for o in 0..10 {
                assert_eq!(sub.next().await.unwrap().unwrap().offset, o);
            }
            let e = sub.next().await.unwrap().unwrap_err();
            assert_eq!(e.code(), Some(Code::DataLoss), "{e}");
            let (after, _) = read_from(&a.addr, "k", 11).await;
            assert_eq!(after[0].offset, 11);
            assert_eq!(after[0].value, value("x", 11));
            assert!(!describe(&a.addr, "k").await.damaged.is_empty());
            let r = Client::connect(&a.addr)
                .await
                .unwrap()
                .append("k", vec![Bytes::from("next")], AckMode::Async)
                .await
                .unwrap();
            assert_eq!(r.first_offset, end);
        });
        a.stop();
        let check = common::check(&dir, &[]);
        assert!(!check.status.success(), "check must still see the damage");
    }
}

/// The primary's copy is damaged while its replica's is whole: nothing is cut on either.
/// Damage inside the log is repaired from the replica; a damaged end (the last frame's
/// length lost) is taken back from the replica, which holds those records past the
/// primary's end in its epoch, before the primary takes another write. Both end equal.
#[test]
fn a_damaged_primary_repairs_from_its_replica_and_the_replica_never_truncates() {
    let d = tempfile::tempdir().unwrap();
    let (p, r) = primary_and_replica(d.path());
    let pdir = p.data_dir.clone();
    let (paddr, raddr) = (p.addr.clone(), r.addr.clone());
    run(60, async {
        let c = Client::connect(&paddr).await.unwrap();
        c.create_log("mid", None).await.unwrap();
        c.create_log("end", None).await.unwrap();
        for log in ["mid", "end"] {
            let end = append_each(&paddr, log, log, 30).await;
            common::reach_end(&raddr, log, end).await;
        }
    });
    p.stop();
    flip_frames(&pdir, "mid", &[12]);
    let (seg, base) = active_segment(&pdir, "end");
    let last = *frame_starts(&seg, base).last().unwrap();
    flip(&seg, last + 13); // its length field: where the frame ends is not known
    let p = Server::start_on(&paddr, &pdir, &[]);
    run(90, async {
        wait_until("the damage repaired", Duration::from_secs(60), || async {
            let mid = describe(&paddr, "mid").await;
            let end = describe(&paddr, "end").await;
            let done = mid.damaged.is_empty() && end.damaged.is_empty() && end.end_offset == 30;
            done.then_some(())
        })
        .await;
        let (all, err) = read_from(&paddr, "mid", 0).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(all.len(), 30);
        assert_eq!(all[12].value, value("mid", 12));
        // The replica kept everything throughout, and follows on.
        assert_eq!(describe(&raddr, "end").await.end_offset, 30);
        let more = append_each(&paddr, "end", "more", 3).await;
        assert_eq!(more, 33);
        common::reach_end(&raddr, "end", 33).await;
    });
    common::stop_identical(r, p);
}

/// A replica whose log was cut back (here: its new primary, a delayed replica promoted
/// at an offset, tells it to truncate) counts only for what it holds after the cut: frozen
/// right after, a semi-sync append waits for it and times out instead of being confirmed
/// by the end it had before.
#[test]
fn a_cut_back_replica_is_not_counted_for_its_old_acks() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("fast.toml");
    std::fs::write(&cfg, "[replication]\nack_timeout_ms = 1500\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    let (pdir, rdir, ddir) = (d.path().join("p"), d.path().join("r"), d.path().join("d"));
    let p = Server::start(&pdir, &[]);
    let paddr = p.addr.clone();
    let r = Server::start(&rdir, &replica_of(&paddr, &["--replica-id", "r"]));
    let dnode = Server::start(
        &ddir,
        &replica_of(
            &paddr,
            &["--replica-id", "d", "--delay", "1h", "--config", cfg],
        ),
    );
    let daddr = dnode.addr.clone();
    run(60, async {
        let end = replicated(&paddr, &r.addr, "a", "a", 20).await;
        wait_until(
            "the delayed replica to store everything",
            Duration::from_secs(30),
            || async {
                let s = common::status(&daddr).await;
                s.logs
                    .iter()
                    .any(|l| l.name == "a" && l.stored_offset == end)
                    .then_some(())
            },
        )
        .await;
    });
    p.stop();
    r.stop();
    let r = run(30, async {
        let c = Client::connect(&daddr).await.unwrap();
        c.promote_at(Some(pb::promote_request::At::AtOffset(8)))
            .await
            .unwrap();
        Server::start(&rdir, &replica_of(&daddr, &["--replica-id", "r"]))
    });
    run(60, async {
        common::reach_end(&r.addr, "a", 8).await;
        wait_until(
            "the replica attached to the new primary",
            Duration::from_secs(30),
            || async {
                let s = common::status(&daddr).await;
                let rep = s.replicas.iter().find(|x| x.id == "r" && x.connected)?;
                let acked = rep.logs.iter().find(|l| l.name == "a")?.acked_offset;
                (acked == 8).then_some(())
            },
        )
        .await;
    });
    common::signal(&r.child, libc::SIGSTOP);
    let outcome = run(30, async {
        Client::connect(&daddr)
            .await
            .unwrap()
            .append_with(common::semi_sync("a", "needs a replica", 1))
            .await
    });
    common::signal(&r.child, libc::SIGCONT);
    match outcome {
        Ok(a) => panic!("confirmed by a frozen replica's old ack: {a:?}"),
        Err(e) => assert!(
            matches!(e.code(), Some(Code::DeadlineExceeded | Code::Unavailable)),
            "{e}"
        ),
    }
}

/// A log deleted and created again while a replica was down is another incarnation: the
/// replica drops its old copy and holds exactly the new log's records.
#[test]
fn a_log_recreated_while_a_replica_was_down_is_copied_anew() {
    let d = tempfile::tempdir().unwrap();
    let (p, r) = primary_and_replica(d.path());
    let rdir = r.data_dir.clone();
    let paddr = p.addr.clone();
    run(60, async {
        replicated(&paddr, &r.addr, "k", "old", 10).await;
    });
    r.stop();
    run(60, async {
        let c = Client::connect(&paddr).await.unwrap();
        c.delete_log("k").await.unwrap();
        c.create_log("k", None).await.unwrap();
        append_each(&paddr, "k", "new", 5).await;
    });
    let r = Server::start(&rdir, &replica_of(&paddr, &[]));
    run(60, async {
        let primary = describe(&paddr, "k").await;
        wait_until(
            "the replica to hold the new incarnation",
            Duration::from_secs(30),
            || async {
                let c = Client::connect(&r.addr).await.unwrap();
                let info = c.describe_log("k").await.ok()?;
                (info.incarnation == primary.incarnation && info.end_offset == 5).then_some(())
            },
        )
        .await;
        let (recs, err) = read_from(&r.addr, "k", 0).await;
        assert!(err.is_none());
        let values: Vec<Bytes> = recs.into_iter().map(|r| r.value).collect();
        let want: Vec<Bytes> = (0..5).map(|i| value("new", i)).collect();
        assert_eq!(values, want);
    });
    common::stop_identical(r, p);
}

/// A replica pointed at a primary of another cluster is refused, says why, and keeps its
/// own records untouched.
#[test]
fn a_replica_refuses_a_primary_of_another_cluster() {
    let d = tempfile::tempdir().unwrap();
    let (p1dir, p2dir, rdir) = (d.path().join("p1"), d.path().join("p2"), d.path().join("r"));
    let p1 = Server::start(&p1dir, &[]);
    let r = Server::start(&rdir, &replica_of(&p1.addr, &[]));
    run(60, async {
        replicated(&p1.addr, &r.addr, "k", "one", 10).await;
    });
    r.stop();
    p1.stop();
    let p2 = Server::start(&p2dir, &[]);
    run(60, async {
        common::create_log(&p2.addr, "k").await;
        append_each(&p2.addr, "k", "two", 10).await;
    });
    let r = Server::start(&rdir, &replica_of(&p2.addr, &[]));
    run(60, async {
        let err = wait_until("the refusal", Duration::from_secs(30), || async {
            let s = common::status(&r.addr).await;
            let e = s.upstream?.last_error;
            (!e.is_empty()).then_some(e)
        })
        .await;
        assert!(err.contains("cluster"), "{err}");
        let (recs, _) = read_from(&r.addr, "k", 0).await;
        assert_eq!(recs.len(), 10);
        assert!(recs.iter().all(|r| r.value.starts_with(b"one-")));
    });
}

/// A replica promoted to primary, then restarted with its old command line (still
/// `--replica-of` its old primary, which now follows it), goes on as the primary.
#[test]
fn a_promoted_node_restarted_with_its_old_replica_of_goes_on_as_primary() {
    let d = tempfile::tempdir().unwrap();
    let (p, r) = primary_and_replica(d.path());
    let (pdir, rdir) = (p.data_dir.clone(), r.data_dir.clone());
    let (paddr, raddr) = (p.addr.clone(), r.addr.clone());
    run(60, async {
        replicated(&paddr, &raddr, "k", "x", 5).await;
        Client::connect(&raddr)
            .await
            .unwrap()
            .promote()
            .await
            .unwrap();
    });
    p.stop();
    // The old primary follows the new one.
    let p = Server::start_on(&paddr, &pdir, &replica_of(&raddr, &[]));
    run(30, async { common::reach_end(&paddr, "k", 5).await });
    // The new primary restarts with the command line it had as a replica.
    r.stop();
    let r = Server::start_on(&raddr, &rdir, &replica_of(&paddr, &[]));
    run(60, async {
        let at = wait_until(
            "the promoted node to take writes",
            Duration::from_secs(30),
            || async {
                let c = Client::connect(&raddr).await.unwrap();
                c.append("k", vec![Bytes::from("after")], AckMode::Async)
                    .await
                    .ok()
            },
        )
        .await;
        assert_eq!(at.first_offset, 5);
        let s = common::status(&paddr).await;
        assert_eq!(s.role, "replica");
        common::reach_end(&paddr, "k", 6).await;
    });
    r.stop();
    p.stop();
}

/// Scrub finds a byte flipped in a replica's sealed segment within one pass, and the
/// damage is repaired from its upstream: both end with equal digests. `spool check
/// --repair-from` does the same for a stopped node's directory.
#[test]
fn scrub_finds_damage_in_a_sealed_segment_and_it_is_repaired_from_a_peer() {
    let d = tempfile::tempdir().unwrap();
    let (p, r) = primary_and_replica(d.path());
    let (pdir, rdir) = (p.data_dir.clone(), r.data_dir.clone());
    let (paddr, raddr) = (p.addr.clone(), r.addr.clone());
    run(60, async {
        let c = Client::connect(&paddr).await.unwrap();
        let small = pb::LogConfig {
            segment_bytes: 64 << 10,
            ..Default::default()
        };
        c.create_log("s", Some(small)).await.unwrap();
        let end = append_each(&paddr, "s", "s", 600).await;
        common::reach_end(&raddr, "s", end).await;
    });
    r.stop();
    let first = rdir
        .join("logs/s")
        .join(&common::segment_files(&rdir.join("logs/s"))[0].0);
    flip(&first, 5_000);
    let r = Server::start_on(&raddr, &rdir, &replica_of(&paddr, &[]));
    let scrub = |addr: String| async move {
        let out = std::process::Command::new(common::spool_bin())
            .args(["--addr", &addr, "admin", "scrub", "s"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(60, async {
        let found = scrub(raddr.clone()).await;
        assert!(found.contains("1 damaged range(s) found"), "{found}");
        wait_until(
            "the repair from the upstream",
            Duration::from_secs(30),
            || async { describe(&raddr, "s").await.damaged.is_empty().then_some(()) },
        )
        .await;
        let again = scrub(raddr.clone()).await;
        assert!(again.contains("0 damaged range(s) found"), "{again}");
    });
    r.stop();
    // Offline: the stopped replica's directory, repaired from the running primary.
    flip(&first, 7_000);
    let check = |extra: &[&str]| common::check(&rdir, extra);
    assert!(!check(&[]).status.success());
    let repaired = check(&["--repair-from", &paddr]);
    assert!(
        repaired.status.success(),
        "{}{}",
        String::from_utf8_lossy(&repaired.stdout),
        String::from_utf8_lossy(&repaired.stderr)
    );
    p.stop();
    assert_eq!(common::digests(&rdir), common::digests(&pdir));
}
