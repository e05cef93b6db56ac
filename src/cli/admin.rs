//! `spool admin ...`: promote (optionally at an offset or a time), pause, resume.

use anyhow::Result;
use clap::{Args, Subcommand};
use spool::client::Client;
use spool_proto::v1 as pb;

/// `spool admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Make the replica at --addr a primary in a new epoch (it stops following). On a
    /// delayed replica, --at-offset/--at-time first cut the logs at that point: what
    /// would be cut is shown, and done only with --yes or when confirmed.
    Promote(PromoteArgs),
    /// Delayed replica: freeze the visible horizon (data keeps arriving and is stored).
    Pause,
    /// Delayed replica: let the horizon follow now - delay again.
    Resume,
    /// Re-read sealed segments from the disk now, checking every CRC and index entry;
    /// damage found is reported (and repaired from peers in the background).
    Scrub {
        /// Only this log (default: every log).
        log: Option<String>,
    },
    /// Repair damaged records from a peer holding the same records: the node's upstream,
    /// or its replicas, unless --from names another.
    Repair {
        /// Only this log (default: every damaged log).
        log: Option<String>,
        /// The peer to fetch the records from (HOST:PORT).
        #[arg(long, value_name = "ADDR")]
        from: Option<String>,
    },
    /// With --cluster: hand the primary's role to another member (send it to the primary).
    /// Writes pause until the member holds every record; nothing is lost.
    Switchover {
        /// The member's node name (as `spool status` lists it).
        #[arg(long)]
        to: String,
        /// Hand over without asking (scripts; without a terminal, the command refuses).
        #[arg(long)]
        yes: bool,
    },
    /// With --cluster and no primary: make this member the next one. Without --force it
    /// must be eligible; with it, records only other members hold may be lost.
    Failover {
        /// The member's node name.
        #[arg(long)]
        to: String,
        /// Even if it is not eligible (lagging, never-promote): the operator's decision.
        #[arg(long)]
        force: bool,
    },
    /// Tails this node cut when it followed a new primary, kept instead of thrown away.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Tokens for [auth] tokens_file (made here; no server is asked).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `spool admin token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new token and the entry to add to the tokens file (which keeps only its
    /// SHA-256: the token itself is shown once, here).
    Create {
        /// What it may do: read, write (includes read), admin (includes write), replica.
        #[arg(long, value_enum)]
        role: Vec<spool::server::auth::Role>,
        /// Who holds it (shown in denials and logs).
        #[arg(long, default_value = "client")]
        principal: String,
        /// Read and write only logs starting with this (repeatable; default: every log).
        #[arg(long = "log-prefix", value_name = "PREFIX")]
        log_prefixes: Vec<String>,
        /// Expires this many seconds from now.
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<u64>,
    },
}

/// `spool admin token create`: local, no connection.
pub fn token(cmd: TokenCommand) -> Result<()> {
    let TokenCommand::Create {
        role,
        principal,
        log_prefixes,
        expires_in,
    } = cmd;
    if role.is_empty() {
        anyhow::bail!("give at least one --role (read, write, admin, replica)");
    }
    use spool::server::auth::tokens;
    let token = tokens::new_token();
    let roles: Vec<&str> = role.iter().map(|r| r.name()).collect();
    println!("token (give it to {principal}; it is not stored anywhere): {token}");
    if role.contains(&spool::server::auth::Role::Replica) {
        // With auth on, an upstream takes a hello only in the principal's name.
        println!(
            "the node holding it replicates as replica_id {principal:?} (its node_name with \
             --cluster; other ids go under replica_ids in the entry)"
        );
    }
    println!("\n# add to the tokens file:\n[[token]]");
    println!("principal = {principal:?}");
    println!("sha256 = {:?}", tokens::hex(&tokens::hash(&token)));
    println!("roles = {roles:?}");
    if !log_prefixes.is_empty() {
        println!("logs = {log_prefixes:?}");
    }
    if let Some(s) = expires_in {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        println!("expires_unix_s = {}", now.as_secs() + s);
    }
    Ok(())
}

/// `spool admin quarantine ...`
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// Every cut tail: log, offsets, epochs, records.
    List {
        /// Only this log.
        log: Option<String>,
    },
    /// The records of one cut tail, one per line (offset, then the value as text).
    Read {
        /// The log.
        log: String,
        /// The tail's first offset (as `list` shows it).
        first: u64,
        /// Start at this offset inside the tail.
        #[arg(long)]
        from: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Delayed replica: every log (or each --log) ends at min(N, its end): records from
    /// N on are cut off.
    #[arg(long, value_name = "N", conflicts_with = "at_time")]
    pub at_offset: Option<u64>,
    /// Delayed replica: every log ends before its first record written after T. T is
    /// RFC 3339 (2024-05-01T12:00:00Z, 2024-05-01T14:00:00.5+02:00) or unix time with a
    /// unit: 1714564800s, 1714564800000ms, 1714564800000000us (a bare number is
    /// microseconds, as `spool read --format json` prints timestamp_us).
    #[arg(long, value_name = "T", value_parser = parse_time_us)]
    pub at_time: Option<u64>,
    /// With --at-offset/--at-time: cut only this log (repeatable); the others keep
    /// everything received, as a plain promotion keeps it.
    #[arg(long = "log", value_name = "NAME")]
    pub logs: Vec<String>,
    /// With --at-offset/--at-time: show what would be cut, change nothing.
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,
    /// Cut and promote without asking (scripts; without a terminal and without --yes,
    /// only what would be cut is shown).
    #[arg(long)]
    pub yes: bool,
}

