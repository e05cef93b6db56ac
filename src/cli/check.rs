//! `spool check DATA_DIR`: offline verification of every segment.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct CheckArgs {
    pub data_dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CheckArgs) -> Result<()> {
    let total = spool_storage::check::segment_bytes_total(&a.data_dir);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "checking {bar:30} {bytes}/{total_bytes} ({bytes_per_sec})",
    )?);
    let report = spool_storage::check::check_data_dir(&a.data_dir, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    if a.json {
        let logs: Vec<_> = report
            .logs
            .iter()
            .map(|l| {
                serde_json::json!({"name": l.name, "segments": l.segments, "start": l.start,
                    "end": l.end, "batches": l.batches, "data_bytes": l.data_bytes,
                    "digest": format!("{:08x}", l.digest), "problems": l.problems})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": report.is_ok(), "logs": logs}))?
        );
    } else {
        for l in &report.logs {
            let verdict = if l.problems.is_empty() {
                "ok"
            } else {
                "CORRUPT"
            };
            println!(
                "{verdict:<8} {:<24} offsets {}..{}  {} batches  {} segments  digest {:08x}",
                l.name, l.start, l.end, l.batches, l.segments, l.digest
            );
            for p in &l.problems {
                println!("         {p}");
            }
        }
    }
    if !report.is_ok() {
        bail!("{} found problems in {}", "check", a.data_dir.display());
    }
    Ok(())
}
