//! What a deploying user gets: the example configuration (checked against the loader),
//! the Debian package (installed into a scratch root and run from there), shell
//! completions and man pages from the real binary.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::package::{build_deb, extract, on_path, repo, run_ok};
use spool::config::{FileConfig, Overrides, ServerConfig};

fn example() -> PathBuf {
    repo().join("deploy/spool.toml")
}

/// The keys serde expects where `probe` (a TOML text with one unknown key `__probe__`)
/// puts it, read from the "unknown field `__probe__`, expected one of `a`, `b`" error;
/// `None` when the place is not a table (its error is another one).
fn expected_keys(probe: &str) -> Option<BTreeSet<String>> {
    let e = match toml::from_str::<FileConfig>(probe) {
        Ok(_) => panic!("{probe:?} parsed: a table without deny_unknown_fields accepts typos"),
        Err(e) => e.to_string(),
    };
    let (_, expected) = e.split_once("unknown field `__probe__`, expected")?;
    let keys: BTreeSet<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!keys.is_empty(), "no keys in {e}");
    Some(keys)
}

/// Every key the loader accepts, by table ("" for the top level), found by asking serde.
fn loader_keys() -> BTreeMap<String, BTreeSet<String>> {
    let top = expected_keys("__probe__ = 1").expect("the top level is a table");
    let mut tables = BTreeMap::new();
    let mut scalars = BTreeSet::new();
    for key in top {
        match expected_keys(&format!("[{key}]\n__probe__ = 1\n")) {
            Some(keys) => {
                tables.insert(key, keys);
            }
            None => {
                scalars.insert(key);
            }
        }
    }
    tables.insert(String::new(), scalars);
    tables
}

/// The keys the example names, set or in a `# key = value` comment, by table; and the
/// text with every such comment made a setting.
fn example_keys(text: &str) -> (BTreeMap<String, BTreeSet<String>>, String) {
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut table = String::new();
    let mut uncommented = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            table = name.to_owned();
        }
        let setting = t.strip_prefix("# ").unwrap_or(t);
        if let Some((key, _)) = setting.split_once(" = ") {
            let is_key = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if is_key {
                let new = keys
                    .entry(table.clone())
                    .or_default()
                    .insert(key.to_owned());
                assert!(new, "[{table}] {key} is named twice in the example");
                uncommented.push_str(setting);
                uncommented.push('\n');
                continue;
            }
        }
        uncommented.push_str(line);
        uncommented.push('\n');
    }
    keys.entry(String::new()).or_default();
    (keys, uncommented)
}

#[test]
fn the_example_config_names_every_key_the_loader_takes_and_no_other() {
    let text = std::fs::read_to_string(example()).unwrap();
    let (named, uncommented) = example_keys(&text);
    let accepted = loader_keys();
    // The probe itself must see the tables, or the comparison proves nothing.
    for t in [
        "storage",
        "log_defaults",
        "replication",
        "server",
        "cluster",
        "tls",
    ] {
        assert!(accepted.contains_key(t), "no [{t}] found in {accepted:?}");
    }
    assert!(accepted[""].contains("data_dir"), "{accepted:?}");
    for (table, keys) in &accepted {
        let have = named.get(table).cloned().unwrap_or_default();
        let missing: Vec<_> = keys.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "deploy/spool.toml [{table}] lacks {missing:?}: add each with its default and a comment"
        );
        let unknown: Vec<_> = have.difference(keys).collect();
        assert!(
            unknown.is_empty(),
            "deploy/spool.toml [{table}] names {unknown:?}, which the server does not take"
        );
    }
    let extra: Vec<_> = named
        .keys()
        .filter(|t| !accepted.contains_key(*t))
        .collect();
    assert!(
        extra.is_empty(),
        "tables the server does not take: {extra:?}"
    );
    // The values shown in comments are valid ones too.
    toml::from_str::<FileConfig>(&uncommented)
        .unwrap_or_else(|e| panic!("the example with its comments set does not load: {e}"));
}