/// Why `--at-time` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a time: use RFC 3339 (2024-05-01T12:00:00Z) or unix time like 1714564800s, 1714564800000ms, 1714564800000000us")]
pub struct TimeError(String);

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339_us(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut frac_us = 0i64;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut padded: String = f[..digits.min(6)].to_owned();
        while padded.len() < 6 {
            padded.push('0');
        }
        frac_us = padded.parse().ok()?;
        rest = &f[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hm = rest.get(1..)?;
            if hm.len() != 5 || hm.as_bytes()[2] != b':' {
                return None;
            }
            let oh: i64 = hm[..2].parse().ok()?;
            let om: i64 = hm[3..].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    u64::try_from(secs * 1_000_000 + frac_us).ok()
}

/// `--at-time`: RFC 3339, or unix time in s / ms / us (bare: microseconds).
pub fn parse_time_us(t: &str) -> Result<u64, TimeError> {
    let t = t.trim();
    let err = || TimeError(t.to_owned());
    if t.contains('-') || t.contains(':') {
        return parse_rfc3339_us(t).ok_or_else(err);
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(err());
    }
    let n: u64 = t[..digits].parse().map_err(|_| err())?;
    let scale = match &t[digits..] {
        "" | "us" => 1,
        "ms" => 1000,
        "s" => 1_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(scale).ok_or_else(err)
}

pub async fn admin(client: &Client, cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::Promote(a) => promote(client, a).await?,
        AdminCommand::Pause => {
            let cutoff = client.pause().await?;
            println!(
                "{} paused: records written up to {} stay visible, nothing newer appears",
                client.addr(),
                super::times::with_age(cutoff)
            );
        }
        AdminCommand::Resume => {
            client.resume().await?;
            println!("{} resumed", client.addr());
        }
        AdminCommand::Scrub { log } => {
            let r = client.scrub(log.as_deref().unwrap_or("")).await?;
            println!(
                "scrubbed {} sealed segment(s), {} bytes: {} damaged range(s) found{}",
                r.segments,
                r.bytes,
                r.found.len(),
                if r.index_rebuilt > 0 {
                    format!(", {} index(es) rebuilt", r.index_rebuilt)
                } else {
                    String::new()
                }
            );
            for f in &r.found {
                println!("  {}", finding(f));
            }
        }
        AdminCommand::Quarantine(q) => quarantine(client, q).await?,
        AdminCommand::Token(_) => unreachable!("made locally, before connecting"),
        AdminCommand::Switchover { to, yes } => {
            super::confirm::confirm(
                &format!(
                    "hand the primary's role to {to} (writes pause until it holds every record)"
                ),
                yes,
            )?;
            let r = client.switchover(&to).await?;
            println!("{to} takes over; writes paused {} ms here", r.paused_ms);
        }
        AdminCommand::Failover { to, force } => {
            client.failover(&to, force).await?;
            println!("{to} is named the next primary; `spool status` shows when it leads");
        }
        AdminCommand::Repair { log, from } => {
            let r = client
                .repair(log.as_deref().unwrap_or(""), from.as_deref().unwrap_or(""))
                .await?;
            for d in &r.repaired {
                println!(
                    "repaired {} records {}..{} from {}",
                    d.log, d.first_offset, d.next_offset, d.from_addr
                );
            }
            for f in &r.left {
                println!("NOT repaired: {}", finding(f));
            }
            for e in &r.errors {
                println!("  {e}");
            }
            if !r.left.is_empty() {
                anyhow::bail!("{} damaged range(s) left", r.left.len());
            }
            if r.repaired.is_empty() {
                println!("nothing to repair");
            }
        }
    }
    Ok(())
}

/// The cuts of a promotion at a point, one line per log.
fn print_cuts(cuts: &[pb::PromoteCut], verb: &str) {
    if cuts.is_empty() {
        println!("  no log {verb} records");
    }
    for c in cuts {
        println!(
            "  {:<22} {verb} records {}..{} ({} record(s); the log ends at {})",
            c.log,
            c.from_offset,
            c.end_offset,
            c.end_offset - c.from_offset,
            c.from_offset
        );
    }
}

/// `spool admin promote`: plain, or at a point after showing what it cuts and asking.
async fn promote(client: &Client, a: PromoteArgs) -> Result<()> {
    let at = match (a.at_offset, a.at_time) {
        (Some(n), _) => Some(pb::promote_request::At::AtOffset(n)),
        (None, Some(t)) => Some(pb::promote_request::At::AtTimeUs(t)),
        (None, None) => None,
    };
    let addr = client.addr();
    let addr = addr.strip_prefix("http://").unwrap_or(&addr);
    let point = match (a.at_offset, a.at_time) {
        (Some(n), _) => format!("offset {n}"),
        (None, Some(t)) => super::times::rfc3339(t),
        (None, None) if !a.logs.is_empty() || a.dry_run => {
            anyhow::bail!("--log and --dry-run go with --at-offset or --at-time")
        }
        (None, None) => String::new(),
    };
    let req = pb::PromoteRequest {
        at,
        logs: a.logs.clone(),
        dry_run: false,
    };
    if at.is_some() && !a.yes {
        let plan = client
            .promote_with(pb::PromoteRequest {
                dry_run: true,
                ..req.clone()
            })
            .await?;
        if !plan.dry_run {
            anyhow::bail!(
                "{addr} does not know dry runs (an older version) and may have been promoted: \
                 check `spool status`"
            );
        }
        println!("promoting {addr} at {point} would cut:");
        print_cuts(&plan.cuts, "would lose");
        if a.dry_run {
            return Ok(());
        }
        let records: u64 = plan.cuts.iter().map(|c| c.end_offset - c.from_offset).sum();
        super::confirm::confirm(
            &format!(
                "promote {addr}, cutting {records} record(s) from {} log(s)",
                plan.cuts.len()
            ),
            false,
        )?;
    }
    let r = client.promote_with(req).await?;
    println!("{addr} is now primary in epoch {}", r.epoch);
    if at.is_some() {
        print_cuts(&r.cuts, "lost");
        for e in &r.ends {
            println!(
                "  {:<22} start {:>10}  end {:>10}",
                e.name, e.start_offset, e.end_offset
            );
        }
    }
    for d in &r.deleted {
        println!("  {d:<22} deleted (its deletion upstream came before the point)");
    }
    Ok(())
}

async fn quarantine(client: &Client, cmd: QuarantineCommand) -> Result<()> {
    match cmd {
        QuarantineCommand::List { log } => {
            let tails = client.quarantine_list(log.as_deref().unwrap_or("")).await?;
            if tails.is_empty() {
                println!("no quarantined tail");
            }
            for t in tails {
                println!(
                    "{:<22} records {}..{} ({} records, {} bytes, epochs {:?})",
                    t.log, t.first_offset, t.next_offset, t.records, t.bytes, t.epochs
                );
            }
        }
        QuarantineCommand::Read { log, first, from } => {
            let mut at = from.unwrap_or(first);
            loop {
                let r = client
                    .quarantine_read(pb::QuarantineReadRequest {
                        log: log.clone(),
                        first_offset: first,
                        from_offset: at,
                        max_records: 0,
                    })
                    .await?;
                for rec in &r.records {
                    println!("{}\t{}", rec.offset, String::from_utf8_lossy(&rec.value));
                }
                if r.records.is_empty() || r.next_offset <= at {
                    break;
                }
                at = r.next_offset;
            }
        }
    }
    Ok(())
}

/// One damaged range, as a person reads it.
pub fn finding(f: &pb::ScrubFinding) -> String {
    let r = f.range.clone().unwrap_or_default();
    format!("{} {}", f.log, damaged(&r))
}

pub fn damaged(r: &pb::DamagedRange) -> String {
    let to = if r.next_offset == 0 {
        "the end of its segment".to_owned()
    } else {
        r.next_offset.to_string()
    };
    format!(
        "records {}..{to} damaged (segment {}: {})",
        r.first_offset, r.segment_base, r.reason
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time_us("1714564800s").unwrap(), 1_714_564_800_000_000);
        assert_eq!(
            parse_time_us("1714564800000ms").unwrap(),
            1_714_564_800_000_000
        );
        assert_eq!(
            parse_time_us("1714564800000000").unwrap(),
            1_714_564_800_000_000
        );
        assert_eq!(
            parse_time_us("2024-05-01T12:00:00Z").unwrap(),
            1_714_564_800_000_000
        );
        assert_eq!(
            parse_time_us("2024-05-01T14:00:00.5+02:00").unwrap(),
            1_714_564_800_500_000
        );
        assert_eq!(parse_time_us("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_time_us("2000-02-29T00:00:00Z").unwrap(),
            951_782_400_000_000
        );
        for bad in [
            "",
            "soon",
            "12x",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01",
        ] {
            assert!(parse_time_us(bad).is_err(), "{bad:?}");
        }
    }
}
