//! [`MemoryCoordinator`]: the [`Coordinator`] contract in memory, for unit tests of what is
//! built on it. Time is a manual clock ([`MemoryCoordinator::advance`]) so leases expire
//! exactly when a test says, and [`MemoryCoordinator::set_available`] makes every call
//! fail with `Unavailable` as an unreachable etcd would. Semantics follow etcd's: one
//! revision per change of the store, leased keys removed with their lease, compares on an
//! absent key as etcd evaluates them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::coordinator::{ttl_seconds, Compare, CoordError, Coordinator, Entry, LeaseId, Op, Read};

/// The first lease id handed out: far from small revisions, so a test that mixes the two
/// up fails.
const LEASE_ID_FIRST: LeaseId = 1_000_001;

/// A cheap-to-clone handle: clones share the store and the clock.
#[derive(Debug, Clone)]
pub struct MemoryCoordinator {
    store: Arc<Mutex<Store>>,
}

#[derive(Debug)]
struct Store {
    /// The manual clock: time since the coordinator was made.
    now: Duration,
    /// The store's revision: the highest `mod_revision` ever given (1 when empty, as etcd).
    revision: i64,
    lease_next: LeaseId,
    keys: BTreeMap<String, Stored>,
    leases: BTreeMap<LeaseId, Lease>,
    available: bool,
}

#[derive(Debug, Clone)]
struct Stored {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    lease: LeaseId,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl: Duration,
    /// Alive while `now < expires_at`.
    expires_at: Duration,
}

impl Default for MemoryCoordinator {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryCoordinator {
    pub fn new() -> Self {
        MemoryCoordinator {
            store: Arc::new(Mutex::new(Store {
                now: Duration::ZERO,
                revision: 1,
                lease_next: LEASE_ID_FIRST,
                keys: BTreeMap::new(),
                leases: BTreeMap::new(),
                available: true,
            })),
        }
    }

    /// Move the clock forward; leases not renewed within their TTL expire, their keys with
    /// them (one revision per lease that held keys). Time passes while unavailable too.
    pub fn advance(&self, by: Duration) {
        let mut store = self.store.lock();
        store.now += by;
        store.expire();
    }

    /// Time on the manual clock since the coordinator was made.
    pub fn now(&self) -> Duration {
        self.store.lock().now
    }

    /// `false`: every call fails with `Unavailable` and changes nothing, until `true`.
    pub fn set_available(&self, available: bool) {
        self.store.lock().available = available;
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.store.lock().revision
    }

    /// Run `f` on the store if it is available.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, CoordError>,
    ) -> Result<T, CoordError> {
        let mut store = self.store.lock();
        if !store.available {
            return Err(CoordError::Unavailable(
                "memory coordinator switched off".into(),
            ));
        }
        let before = store.revision;
        let result = f(&mut store);
        assert!(store.revision >= before, "revision went back");
        result
    }
}

impl Store {
    fn expire(&mut self) {
        let now = self.now;
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove_lease(id);
        }
    }

    /// Remove the lease and its keys: one revision if it held any.
    fn remove_lease(&mut self, id: LeaseId) -> bool {
        if self.leases.remove(&id).is_none() {
            return false;
        }
        let before = self.keys.len();
        self.keys.retain(|_, k| k.lease != id);
        if self.keys.len() != before {
            self.revision += 1;
        }
        true
    }

    fn check_lease(&self, lease: LeaseId) -> Result<(), CoordError> {
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(CoordError::LeaseExpired(lease));
        }
        Ok(())
    }

    fn entry(&self, key: &str) -> Option<Entry> {
        self.keys.get(key).map(|k| Entry {
            key: key.to_owned(),
            value: k.value.clone(),
            mod_revision: k.mod_revision,
            lease: k.lease,
        })
    }

    /// etcd's evaluation: an absent key has create and mod revision 0 and lease 0, and no
    /// value to compare.
    fn holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::Absent(key) => !self.keys.contains_key(key),
            Compare::ModRevision(key, rev) => {
                self.keys.get(key).map_or(0, |k| k.mod_revision) == *rev
            }
            Compare::Value(key, value) => self.keys.get(key).is_some_and(|k| k.value == *value),
            Compare::LeaseIs(key, lease) => self.keys.get(key).map_or(0, |k| k.lease) == *lease,
        }
    }

    /// Apply the writes as one revision (none if they change nothing). Leases are checked
    /// before anything is written.
    fn apply(&mut self, ops: Vec<Op>) -> Result<(), CoordError> {
        for op in &ops {
            if let Op::Put { key, lease, .. } = op {
                check_key(key)?;
                self.check_lease(lease.unwrap_or(0))?;
            }
        }
        let revision = self.revision + 1;
        let mut changed = false;
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create_revision =
                        self.keys.get(&key).map_or(revision, |k| k.create_revision);
                    self.keys.insert(
                        key,
                        Stored {
                            value,
                            create_revision,
                            mod_revision: revision,
                            lease: lease.unwrap_or(0),
                        },
                    );
                    changed = true;
                }
                Op::Delete(key) => changed |= self.keys.remove(&key).is_some(),
            }
        }
        if changed {
            self.revision = revision;
        }
        Ok(())
    }
}

