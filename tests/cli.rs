//! The CLI as an operator meets it, through the real binary: options that belong to other
//! commands, destructive commands that show what they do and ask first, connection
//! errors on one line with a hint, interrupted bulk appends, times and states in status,
//! the server's default ack, read tokens, `check` on a live directory, and gRPC tooling
//! (health per service, reflection v1 and v1alpha). Every wait is bounded.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{run, wait_until, Server};

/// Run `spool ARGS` to its end, bounded: a command that should have refused at once but
/// runs (a node serving) is killed and fails the test.
fn spool(args: &[&str]) -> Output {
    let child = Command::new(common::spool_bin())
        .args(args)
        .env_remove("SPOOL_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: signalling the child we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("spool {args:?} still ran after 30 s");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The command failed, and its stderr (one line) is returned.
fn failed(o: &Output) -> String {
    let err = text(&o.stderr);
    assert!(
        !o.status.success(),
        "expected a failure; stdout: {}",
        text(&o.stdout)
    );
    err
}

#[test]
fn client_options_are_not_taken_by_local_commands() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("data");
    let port = common::free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let dir_s = dir.to_str().unwrap();
    let o = spool(&["serve", "--addr", &addr, "--data-dir", dir_s]);
    let err = failed(&o);
    assert!(err.contains("--listen"), "{err}");
    assert!(
        !dir.exists(),
        "serve made the data directory before refusing"
    );
    let o = spool(&["--addr", &addr, "serve", "--data-dir", dir_s]);
    assert!(failed(&o).contains("does not take --addr"));
    let o = spool(&["check", "--addr", &addr, dir_s]);
    assert!(failed(&o).contains("does not take --addr"));
    let o = spool(&["dev-cluster", "--addr", &addr]);
    assert!(failed(&o).contains("--base-port"));
    for cmd in [
        &["serve"][..],
        &["check"],
        &["bench", "storage"],
        &["dev-cluster"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = common::stdout(&spool(&args));
        for flag in [
            "--addr",
            "--failover-timeout-ms",
            "--token <",
            "--token-file",
        ] {
            assert!(!help.contains(flag), "{cmd:?} --help shows {flag}:\n{help}");
        }
    }
    let help = common::stdout(&spool(&["append", "--help"]));
    assert!(help.contains("--addr"), "{help}");
}

#[test]
fn serve_on_a_port_in_use_makes_no_data_directory() {
    let d = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let dir = d.path().join("data");
    let o = spool(&[
        "serve",
        "--listen",
        &listen,
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    let err = failed(&o);
    assert!(err.contains("binding"), "{err}");
    assert!(!dir.exists(), "the data directory was made: {err}");
}

#[test]
fn connection_errors_are_one_line_with_a_hint() {
    let d = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let err = failed(&spool(&["--addr", &addr, "status"]));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot connect to {addr}: Connection refused")),
        "{err}"
    );
    assert!(err.contains("is a spool node running there"), "{err}");
    assert!(!err.contains("transport error"), "{err}");

    let err = failed(&spool(&["--addr", "localhost", "status"]));
    assert!(
        err.contains("no port") && err.contains("localhost:7070"),
        "{err}"
    );

    let metrics = common::free_port();
    let node = Server::start(
        &d.path().join("n"),
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    run(30, common::wait_metrics(metrics, &["spool_"]));
    let err = failed(&spool(&[
        "--addr",
        &format!("127.0.0.1:{metrics}"),
        "status",
    ]));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a Spool gRPC port"), "{err}");
    drop(node);
}

#[test]
fn an_append_to_a_replica_names_the_unreachable_primary() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let r = Server::start(&d.path().join("r"), &["--replica-of", &p.addr]);
    common::stdout(&p.cli(&["logs", "create", "l"]));
    run(60, async {
        let c = common::client(&r.addr).await;
        wait_until(
            "the replica never named its primary",
            Duration::from_secs(30),
            || async {
                let s = c.status().await.ok()?;
                (!s.primary_addr.is_empty()).then_some(())
            },
        )
        .await;
    });
    let primary = p.addr.clone();
    p.kill9();
    let err = failed(&r.cli(&["append", "l", "x"]));
    assert!(
        err.contains(&format!("the primary at {primary}")) && err.contains("unreachable"),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
}

/// A primary with logs `a` and `b` of 10 records each, and a delayed replica holding them.
fn delayed_pair(d: &Path) -> (Server, Server) {
    let p = Server::start(&d.join("p"), &[]);
    let r = Server::start(
        &d.join("r"),
        &[
            "--replica-of",
            &p.addr,
            "--delay",
            "1h",
            "--replica-id",
            "late",
        ],
    );
    for log in ["a", "b"] {
        common::stdout(&p.cli(&["logs", "create", log]));
        let recs: Vec<String> = (0..10).map(|i| format!("{log}{i}")).collect();
        let mut args = vec!["append", log];
        args.extend(recs.iter().map(String::as_str));
        common::stdout(&p.cli(&args));
    }
    run(60, async {
        let c = common::client(&r.addr).await;
        wait_until(
            "the replica did not store 10 + 10",
            Duration::from_secs(30),
            || async {
                let s = c.status().await.ok()?;
                let stored = |n: &str| s.logs.iter().any(|l| l.name == n && l.stored_offset == 10);
                (stored("a") && stored("b")).then_some(())
            },
        )
        .await;
    });
    (p, r)
}

#[test]
fn promote_at_a_point_shows_the_cut_and_asks() {
    let d = tempfile::tempdir().unwrap();
    let (p, r) = delayed_pair(d.path());

    // The primary's status says the replica is delayed; the replica's shows times.
    let s = common::stdout(&p.cli(&["status"]));
    assert!(s.contains(", delayed"), "{s}");
    let s = common::stdout(&r.cli(&["status"]));
    assert!(!s.contains(" us)"), "raw microseconds: {s}");

    // No --yes and no terminal: the plan is shown, nothing is done.
    let o = r.cli(&["admin", "promote", "--at-offset", "3"]);
    let err = failed(&o);
    let out = text(&o.stdout);
    assert!(err.contains("--yes"), "{err}");
    for log in ["a", "b"] {
        assert!(
            out.contains(&format!("{log:<22} would lose records 3..10 (7 record(s)")),
            "{out}"
        );
    }
    let status = run(30, common::status(&r.addr));
    assert_eq!(status.role, "replica", "promoted without --yes");

    // A dry run of one log.
    let out = common::stdout(&r.cli(&[
        "admin",
        "promote",
        "--at-offset",
        "3",
        "--log",
        "a",
        "--dry-run",
    ]));
    assert!(out.contains("would lose records 3..10"), "{out}");
    assert!(!out.contains("\n  b "), "{out}");
    let err = failed(&r.cli(&[
        "admin",
        "promote",
        "--at-offset",
        "3",
        "--log",
        "nope",
        "--dry-run",
    ]));
    assert!(err.contains("nope"), "{err}");

    // Done, for `a` only: `b` keeps everything.
    let out = common::stdout(&r.cli(&[
        "admin",
        "promote",
        "--at-offset",
        "3",
        "--log",
        "a",
        "--yes",
    ]));
    assert!(out.contains("is now primary in epoch"), "{out}");
    assert!(out.contains("lost records 3..10"), "{out}");
    run(30, async {
        assert_eq!(common::describe(&r.addr, "a").await.end_offset, 3);
        assert_eq!(common::describe(&r.addr, "b").await.end_offset, 10);
    });
    drop(p);
}

#[test]
fn promoting_a_primary_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let before = run(30, common::status(&p.addr)).epoch;
    let err = failed(&p.cli(&["admin", "promote"]));
    assert!(
        err.contains("FailedPrecondition") && err.contains("already the primary"),
        "{err}"
    );
    assert_eq!(run(30, common::status(&p.addr)).epoch, before);
}

#[test]
fn delete_and_switchover_ask_and_a_forwarded_delete_says_where() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let r = Server::start(&d.path().join("r"), &["--replica-of", &p.addr]);
    common::stdout(&p.cli(&["logs", "create", "doomed"]));
    common::stdout(&p.cli(&["append", "doomed", "x", "y"]));
    run(30, common::reach_end(&r.addr, "doomed", 2));

    let o = r.cli(&["logs", "delete", "doomed"]);
    let err = failed(&o);
    assert!(
        err.contains("2 record(s)") && err.contains("--yes"),
        "{err}"
    );
    run(30, common::describe(&p.addr, "doomed"));

    let out = common::stdout(&r.cli(&["logs", "delete", "doomed", "--yes"]));
    assert!(
        out.contains(&format!("forwarded to the primary at {}", p.addr)),
        "{out}"
    );
    let list = common::stdout(&p.cli(&["logs", "list"]));
    assert!(!list.contains("doomed"), "{list}");

    let err = failed(&p.cli(&["admin", "switchover", "--to", "n2"]));
    assert!(err.contains("--yes"), "{err}");
}

#[test]
fn the_servers_default_ack_is_used_unless_given() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start_toml(&d.path().join("p"), "default_ack = \"written\"\n", &[]);
    common::stdout(&p.cli(&["logs", "create", "l"]));
    let out = common::stdout(&p.cli(&["append", "l", "x"]));
    assert!(
        out.contains("page cache"),
        "the server's default was overridden: {out}"
    );
    let out = common::stdout(&p.cli(&["append", "l", "--ack", "async", "y"]));
    assert!(!out.contains("page cache"), "{out}");
}

#[test]
fn read_takes_the_read_token_an_append_prints() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let r = Server::start(&d.path().join("r"), &["--replica-of", &p.addr]);
    common::stdout(&p.cli(&["logs", "create", "l"]));
    let out = common::stdout(&p.cli(&["append", "l", "mine"]));
    let token = out
        .split("token ")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_owned();
    let out = common::stdout(&r.cli(&["read", "l", "--read-token", &token]));
    assert_eq!(out, "0\tmine\n");
}

