//! The coordinator against a real etcd (started here on loopback ports, a fresh data dir
//! each) and the in-memory one, through one conformance suite: leases, keys, prefixes and
//! compare-and-swap transactions must behave the same on both. Then what only the etcd
//! client has: failing over between endpoints, and credentials.
//!
//! Without an `etcd` binary on PATH the etcd tests print why and pass, unless `CI` is set:
//! there a missing etcd fails them (`.ci/run` installs it). Every wait is a bounded poll.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spool::cluster::coordinator::{Compare, CoordError, Coordinator, LeaseId, Op, Read};
use spool::cluster::etcd::{ConnectError, EtcdConfig, EtcdCoordinator};
use spool::cluster::memory::MemoryCoordinator;
use spool_proto::etcd::etcdserverpb as pb;

// ---------------------------------------------------------------- etcd fixture

/// `name` on PATH; a missing one is a skip (`None`, printed) unless `CI` is set.
fn required_bin(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(!ci, "{test}: `{name}` is not on PATH and CI is set (apt-get install etcd-server etcd-client)");
        eprintln!(
            "{test}: skipped, `{name}` is not on PATH (apt-get install etcd-server etcd-client)"
        );
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-member etcd on loopback; killed (by its pid) when dropped.
struct Etcd {
    child: Child,
    /// `127.0.0.1:PORT`, for clients.
    addr: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Start one and wait until it serves. Heartbeat and election are short so that etcd's
    /// smallest lease TTL is 1 s (it is 1.5 election timeouts, in whole seconds).
    async fn start(bin: &Path, extra: &[&str]) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let client = format!("http://{addr}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let data = dir.path().join("data");
        let child = Command::new(bin)
            .args(["--name", "spool-test", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("spool-test={peer}")])
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let mut etcd = Etcd { child, addr, dir };
        etcd.wait_ready().await;
        etcd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let cfg = EtcdConfig::new(vec![self.addr.clone()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("etcd exited ({status}) before serving:\n{}", self.log());
            }
            if let Ok(c) = EtcdCoordinator::connect(&cfg).await {
                if c.get("ready").await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd not serving on {} in 30 s:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn coordinator(&self) -> EtcdConfig {
        EtcdConfig::new(vec![self.addr.clone()])
    }

    fn etcdctl(&self, bin: &Path, args: &[&str]) {
        let out = Command::new(bin)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://{}", self.addr))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- the suite

/// How time passes for a coordinator: real time for etcd, the manual clock in memory.
trait Clock {
    fn pass(&self, by: Duration) -> impl Future<Output = ()>;
}

struct RealTime;

impl Clock for RealTime {
    async fn pass(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }
}

impl Clock for MemoryCoordinator {
    async fn pass(&self, by: Duration) {
        self.advance(by);
    }
}

/// Poll `check` every `step` of `clock` until it holds; fail after `bound`.
async fn eventually<F, Fut>(clock: &impl Clock, bound: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let step = Duration::from_millis(100);
    let mut passed = Duration::ZERO;
    while !check().await {
        assert!(passed < bound, "{what}: not within {bound:?}");
        clock.pass(step).await;
        passed += step;
    }
}

fn put(key: &str, value: &[u8], lease: Option<LeaseId>) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
        lease,
    }
}

/// Everything both coordinators must agree on. Keys are under `p`.
async fn conformance<C: Coordinator>(c: &C, clock: &impl Clock, p: &str) {
    keys_and_revisions(c, p).await;
    prefixes(c, p).await;
    transactions(c, p).await;
    leases(c, clock, p).await;
}

async fn keys_and_revisions<C: Coordinator>(c: &C, p: &str) {
    let (a, b) = (format!("{p}kv/a"), format!("{p}kv/b"));
    assert_eq!(c.get(&a).await.unwrap(), None);
    c.put(&a, b"1".to_vec(), None).await.unwrap();
    let first = c.get(&a).await.unwrap().unwrap();
    assert_eq!(
        (first.key.as_str(), &first.value[..], first.lease),
        (a.as_str(), &b"1"[..], 0)
    );
    assert!(first.mod_revision > 0);
    c.put(&a, b"2".to_vec(), None).await.unwrap();
    let second = c.get(&a).await.unwrap().unwrap();
    assert_eq!(second.value, b"2");
    assert!(second.mod_revision > first.mod_revision);
    c.put(&b, Vec::new(), None).await.unwrap();
    let other = c.get(&b).await.unwrap().unwrap();
    assert!(
        other.mod_revision > second.mod_revision,
        "one revision across keys"
    );
    assert!(other.value.is_empty());
    assert!(matches!(
        c.put("", vec![], None).await,
        Err(CoordError::Refused(_))
    ));
    assert!(matches!(c.get("").await, Err(CoordError::Refused(_))));
}

async fn prefixes<C: Coordinator>(c: &C, p: &str) {
    for key in ["pre/b", "pre/a", "pre/c/d", "pre", "prf/x", "pre0"] {
        c.put(&format!("{p}{key}"), key.as_bytes().to_vec(), None)
            .await
            .unwrap();
    }
    let got = c.get_prefix(&format!("{p}pre/")).await.unwrap();
    let keys: Vec<&str> = got.iter().map(|e| e.key.as_str()).collect();
    let want: Vec<String> = ["pre/a", "pre/b", "pre/c/d"]
        .iter()
        .map(|k| format!("{p}{k}"))
        .collect();
    assert_eq!(keys, want, "in key order, only the prefix");
    assert_eq!(got[2].value, b"pre/c/d");
    assert_eq!(c.get_prefix(&format!("{p}pre")).await.unwrap().len(), 5);
    assert!(c.get_prefix(&format!("{p}none/")).await.unwrap().is_empty());

    // Several reads in one request answer as the single reads do, in the order asked.
    let reads = vec![
        Read::Prefix(format!("{p}pre/")),
        Read::Key(format!("{p}pre0")),
        Read::Key(format!("{p}absent")),
        Read::Prefix(format!("{p}none/")),
    ];
    let got = c.read(reads).await.unwrap();
    let keys: Vec<Vec<&str>> = got
        .iter()
        .map(|es| es.iter().map(|e| e.key.as_str()).collect())
        .collect();
    let pre0 = format!("{p}pre0");
    assert_eq!(
        keys,
        vec![
            want.iter().map(String::as_str).collect(),
            vec![pre0.as_str()],
            vec![],
            vec![]
        ]
    );
    assert_eq!(got[1][0], c.get(&pre0).await.unwrap().unwrap());
    assert!(c.read(Vec::new()).await.unwrap().is_empty());
}

async fn transactions<C: Coordinator>(c: &C, p: &str) {
    let leader = format!("{p}leader");
    let lease = c.grant(Duration::from_secs(30)).await.unwrap();
    let other = c.grant(Duration::from_secs(30)).await.unwrap();
    assert_ne!(lease, other);

    // Create if absent: once.
    let create = |value: &[u8], lease| {
        (
            vec![Compare::Absent(leader.clone())],
            vec![put(&leader, value, Some(lease))],
        )
    };
    let (cmp, then) = create(b"me", lease);
    assert!(c.txn(cmp, then).await.unwrap());
    let (cmp, then) = create(b"you", other);
    assert!(!c.txn(cmp, then).await.unwrap());
    let held = c.get(&leader).await.unwrap().unwrap();
    assert_eq!((&held.value[..], held.lease), (&b"me"[..], lease));

    // Renew only if still mine: value and lease both.
    let renew = |value: &[u8], on| {
        vec![
            Compare::Value(leader.clone(), value.to_vec()),
            Compare::LeaseIs(leader.clone(), on),
        ]
    };
    assert!(c
        .txn(renew(b"me", lease), vec![put(&leader, b"me", Some(lease))])
        .await
        .unwrap());
    assert!(!c
        .txn(
            renew(b"you", lease),
            vec![put(&leader, b"you", Some(lease))]
        )
        .await
        .unwrap());
    assert!(!c
        .txn(renew(b"me", other), vec![put(&leader, b"you", Some(other))])
        .await
        .unwrap());
    assert_eq!(c.get(&leader).await.unwrap().unwrap().value, b"me");

    // An absent key: create and mod revision 0, lease 0, no value.
    let absent = format!("{p}absent");
    assert!(c
        .txn(vec![Compare::LeaseIs(absent.clone(), 0)], vec![])
        .await
        .unwrap());
    assert!(c
        .txn(vec![Compare::ModRevision(absent.clone(), 0)], vec![])
        .await
        .unwrap());
    assert!(!c
        .txn(vec![Compare::Value(absent.clone(), vec![])], vec![])
        .await
        .unwrap());
    assert!(!c
        .txn(vec![Compare::Absent(leader.clone())], vec![])
        .await
        .unwrap());

    // Mod revision: a compare-and-swap that works once; several writes are one revision.
    let rev = c.get(&leader).await.unwrap().unwrap().mod_revision;
    let (x, y) = (format!("{p}txn/x"), format!("{p}txn/y"));
    let swap = || {
        (
            vec![Compare::ModRevision(leader.clone(), rev)],
            vec![
                put(&leader, b"me", Some(lease)),
                put(&x, b"x", None),
                put(&y, b"y", None),
            ],
        )
    };
    let (cmp, then) = swap();
    assert!(c.txn(cmp, then).await.unwrap());
    let (cmp, then) = swap();
    assert!(!c.txn(cmp, then).await.unwrap());
    let (ex, ey) = (
        c.get(&x).await.unwrap().unwrap(),
        c.get(&y).await.unwrap().unwrap(),
    );
    let el = c.get(&leader).await.unwrap().unwrap();
    assert!(el.mod_revision > rev);
    assert_eq!(
        (ex.mod_revision, ey.mod_revision),
        (el.mod_revision, el.mod_revision)
    );

    // A delete, and a put without a lease detaching the key from its lease.
    assert!(c
        .txn(
            vec![Compare::Value(x.clone(), b"x".to_vec())],
            vec![Op::Delete(x.clone()), put(&y, b"y2", None)]
        )
        .await
        .unwrap());
    assert_eq!(c.get(&x).await.unwrap(), None);
    c.put(&y, b"on".to_vec(), Some(other)).await.unwrap();
    assert_eq!(c.get(&y).await.unwrap().unwrap().lease, other);
    c.put(&y, b"off".to_vec(), None).await.unwrap();
    assert_eq!(c.get(&y).await.unwrap().unwrap().lease, 0);

    // The same key twice in one transaction is refused, and writes nothing.
    let twice = c
        .txn(vec![], vec![put(&x, b"1", None), Op::Delete(x.clone())])
        .await;
    assert!(matches!(twice, Err(CoordError::Refused(_))), "{twice:?}");
    assert_eq!(c.get(&x).await.unwrap(), None);

    // Revoking removes the lease's keys and only them.
    c.revoke(lease).await.unwrap();
    c.revoke(other).await.unwrap();
    assert_eq!(c.get(&leader).await.unwrap(), None);
    assert_eq!(c.get(&y).await.unwrap().unwrap().value, b"off");
    assert!(matches!(c.revoke(lease).await, Err(CoordError::LeaseExpired(l)) if l == lease));
}

async fn leases<C: Coordinator>(c: &C, clock: &impl Clock, p: &str) {
    // Renewed well within its TTL, a lease outlives it several times over.
    let kept_key = format!("{p}lease/kept");
    let kept = c.grant(Duration::from_secs(3)).await.unwrap();
    c.put(&kept_key, b"v".to_vec(), Some(kept)).await.unwrap();
    for _ in 0..14 {
        clock.pass(Duration::from_millis(300)).await;
        assert_eq!(c.keep_alive(kept).await.unwrap(), Duration::from_secs(3));
    }
    assert_eq!(c.get(&kept_key).await.unwrap().unwrap().lease, kept);

    // Not renewed, a 1 s lease expires and takes its key.
    let key = format!("{p}lease/short");
    let short = c.grant(Duration::from_secs(1)).await.unwrap();
    assert_eq!(c.keep_alive(short).await.unwrap(), Duration::from_secs(1));
    c.put(&key, b"v".to_vec(), Some(short)).await.unwrap();
    eventually(
        clock,
        Duration::from_secs(10),
        "the 1 s lease's key removed",
        || async { c.get(&key).await.unwrap().is_none() },
    )
    .await;
    assert!(matches!(c.keep_alive(short).await, Err(CoordError::LeaseExpired(l)) if l == short));
    assert!(
        matches!(c.put(&key, b"v".to_vec(), Some(short)).await, Err(CoordError::LeaseExpired(l)) if l == short)
    );
    let txn = c
        .txn(
            vec![Compare::Absent(key.clone())],
            vec![put(&key, b"v", Some(short))],
        )
        .await;
    assert!(
        matches!(txn, Err(CoordError::LeaseExpired(l)) if l == short),
        "{txn:?}"
    );
    assert!(matches!(
        c.revoke(short).await,
        Err(CoordError::LeaseExpired(_))
    ));
    assert_eq!(c.get(&key).await.unwrap(), None);
    c.revoke(kept).await.unwrap();
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn memory_conforms() {
    let c = MemoryCoordinator::new();
    conformance(&c, &c.clone(), "spool-test/").await;
}

#[tokio::test]
async fn etcd_conforms() {
    let Some(bin) = required_bin("etcd", "etcd_conforms") else {
        return;
    };
    let etcd = Etcd::start(&bin, &[]).await;
    let c = EtcdCoordinator::connect(&etcd.coordinator()).await.unwrap();
    conformance(&c, &RealTime, "spool-test/").await;
}

/// An endpoint that refuses connections, and one that accepts them but never answers.
fn dead_endpoints() -> (String, String, TcpListener) {
    let refused = format!("127.0.0.1:{}", free_port());
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    (refused, silent_addr, silent)
}

#[tokio::test]
async fn etcd_client_fails_over_between_endpoints() {
    let Some(bin) = required_bin("etcd", "etcd_client_fails_over_between_endpoints") else {
        return;
    };
    let etcd = Etcd::start(&bin, &[]).await;
    let (refused, silent, _held) = dead_endpoints();
    let timeout = Duration::from_millis(500);
    let cfg = |endpoints: Vec<&String>| EtcdConfig {
        timeout,
        ..EtcdConfig::new(endpoints.into_iter().cloned().collect())
    };

    // Reads go on to the next endpoint within the call, and the one that works is kept.
    let c = EtcdCoordinator::new(&cfg(vec![&refused, &silent, &etcd.addr])).unwrap();
    assert_eq!(c.call_bound(), timeout * 3);
    assert_eq!(c.get("spool-test/x").await.unwrap(), None);
    assert_eq!(c.endpoint(), etcd.addr);
    c.put("spool-test/x", b"1".to_vec(), None).await.unwrap();
    assert_eq!(c.endpoint(), etcd.addr);
    let lease = c.grant(Duration::from_secs(5)).await.unwrap();
    c.keep_alive(lease).await.unwrap();

    // A write sent to an endpoint that never answered may have been applied: it is not
    // sent again within the call, but the next call starts on the next endpoint.
    let c = EtcdCoordinator::new(&cfg(vec![&silent, &etcd.addr])).unwrap();
    let err = c
        .put("spool-test/y", b"1".to_vec(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CoordError::Unavailable(m) if m.contains(&silent)),
        "{err}"
    );
    assert_eq!(c.endpoint(), etcd.addr);
    assert!(c
        .txn(
            vec![Compare::Absent("spool-test/y".into())],
            vec![put("spool-test/y", b"2", None)]
        )
        .await
        .unwrap());
    // A write refused before it was sent (no connection) is sent to the next endpoint.
    let c = EtcdCoordinator::new(&cfg(vec![&refused, &etcd.addr])).unwrap();
    c.put("spool-test/z", b"1".to_vec(), None).await.unwrap();

    // No endpoint answers: Unavailable, naming each, within the call's bound.
    let c = EtcdCoordinator::new(&cfg(vec![&refused, &silent])).unwrap();
    let started = Instant::now();
    let err = c.get("spool-test/x").await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, CoordError::Unavailable(m) if m.contains(&refused) && m.contains(&silent)),
        "{err}"
    );
    assert!(
        took < c.call_bound() + Duration::from_secs(5),
        "took {took:?}"
    );
    for dead in [&refused, &silent] {
        let err = EtcdCoordinator::connect(&cfg(vec![dead]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::Coordinator(CoordError::Unavailable(_))),
            "{err}"
        );
    }
    let c = EtcdCoordinator::connect(&cfg(vec![&silent, &refused, &etcd.addr]))
        .await
        .unwrap();
    assert_eq!(c.endpoint(), etcd.addr);

    // The etcd that answered goes away: the client says so.
    let c = EtcdCoordinator::connect(&cfg(vec![&etcd.addr]))
        .await
        .unwrap();
    drop(etcd);
    assert!(matches!(
        c.get("spool-test/x").await,
        Err(CoordError::Unavailable(_))
    ));
}

#[tokio::test]
async fn etcd_client_authenticates_and_renews_its_token() {
    let test = "etcd_client_authenticates_and_renews_its_token";
    let Some(bin) = required_bin("etcd", test) else {
        return;
    };
    let Some(ctl) = required_bin("etcdctl", test) else {
        return;
    };
    // Simple tokens live 1 s unused, so the client's goes stale within the test.
    let etcd = Etcd::start(&bin, &["--auth-token", "simple", "--auth-token-ttl", "1"]).await;
    etcd.etcdctl(&ctl, &["user", "add", "root:rootpw"]);
    etcd.etcdctl(&ctl, &["auth", "enable"]);
    let with = |user: Option<&str>, password: Option<&str>| EtcdConfig {
        username: user.map(String::from),
        password: password.map(String::from),
        ..etcd.coordinator()
    };

    let anonymous = EtcdCoordinator::new(&with(None, None)).unwrap();
    let err = anonymous.get("spool-test/k").await.unwrap_err();
    assert!(matches!(err, CoordError::Refused(_)), "{err}");
    let err = EtcdCoordinator::connect(&with(None, None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Coordinator(CoordError::Refused(_))),
        "{err}"
    );
    let err = EtcdCoordinator::connect(&with(Some("root"), Some("wrong")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Coordinator(CoordError::Refused(_))),
        "{err}"
    );

    let c = EtcdCoordinator::connect(&with(Some("root"), Some("rootpw")))
        .await
        .unwrap();
    c.put("spool-test/k", b"v".to_vec(), None).await.unwrap();
    assert_eq!(c.get("spool-test/k").await.unwrap().unwrap().value, b"v");

    // A token got after the client's, left unused, goes stale: the client's has too.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", etcd.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = pb::auth_client::AuthClient::new(channel.clone())
        .authenticate(pb::AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut kv = pb::kv_client::KvClient::new(channel);
    let mut stale = false;
    for _ in 0..10 {
        // Longer than the token's TTL plus etcd's 1 s sweep; a use would renew it.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut request = tonic::Request::new(pb::RangeRequest {
            key: b"spool-test/k".to_vec(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("token", token.parse().unwrap());
        match kv.range(request).await {
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                stale = true;
                break;
            }
            other => eprintln!("token still valid: {other:?}"),
        }
    }
    assert!(stale, "etcd never dropped the unused token");
    assert_eq!(
        c.get("spool-test/k").await.unwrap().unwrap().value,
        b"v",
        "re-authenticated once"
    );
    c.put("spool-test/k", b"w".to_vec(), None).await.unwrap();
}
