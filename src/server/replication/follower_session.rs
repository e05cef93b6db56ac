//! Executes one replication stream on a replica: frames appended unchanged (their CRCs
//! checked) with up to `INFLIGHT_MAX` messages in flight so they share group commits,
//! sealed segments staged or fetched whole and put in place, log starts and deletions
//! carried out, durable ends acknowledged, heartbeats both ways. What to do with each
//! message comes from `spool_replication::session::ReplicaSession` as commands; this
//! executes them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::FuturesOrdered;
use futures::FutureExt;
use parking_lot::Mutex;
use spool_proto::v1 as pb;
use spool_replication::follow::{Acks, Chunk, Import, DEAD_AFTER, HEARTBEAT_EVERY, INFLIGHT_MAX};
use spool_replication::session::{Command, Here, ReplicaSession, Start};
use spool_storage::{FollowOn, Log, SegmentImport};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Streaming;

use super::follower::{acks, FollowerConfig, Imports, UpstreamView};
use super::follower_logs::apply_start;
use super::segment_fetch;
use crate::server::node::Node;

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(String, u64)>> + Send>>;

/// One stream's state on the replica.
pub struct Session<'a> {
    node: &'a Arc<Node>,
    cfg: &'a FollowerConfig,
    view: &'a Mutex<UpstreamView>,
    imports: &'a mut Imports,
    /// This session fetches segments itself (cleared when a fetch got nothing at all).
    fetch: &'a mut bool,
    tx: mpsc::Sender<pb::ReplicaMessage>,
    inflight: FuturesOrdered<Pending>,
    logs: HashMap<String, Log>,
    /// What the session decides from (epochs, installs in flight, follow-ons, skipped
    /// logs, the ack gate).
    machine: ReplicaSession,
    last_heard: tokio::time::Instant,
    beat: tokio::time::Interval,
    /// Where each log's next segment begins, after its last one received whole: that one
    /// may be received while the last one installs (the machine says when).
    follow_ons: HashMap<String, FollowOn>,
    landing: Landing,
}

/// A segment's install, spawned so that it goes on while the next segment is received.
/// It goes on if the session ends first: the next hello waits for it ([`Landing`]).
struct Installing(tokio::task::JoinHandle<spool_storage::Result<u64>>);

impl Installing {
    async fn landed(mut self) -> Result<u64> {
        Ok((&mut self.0).await.context("install task")??)
    }
}

/// The installs sessions spawned, across sessions. A hello waits until they landed: the
/// import a session began where a segment ends (a follow-on) is resumable only once that
/// segment is in place, and the hello drops imports that do not begin at their log's end.
#[derive(Debug, Default, Clone)]
pub struct Landing(Arc<tokio::sync::RwLock<()>>);

impl Landing {
    /// Whether every install spawned so far finished (landed or failed) within `within`.
    pub async fn settled(&self, within: std::time::Duration) -> bool {
        tokio::time::timeout(within, self.0.write()).await.is_ok()
    }

    /// Held by an install until it finishes. None only while a hello is being built,
    /// which no session overlaps.
    fn hold(&self) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        self.0.clone().try_read_owned().ok()
    }
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("upstream", &self.cfg.upstream)
            .field("inflight", &self.inflight.len())
            .field("machine", &self.machine)
            .finish_non_exhaustive()
    }
}

fn import_of(imp: &SegmentImport) -> Import {
    Import {
        base: imp.base(),
        staged_to: imp.next_offset(),
    }
}

impl<'a> Session<'a> {
    pub fn new(
        node: &'a Arc<Node>,
        cfg: &'a FollowerConfig,
        view: &'a Mutex<UpstreamView>,
        imports: &'a mut Imports,
        fetch: &'a mut bool,
        tx: mpsc::Sender<pb::ReplicaMessage>,
        up_epoch: u64,
    ) -> Self {
        Session {
            node,
            cfg,
            view,
            imports,
            fetch,
            tx,
            inflight: FuturesOrdered::new(),
            logs: HashMap::new(),
            machine: ReplicaSession::new(up_epoch),
            last_heard: tokio::time::Instant::now(),
            beat: tokio::time::interval(HEARTBEAT_EVERY),
            follow_ons: HashMap::new(),
            landing: Landing::default(),
        }
    }

