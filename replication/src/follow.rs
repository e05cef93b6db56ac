//! The replica side of a replication session, as decisions: whether to follow the
//! upstream that answered (cluster, epochs), what a segment chunk does to the import in
//! progress, whether a restarted log keeps a partly received segment, what a deletion
//! does on a delayed replica, how acks are gathered, when a silent peer is dead, and how
//! long to wait before reconnecting. The server's follower executes them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Frame messages appended but not yet durable, per session: they share group commits.
pub const INFLIGHT_MAX: usize = 64;
/// Heartbeats both ways this often; a peer silent for [`DEAD_AFTER`] is gone.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A session that lasted this long starts the next reconnect's backoff over.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

/// What this node and the upstream that answered say of themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identities<'a> {
    pub our_cluster: &'a str,
    pub our_epoch: u64,
    /// The last epoch this node began as primary (0: never).
    pub our_led_epoch: u64,
    pub up_cluster: &'a str,
    pub up_epoch: u64,
}

/// Why this node does not follow the upstream that answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the upstream belongs to no cluster yet (a replica that never reached its own upstream)"
    )]
    NoCluster,
    #[error(
        "the upstream belongs to cluster {theirs}, this node to cluster {ours}: a node follows \
         only nodes of its own cluster; point --replica-of at one of them, or start this node \
         on a new data directory to join the other cluster"
    )]
    OtherCluster { ours: String, theirs: String },
    /// This node began a newer or the same epoch: the upstream follows it, not the reverse.
    #[error("this node began epoch {led} as the primary and the upstream is at epoch {up_epoch}")]
    WeLead { led: u64, up_epoch: u64 },
    #[error(
        "upstream is at epoch {up_epoch} but this node is at {ours}: refusing to follow a stale node"
    )]
    Stale { ours: u64, up_epoch: u64 },
}

/// Follow the upstream that answered? `Ok(true)`: yes, joining its cluster first (this
/// node had none).
pub fn accept_upstream(ids: &Identities<'_>) -> Result<bool, Refusal> {
    if ids.up_cluster.is_empty() {
        return Err(Refusal::NoCluster);
    }
    let join = ids.our_cluster.is_empty();
    if !join && ids.our_cluster != ids.up_cluster {
        return Err(Refusal::OtherCluster {
            ours: ids.our_cluster.to_owned(),
            theirs: ids.up_cluster.to_owned(),
        });
    }
    if ids.our_led_epoch > 0 && ids.up_epoch <= ids.our_led_epoch {
        return Err(Refusal::WeLead {
            led: ids.our_led_epoch,
            up_epoch: ids.up_epoch,
        });
    }
    if ids.up_epoch < ids.our_epoch {
        return Err(Refusal::Stale {
            ours: ids.our_epoch,
            up_epoch: ids.up_epoch,
        });
    }
    Ok(join)
}

/// A segment (or span) being received whole: where it starts and how far it is staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Import {
    pub base: u64,
    pub staged_to: u64,
}

/// A segment chunk as it arrives (its frames aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// The upstream's segment: its base and where it ends.
    pub segment: (u64, u64),
    pub first: u64,
    /// The frames are not in the message: the replica fetches them itself.
    pub fetch: bool,
}

/// What a chunk does to the import of its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the chunk must go where the plan says"]
pub enum ChunkPlan {
    /// It continues the import in progress.
    Continue,
    /// A new import starts at `at` (after what is in flight has landed: it follows the
    /// log's end); any other import of the log is dropped.
    Begin { at: u64 },
}

/// Where a chunk goes, given the log's import in progress and its durable end (once what
/// is in flight has landed). An error when it cannot follow the log.
pub fn chunk_plan(import: Option<Import>, c: &Chunk, log_end: u64) -> Result<ChunkPlan, String> {
    let (base, next) = c.segment;
    // A fetch from inside the upstream's segment starts past its base: an import that
    // began there is a segment of its own here.
    if import.is_some_and(|i| (base..next).contains(&i.base) && i.staged_to == c.first) {
        return Ok(ChunkPlan::Continue);
    }
    if (c.first != base && !c.fetch) || log_end != c.first {
        return Err(format!(
            "upstream sent segment {base} from offset {}, but this log ends at {log_end}",
            c.first
        ));
    }
    Ok(ChunkPlan::Begin { at: c.first })
}

