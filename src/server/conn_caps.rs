//! The caps on connections open at once: all peers together (`server.max_connections`)
//! and per peer (`server.max_connections_per_ip`: an IPv4 address, or an IPv6 /64, which
//! one host usually holds whole). `server::accept` asks for a [`Permit`] before it reads
//! a byte, so hostile peers cannot take the descriptors the node needs for its files and
//! its other clients. The permit goes with the connection and frees its place on drop.
//!
//! A connection over its peer's cap is closed at once. At the total cap, a newcomer takes
//! the place of the oldest connection still sending its preface, which is closed
//! ([`Permit::evicted`]): a client's preface takes one round trip, so such connections are
//! mostly half-open ones, and peers on many addresses filling the node with them cannot
//! keep new clients out for the whole handshake timeout. Only when every place holds a
//! connection past its preface is the newcomer refused. Until an evicted connection's task
//! has dropped it, the node holds one descriptor more than the cap: at most twice the cap
//! in all (each eviction takes one connection still in its handshake).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// At most one log line per cap this often; the lines in between are counted.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Whom a per-peer cap counts: an IPv4 address, or the /64 of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey(IpAddr);

impl PeerKey {
    pub fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(v4) => PeerKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(IpAddr::V4(v4)),
                None => PeerKey(IpAddr::V6(Ipv6Addr::from_bits(
                    v6.to_bits() & !u128::from(u64::MAX),
                ))),
            },
        }
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Total,
    PerIp,
}

impl Cap {
    /// The setting that sets it, as the log line names it.
    pub fn setting(self) -> &'static str {
        match self {
            Cap::Total => "server.max_connections",
            Cap::PerIp => "server.max_connections_per_ip",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Cap::Total => "total",
            Cap::PerIp => "per_ip",
        }
    }
}

/// What the log says at most once per [`WARN_EVERY`], each.
#[derive(Debug, Clone, Copy)]
enum Event {
    Refused(Cap),
    Evicted,
}