    /// Register the installs this session spawns with the follower's `landing`.
    pub fn landing(mut self, landing: &Landing) -> Self {
        self.landing = landing.clone();
        self
    }

    /// Follow until the upstream closes the stream (Ok) or something fails.
    pub async fn run(mut self, mut inbound: Streaming<pb::UpstreamMessage>) -> Result<()> {
        let mut applied = match self.node.active_delay() {
            Some(d) => d.deletions_applied.subscribe(),
            None => tokio::sync::watch::channel(0).1,
        };
        loop {
            tokio::select! {
                // Completions first (acks go out as soon as frames are durable), heartbeats
                // never starve behind a busy stream, silence is judged after pending messages.
                biased;
                Some(done) = self.inflight.next() => self.on_durable(done).await?,
                _ = self.beat.tick() => self.send(acks(self.node, self.machine.gate())).await?,
                // A replica below acked: pass it on (sync modes on the primary may count it).
                _ = self.node.replicas().acked.notified() => self.send(acks(self.node, self.machine.gate())).await?,
                m = inbound.next(), if self.inflight.len() < INFLIGHT_MAX => {
                    let m = match m {
                        None => return Ok(()),
                        Some(Err(s)) => bail!("upstream error: {}", s.message()),
                        Some(Ok(m)) => m,
                    };
                    self.heard();
                    if !self.on_message(m).await? {
                        return Ok(());
                    }
                }
                // The upstream heartbeats every second: silence means it is gone. Not while
                // our own disk holds us back (then its messages wait for us, not the reverse).
                _ = tokio::time::sleep_until(self.last_heard + DEAD_AFTER), if self.inflight.len() < INFLIGHT_MAX => {
                    bail!("upstream silent for {DEAD_AFTER:?}: connection presumed dead");
                }
                changed = applied.changed(), if self.machine.ignored().next().is_some() => {
                    if changed.is_ok() && self.ignored_deletion_applied() {
                        tracing::info!("a delayed deletion was applied: reconnecting to receive the recreated log");
                        return Ok(());
                    }
                }
            }
        }
    }

    fn heard(&mut self) {
        self.last_heard = tokio::time::Instant::now();
        self.view.lock().last_heard = Some(Instant::now());
    }

    fn ignored_deletion_applied(&self) -> bool {
        let delay = self.node.active_delay();
        self.machine
            .ignored()
            .any(|n| delay.is_some_and(|d| d.pending_delete(n).is_none()))
    }

    async fn send(&mut self, m: pb::ReplicaMessage) -> Result<()> {
        if self.tx.send(m).await.is_err() {
            bail!("upstream closed the stream");
        }
        Ok(())
    }

    /// One ack for everything that became durable together.
    async fn on_durable(&mut self, done: Result<(String, u64)>) -> Result<()> {
        let mut acks = Acks::default();
        let (name, end) = done?;
        self.machine.landed(&name);
        acks.add(&name, end);
        while let Some(Some(done)) = self.inflight.next().now_or_never() {
            let (name, end) = done?;
            self.machine.landed(&name);
            acks.add(&name, end);
        }
        self.send_acks(acks.take()).await
    }

    async fn send_acks(&mut self, ends: Vec<(String, u64)>) -> Result<()> {
        let acks = self
            .machine
            .acks(ends)
            .into_iter()
            .map(|(log, durable_end)| pb::ReplicaAck { log, durable_end })
            .collect();
        self.send(pb::ReplicaMessage {
            msg: Some(pb::replica_message::Msg::Acks(pb::ReplicaAcks {
                acks,
                downstream: self.node.replicas().descendants(),
                node_epoch: self.node.role().epoch(),
            })),
        })
        .await
    }