/// Whether a log (re)started with `continue_at` (a CONTINUE from that offset; None for any
/// other action) keeps its partly received segment: the upstream then resumes it.
#[must_use]
pub fn start_keeps_import(continue_at: Option<u64>, import: Option<Import>) -> bool {
    matches!((continue_at, import), (Some(at), Some(i)) if i.base == at)
}

/// When a log deleted upstream goes here: at once, or (a delayed replica, `delay_us`) at
/// the upstream's deletion time plus the delay.
#[must_use]
pub fn delete_at(delay_us: Option<u64>, deleted_at_us: u64, now_us: u64) -> Option<u64> {
    let at = if deleted_at_us == 0 {
        now_us
    } else {
        deleted_at_us
    };
    delay_us.map(|d| at.saturating_add(d))
}

/// Durable ends gathered into one ack (a group commit completes many messages at once).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Acks {
    ends: BTreeMap<String, u64>,
}

impl Acks {
    pub fn add(&mut self, log: &str, end: u64) {
        let e = self.ends.entry(log.to_owned()).or_insert(end);
        *e = (*e).max(end);
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Everything gathered, each log once at its highest end.
    pub fn take(&mut self) -> Vec<(String, u64)> {
        std::mem::take(&mut self.ends).into_iter().collect()
    }
}

/// Which logs a session may acknowledge: those whose start (the upstream's plan for them)
/// it has carried out, except a diverged one. An ack sent before the start would report an
/// end from before a cut the plan makes, and the upstream, which already settled what the
/// replica holds, would count it for records it no longer holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AckGate {
    started: BTreeSet<String>,
}

impl AckGate {
    /// The start of `log` was carried out; `diverged`: it holds records the upstream does
    /// not, and acks nothing of that log.
    pub fn started(&mut self, log: &str, diverged: bool) {
        if diverged {
            self.started.remove(log);
        } else {
            self.started.insert(log.to_owned());
        }
    }

    /// The log was deleted (or is ignored until its deletion here).
    pub fn forget(&mut self, log: &str) {
        self.started.remove(log);
    }

    pub fn may_ack(&self, log: &str) -> bool {
        self.started.contains(log)
    }

    /// The ends of `ends` this session may report.
    #[must_use]
    pub fn filter(&self, ends: impl IntoIterator<Item = (String, u64)>) -> Vec<(String, u64)> {
        ends.into_iter().filter(|(l, _)| self.may_ack(l)).collect()
    }
}

