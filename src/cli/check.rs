//! `spool check DATA_DIR`: offline verification of every segment; with `--repair-from`,
//! damaged records are first put back from a peer holding them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use spool::server::role::NodeIdentity;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The data directory of a stopped node.
    pub data_dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Check even while a running node holds the directory (its newest records may then
    /// look torn or missing: what it has not written yet).
    #[arg(long)]
    pub force: bool,
    /// Before checking, scrub the directory and repair damaged records from the node at
    /// ADDR (HOST:PORT, a running node of the same cluster holding the same records).
    #[arg(long, value_name = "ADDR")]
    pub repair_from: Option<String>,
    /// TLS to the peer (the global --tls-ca/--tls-cert/--tls-key; set by `main`).
    #[arg(skip)]
    pub tls: Option<spool::tls::TlsOptions>,
}

/// Open the stopped node's storage, scrub it, and put damaged records back from `addr`.
fn repair_from(dir: &Path, addr: &str, tls: Option<&spool::tls::TlsOptions>) -> Result<()> {
    let cluster = NodeIdentity::load(dir)?.cluster_id;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let storage = spool_storage::Storage::open(spool_storage::StorageConfig::new(dir))
            .with_context(|| format!("opening {}", dir.display()))?;
        let result = async {
            storage.scrub_now(None).await?;
            let mut left = 0;
            for name in storage.list_logs() {
                let log = storage.log(&name)?;
                for d in log.damage() {
                    match spool::server::repair::repair_run(&cluster, tls, &log, &d, addr).await {
                        Ok(next) => println!(
                            "repaired {name} records {}..{next} from {addr}",
                            d.first_offset
                        ),
                        Err(e) => {
                            left += 1;
                            println!(
                                "NOT repaired: {name} records from {}: {e:#}",
                                d.first_offset
                            );
                        }
                    }
                }
            }
            anyhow::Ok(left)
        }
        .await;
        storage.shutdown().await?;
        match result? {
            0 => Ok(()),
            n => bail!("{n} damaged range(s) not repaired"),
        }
    })
}

/// A shared flock on `DATA_DIR/LOCK`, which a running node holds exclusively: `Ok(None)`
/// when a node holds it, the lock (kept while checking, so that no node starts on the
/// directory meanwhile) otherwise. No LOCK file: no node ever ran there.
fn lock_shared(dir: &Path) -> Result<Option<Option<std::fs::File>>> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(None)),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e).with_context(|| format!("locking {}", path.display()));
    }
    Ok(Some(Some(f)))
}

pub fn run(a: CheckArgs) -> Result<()> {
    let meta = std::fs::metadata(&a.data_dir)
        .with_context(|| format!("data directory {}", a.data_dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", a.data_dir.display());
    }
    let held = lock_shared(&a.data_dir)?;
    if held.is_none() {
        if !a.force {
            bail!(
                "{} is in use by a running spool node: stop it first (or add --force to check \
                 anyway; its newest records may then look torn)",
                a.data_dir.display()
            );
        }
        eprintln!(
            "warning: {} is in use by a running spool node: its newest records may look torn",
            a.data_dir.display()
        );
    }
    drop(held);
    if let Some(addr) = &a.repair_from {
        repair_from(&a.data_dir, addr, a.tls.as_ref())?;
    }
    let cluster = NodeIdentity::load(&a.data_dir)
        .map(|n| n.cluster_id)
        .unwrap_or_default();
    let total = spool_storage::check::segment_bytes_total(&a.data_dir);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "checking {bar:30} {bytes}/{total_bytes} ({bytes_per_sec})",
    )?);
    // Held while checking (unless a node holds the directory): no node starts on it meanwhile.
    let _lock = lock_shared(&a.data_dir)?;
    let report = spool_storage::check::check_data_dir(&a.data_dir, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    if a.json {
        let logs: Vec<_> = report
            .logs
            .iter()
            .map(|l| {
                serde_json::json!({"name": l.name, "segments": l.segments, "start": l.start,
                    "end": l.end, "batches": l.batches, "data_bytes": l.data_bytes,
                    "digest": format!("{:08x}", l.digest), "problems": l.problems,
                    "incarnation": format!("{:016x}", l.incarnation)})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"ok": report.is_ok(), "cluster_id": cluster, "logs": logs})
            )?
        );
    } else {
        for l in &report.logs {
            let verdict = if l.problems.is_empty() {
                "ok"
            } else {
                "CORRUPT"
            };
            println!(
                "{verdict:<8} {:<24} offsets {}..{}  {} batches  {} segments  digest {:08x}  incarnation {:016x}",
                l.name, l.start, l.end, l.batches, l.segments, l.digest, l.incarnation
            );
            for p in &l.problems {
                println!("         {p}");
            }
        }
        let cluster = if cluster.is_empty() {
            "(none)"
        } else {
            &cluster
        };
        println!("cluster  {cluster}");
    }
    if !report.is_ok() {
        bail!("{} found problems in {}", "check", a.data_dir.display());
    }
    Ok(())
}
