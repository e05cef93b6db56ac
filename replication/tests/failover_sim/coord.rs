//! The coordinator (etcd as the agent uses it): keys, leases granted and renewed at the
//! coordinator's receipt time and expired by a check every `EXPIRY_CHECK_MS` (as etcd's
//! lessor does), and compare-and-swap transactions. Its clock is the simulation's.

use std::collections::BTreeMap;

use spool_replication::failover::Member;

/// etcd's lessor looks for expired leases this often.
pub const EXPIRY_CHECK_MS: u64 = 500;
pub const LEADER: &str = "leader";
pub const EPOCH: &str = "epoch";
pub const MEMBERS: &str = "member/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRec {
    pub node: String,
    pub epoch: u64,
}

#[derive(Debug, Clone)]
pub enum Val {
    Leader(LeaderRec),
    Epoch(u64),
    Member(Member),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub val: Val,
    pub lease: u64,
    pub mod_rev: u64,
}

#[derive(Debug, Clone)]
pub enum Req {
    Grant {
        ttl_ms: u64,
    },
    KeepAlive(u64),
    Put {
        key: String,
        val: Val,
        lease: u64,
    },
    /// Txn with one compare (the key is on the lease) and no ops.
    LeaseIs {
        key: String,
        lease: u64,
    },
    Get(String),
    GetPrefix(String),
    /// Create the leader key on `lease` if absent and the epoch key unchanged (`epoch_rev`,
    /// 0: absent), and put the epoch in the same transaction.
    Campaign {
        rec: LeaderRec,
        lease: u64,
        epoch_rev: u64,
    },
}

#[derive(Debug, Clone)]
pub enum Resp {
    Lease(u64),
    /// KeepAlive: false when the lease expired.
    Alive(bool),
    Done,
    Failed,
    Txn(bool),
    Entry(Option<Entry>),
    Entries(Vec<Entry>),
}

#[derive(Debug, Default)]
pub struct Coord {
    pub keys: BTreeMap<String, Entry>,
    /// Lease id to its deadline (coordinator time, ms) and TTL.
    pub leases: BTreeMap<u64, (u64, u64)>,
    rev: u64,
    next_lease: u64,
    checked_at: u64,
}

impl Coord {
    /// The lessor's checks due by `now`: leases past their deadline go, with their keys.
    pub fn expire(&mut self, now: u64) -> Vec<u64> {
        let mut gone = Vec::new();
        while self.checked_at + EXPIRY_CHECK_MS <= now {
            self.checked_at += EXPIRY_CHECK_MS;
            let at = self.checked_at;
            let expired: Vec<u64> = self
                .leases
                .iter()
                .filter(|(_, &(d, _))| d <= at)
                .map(|(&l, _)| l)
                .collect();
            for l in expired {
                self.revoke(l);
                gone.push(l);
            }
        }
        gone
    }

    fn revoke(&mut self, lease: u64) {
        self.leases.remove(&lease);
        self.keys.retain(|_, e| e.lease != lease);
    }

    /// Whether `lease` holds at `now` by the coordinator's clock.
    pub fn holds(&self, lease: u64, now: u64) -> bool {
        self.leases.get(&lease).is_some_and(|&(d, _)| now < d)
    }

    pub fn handle(&mut self, now: u64, req: Req) -> Resp {
        match req {
            Req::Grant { ttl_ms } => {
                self.next_lease += 1;
                self.leases.insert(self.next_lease, (now + ttl_ms, ttl_ms));
                Resp::Lease(self.next_lease)
            }
            Req::KeepAlive(l) => Resp::Alive(self.keep_alive(now, l)),
            Req::Put { key, val, lease } => {
                if lease != 0 && !self.leases.contains_key(&lease) {
                    // etcd: "requested lease not found".
                    return Resp::Failed;
                }
                self.put(key, val, lease);
                Resp::Done
            }
            Req::LeaseIs { key, lease } => {
                Resp::Txn(self.keys.get(&key).is_some_and(|e| e.lease == lease))
            }
            Req::Get(key) => Resp::Entry(self.keys.get(&key).cloned()),
            Req::GetPrefix(p) => Resp::Entries(
                self.keys
                    .range(p.clone()..)
                    .take_while(|(k, _)| k.starts_with(&p))
                    .map(|(_, e)| e.clone())
                    .collect(),
            ),
            Req::Campaign {
                rec,
                lease,
                epoch_rev,
            } => Resp::Txn(self.campaign(rec, lease, epoch_rev)),
        }
    }

    /// etcd refuses to renew a lease past its deadline (and revokes it) even before the
    /// lessor's check removed it.
    fn keep_alive(&mut self, now: u64, l: u64) -> bool {
        match self.leases.get(&l).copied() {
            Some((d, ttl)) if now < d => {
                self.leases.insert(l, (now + ttl, ttl));
                true
            }
            Some(_) => {
                self.revoke(l);
                false
            }
            None => false,
        }
    }

    fn put(&mut self, key: String, val: Val, lease: u64) {
        self.rev += 1;
        let mod_rev = self.rev;
        self.keys.insert(
            key,
            Entry {
                val,
                lease,
                mod_rev,
            },
        );
    }

    fn campaign(&mut self, rec: LeaderRec, lease: u64, epoch_rev: u64) -> bool {
        let epoch_now = self.keys.get(EPOCH).map_or(0, |e| e.mod_rev);
        if self.keys.contains_key(LEADER) || epoch_now != epoch_rev {
            return false;
        }
        if !self.leases.contains_key(&lease) {
            // etcd fails a put on a lease it no longer has.
            return false;
        }
        let epoch = rec.epoch;
        self.put(LEADER.into(), Val::Leader(rec), lease);
        self.put(EPOCH.into(), Val::Epoch(epoch), 0);
        true
    }
}