#[test]
fn read_works_with_a_read_only_token() {
    let d = tempfile::tempdir().unwrap();
    // Tokens made by the CLI, as an operator makes them.
    let mut entries = String::new();
    let mut tokens = Vec::new();
    for role in ["admin", "read"] {
        let out = common::stdout(&spool(&[
            "admin",
            "token",
            "create",
            "--role",
            role,
            "--principal",
            role,
        ]));
        let token = out
            .lines()
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned();
        let entry = out.split("# add to the tokens file:\n").nth(1).unwrap();
        entries.push_str(entry);
        entries.push('\n');
        tokens.push(token);
    }
    let file = d.path().join("tokens.toml");
    std::fs::write(&file, entries).unwrap();
    let node = Server::start(
        &d.path().join("n"),
        &["--tokens-file", file.to_str().unwrap()],
    );
    let with = |env: Option<&str>, args: &[&str]| {
        let mut c = Command::new(common::spool_bin());
        c.args(["--addr", &node.addr])
            .args(args)
            .env_remove("SPOOL_TOKEN");
        if let Some(t) = env {
            c.env("SPOOL_TOKEN", t);
        }
        c.output().unwrap()
    };
    common::stdout(&with(Some(&tokens[0]), &["logs", "create", "l"]));
    common::stdout(&with(Some(&tokens[0]), &["append", "l", "v"]));
    assert_eq!(
        common::stdout(&with(Some(&tokens[1]), &["read", "l"])),
        "0\tv\n"
    );
    let token_file = d.path().join("read-token");
    std::fs::write(&token_file, format!("{}\n", tokens[1])).unwrap();
    let out = with(
        None,
        &["--token-file", token_file.to_str().unwrap(), "read", "l"],
    );
    assert_eq!(common::stdout(&out), "0\tv\n");
    let err = failed(&with(None, &["read", "l"]));
    assert!(err.contains("Unauthenticated"), "{err}");
}

