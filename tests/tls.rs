//! TLS end to end: clients over TLS, plaintext and TLS mismatched either way, client
//! certificates from another CA, a replica following over mutual TLS with segment fetch,
//! and the node's certificate reloaded under load. Certificates are made here with rcgen.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{run, wait_until, Server};
use spool::client::{AckMode, Client, ClientOptions};
use spool::tls::dev_certs::{DevCa, IssuedFiles};
use spool::tls::TlsOptions;

/// A CA and the files of the certificates it issued, in `dir`.
struct Pki {
    dir: PathBuf,
    ca: DevCa,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = DevCa::new(name).unwrap();
        ca.write(&dir.join("ca.pem")).unwrap();
        Pki {
            dir: dir.to_owned(),
            ca,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for the loopback address, named `name`.
    fn issue(&self, name: &str) -> IssuedFiles {
        let issued = self.ca.issue(name, &["127.0.0.1", "localhost"]).unwrap();
        issued.write(&self.dir, name).unwrap()
    }

    /// The flags of a node serving with `node`'s certificate; client certificates
    /// required (signed by this CA) when `mutual`.
    fn serve_flags(&self, node: &IssuedFiles, mutual: bool) -> Vec<String> {
        let mut v = vec![
            "--tls-cert".to_string(),
            node.cert.display().to_string(),
            "--tls-key".into(),
            node.key.display().to_string(),
        ];
        if mutual {
            v.extend([
                "--tls-client-ca".to_string(),
                self.ca().display().to_string(),
                "--tls-require-client-cert".into(),
            ]);
        }
        v
    }

    fn client(&self, id: Option<&IssuedFiles>) -> TlsOptions {
        TlsOptions {
            ca: Some(self.ca()),
            cert: id.map(|i| i.cert.clone()),
            key: id.map(|i| i.key.clone()),
        }
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

async fn tls_client(addr: &str, tls: &TlsOptions) -> spool::client::Result<Client> {
    let options = ClientOptions {
        tls: Some(tls.clone()),
        ..ClientOptions::default()
    };
    Client::connect_with(addr, options).await
}

/// A call's error, which must come within `limit`.
async fn fails_within<T: std::fmt::Debug>(
    limit: Duration,
    f: impl std::future::Future<Output = spool::client::Result<T>>,
) -> String {
    let started = Instant::now();
    let r = tokio::time::timeout(limit, f)
        .await
        .expect("no answer in time: it hangs");
    let e = format!("{:#}", anyhow::Error::from(r.expect_err("it worked")));
    assert!(started.elapsed() < limit, "{e}");
    e
}

#[test]
fn a_client_over_tls_appends_and_reads() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new(&d.path().join("pki"), "test CA");
    let node = pki.issue("node");
    let s = Server::start(&d.path().join("n"), &refs(&pki.serve_flags(&node, false)));
    let tls = pki.client(None);
    let addr = s.addr.clone();
    run(30, async move {
        let c = tls_client(&addr, &tls).await.unwrap();
        c.create_log("t", None).await.unwrap();
        let r = c
            .append(
                "t",
                vec![Bytes::from("a"), Bytes::from("b")],
                AckMode::Async,
            )
            .await
            .unwrap();
        assert_eq!((r.first_offset, r.count), (0, 2));
        let read = c.read("t", 0, 10).await.unwrap();
        let values: Vec<&[u8]> = read.records.iter().map(|r| &r.value[..]).collect();
        assert_eq!(values, [b"a", b"b"]);
        // An https:// address with the CA does the same; the CLI takes the flags.
        let https = format!("https://{addr}");
        let c = tls_client(&https, &tls).await.unwrap();
        assert_eq!(c.describe_log("t").await.unwrap().end_offset, 2);
    });
    let ca = pki.ca().display().to_string();
    let out = common::cli(
        &s.addr,
        &["--tls-ca", &ca, "read", "t", "--from", "0"],
        None,
    );
    assert_eq!(common::stdout(&out), "0\ta\n1\tb\n");
    s.stop();
}

#[test]
fn plaintext_and_tls_mismatched_fail_at_once_saying_why() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new(&d.path().join("pki"), "test CA");
    let node = pki.issue("node");
    let tls_node = Server::start(&d.path().join("t"), &refs(&pki.serve_flags(&node, false)));
    let plain_node = Server::start(&d.path().join("p"), &[]);
    let (t, p) = (tls_node.addr.clone(), plain_node.addr.clone());
    let tls = pki.client(None);
    run(60, async move {
        let limit = Duration::from_secs(5);
        // Plaintext client, TLS node: told in HTTP/2 (a GOAWAY) that TLS is required.
        let e = fails_within(limit, async { Client::connect(&t).await?.status().await }).await;
        assert!(e.contains("requires TLS"), "{e}");
        // TLS client, plaintext node: a TLS alert ends the handshake.
        let e = fails_within(limit, async { tls_client(&p, &tls).await?.status().await }).await;
        assert!(e.contains("alert"), "{e}");
    });
    // The CLI, both ways, within the same bound.
    let ca = pki.ca().display().to_string();
    for (addr, args) in [
        (&tls_node.addr, vec!["status"]),
        (&plain_node.addr, vec!["--tls-ca", &ca, "status"]),
    ] {
        let started = Instant::now();
        let out = common::cli(addr, &args, None);
        assert!(!out.status.success());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    tls_node.stop();
    plain_node.stop();
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new(&d.path().join("pki"), "test CA");
    let other = Pki::new(&d.path().join("other"), "another CA");
    let node = pki.issue("node");
    let s = Server::start(&d.path().join("n"), &refs(&pki.serve_flags(&node, true)));
    let good = pki.issue("client");
    let stranger = other.issue("client");
    let addr = s.addr.clone();
    let (ours, theirs, none) = (
        pki.client(Some(&good)),
        // Trusts the node's CA, presents the other CA's certificate.
        TlsOptions {
            ca: Some(pki.ca()),
            ..other.client(Some(&stranger))
        },
        pki.client(None),
    );
    run(60, async move {
        let limit = Duration::from_secs(5);
        let e = fails_within(limit, async {
            tls_client(&addr, &theirs).await?.status().await
        })
        .await;
        assert!(e.contains("refused the client certificate"), "{e}");
        let e = fails_within(limit, async {
            tls_client(&addr, &none).await?.status().await
        })
        .await;
        assert!(e.contains("requires a client certificate"), "{e}");
        let c = tls_client(&addr, &ours).await.unwrap();
        assert_eq!(c.status().await.unwrap().role, "primary");
    });
    s.stop();
}

#[test]
fn a_replica_follows_over_mutual_tls_with_segment_fetch() {
    replica_over_mutual_tls(false);
}

/// The same with tokens checked on the primary and no token anywhere: the replica (for
/// the stream and its segment fetches) and the client are who their certificates say.
#[test]
fn a_replica_authenticated_by_its_certificate_follows_with_segment_fetch() {
    replica_over_mutual_tls(true);
}

fn replica_over_mutual_tls(cert_principals: bool) {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new(&d.path().join("pki"), "test CA");
    let (pcert, rcert, client) = (pki.issue("primary"), pki.issue("replica"), pki.issue("c"));
    let config = common::fixed_segments(1 << 20);
    let mut pflags = pki.serve_flags(&pcert, true);
    if cert_principals {
        let tokens = d.path().join("tokens.toml");
        let body = "[[cert]]\nname = \"replica\"\nroles = [\"replica\"]\n\n\
                    [[cert]]\nname = \"c\"\nroles = [\"admin\"]\n";
        std::fs::write(&tokens, body).unwrap();
        pflags.extend(["--tokens-file".to_string(), tokens.display().to_string()]);
    }
    let p = Server::start_toml(&d.path().join("p"), &config, &refs(&pflags));
    let tls = pki.client(Some(&client));
    let (paddr, t) = (p.addr.clone(), tls.clone());
    // 4 MiB before the replica exists: it catches up on sealed 1 MiB segments.
    let end = run(60, async move {
        let c = tls_client(&paddr, &t).await.unwrap();
        c.create_log("m", None).await.unwrap();
        let mut end = 0;
        for i in 0..64 {
            let recs = (0..16)
                .map(|j| Bytes::from(format!("m-{i}-{j}-{}", "p".repeat(4 << 10))))
                .collect();
            let r = c.append("m", recs, AckMode::Async).await.unwrap();
            end = r.first_offset + u64::from(r.count);
        }
        end
    });
    let mut rflags = pki.serve_flags(&rcert, true);
    // Named as its certificate is: with tokens on, the primary takes its hello only so.
    rflags.extend(["--replica-of".to_string(), p.addr.clone()]);
    rflags.extend(["--replica-id".to_string(), "replica".into()]);
    let r = Server::start_toml(&d.path().join("r"), &config, &refs(&rflags));
    let raddr = r.addr.clone();
    run(60, async move {
        let rc = tls_client(&raddr, &tls).await.unwrap();
        let l = wait_until("the replica caught up", Duration::from_secs(45), || async {
            let l = common::upstream_log(&rc, "m").await?;
            let end_here = rc.describe_log("m").await.ok()?.end_offset;
            (end_here == end).then_some(l)
        })
        .await;
        assert!(
            l.segment_bytes_fetched >= 1 << 20,
            "no segment fetched: {l:?}"
        );
    });
    common::stop_identical(r, p);
}

/// The SHA-less fingerprint a test needs: the leaf certificate a new TLS connection to
/// `addr` is served.
async fn served_cert(addr: &str, tls: &TlsOptions) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = spool::tls::server_name(addr).unwrap();
    let s = tls.connector().unwrap().connect(name, tcp).await.unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    spool::tls::load_certs(path).unwrap()[0].to_vec()
}

/// Replace `to` by `from` atomically (as a deploy tool would).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A node serving from certificate files of its own ("live", a copy of "old"), to be
/// replaced under it (by "new"): the CA, the node, and the old, new and live files.
fn serving_live_files(dir: &std::path::Path) -> (Pki, Server, [IssuedFiles; 3]) {
    let pki = Pki::new(&dir.join("pki"), "test CA");
    let (old, new) = (pki.issue("node-old"), pki.issue("node-new"));
    let live = IssuedFiles {
        cert: dir.join("live.pem"),
        key: dir.join("live.key"),
    };
    std::fs::copy(&old.cert, &live.cert).unwrap();
    std::fs::copy(&old.key, &live.key).unwrap();
    let s = Server::start(&dir.join("n"), &refs(&pki.serve_flags(&live, false)));
    (pki, s, [old, new, live])
}

/// Replacing the files is enough: no SIGHUP, new connections see the new certificate and
/// a client connected before goes on.
#[test]
fn a_certificate_reloads_when_its_files_change() {
    let d = tempfile::tempdir().unwrap();
    let (pki, s, [old, new, live]) = serving_live_files(d.path());
    let tls = pki.client(None);
    let (addr, new_der) = (s.addr.clone(), pem_der(&new.cert));
    run(60, async move {
        let c = tls_client(&addr, &tls).await.unwrap();
        c.create_log("r", None).await.unwrap();
        assert_eq!(served_cert(&addr, &tls).await, pem_der(&old.cert));
        replace(&new.key, &live.key);
        replace(&new.cert, &live.cert);
        wait_until(
            "new connections see the new certificate",
            Duration::from_secs(15),
            || {
                let (addr, tls, new_der) = (addr.clone(), tls.clone(), new_der.clone());
                async move { (served_cert(&addr, &tls).await == new_der).then_some(()) }
            },
        )
        .await;
        let r = c
            .append("r", vec![Bytes::from("after")], AckMode::Async)
            .await;
        assert!(r.is_ok(), "the client connected before: {r:?}");
    });
    s.stop();
}

#[test]
fn certificate_reload_under_load_loses_no_append() {
    let d = tempfile::tempdir().unwrap();
    let (pki, s, [old, new, live]) = serving_live_files(d.path());
    let tls = pki.client(None);
    let addr = s.addr.clone();
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a, st, t) = (acked.clone(), stop.clone(), tls.clone());
    let writer = std::thread::spawn(move || {
        run(120, async move {
            let c = tls_client(&addr, &t).await.unwrap();
            c.create_log("r", None).await.unwrap();
            let mut i = 0u64;
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let v = format!("rec-{i}");
                let r = c
                    .append("r", vec![Bytes::from(v.clone())], AckMode::Async)
                    .await
                    .expect("an append failed during the reload");
                a.lock().unwrap().push((r.first_offset, v));
                i += 1;
            }
        })
    });
    let addr = s.addr.clone();
    let (old_der, new_der) = (pem_der(&old.cert), pem_der(&new.cert));
    let (child, a) = (&s.child, acked.clone());
    run(90, async move {
        let acks = |n| {
            let a = a.clone();
            wait_until("appends acked", Duration::from_secs(30), move || {
                let len = a.lock().unwrap().len();
                async move { (len >= n).then_some(()) }
            })
        };
        acks(50).await;
        assert_eq!(served_cert(&addr, &tls).await, old_der);
        // Key first, then the certificate; then SIGHUP.
        replace(&new.key, &live.key);
        replace(&new.cert, &live.cert);
        common::signal(child, libc::SIGHUP);
        let before = a.lock().unwrap().len();
        wait_until(
            "new connections see the new certificate",
            Duration::from_secs(10),
            || {
                let (addr, tls, new_der) = (addr.clone(), tls.clone(), new_der.clone());
                async move { (served_cert(&addr, &tls).await == new_der).then_some(()) }
            },
        )
        .await;
        acks(before + 50).await;
        // A bad certificate is refused and the current one kept.
        std::fs::write(&live.cert, "not a certificate").unwrap();
        common::signal(child, libc::SIGHUP);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(served_cert(&addr, &tls).await, new_der);
        let before = a.lock().unwrap().len();
        acks(before + 20).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    writer.join().unwrap();
    // Every acked record is in the log, where its ack said.
    let acked = acked.lock().unwrap().clone();
    let addr = s.addr.clone();
    let tls = pki.client(None);
    run(60, async move {
        let c = tls_client(&addr, &tls).await.unwrap();
        let mut stored = Vec::new();
        while stored.len() < acked.len() {
            let r = c.read("r", stored.len() as u64, 1000).await.unwrap();
            assert!(!r.records.is_empty(), "the log ends at {}", stored.len());
            stored.extend(r.records.into_iter().map(|r| (r.offset, r.value)));
        }
        for (offset, value) in &acked {
            let (o, v) = &stored[*offset as usize];
            assert_eq!((o, &v[..]), (offset, value.as_bytes()));
        }
    });
    s.stop();
}

/// The Python grpcio client of the README over mutual TLS with a bearer token.
#[test]
fn python_grpc_client_over_tls_with_a_token() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/pyvenv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must create target/pyvenv"
        );
        eprintln!("SKIPPED: no target/pyvenv");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new(&d.path().join("pki"), "py-ca");
    let (node, me) = (pki.issue("node"), pki.issue("py"));
    let token = spool::server::auth::tokens::new_token();
    let hash = spool::server::auth::tokens::hex(&spool::server::auth::tokens::hash(&token));
    let tokens = d.path().join("tokens.toml");
    let entry =
        format!("[[token]]\nprincipal = \"py\"\nsha256 = \"{hash}\"\nroles = [\"write\"]\n");
    std::fs::write(&tokens, entry).unwrap();
    let mut flags = pki.serve_flags(&node, true);
    flags.extend(["--tokens-file".to_string(), tokens.display().to_string()]);
    let s = Server::start(&d.path().join("data"), &refs(&flags));
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/python/client_test.py"))
        .arg(&s.addr)
        .arg(root.join("proto/proto"))
        .arg(d.path().join("gen"))
        .env("SPOOL_TLS_CA", pki.ca())
        .env("SPOOL_TLS_CERT", &me.cert)
        .env("SPOOL_TLS_KEY", &me.key)
        .env("SPOOL_TOKEN", &token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("python client ok"),
        "python client failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client certificate named in the tokens file is a principal: no token needed; its
/// roles hold as a token's would.
#[test]
fn a_client_certificate_names_a_principal() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new(&d.path().join("pki"), "id-ca");
    let node = pki.issue("node");
    let (writer, reader, stranger) = (
        pki.issue("writer-svc"),
        pki.issue("reader-svc"),
        pki.issue("nobody"),
    );
    let tokens = d.path().join("tokens.toml");
    let body = "[[cert]]\nname = \"writer-svc\"\nroles = [\"admin\"]\n\n[[cert]]\nname = \"reader-svc\"\nroles = [\"read\"]\n";
    std::fs::write(&tokens, body).unwrap();
    let mut flags = pki.serve_flags(&node, true);
    flags.extend(["--tokens-file".to_string(), tokens.display().to_string()]);
    let s = Server::start(&d.path().join("data"), &refs(&flags));
    run(60, async {
        let as_ = |id: &IssuedFiles| {
            let options = ClientOptions {
                tls: Some(pki.client(Some(id))),
                ..Default::default()
            };
            Client::connect_with(&s.addr, options)
        };
        let w = as_(&writer).await.unwrap();
        w.create_log("c", None).await.unwrap();
        w.append("c", vec![Bytes::from_static(b"x")], AckMode::Async)
            .await
            .unwrap();
        let r = as_(&reader).await.unwrap();
        assert_eq!(r.read("c", 0, 10).await.unwrap().records.len(), 1);
        let denied = r
            .append("c", vec![Bytes::from_static(b"y")], AckMode::Async)
            .await
            .unwrap_err();
        assert_eq!(
            denied.code(),
            Some(tonic::Code::PermissionDenied),
            "{denied}"
        );
        let nobody = as_(&stranger).await.unwrap();
        let refused = nobody.read("c", 0, 10).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Some(tonic::Code::Unauthenticated),
            "{refused}"
        );
    });
}