/// Flags as `spool serve` would get them: the data dir in a scratch place, and a
/// coordinator when `cluster` (its settings are only built with one).
fn overrides(data_dir: &Path, cluster: bool) -> Overrides {
    Overrides {
        data_dir: Some(data_dir.to_owned()),
        cluster: cluster.then(|| "etcd://127.0.0.1:2379".to_owned()),
        ..Overrides::default()
    }
}

#[test]
fn the_example_config_loads_and_what_it_sets_are_the_defaults() {
    let d = tempfile::tempdir().unwrap();
    let file = FileConfig::load(&example()).expect("deploy/spool.toml loads");
    assert_eq!(
        file.data_dir.as_deref(),
        Some(Path::new("/var/lib/spool")),
        "the unit's ReadWritePaths"
    );
    for cluster in [false, true] {
        let built = ServerConfig::build(file.clone(), overrides(d.path(), cluster))
            .expect("deploy/spool.toml builds");
        let default = ServerConfig::build(FileConfig::default(), overrides(d.path(), cluster))
            .expect("the defaults build");
        assert_eq!(
            format!("{built:#?}"),
            format!("{default:#?}"),
            "a value set in deploy/spool.toml is not the default (cluster: {cluster})"
        );
    }
}

#[test]
fn the_unit_is_hardened_and_runs_serve_with_the_packaged_config() {
    let unit = std::fs::read_to_string(repo().join("deploy/spool.service")).unwrap();
    let settings: BTreeMap<&str, &str> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let want = [
        ("User", "spool"),
        (
            "ExecStart",
            "/usr/bin/spool serve --config /etc/spool/spool.toml",
        ),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/spool"),
        ("NoNewPrivileges", "true"),
        ("PrivateTmp", "true"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ];
    for (key, value) in want {
        assert_eq!(settings.get(key), Some(&value), "{key} in spool.service");
    }
    for key in ["LimitNOFILE", "TimeoutStopSec"] {
        assert!(settings.contains_key(key), "{key} in spool.service");
    }
}

fn gunzip(path: &Path) -> String {
    run_ok(Command::new("gzip").arg("-dc").arg(path))
}

#[test]
fn the_debian_package_installs_into_a_scratch_root_and_runs_from_there() {
    if !on_path("dpkg-deb") {
        eprintln!("SKIPPED: no dpkg-deb (not a Debian system)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // The debug binary under test, packaged as the release one would be.
    let deb = build_deb(&d.path().join("out"));
    let version = env!("CARGO_PKG_VERSION");
    let name = deb.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with(&format!("spool_{version}_")), "{name}");

    let field = |f: &str| run_ok(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f));
    assert_eq!(field("Package").trim(), "spool");
    assert_eq!(field("Version").trim(), version);
    let ctrl = d.path().join("ctrl");
    run_ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctrl));
    let conffiles = std::fs::read_to_string(ctrl.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/spool/spool.toml");
    for script in ["postinst", "prerm", "postrm"] {
        run_ok(Command::new("sh").arg("-n").arg(ctrl.join(script)));
    }

    let root = d.path().join("root");
    extract(&deb, &root);
    let bin = root.join("usr/bin/spool");
    let v = run_ok(Command::new(&bin).arg("--version"));
    assert_eq!(v.trim(), format!("spool {version}"));
    let same = |installed: &str, source: &str| {
        let a = std::fs::read(root.join(installed)).unwrap();
        assert_eq!(
            a,
            std::fs::read(repo().join(source)).unwrap(),
            "{installed}"
        );
    };
    same("lib/systemd/system/spool.service", "deploy/spool.service");
    same("etc/spool/spool.toml", "deploy/spool.toml");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert!(read("usr/share/bash-completion/completions/spool").contains("_spool()"));
    assert!(read("usr/share/zsh/vendor-completions/_spool").starts_with("#compdef spool"));
    assert!(read("usr/share/fish/vendor_completions.d/spool.fish").contains("complete -c spool"));
    let man = root.join("usr/share/man/man1");
    assert!(gunzip(&man.join("spool.1.gz")).contains(".TH spool 1"));
    assert!(gunzip(&man.join("spool-serve.1.gz")).contains("\\-\\-config"));
    assert!(man.join("spool-logs-create.1.gz").exists());
    assert!(root.join("usr/share/doc/spool/copyright").exists());

    // The installed binary serves with the installed config (its data dir moved to the
    // scratch root: /var/lib/spool is the unit's), then stops cleanly on SIGTERM.
    serve_and_stop(
        &bin,
        &root.join("etc/spool/spool.toml"),
        &root.join("var/lib/spool"),
    );

    if on_path("systemd-analyze") {
        // The unit as systemd reads it, pointed at the scratch root's binary.
        let unit = read("lib/systemd/system/spool.service").replace(
            "ExecStart=/usr/bin/spool",
            &format!("ExecStart={}", bin.display()),
        );
        let unit_path = d.path().join("spool.service");
        std::fs::write(&unit_path, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit_path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !said.contains("spool.service:"),
            "systemd-analyze verify found problems in the unit:\n{said}"
        );
    }
}