#[test]
fn check_refuses_a_live_directory_and_says_a_missing_one_once() {
    let d = tempfile::tempdir().unwrap();
    let node = Server::start(&d.path().join("n"), &[]);
    let dir = node.data_dir.to_str().unwrap().to_owned();
    let err = failed(&spool(&["check", &dir]));
    assert!(err.contains("in use by a running spool node"), "{err}");
    let o = spool(&["check", "--force", &dir]);
    assert!(text(&o.stderr).contains("warning"), "{}", text(&o.stderr));
    node.stop();
    common::stdout(&spool(&["check", &dir]));

    let missing = d.path().join("nowhere");
    let err = failed(&spool(&["check", missing.to_str().unwrap()]));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("nowhere").count(), 1, "{err}");
}

/// A bulk append from a pipe left open: `lines` sent, then the command is waited on until
/// the node holds `acked` records.
fn bulk_append(node: &Server, lines: usize, acked: u64) -> std::process::Child {
    let mut child = Command::new(common::spool_bin())
        .args(["--addr", &node.addr, "append", "bulk", "--batch", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = (0..lines).map(|i| format!("r{i}\n")).collect();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    run(60, common::reach_end(&node.addr, "bulk", acked));
    child
}

#[test]
fn an_interrupted_bulk_append_says_what_was_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let node = Server::start(&d.path().join("n"), &[]);
    common::stdout(&node.cli(&["logs", "create", "bulk"]));
    // Uninterrupted: every record acknowledged, the command ends at the end of its input.
    let lines: String = (0..250).map(|i| format!("r{i}\n")).collect();
    let out = common::stdout(&node.cli_stdin(&["append", "bulk", "--batch", "100"], &lines));
    assert!(
        out.contains("appended 250 record(s) at offsets 0..250"),
        "{out}"
    );

    // Ctrl-C: 3 batches of 100 were sent and acknowledged, 50 lines wait for more.
    let mut child = bulk_append(&node, 350, 550);
    // Held open until the command exits: its input never ends.
    let input = child.stdin.take();
    common::signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    drop(input);
    let err = failed(&o);
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        err.contains("300 record(s) of bulk acknowledged at offsets 250..550"),
        "{err}"
    );

    // The node stops: what it acknowledged is told.
    let mut child = bulk_append(&node, 250, 750);
    let dir = node.data_dir.clone();
    node.stop();
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    let err = failed(&o);
    assert!(
        err.contains("200 record(s) of bulk acknowledged at offsets 550..750"),
        "{err}"
    );
    drop(dir);
}