    /// What is in flight lands before a log changes shape.
    async fn drain(&mut self) -> Result<()> {
        while let Some(r) = self.inflight.next().await {
            r?;
        }
        Ok(())
    }

    /// Carry out a command any message may give; hands back the ones that need the
    /// message itself.
    async fn common(&mut self, cmd: Command) -> Result<Option<Command>> {
        match cmd {
            Command::Drain => self.drain().await?,
            Command::DropImport(log) => drop(self.imports.remove(&log)),
            Command::DropFollowOn(log) => drop(self.follow_ons.remove(&log)),
            Command::SendAcks => self.send(acks(self.node, self.machine.gate())).await?,
            Command::BeginFollowOn(log) => {
                let next = self.follow_ons.remove(&log).context("no follow-on kept")?;
                self.imports.insert(log, next.begin()?);
            }
            Command::Install(log) => self.install(&log),
            Command::ScheduleDelete { log, at_us } => {
                if let Some(d) = self.node.active_delay() {
                    d.schedule_delete(&log, at_us).await?;
                }
            }
            Command::DeleteNow(log) => self.delete_now(&log).await?,
            Command::Ignore(log) => {
                tracing::warn!(log = %log, "log recreated upstream while its delayed deletion is pending: it follows once the old one is deleted");
            }
            other => return Ok(Some(other)),
        }
        Ok(None)
    }

    /// Handle one message; false when the session should end to reconnect.
    async fn on_message(&mut self, m: pb::UpstreamMessage) -> Result<bool> {
        use pb::upstream_message::Msg;
        self.machine
            .message(m.node_epoch, self.node.role().epoch())
            .map_err(|e| anyhow!(e))?;
        match m.msg {
            Some(Msg::Frames(f)) => self.on_frames(f).await?,
            Some(Msg::Segment(c)) => self.on_segment(c).await?,
            Some(Msg::Start(s)) => self.on_start(s).await?,
            Some(Msg::Deleted(d)) => self.on_deleted(d).await?,
            Some(Msg::Heartbeat(h)) => self.on_heartbeat(h).await?,
            _ => {}
        }
        Ok(true)
    }

    async fn on_frames(&mut self, f: pb::LogFrames) -> Result<()> {
        let mut frames = Some(f);
        let name = frames.as_ref().expect("present").log.clone();
        for cmd in self
            .machine
            .frames(&name, frames.as_ref().expect("present").sync)
        {
            match self.common(cmd).await? {
                Some(Command::Append { .. }) => {
                    self.append(frames.take().context("frames appended twice")?)
                        .await?
                }
                Some(other) => bail!("unexpected command for frames: {other:?}"),
                None => {}
            }
        }
        Ok(())
    }

    /// Queue the frames for the log; their durable end is acked once they land.
    async fn append(&mut self, f: pb::LogFrames) -> Result<()> {
        let log = match self.logs.get(&f.log) {
            Some(l) => l.clone(),
            None => {
                let l = self.node.storage().log(&f.log)?;
                self.logs.insert(f.log.clone(), l.clone());
                l
            }
        };
        if f.sync {
            self.node.upstream_requested_sync();
        }
        let name = f.log.clone();
        let durable = log
            .submit_frames_with(f.frames, f.sync)
            .await
            .with_context(|| {
                format!(
                    "appending frames {}..{} of {name}",
                    f.first_offset, f.next_offset
                )
            })?;
        self.inflight.push_back(Box::pin(async move {
            let end = durable.await?;
            Ok((name, end))
        }));
        Ok(())
    }