/// Start `bin serve --config config --data-dir data` on a free port, wait (bounded) for it
/// to listen, SIGTERM it and check that it stops cleanly.
fn serve_and_stop(bin: &Path, config: &Path, data: &Path) {
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let listening = common::wait_listening(&mut child, Duration::from_secs(30));
    common::signal(&child, libc::SIGTERM);
    let status = common::wait_timeout(&mut child, Duration::from_secs(30));
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(listening, "the packaged node did not listen:\n{log}");
    assert!(
        status.success(),
        "the packaged node exited {status}:\n{log}"
    );
    assert!(log.contains("stopped cleanly"), "{log}");
}

#[test]
fn completions_for_each_shell_come_from_the_real_cli() {
    let bin = common::spool_bin();
    for (shell, marker) in [
        ("bash", "_spool()"),
        ("zsh", "#compdef spool"),
        ("fish", "complete -c spool"),
    ] {
        let out = run_ok(Command::new(bin).args(["completions", shell]));
        assert!(out.contains(marker), "{shell}: no {marker:?}");
        // Subcommands and their flags are in it, as the CLI defines them.
        for word in ["dev-cluster", "log-format"] {
            assert!(out.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = Command::new(bin)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("bash") && e.contains("zsh"), "{e}");
}

#[test]
fn man_prints_spool_1_or_writes_a_page_per_subcommand() {
    let bin = common::spool_bin();
    let page = run_ok(Command::new(bin).arg("man"));
    assert!(page.contains(".TH spool 1"), "{page}");
    for sub in ["serve", "dev\\-cluster", "completions"] {
        assert!(page.contains(sub), "spool(1) lacks {sub}");
    }
    let d = tempfile::tempdir().unwrap();
    run_ok(Command::new(bin).args(["man", "--out-dir"]).arg(d.path()));
    for name in [
        "spool",
        "spool-serve",
        "spool-logs-create",
        "spool-admin-promote",
    ] {
        let text = std::fs::read_to_string(d.path().join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("{name}.1: {e}"));
        assert!(text.contains(&format!(".TH {name} 1")), "{name}.1");
    }
    let serve = std::fs::read_to_string(d.path().join("spool-serve.1")).unwrap();
    assert!(
        serve.contains("\\-\\-log\\-label"),
        "spool-serve.1 lacks its flags"
    );
}

#[test]
fn the_python_example_runs_against_a_node() {
    let python = repo().join("target/pyvenv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must create target/pyvenv with grpcio (see scripts/test.sh)"
        );
        eprintln!("SKIPPED: no target/pyvenv (python3 -m venv target/pyvenv && target/pyvenv/bin/pip install grpcio grpcio-tools)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = common::Server::start(&dir.path().join("data"), &[]);
    let run = || {
        run_ok(
            Command::new(&python)
                .arg(repo().join("examples/python/client.py"))
                .arg(&s.addr),
        )
    };
    let out = run();
    assert!(out.contains("created example-py"), "{out}");
    assert!(out.contains("     0  hello"), "{out}");
    assert!(out.contains("subscription delivered 12 record(s)"), "{out}");
    // Again: the log is there and grows.
    let out = run();
    assert!(out.contains("example-py exists"), "{out}");
    assert!(out.contains("the log ends at 24"), "{out}");
    s.stop();
}