#[test]
fn a_replica_that_has_not_heard_its_upstream_says_so() {
    let d = tempfile::tempdir().unwrap();
    let p = Server::start(&d.path().join("p"), &[]);
    let rdir = d.path().join("r");
    let r = Server::start(&rdir, &["--replica-of", &p.addr]);
    common::stdout(&p.cli(&["logs", "create", "l"]));
    common::stdout(&p.cli(&["append", "l", "x"]));
    run(30, common::reach_end(&r.addr, "l", 1));
    run(30, async {
        let c = common::client(&r.addr).await;
        wait_until(
            "no heartbeat named the log's end",
            Duration::from_secs(20),
            || async {
                let l = common::upstream_log(&c, "l").await?;
                l.upstream_end_known.then_some(())
            },
        )
        .await;
    });
    let s = common::stdout(&r.cli(&["status"]));
    assert!(!s.contains("waiting for the first heartbeat"), "{s}");
    let gone = p.addr.clone();
    r.stop();
    p.kill9();
    // Its upstream is gone: no heartbeat will come.
    let r = Server::start(&rdir, &["--replica-of", &gone]);
    let s = common::stdout(&r.cli(&["status"]));
    assert!(s.contains("waiting for the first heartbeat"), "{s}");
    let words: Vec<&str> = s.split_whitespace().collect();
    assert!(
        !words.windows(2).any(|w| w == ["upstream", "0"]),
        "an end the upstream never said: {s}"
    );
}

#[test]
fn health_knows_every_service_and_reflection_speaks_both_versions() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let d = tempfile::tempdir().unwrap();
    let node = Server::start(&d.path().join("n"), &[]);
    run(30, async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", node.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(ch.clone());
        for service in [
            "",
            "spool.v1.Logs",
            "spool.v1.Log",
            "spool.v1.Status",
            "spool.v1.Admin",
        ] {
            let r = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|e| panic!("health of {service:?}: {e}"));
            assert_eq!(
                r.into_inner().status,
                ServingStatus::Serving as i32,
                "{service}"
            );
        }

        use tonic_reflection::pb::v1;
        use tonic_reflection::pb::v1alpha;
        let mut c = v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
        let req = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut replies = c
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let r = replies.message().await.unwrap().unwrap();
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
            r.message_response
        else {
            panic!("v1: {r:?}");
        };
        assert!(l.service.iter().any(|s| s.name == "spool.v1.Logs"), "{l:?}");

        let mut c = v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
        let req = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut replies = c
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .expect("v1alpha reflection")
            .into_inner();
        let r = replies.message().await.unwrap().unwrap();
        let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
            r.message_response
        else {
            panic!("v1alpha: {r:?}");
        };
        assert!(l.service.iter().any(|s| s.name == "spool.v1.Log"), "{l:?}");
    });
}