    /// A segment chunk: continue the import in progress or begin one where the log ends,
    /// stage (or fetch) the frames, and put the segment in place once it is whole.
    async fn on_segment(&mut self, c: pb::SegmentChunk) -> Result<()> {
        let chunk = Chunk {
            segment: (c.segment_base, c.segment_next),
            first: c.first_offset,
            fetch: c.fetch,
        };
        let import = self.imports.get(&c.log).map(import_of);
        let cmds = self.machine.chunk(&c.log, &chunk, import);
        if cmds.is_empty() {
            return Ok(());
        }
        let log = self.node.storage().log(&c.log)?;
        for cmd in cmds {
            match self.common(cmd).await? {
                Some(Command::BeginImport(_)) => {
                    let at = self
                        .machine
                        .begin_at(&chunk, log.positions().durable)
                        .map_err(|e| anyhow!("{e} (log {})", c.log))?;
                    self.imports.insert(c.log.clone(), log.begin_import(at)?);
                }
                Some(Command::Receive { fetch: true, .. }) => self.fetch_segment(&c).await?,
                Some(Command::Receive { fetch: false, .. }) => self.stage(&c)?,
                Some(other) => bail!("unexpected command for a segment chunk: {other:?}"),
                None => {}
            }
        }
        self.segment_progress(&c.log, c.segment_next).await
    }

    /// Stage the chunk's frames (page-cache writes of at most a message: brief enough for a
    /// worker thread).
    fn stage(&mut self, c: &pb::SegmentChunk) -> Result<()> {
        let imp = self.imports.get_mut(&c.log).expect("begun above");
        tokio::task::block_in_place(|| imp.write(&c.frames)).with_context(|| {
            format!(
                "staging frames {}..{} of {}",
                c.first_offset, c.next_offset, c.log
            )
        })?;
        let mut v = self.view.lock();
        v.logs
            .entry(c.log.clone())
            .or_default()
            .segment_bytes_received += c.frames.len() as u64;
        Ok(())
    }

    /// Fetch the rest of the segment over a segment-fetch connection; the stream waits
    /// meanwhile and the upstream keeps hearing from us.
    async fn fetch_segment(&mut self, c: &pb::SegmentChunk) -> Result<()> {
        let view = self.view;
        let segment_next = c.segment_next;
        let staged = |imp: &SegmentImport, bytes: u64| {
            let mut v = view.lock();
            let f = v.logs.entry(imp.log_name().to_owned()).or_default();
            f.staged = Some((imp.next_offset(), segment_next));
            f.segment_bytes_received += bytes;
            f.segment_bytes_fetched += bytes;
        };
        let imp = self.imports.get_mut(&c.log).expect("begun above");
        let staged_before = imp.staged_bytes();
        let segment = (c.segment_base, c.segment_next);
        let fetched = {
            let fetching = segment_fetch::fetch(
                &self.cfg.upstream,
                self.node.peer_tls(),
                &self.cfg.replica_id,
                segment,
                imp,
                staged,
            );
            tokio::pin!(fetching);
            loop {
                tokio::select! {
                    r = &mut fetching => break r,
                    _ = self.beat.tick() => {
                        if self.tx.send(acks(self.node, self.machine.gate())).await.is_err() {
                            bail!("upstream closed the stream");
                        }
                    }
                }
            }
        };
        self.last_heard = tokio::time::Instant::now();
        if let Err(e) = fetched {
            // Fetching cannot work from here (a proxy that speaks only HTTP/2, say) if it
            // never got a byte: the next session takes segments in the stream. A fetch cut
            // midway resumes as a fetch.
            let imp = self.imports.get(&c.log).expect("begun above");
            if imp.staged_bytes() == staged_before {
                *self.fetch = false;
            }
            return Err(e.context(format!("fetching segment {} of {}", c.segment_base, c.log)));
        }
        Ok(())
    }

    /// Say how far the segment is staged; once it is whole, the machine has it installed.
    async fn segment_progress(&mut self, name: &str, segment_next: u64) -> Result<()> {
        let staged_to = self.imports.get(name).expect("begun above").next_offset();
        let done = staged_to >= segment_next;
        {
            let mut v = self.view.lock();
            let f = v.logs.entry(name.to_owned()).or_default();
            f.staged = (!done).then_some((staged_to, segment_next));
            f.segments_received += u64::from(done);
        }
        for cmd in self.machine.staged(name, staged_to, segment_next) {
            if let Some(other) = self.common(cmd).await? {
                bail!("unexpected command for a staged segment: {other:?}");
            }
        }
        Ok(())
    }