fn check_key(key: &str) -> Result<(), CoordError> {
    if key.is_empty() {
        return Err(CoordError::Refused("key is not provided".into()));
    }
    Ok(())
}

impl Coordinator for MemoryCoordinator {
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        self.with(|store| {
            let id = store.lease_next;
            store.lease_next += 1;
            let ttl = Duration::from_secs(ttl_seconds(ttl).unsigned_abs());
            let expires_at = store.now + ttl;
            store.leases.insert(id, Lease { ttl, expires_at });
            Ok(id)
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, CoordError> {
        self.with(|store| {
            let now = store.now;
            let held = store
                .leases
                .get_mut(&lease)
                .ok_or(CoordError::LeaseExpired(lease))?;
            held.expires_at = now + held.ttl;
            Ok(held.ttl)
        })
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        self.with(|store| {
            if store.remove_lease(lease) {
                Ok(())
            } else {
                Err(CoordError::LeaseExpired(lease))
            }
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, CoordError> {
        self.with(|store| {
            check_key(key)?;
            Ok(store.entry(key))
        })
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<Entry>, CoordError> {
        self.with(|store| {
            Ok(store
                .keys
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter_map(|(k, _)| store.entry(k))
                .collect())
        })
    }

    async fn read(&self, reads: Vec<Read>) -> Result<Vec<Vec<Entry>>, CoordError> {
        self.with(|store| {
            reads
                .iter()
                .map(|r| match r {
                    Read::Key(key) => {
                        check_key(key)?;
                        Ok(store.entry(key).into_iter().collect())
                    }
                    Read::Prefix(prefix) => Ok(store
                        .keys
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                        .filter_map(|(k, _)| store.entry(k))
                        .collect()),
                })
                .collect()
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), CoordError> {
        self.with(|store| {
            store.apply(vec![Op::Put {
                key: key.to_owned(),
                value,
                lease,
            }])
        })
    }

    async fn txn(&self, compares: Vec<Compare>, then: Vec<Op>) -> Result<bool, CoordError> {
        self.with(|store| {
            let mut keys = HashSet::new();
            for op in &then {
                let key = match op {
                    Op::Put { key, .. } | Op::Delete(key) => key,
                };
                if !keys.insert(key.as_str()) {
                    return Err(CoordError::Refused(
                        "duplicate key given in txn request".into(),
                    ));
                }
            }
            if !compares.iter().all(|c| store.holds(c)) {
                return Ok(false);
            }
            store.apply(then)?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &[u8], lease: Option<LeaseId>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.to_vec(),
            lease,
        }
    }

    #[tokio::test]
    async fn lease_expires_exactly_at_its_ttl_unless_renewed() {
        let c = MemoryCoordinator::new();
        let lease = c.grant(Duration::from_millis(1500)).await.unwrap();
        c.put("k", b"v".to_vec(), Some(lease)).await.unwrap();
        // 1.5 s is granted as 2 s, as etcd would.
        c.advance(Duration::from_millis(1999));
        assert_eq!(c.keep_alive(lease).await.unwrap(), Duration::from_secs(2));
        c.advance(Duration::from_millis(1999));
        assert!(c.get("k").await.unwrap().is_some());
        let before = c.revision();
        c.advance(Duration::from_millis(1));
        assert!(c.get("k").await.unwrap().is_none());
        assert_eq!(c.revision(), before + 1, "the expiry is one revision");
        assert!(matches!(
            c.keep_alive(lease).await,
            Err(CoordError::LeaseExpired(l)) if l == lease
        ));
        assert!(matches!(
            c.put("k", b"v".to_vec(), Some(lease)).await,
            Err(CoordError::LeaseExpired(_))
        ));
    }

    #[tokio::test]
    async fn unavailable_refuses_everything_but_time_passes() {
        let c = MemoryCoordinator::new();
        let lease = c.grant(Duration::from_secs(1)).await.unwrap();
        c.put("k", b"v".to_vec(), Some(lease)).await.unwrap();
        c.set_available(false);
        assert!(matches!(c.get("k").await, Err(CoordError::Unavailable(_))));
        assert!(matches!(
            c.keep_alive(lease).await,
            Err(CoordError::Unavailable(_))
        ));
        assert!(matches!(
            c.txn(vec![], vec![put("x", b"", None)]).await,
            Err(CoordError::Unavailable(_))
        ));
        c.advance(Duration::from_secs(1));
        c.set_available(true);
        assert!(c.get("k").await.unwrap().is_none());
        assert!(c.get("x").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_txn_is_one_revision_and_a_no_op_is_none() {
        let c = MemoryCoordinator::new();
        let r0 = c.revision();
        assert!(c
            .txn(vec![], vec![put("a", b"1", None), put("b", b"2", None)])
            .await
            .unwrap());
        assert_eq!(c.revision(), r0 + 1);
        let a = c.get("a").await.unwrap().unwrap();
        let b = c.get("b").await.unwrap().unwrap();
        assert_eq!(a.mod_revision, r0 + 1);
        assert_eq!(b.mod_revision, r0 + 1);
        assert!(c.txn(vec![], vec![Op::Delete("zz".into())]).await.unwrap());
        assert_eq!(c.revision(), r0 + 1, "deleting nothing changes nothing");
        assert!(!c
            .txn(
                vec![Compare::Absent("a".into())],
                vec![Op::Delete("a".into())]
            )
            .await
            .unwrap());
        assert_eq!(c.revision(), r0 + 1);
    }

    #[tokio::test]
    async fn a_txn_with_a_dead_lease_or_a_repeated_key_writes_nothing() {
        let c = MemoryCoordinator::new();
        let lease = c.grant(Duration::from_secs(1)).await.unwrap();
        c.revoke(lease).await.unwrap();
        let r0 = c.revision();
        let err = c
            .txn(
                vec![],
                vec![put("a", b"1", None), put("b", b"2", Some(lease))],
            )
            .await;
        assert!(matches!(err, Err(CoordError::LeaseExpired(l)) if l == lease));
        let err = c
            .txn(vec![], vec![put("a", b"1", None), Op::Delete("a".into())])
            .await;
        assert!(matches!(err, Err(CoordError::Refused(_))));
        assert!(c.get("a").await.unwrap().is_none());
        assert_eq!(c.revision(), r0);
        // A failing compare does not look at the writes' leases, as etcd.
        assert!(!c
            .txn(
                vec![Compare::Value("a".into(), vec![])],
                vec![put("b", b"", Some(lease))]
            )
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn recreating_a_key_gives_it_a_new_create_revision() {
        let c = MemoryCoordinator::new();
        c.put("k", b"1".to_vec(), None).await.unwrap();
        let first = c.store.lock().keys["k"].create_revision;
        c.put("k", b"2".to_vec(), None).await.unwrap();
        assert_eq!(c.store.lock().keys["k"].create_revision, first);
        assert!(c.txn(vec![], vec![Op::Delete("k".into())]).await.unwrap());
        c.put("k", b"3".to_vec(), None).await.unwrap();
        assert!(c.store.lock().keys["k"].create_revision > first);
    }

    #[tokio::test]
    async fn an_empty_key_is_refused() {
        let c = MemoryCoordinator::new();
        assert!(matches!(
            c.put("", vec![], None).await,
            Err(CoordError::Refused(_))
        ));
        assert!(matches!(c.get("").await, Err(CoordError::Refused(_))));
    }
}
