//! The cluster's keys in the coordinator, and the records stored under them (JSON).
//!
//! ```text
//! /spool/<cluster>/id                          the cluster id (created once, never leased)
//! /spool/<cluster>/members/<node>              a member record, on the node's lease
//! /spool/<cluster>/groups/<group>/leader       the group's primary, on its lease
//! /spool/<cluster>/groups/<group>/epoch        the latest epoch a primary of the group began
//! /spool/<cluster>/groups/<group>/designated   the next primary an operator named
//! ```
//! Every log belongs to the group `default` today. Logs placed on several primary groups
//! later add `/spool/<cluster>/placement/<log>` naming a group; leader, epoch and election
//! are per group already, and member records carry per-log ends, so nothing else moves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spool_replication::failover::{LogEnd, Member};

/// The one group every log belongs to until placement exists.
pub const DEFAULT_GROUP: &str = "default";

/// Key names for one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            root: format!("/spool/{cluster}"),
        }
    }

    pub fn cluster_id(&self) -> String {
        format!("{}/id", self.root)
    }

    pub fn members(&self) -> String {
        format!("{}/members/", self.root)
    }

    pub fn member(&self, node: &str) -> String {
        format!("{}{node}", self.members())
    }

    pub fn leader(&self, group: &str) -> String {
        format!("{}/groups/{group}/leader", self.root)
    }

    pub fn epoch(&self, group: &str) -> String {
        format!("{}/groups/{group}/epoch", self.root)
    }

    pub fn designated(&self, group: &str) -> String {
        format!("{}/groups/{group}/designated", self.root)
    }
}

/// The designated key's value: a switchover (`handover`) or a failover `--to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesignatedRecord {
    pub node: String,
    pub force: bool,
    pub handover: bool,
}

/// The leader key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub node: String,
    pub addr: String,
    pub epoch: u64,
}

/// A member key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemberRecord {
    pub node: String,
    pub addr: String,
    pub role: String,
    pub epoch: u64,
    pub delayed: bool,
    pub never_promote: bool,
    pub sync: bool,
    pub priority: i32,
    pub seq: u64,
    /// Per log: [durable end, epoch of the last record].
    pub logs: BTreeMap<String, [u64; 2]>,
}

impl MemberRecord {
    /// Whether `other` says more than this record: anything but its sequence number and its
    /// logs' durable ends (a log's epoch, a log added or gone, role, epoch and flags count).
    pub fn differs_beyond_progress(&self, other: &MemberRecord) -> bool {
        let strip = |r: &MemberRecord| MemberRecord {
            seq: 0,
            logs: r
                .logs
                .iter()
                .map(|(k, [_, e])| (k.clone(), [0, *e]))
                .collect(),
            ..r.clone()
        };
        strip(self) != strip(other)
    }

    pub fn to_member(&self) -> Member {
        Member {
            id: self.node.clone(),
            addr: self.addr.clone(),
            epoch: self.epoch,
            primary: self.role == "primary",
            delayed: self.delayed,
            never_promote: self.never_promote,
            sync: self.sync,
            priority: self.priority,
            logs: self
                .logs
                .iter()
                .map(|(n, &[end, last_epoch])| (n.clone(), LogEnd { end, last_epoch }))
                .collect(),
            seq: self.seq,
        }
    }
}

/// Encode a record.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

/// Decode a record; a malformed one (another version, a hand edit) is `None`.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_cluster_and_group() {
        let k = Keys::new("c");
        assert_eq!(k.member("n1"), "/spool/c/members/n1");
        assert_eq!(k.leader(DEFAULT_GROUP), "/spool/c/groups/default/leader");
        assert_eq!(k.epoch(DEFAULT_GROUP), "/spool/c/groups/default/epoch");
        assert!(k.member("n1").starts_with(&k.members()));
    }

    #[test]
    fn member_records_round_trip_into_members() {
        let mut r = MemberRecord {
            node: "n".into(),
            role: "primary".into(),
            epoch: 4,
            seq: 9,
            ..MemberRecord::default()
        };
        r.logs.insert("a".into(), [10, 3]);
        let back: MemberRecord = decode(&encode(&r)).unwrap();
        let m = back.to_member();
        assert!(m.primary);
        assert_eq!(
            m.logs["a"],
            LogEnd {
                end: 10,
                last_epoch: 3
            }
        );
        assert_eq!((m.epoch, m.seq), (4, 9));
        assert_eq!(decode::<MemberRecord>(b"{not json"), None);
    }

    #[test]
    fn only_durable_ends_and_seq_are_progress() {
        let mut r = MemberRecord {
            node: "n".into(),
            role: "replica".into(),
            epoch: 4,
            seq: 9,
            ..MemberRecord::default()
        };
        r.logs.insert("a".into(), [10, 3]);
        let moved = |f: &dyn Fn(&mut MemberRecord)| {
            let mut o = r.clone();
            f(&mut o);
            r.differs_beyond_progress(&o)
        };
        assert!(!moved(&|o| {
            o.seq = 10;
            o.logs.insert("a".into(), [99, 3]);
        }));
        assert!(moved(&|o| {
            o.logs.insert("a".into(), [10, 4]);
        }));
        assert!(moved(&|o| {
            o.logs.insert("b".into(), [0, 0]);
        }));
        assert!(moved(&|o| {
            o.logs.clear();
        }));
        assert!(moved(&|o| o.role = "primary".into()));
        assert!(moved(&|o| o.epoch = 5));
        assert!(moved(&|o| o.never_promote = true));
        assert!(moved(&|o| o.priority = 1));
    }
}