    /// Put the log's segment received whole in place in the background (acked once it
    /// lands) and keep where the next one begins: the upstream offers segments back to
    /// back, and receiving the next overlaps the install.
    fn install(&mut self, name: &str) {
        let imp = self.imports.remove(name).expect("staged whole");
        self.follow_ons.insert(name.to_owned(), imp.follow_on());
        let upstream_end = self.view.lock().logs.get(name).map(|f| f.upstream_end);
        let (name, base, bytes) = (name.to_owned(), imp.base(), imp.staged_bytes());
        let held = self.landing.hold();
        let install = Installing(tokio::spawn(async move {
            let landed = imp.install().await;
            drop(held);
            landed
        }));
        self.inflight.push_back(Box::pin(async move {
            let end = install
                .landed()
                .await
                .with_context(|| format!("installing segment {base} of {name}"))?;
            tracing::info!(log = %name, base, end, bytes, ?upstream_end, "received a sealed segment");
            Ok((name, end))
        }));
    }

    async fn on_start(&mut self, s: pb::LogStart) -> Result<()> {
        use pb::log_start::Action;
        self.logs.remove(&s.name);
        let start = Start {
            continue_at: (s.action == Action::Continue as i32).then_some(s.offset),
            recreate: s.action == Action::Recreate as i32,
            diverged: s.action == Action::Diverged as i32,
        };
        let here = self.here(&s.name);
        for cmd in self
            .machine
            .start(&s.name, start, here, super::upstream::now_us())
        {
            match self.common(cmd).await? {
                Some(Command::ApplyStart(_)) => apply_start(self.node, &s, self.view).await?,
                Some(other) => bail!("unexpected command for a log start: {other:?}"),
                None => {}
            }
        }
        Ok(())
    }

    /// What the machine needs to know of a log here.
    fn here(&self, name: &str) -> Here {
        let delay = self.node.active_delay();
        Here {
            delayed: delay.is_some(),
            exists: self.node.storage().log(name).is_ok(),
            deletion_pending: delay.is_some_and(|d| d.pending_delete(name).is_some()),
            import: self.imports.get(name).map(import_of),
        }
    }

    /// A log deleted upstream: here at once, or, on a delayed replica, at the deletion's
    /// time plus the delay (kept readable up to its horizon meanwhile).
    async fn on_deleted(&mut self, d: pb::LogDeleted) -> Result<()> {
        self.logs.remove(&d.name);
        let here = self.here(&d.name);
        let now = super::upstream::now_us();
        for cmd in self.machine.deleted(&d.name, d.deleted_at_us, here, now) {
            if let Some(other) = self.common(cmd).await? {
                bail!("unexpected command for a deletion: {other:?}");
            }
        }
        Ok(())
    }

    async fn delete_now(&mut self, name: &str) -> Result<()> {
        self.view.lock().logs.remove(name);
        match self.node.storage().delete_log(name).await {
            Ok(()) | Err(spool_storage::StorageError::LogNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.node.catalog_changed();
        tracing::info!(log = %name, "log deleted upstream");
        Ok(())
    }

    async fn on_heartbeat(&mut self, h: pb::Heartbeat) -> Result<()> {
        let node = self.node;
        let epoch = self.machine.heartbeat(h.node_epoch, node.role().epoch());
        node.role().set_epoch(epoch).await?;
        if !h.primary_addr.is_empty() {
            node.role().set_primary_addr(Some(h.primary_addr.clone()));
        }
        let mut v = self.view.lock();
        for e in h.ends {
            let f = v.logs.entry(e.name).or_default();
            (f.upstream_end, f.upstream_end_known) = (e.end_offset, true);
        }
        Ok(())
    }
}