/// The wait before reconnecting after a session that lasted `lasted`, the last wait having
/// been `last`: doubling up to [`BACKOFF_MAX`], back to [`BACKOFF_MIN`] after a long
/// session. Returns (this wait, the next one's base).
#[must_use]
pub fn backoff(last: Duration, lasted: Duration) -> (Duration, Duration) {
    let wait = if lasted > BACKOFF_RESET_AFTER {
        BACKOFF_MIN
    } else {
        last
    };
    (wait, (wait * 2).min(BACKOFF_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids<'a>(ours: &'a str, epoch: u64, led: u64, up: &'a str, up_epoch: u64) -> Identities<'a> {
        Identities {
            our_cluster: ours,
            our_epoch: epoch,
            our_led_epoch: led,
            up_cluster: up,
            up_epoch,
        }
    }

    #[test]
    fn who_a_replica_follows() {
        assert_eq!(accept_upstream(&ids("", 0, 0, "c", 1)), Ok(true), "joins");
        assert_eq!(accept_upstream(&ids("c", 1, 0, "c", 2)), Ok(false));
        assert_eq!(
            accept_upstream(&ids("c", 0, 0, "", 1)),
            Err(Refusal::NoCluster)
        );
        assert!(matches!(
            accept_upstream(&ids("c", 1, 0, "d", 1)),
            Err(Refusal::OtherCluster { .. })
        ));
        // Promoted to 2, restarted pointing at its follower (also at 2): it leads.
        assert!(matches!(
            accept_upstream(&ids("c", 2, 2, "c", 2)),
            Err(Refusal::WeLead { .. })
        ));
        // ...but follows a node promoted after it.
        assert_eq!(accept_upstream(&ids("c", 2, 2, "c", 3)), Ok(false));
        assert!(matches!(
            accept_upstream(&ids("c", 3, 0, "c", 2)),
            Err(Refusal::Stale { .. })
        ));
    }

    #[test]
    fn chunks_continue_or_begin_an_import() {
        let c = |first, fetch| Chunk {
            segment: (100, 200),
            first,
            fetch,
        };
        let i = Some(Import {
            base: 100,
            staged_to: 150,
        });
        assert_eq!(chunk_plan(i, &c(150, false), 100), Ok(ChunkPlan::Continue));
        assert_eq!(
            chunk_plan(None, &c(100, false), 100),
            Ok(ChunkPlan::Begin { at: 100 })
        );
        // Inside the segment only as a fetch, and only where the log ends.
        assert!(chunk_plan(None, &c(150, false), 150).is_err());
        assert_eq!(
            chunk_plan(None, &c(150, true), 150),
            Ok(ChunkPlan::Begin { at: 150 })
        );
        assert!(chunk_plan(None, &c(150, true), 120).is_err());
        // An import begun inside the segment (a fetch from there) continues too.
        let inside = Some(Import {
            base: 150,
            staged_to: 170,
        });
        assert_eq!(
            chunk_plan(inside, &c(170, true), 150),
            Ok(ChunkPlan::Continue)
        );
    }

    #[test]
    fn restarts_keep_an_import_only_where_the_log_continues() {
        let i = Some(Import {
            base: 100,
            staged_to: 150,
        });
        assert!(start_keeps_import(Some(100), i));
        assert!(!start_keeps_import(Some(90), i));
        assert!(!start_keeps_import(None, i));
    }

    #[test]
    fn deletions_wait_for_the_delay() {
        assert_eq!(delete_at(None, 5, 9), None);
        assert_eq!(delete_at(Some(10), 5, 9), Some(15));
        assert_eq!(
            delete_at(Some(10), 0, 9),
            Some(19),
            "no time from upstream: now"
        );
    }

    #[test]
    fn acks_gather_each_log_once_at_its_highest_end() {
        let mut a = Acks::default();
        a.add("x", 5);
        a.add("y", 3);
        a.add("x", 9);
        a.add("x", 7);
        assert_eq!(a.take(), vec![("x".to_owned(), 9), ("y".to_owned(), 3)]);
        assert!(a.is_empty());
    }

    #[test]
    fn only_started_logs_are_acked() {
        let mut g = AckGate::default();
        let ends = || vec![("a".to_owned(), 9), ("b".to_owned(), 4)];
        assert!(g.filter(ends()).is_empty(), "nothing before a start");
        g.started("a", false);
        g.started("b", true);
        assert_eq!(g.filter(ends()), vec![("a".to_owned(), 9)]);
        g.forget("a");
        assert!(!g.may_ack("a"));
    }

    #[test]
    fn backoff_doubles_and_resets_after_a_long_session() {
        let (w, next) = backoff(BACKOFF_MIN, Duration::from_secs(1));
        assert_eq!((w, next), (BACKOFF_MIN, BACKOFF_MIN * 2));
        let (w, _) = backoff(Duration::from_secs(4), Duration::from_secs(1));
        assert_eq!(w, Duration::from_secs(4));
        assert_eq!(
            backoff(Duration::from_secs(4), Duration::from_secs(1)).1,
            BACKOFF_MAX
        );
        assert_eq!(backoff(BACKOFF_MAX, Duration::from_secs(11)).0, BACKOFF_MIN);
    }
}
