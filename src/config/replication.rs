//! The `[replication]` table: read from the file into the struct the server runs with
//! (missing keys take the defaults), then the command line's replica settings applied
//! over it and the whole checked.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};

use super::{AckTimeoutPolicy, Overrides};

/// Replication settings: the `[replication]` table as written, and, once
/// [`ReplicationConfig::with_overrides`] has run, as validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Makes this node a replica of HOST:PORT (a primary or another replica).
    pub replica_of: Option<String>,
    /// This replica counts as synchronous for `sync` acks.
    pub sync_replica: bool,
    /// Name in the upstream's status [default: this node's listen address]; with auth on
    /// the upstream, its principal (or one of its entry's `replica_ids`).
    pub replica_id: Option<String>,
    /// How long semi-sync/sync appends wait for replicas (`ack_timeout_ms`).
    #[serde(rename = "ack_timeout_ms", deserialize_with = "millis")]
    pub ack_timeout: Duration,
    /// What an append whose replicas did not confirm in time gets.
    pub ack_timeout_policy: AckTimeoutPolicy,
    /// Default k for semi-sync appends that do not name one.
    pub semi_sync_replicas: u32,
    /// Refuse writes unless this many replicas are attached and heard from recently...
    pub min_replicas_to_write: usize,
    /// ...within this long (`min_replicas_max_lag_ms`).
    #[serde(rename = "min_replicas_max_lag_ms", deserialize_with = "millis")]
    pub min_replicas_max_lag: Duration,
    /// Retention keeps at most this many bytes for a lagging replica.
    pub replica_keep_bytes_max: u64,
    /// Delayed replicas' acks count toward semi-sync/sync.
    pub delayed_counts_for_acks: bool,
    /// Acks of cascaded replicas (replicas of replicas), forwarded by the replicas between,
    /// count toward semi-sync/sync on the primary. Off: only direct replicas count.
    pub cascaded_counts_for_acks: bool,
    /// A replica catching up copies sealed segments from its upstream's files over a
    /// segment-fetch connection (sendfile). Off: they come inside the gRPC stream.
    pub segment_fetch: bool,
    /// Makes this replica a delayed one: it exposes only what the primary wrote at least
    /// this long ago ("500ms", "30s", "15m", "1h", "2d"). Needs `replica_of`.
    #[serde(deserialize_with = "some_duration")]
    pub delay: Option<Duration>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            replica_of: None,
            sync_replica: false,
            replica_id: None,
            ack_timeout: Duration::from_secs(5),
            ack_timeout_policy: AckTimeoutPolicy::Fail,
            semi_sync_replicas: 1,
            min_replicas_to_write: 0,
            min_replicas_max_lag: Duration::from_secs(10),
            replica_keep_bytes_max: 10 << 30,
            delayed_counts_for_acks: false,
            cascaded_counts_for_acks: false,
            segment_fetch: true,
            delay: None,
        }
    }
}

impl ReplicationConfig {
    pub fn ack_config(&self) -> spool_replication::ack::AckConfig {
        spool_replication::ack::AckConfig {
            timeout: self.ack_timeout,
            policy: self.ack_timeout_policy.into(),
        }
    }

    /// The command line's replica settings over the file's, then checked.
    /// `clustered`: a coordinator finds the upstream (`--cluster`), so `replica_of` is refused
    /// and a delay needs none.
    pub(super) fn with_overrides(mut self, o: &Overrides, clustered: bool) -> Result<Self> {
        if let Some(up) = &o.replica_of {
            self.replica_of = Some(up.clone());
        }
        self.sync_replica |= o.sync_replica;
        if let Some(id) = &o.replica_id {
            self.replica_id = Some(id.clone());
        }
        if let Some(text) = &o.delay {
            self.delay = Some(parse_duration(text).context("replication.delay (--delay)")?);
        }
        if let Some(up) = &self.replica_of {
            if up.trim().is_empty() {
                bail!("replica_of is empty: give the upstream as HOST:PORT");
            }
        }
        if clustered && self.replica_of.is_some() {
            bail!(
                "replica_of (--replica-of) with a coordinator (--cluster): the coordinator says \
                 whom to follow; leave replica_of out"
            );
        }
        if let (Some(delay), None, false) = (self.delay, &self.replica_of, clustered) {
            bail!(
                "a delay ({}) needs replica_of (--replica-of HOST:PORT): only a replica can \
                 be delayed",
                duration_text(delay)
            );
        }
        Ok(self)
    }
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A duration as [`parse_duration`] reads it, in its largest whole unit.
fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    let units = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ];
    match units.iter().find(|&&(_, n)| ms % n == 0) {
        Some(&(unit, n)) => format!("{}{unit}", ms / n),
        None => format!("{ms}ms"),
    }
}

/// Why a duration setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "{0:?} is not a duration: write a whole number and a unit, like 500ms, 30s, 15m, 1h or 2d"
    )]
    Syntax(String),
    #[error("{0:?} is zero: a delay must be positive (leave it out for an ordinary replica)")]
    Zero(String),
    #[error("{0:?} is too long")]
    TooLong(String),
}

/// Parse "500ms", "30s", "15m", "1h", "2d" (units ms, s, m, h, d; also "1h30m").
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(text.to_owned());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || units == 0 {
            return Err(syntax());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| syntax())?;
        let unit_ms: u64 = match &rest[digits..digits + units] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(syntax()),
        };
        let add = n
            .checked_mul(unit_ms)
            .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
        total_ms = total_ms
            .checked_add(add)
            .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
        rest = &rest[digits + units..];
    }
    if total_ms == 0 {
        return Err(DurationError::Zero(text.to_owned()));
    }
    Ok(Duration::from_millis(total_ms))
}