impl Event {
    fn slot(self) -> usize {
        match self {
            Event::Refused(Cap::Total) => 0,
            Event::Refused(Cap::PerIp) => 1,
            Event::Evicted => 2,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    /// Every permit not yet dropped, evicted ones included.
    total: usize,
    /// Only peers with a connection open: at most `total` entries.
    per_peer: HashMap<PeerKey, usize>,
    /// Permits still in their handshake, oldest (lowest number) first.
    handshaking: BTreeMap<u64, Arc<Eviction>>,
    next_number: u64,
    /// Evicted permits not yet dropped: in `total`, no longer against the cap.
    evicting: usize,
    /// Per [`Event::slot`]: when it was last logged, how many since.
    warned_at: [Option<Instant>; 3],
    since_warned: [u64; 3],
}

impl Counts {
    fn against_cap(&self) -> usize {
        self.total - self.evicting
    }
}

/// Tells a connection in its handshake that its place was given away.
#[derive(Debug, Default)]
struct Eviction {
    evicted: AtomicBool,
    notify: Notify,
}

/// Both caps and the connections they count.
#[derive(Debug)]
pub struct ConnCaps {
    max_total: usize,
    max_per_peer: usize,
    counts: Mutex<Counts>,
}

/// One connection's place under the caps, given back on drop.
#[derive(Debug)]
pub struct Permit {
    caps: Arc<ConnCaps>,
    peer: PeerKey,
    number: u64,
    eviction: Arc<Eviction>,
}

impl ConnCaps {
    pub fn new(max_total: usize, max_per_peer: usize) -> Arc<ConnCaps> {
        assert!(max_total > 0 && max_per_peer > 0);
        metrics::gauge!("spool_connections").set(0.0);
        for cap in [Cap::Total, Cap::PerIp] {
            metrics::counter!("spool_connections_refused_total", "cap" => cap.label()).increment(0);
        }
        metrics::counter!("spool_connections_evicted_total").increment(0);
        for phase in ["handshake", "idle"] {
            metrics::counter!("spool_connections_timed_out_total", "phase" => phase).increment(0);
        }
        Arc::new(ConnCaps {
            max_total,
            max_per_peer,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// A place for a connection from `ip` (at the total cap, the oldest connection still
    /// in its handshake is evicted for it), or the cap it is over. Logged, rate limited.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Cap> {
        let peer = PeerKey::of(ip);
        let mut c = self.counts.lock();
        let from_peer = c.per_peer.get(&peer).copied().unwrap_or(0);
        if from_peer >= self.max_per_peer {
            self.log(&mut c, Event::Refused(Cap::PerIp), peer, from_peer);
            return Err(Cap::PerIp);
        }
        if c.against_cap() >= self.max_total {
            let Some((_, oldest)) = c.handshaking.pop_first() else {
                // Counted as the cap counts: an evicted connection still closing is not.
                let open = c.against_cap();
                self.log(&mut c, Event::Refused(Cap::Total), peer, open);
                return Err(Cap::Total);
            };
            assert!(!oldest.evicted.swap(true, Ordering::AcqRel));
            // Stored if its task is not waiting yet: it sees it at its next wait.
            oldest.notify.notify_one();
            c.evicting += 1;
            let open = c.against_cap();
            self.log(&mut c, Event::Evicted, peer, open);
        }
        c.total += 1;
        *c.per_peer.entry(peer).or_insert(0) += 1;
        let number = c.next_number;
        c.next_number += 1;
        let eviction = Arc::new(Eviction::default());
        c.handshaking.insert(number, eviction.clone());
        assert!(c.against_cap() <= self.max_total);
        assert!(c.evicting <= self.max_total && c.handshaking.len() <= c.total);
        assert!(c.per_peer.len() <= c.total);
        metrics::gauge!("spool_connections").set(c.total as f64);
        Ok(Permit {
            caps: self.clone(),
            peer,
            number,
            eviction,
        })
    }

    fn log(&self, c: &mut Counts, event: Event, peer: PeerKey, open: usize) {
        match event {
            Event::Refused(cap) => {
                metrics::counter!("spool_connections_refused_total", "cap" => cap.label())
                    .increment(1)
            }
            Event::Evicted => metrics::counter!("spool_connections_evicted_total").increment(1),
        }
        let i = event.slot();
        c.since_warned[i] += 1;
        let now = Instant::now();
        if c.warned_at[i].is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return;
        }
        let since_last_line = c.since_warned[i];
        match event {
            Event::Refused(Cap::PerIp) => tracing::warn!(
                %peer,
                open,
                refused_since_last_line = since_last_line,
                "connection refused: {} = {} reached ({open} open from {peer}); closed at once",
                Cap::PerIp.setting(),
                self.max_per_peer,
            ),
            Event::Refused(Cap::Total) => tracing::warn!(
                %peer,
                open,
                refused_since_last_line = since_last_line,
                "connection refused: {} = {} reached ({open} open, none still in its \
                 handshake); closed at once",
                Cap::Total.setting(),
                self.max_total,
            ),
            Event::Evicted => tracing::warn!(
                %peer,
                open,
                evicted_since_last_line = since_last_line,
                "{} = {} reached: closed the oldest connection still in its handshake to \
                 admit one from {peer}",
                Cap::Total.setting(),
                self.max_total,
            ),
        }
        c.warned_at[i] = Some(now);
        c.since_warned[i] = 0;
    }

    /// Connections open now (all, and from `ip`'s peer).
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> (usize, usize) {
        let c = self.counts.lock();
        let peer = c.per_peer.get(&PeerKey::of(ip)).copied().unwrap_or(0);
        (c.total, peer)
    }
}

impl Permit {
    /// Resolves once the node gave this connection's place to a newer one (only while it
    /// is still in its handshake).
    pub async fn evicted(&self) {
        while !self.eviction.evicted.load(Ordering::Acquire) {
            self.eviction.notify.notified().await;
        }
    }

    /// The connection sent its whole preface: it keeps its place from now on.
    pub fn handshake_done(&self) {
        self.caps.counts.lock().handshaking.remove(&self.number);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.caps.counts.lock();
        assert!(c.total > 0);
        c.handshaking.remove(&self.number);
        if self.eviction.evicted.load(Ordering::Acquire) {
            assert!(c.evicting > 0);
            c.evicting -= 1;
        }
        c.total -= 1;
        let left = c.per_peer.get_mut(&self.peer).map(|n| {
            *n -= 1;
            *n
        });
        assert!(left.is_some(), "a permit's peer is counted");
        if left == Some(0) {
            c.per_peer.remove(&self.peer);
        }
        metrics::gauge!("spool_connections").set(c.total as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Admitted and past its handshake.
    fn settled(caps: &Arc<ConnCaps>, from: &str) -> Permit {
        let p = caps.admit(ip(from)).unwrap();
        p.handshake_done();
        p
    }

    fn is_evicted(p: &Permit) -> bool {
        use std::future::Future;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        std::pin::pin!(p.evicted()).poll(&mut cx).is_ready()
    }

    #[test]
    fn per_peer_then_total() {
        let caps = ConnCaps::new(5, 2);
        let a1 = settled(&caps, "10.0.0.1");
        let _a2 = settled(&caps, "10.0.0.1");
        assert_eq!(caps.admit(ip("10.0.0.1")).unwrap_err(), Cap::PerIp);
        let _b: Vec<Permit> = (0..2).map(|_| settled(&caps, "10.0.0.2")).collect();
        let _c = settled(&caps, "10.0.0.3");
        assert_eq!(caps.admit(ip("10.0.0.4")).unwrap_err(), Cap::Total);
        assert_eq!(caps.open(ip("10.0.0.1")), (5, 2));
        drop(a1);
        assert_eq!(caps.open(ip("10.0.0.1")), (4, 1));
        let _a3 = settled(&caps, "10.0.0.1");
        assert_eq!(caps.admit(ip("10.0.0.9")).unwrap_err(), Cap::Total);
    }

    #[test]
    fn at_the_total_cap_the_oldest_handshake_makes_room() {
        let caps = ConnCaps::new(3, 3);
        let old = caps.admit(ip("10.0.0.1")).unwrap();
        let _done = settled(&caps, "10.0.0.1");
        let young = caps.admit(ip("10.0.0.2")).unwrap();
        // Full: the newcomer takes the oldest handshake's place, not the settled one's.
        let new = caps.admit(ip("10.0.0.3")).unwrap();
        assert!(is_evicted(&old) && !is_evicted(&young) && !is_evicted(&new));
        // Four descriptors until the evicted one's task drops it; three against the cap.
        assert_eq!(caps.open(ip("10.0.0.1")), (4, 2));
        new.handshake_done();
        young.handshake_done();
        // Nothing left in a handshake: refused, even before `old` is gone.
        assert_eq!(caps.admit(ip("10.0.0.4")).unwrap_err(), Cap::Total);
        drop(old);
        assert_eq!(caps.open(ip("10.0.0.1")), (3, 1));
        assert_eq!(caps.admit(ip("10.0.0.4")).unwrap_err(), Cap::Total);
        assert_eq!(caps.counts.lock().evicting, 0);
    }

    #[test]
    fn a_peer_leaves_no_entry_once_gone() {
        let caps = ConnCaps::new(10, 10);
        let p = caps.admit(ip("10.0.0.1")).unwrap();
        drop(p);
        assert!(caps.counts.lock().per_peer.is_empty());
        assert_eq!(caps.open(ip("10.0.0.1")), (0, 0));
    }

    #[test]
    fn ipv6_peers_are_their_64_and_mapped_v4_is_v4() {
        let caps = ConnCaps::new(10, 2);
        let _a = caps.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = caps.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(caps.admit(ip("2001:db8:1:2::77")).unwrap_err(), Cap::PerIp);
        let _other = caps.admit(ip("2001:db8:1:3::1")).unwrap();
        assert_eq!(
            PeerKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            PeerKey::of(ip("::ffff:10.1.2.3")),
            PeerKey::of(ip("10.1.2.3"))
        );
    }
}
