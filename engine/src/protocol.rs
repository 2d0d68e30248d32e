//! The concurrency protocol (SPEC.md §13): how writers and prune see each
//! other. Backup sessions, the prune lock and prune plans live here; backup
//! and prune both go through this module.
//!
//! A backup announces itself with a session object `sessions/<random id>`
//! (sealed CBOR) holding a heartbeat counter that it rewrites every
//! [`Timing::heartbeat`]. Prune never deletes data that a session that existed
//! when prune planned could reference, until that session has ended or is
//! stale: its counter did not change for [`Timing::stale_after`] as measured by
//! the observer's own monotonic clock. No clock is compared across hosts.
//!
//! The holder of a beacon has a `Lease`: valid until a fifth of
//! `stale_after` (its own monotonic clock) after it *sent* the last heartbeat
//! that was stored in time. A heartbeat not stored before the lease runs out
//! ends it for good, and every write others rely on (a backup's index files
//! and snapshot, a prune's index files and deletions) must complete within
//! the lease. (With clock rates within a factor of two, a fifth is at most
//! 0.4 of stale-after in real time, while an observer waits at least 0.5 of
//! it.) A backup also reads its session back after storing its snapshot and
//! deletes the snapshot if the session is gone.
//!
//! Prune excludes other prunes with a lock that needs no conditional write:
//! it writes `locks/prune-<random id>`, then lists `locks/`, and goes on only
//! if its own lock is the only live one (with linearizable writes and lists,
//! two prunes cannot both see themselves alone); otherwise it removes its lock
//! and waits.
//!
//! Prune publishes the packs it may delete as a plan `plans/<random id>`
//! before it looks at sessions; a backup that starts reads every plan
//! (`planned_packs`) and does not deduplicate against those packs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;

use coffer_repo_format::envelope::Context;
use coffer_repo_format::PackId;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::progress::Reporter;
use crate::repository::{Identity, Repository};
use crate::storage::{StoreErrorKind, WriteMode};

#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) use coffer_repo_format::layout::{LOCKS, PLANS, SESSIONS};
pub(crate) use coffer_repo_format::protocol::{Beacon, StoredPlan};

/// A backup or prune that holds a session or the prune lock, as its object
/// says. A dead one's heartbeat stops; the next prune removes it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Running {
    /// Its object's key (`sessions/...` or `locks/...`).
    pub key: String,
    /// `backup` or `prune`.
    pub kind: String,
    /// The host it runs on.
    pub hostname: String,
    /// Its process id there.
    pub pid: u32,
    /// When it started, by its own clock.
    pub started: String,
    /// Its heartbeat count.
    pub beat: u64,
}

/// The backups and prunes that hold a session or the lock now.
pub async fn running(repo: &Repository) -> Result<Vec<Running>> {
    let mut out = Vec::new();
    for prefix in [SESSIONS, LOCKS] {
        for key in list_keys(repo, prefix).await? {
            // Gone since the listing: it ended.
            if let Some(b) = read_beacon(repo, &key).await? {
                out.push(Running {
                    key,
                    kind: b.kind,
                    hostname: b.hostname,
                    pid: b.pid,
                    started: b.started,
                    beat: b.beat,
                });
            }
        }
    }
    Ok(out)
}

/// The protocol's timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How often a live session or lock rewrites its heartbeat.
    pub heartbeat: Duration,
    /// A session or lock whose heartbeat did not change for this long (observed)
    /// is dead. At least ten heartbeats.
    pub stale_after: Duration,
}

impl Default for Timing {
    /// Heartbeat every 60 s, stale after 10 minutes.
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_secs(60),
            stale_after: Duration::from_secs(600),
        }
    }
}

impl Timing {
    /// Short timings for tests: heartbeat every 100 ms, stale after 3 s.
    pub fn fast() -> Self {
        Timing {
            heartbeat: Duration::from_millis(100),
            stale_after: Duration::from_secs(3),
        }
    }

    /// The timings from `COFFER_HEARTBEAT_MS` and `COFFER_STALE_MS` (tests
    /// use short ones) when both are set and valid for
    /// [`Timing::from_millis`], else the defaults. The CLI and the node
    /// agent's movers read them alike.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        get("COFFER_HEARTBEAT_MS")
            .zip(get("COFFER_STALE_MS"))
            .and_then(|(h, s)| Timing::from_millis(h, s))
            .unwrap_or_default()
    }

    /// A heartbeat and stale time given in milliseconds; `None` unless the
    /// stale time is at least ten heartbeats.
    pub fn from_millis(heartbeat: u64, stale_after: u64) -> Option<Self> {
        (heartbeat > 0 && stale_after >= 10 * heartbeat).then(|| Timing {
            heartbeat: Duration::from_millis(heartbeat),
            stale_after: Duration::from_millis(stale_after),
        })
    }
}

fn random_id() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| Error::InvalidArgument(format!("random number generator: {e}")))?;
    Ok(hex::encode(b))
}

/// Seals the plaintext `plain` of a `what` and stores it at `key`.
async fn write_sealed(
    repo: &Repository,
    key: &str,
    context: Context<'_>,
    what: &'static str,
    plain: Result<Vec<u8>, coffer_repo_format::FormatError>,
) -> Result<()> {
    let plain = plain.map_err(|e| Error::corrupt(what, e))?;
    let mut sealer = repo
        .key()
        .sealer()
        .map_err(|e| Error::corrupt("random source", e))?;
    let sealed = sealer
        .seal(context, &plain)
        .map_err(|e| Error::corrupt(what, e))?;
    repo.store()
        .put(key, Bytes::from(sealed), WriteMode::Overwrite)
        .await
        .map_err(|e| repo.store_err(e))
}

/// Reads and decodes the sealed object at `key`; `None` if it is gone.
async fn read_sealed<T>(
    repo: &Repository,
    key: &str,
    context: Context<'_>,
    decode: fn(&[u8]) -> Result<T, coffer_repo_format::FormatError>,
) -> Result<Option<T>> {
    let bytes = match repo.store().get(key).await {
        Ok(b) => b,
        Err(e) if e.kind == StoreErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(repo.store_err(e)),
    };
    let plain = repo
        .opener()
        .open(context, &bytes)
        .map_err(|e| Error::corrupt(key.to_string(), e))?;
    decode(&plain)
        .map(Some)
        .map_err(|e| Error::corrupt(key.to_string(), e))
}

/// Writes a beacon (sealed) at `key`.
async fn write_beacon(repo: &Repository, key: &str, b: &Beacon) -> Result<()> {
    write_sealed(repo, key, Context::Session, "session", b.encode()).await
}

/// Reads a beacon; `None` if it is gone.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) async fn read_beacon(repo: &Repository, key: &str) -> Result<Option<Beacon>> {
    read_sealed(repo, key, Context::Session, Beacon::decode).await
}

/// Keys under a prefix.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) async fn list_keys(repo: &Repository, prefix: &str) -> Result<Vec<String>> {
    let infos: Vec<_> = repo
        .store()
        .list(prefix)
        .try_collect()
        .await
        .map_err(|e| repo.store_err(e))?;
    Ok(infos.into_iter().map(|i| i.key).collect())
}

/// Longest stale-after an observer honours from a beacon (a hostile or
/// mistaken value cannot make prune wait longer than this; prune's own
/// `max_wait` bounds it further).
const MAX_DECLARED_STALE: Duration = Duration::from_secs(24 * 3600);

/// What the holder of a beacon knows about its own liveness (SPEC §13,
/// "Leases"): until when others cannot have taken it for dead, and whether
/// it lost the beacon for good.
///
/// Every heartbeat counts from the moment it was *sent*. The lease is
/// valid until a fifth of stale-after after the send of the last heartbeat
/// that was stored in time; a heartbeat that is not stored before the lease
/// runs out (a stalled store, a frozen process) ends the lease for good,
/// even if that write lands later. Everything a holder writes that others
/// rely on (a backup's index files and snapshot, a prune's index files and
/// deletions) goes through [`Lease::bounded`], so it completes while the
/// lease is valid or not at all.
#[derive(Clone)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct Lease(Arc<LeaseState>);

struct LeaseState {
    key: String,
    /// A fifth of stale-after.
    bound: Duration,
    inner: Mutex<LeaseInner>,
    /// Tripped when the lease is lost, so the holder's work stops.
    on_lost: Option<CancelToken>,
}

struct LeaseInner {
    valid_until: Instant,
    lost: Option<String>,
}

impl Lease {
    fn new(key: String, bound: Duration, sent: Instant, on_lost: Option<CancelToken>) -> Self {
        Lease(Arc::new(LeaseState {
            key,
            bound,
            inner: Mutex::new(LeaseInner {
                valid_until: sent + bound,
                lost: None,
            }),
            on_lost,
        }))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, LeaseInner> {
        self.0.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Until when the lease is valid (this process's monotonic clock).
    pub fn valid_until(&self) -> Instant {
        self.inner().valid_until
    }

    /// Why the lease was lost for good, if it was.
    pub fn lost(&self) -> Option<String> {
        self.inner().lost.clone()
    }

    /// Ends the lease for good, and stops the holder's work.
    fn lose(&self, reason: String) {
        {
            let mut inner = self.inner();
            if inner.lost.is_some() {
                return;
            }
            tracing::warn!("session {} lost: {reason}", self.0.key);
            inner.lost = Some(reason);
        }
        if let Some(t) = &self.0.on_lost {
            t.cancel();
        }
    }

    /// A heartbeat sent at `sent` was stored at `now`: valid if it was
    /// stored while the lease still held.
    fn renewed(&self, sent: Instant, now: Instant) {
        let mut inner = self.inner();
        if inner.lost.is_none() && now <= inner.valid_until {
            inner.valid_until = inner.valid_until.max(sent + self.0.bound);
        } else if inner.lost.is_none() {
            let late = now.duration_since(inner.valid_until);
            drop(inner);
            self.lose(format!(
                "had a heartbeat stored {:.1} s after its lease ran out, so others may have \
                 taken it for dead",
                late.as_secs_f64()
            ));
        }
    }

    fn error(&self, reason: String) -> Error {
        Error::SessionLost {
            session: self.0.key.clone(),
            reason,
        }
    }

    /// Fails if the lease is lost or ran out: a write started now might
    /// land after others took this process for dead.
    pub fn check(&self) -> Result<()> {
        let inner = self.inner();
        if let Some(reason) = &inner.lost {
            return Err(self.error(reason.clone()));
        }
        let now = Instant::now();
        if now >= inner.valid_until {
            return Err(self.error(format!(
                "could not be renewed for {:.1} s (a stalled store or a paused process), so \
                 others may have taken it for dead",
                (now - inner.valid_until + self.0.bound).as_secs_f64()
            )));
        }
        Ok(())
    }

    /// Runs `work` (a write others rely on) only while the lease is valid:
    /// checks it first, abandons the work once the lease runs out (no retry
    /// past it; heartbeats stored meanwhile extend it), and checks it again
    /// when the work is done. `what` names the work in the error.
    pub async fn bounded<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.check()?;
        let mut work = std::pin::pin!(work);
        let out = loop {
            let until = self.valid_until();
            match tokio::time::timeout_at(until.into(), &mut work).await {
                Ok(r) => break r?,
                // Renewed meanwhile: keep waiting.
                Err(_) if self.lost().is_none() && self.valid_until() > until => continue,
                Err(_) => {
                    return Err(self.error(format!(
                        "ran out of its lease while {what} (the store did not answer in time), \
                         so others may have taken it for dead"
                    )))
                }
            }
        };
        // Done, but perhaps after a pause that outlived the lease.
        self.check().map_err(|e| match e {
            Error::SessionLost { session, reason } => Error::SessionLost {
                session,
                reason: format!("{reason} ({what} completed too late)"),
            },
            e => e,
        })?;
        Ok(out)
    }
}

/// A live beacon: written now, rewritten by a background task until ended.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct Live {
    repo: Arc<Repository>,
    key: String,
    lease: Lease,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Live {
    /// Writes a new beacon under `prefix` and keeps it beating. When the
    /// lease is lost, `on_lost` (if any) is cancelled.
    pub async fn start(
        repo: Arc<Repository>,
        prefix: &str,
        kind: &str,
        timing: Timing,
        on_lost: Option<CancelToken>,
    ) -> Result<Live> {
        // Readers refuse any other kind (SPEC §13): never write one.
        if kind != "backup" && kind != "prune" {
            return Err(Error::InvalidArgument(format!(
                "a beacon's kind is backup or prune, not {kind:?}"
            )));
        }
        let key = format!(
            "{prefix}{}{}",
            if kind == "prune" { "prune-" } else { "" },
            random_id()?
        );
        let me = Identity::current();
        let mut beacon = Beacon {
            version: 1,
            kind: kind.into(),
            hostname: me.hostname,
            pid: std::process::id(),
            started: crate::repository::now_rfc3339(),
            beat: 0,
            stale_after_ms: Some(
                timing
                    .stale_after
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            ),
        };
        let bound = timing.stale_after / 5;
        let sent = Instant::now();
        let lease = Lease::new(key.clone(), bound, sent, on_lost);
        lease
            .bounded("writing its session", write_beacon(&repo, &key, &beacon))
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (repo, key, stop, lease) = (repo.clone(), key.clone(), stop.clone(), lease.clone());
            tokio::spawn(async move {
                let mut last_sent = sent;
                loop {
                    // Beats are due a heartbeat after the last one was sent,
                    // however long it took to store.
                    tokio::time::sleep_until((last_sent + timing.heartbeat).into()).await;
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let now = Instant::now();
                    let until = lease.valid_until();
                    if now >= until {
                        lease.lose(format!(
                            "could not send a heartbeat for {:.1} s (the process was paused or \
                             starved), so others may have taken it for dead",
                            now.duration_since(last_sent).as_secs_f64()
                        ));
                        return;
                    }
                    beacon.beat += 1;
                    let write = write_beacon(&repo, &key, &beacon);
                    match tokio::time::timeout_at(until.into(), write).await {
                        Ok(Ok(())) => {
                            lease.renewed(now, Instant::now());
                            last_sent = now;
                        }
                        Ok(Err(e)) => {
                            lease.lose(format!("could not store a heartbeat: {e}"));
                            return;
                        }
                        Err(_) => {
                            lease.lose(format!(
                                "could not store a heartbeat within {:.1} s, so others may \
                                 have taken it for dead",
                                until.duration_since(now).as_secs_f64()
                            ));
                            return;
                        }
                    }
                    if lease.lost().is_some() {
                        return;
                    }
                }
            })
        };
        Ok(Live {
            repo,
            key,
            lease,
            stop,
            task: Some(task),
        })
    }

    /// The beacon's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease this beacon gives: what bounds the holder's writes.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Fails if this process may soon be considered dead by others: its
    /// lease is lost or ran out, or its beacon is gone from the store.
    pub async fn check_alive(&self) -> Result<()> {
        self.lease.check()?;
        if read_beacon(&self.repo, &self.key).await?.is_none() {
            return Err(Error::SessionLost {
                session: self.key.clone(),
                reason: "was removed by another process (taken for dead)".into(),
            });
        }
        Ok(())
    }

    /// Stops the heartbeat and removes the beacon.
    pub async fn end(mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.repo
            .store()
            .delete(&self.key)
            .await
            .map_err(|e| self.repo.store_err(e))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // Dropped without `end` (an error path): stop beating so the beacon
        // goes stale; the next prune removes it.
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Watches beacons with this process's monotonic clock, to tell live ones
/// from dead ones.
#[derive(Default)]
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct Watch {
    seen: std::collections::HashMap<String, (u64, Instant)>,
}

impl Watch {
    /// Observes `key`: `Some(true)` live, `Some(false)` stale (its beat did not
    /// change for stale-after of our observation: `timing`'s, or the longer
    /// one the beacon declares, up to a day), `None` gone.
    pub async fn observe(
        &mut self,
        repo: &Repository,
        key: &str,
        timing: Timing,
    ) -> Result<Option<bool>> {
        let Some(b) = read_beacon(repo, key).await? else {
            self.seen.remove(key);
            return Ok(None);
        };
        let now = Instant::now();
        // The writer's own stale-after, where it is longer than ours: it
        // stops within a fifth of *its* value, so we wait at least that.
        let stale_after = b
            .stale_after_ms
            .map(|ms| Duration::from_millis(ms).min(MAX_DECLARED_STALE))
            .map_or(timing.stale_after, |d| d.max(timing.stale_after));
        match self.seen.get(key) {
            Some((beat, since)) if *beat == b.beat => {
                Ok(Some(now.duration_since(*since) < stale_after))
            }
            _ => {
                self.seen.insert(key.to_string(), (b.beat, now));
                Ok(Some(true))
            }
        }
    }
}

/// How long a protocol step may wait for others, and what stops it.
#[derive(Clone, Copy)]
pub(crate) struct Waiting<'a> {
    pub(crate) timing: Timing,
    pub(crate) max_wait: Duration,
    pub(crate) cancel: &'a CancelToken,
}

/// Reads every stored plan; the union of their packs is what a starting
/// backup must not deduplicate against.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) async fn planned_packs(repo: &Repository) -> Result<HashSet<PackId>> {
    let mut out = HashSet::new();
    for key in list_keys(repo, PLANS).await? {
        // A plan gone since the listing: its prune finished.
        if let Some(p) = read_sealed(repo, &key, Context::Plan, StoredPlan::decode).await? {
            out.extend(p.packs);
        }
    }
    Ok(out)
}

/// Stores a plan naming `packs` under a new key, which it returns.
pub(crate) async fn write_plan(repo: &Repository, packs: &[PackId]) -> Result<String> {
    let key = coffer_repo_format::layout::plan(&random_id()?);
    let plan = StoredPlan {
        version: 1,
        packs: packs.to_vec(),
    };
    write_sealed(repo, &key, Context::Plan, "prune plan", plan.encode()).await?;
    Ok(key)
}

/// Takes the prune lock: write our lock, list, go on only if ours is the only
/// live one. Waits (up to `max_wait`) while another prune holds it.
pub(crate) async fn take_prune_lock(repo: &Arc<Repository>, w: Waiting<'_>) -> Result<Live> {
    let deadline = Instant::now() + w.max_wait;
    let mut watch = Watch::default();
    loop {
        let mine = Live::start(repo.clone(), LOCKS, "prune", w.timing, None).await?;
        let mut others = Vec::new();
        for key in list_keys(repo, LOCKS).await? {
            if key == mine.key() || !key.starts_with(coffer_repo_format::layout::PRUNE_LOCK) {
                continue;
            }
            match watch.observe(repo, &key, w.timing).await? {
                Some(true) => others.push(key),
                // A dead prune's lock: remove it.
                Some(false) => repo
                    .store()
                    .delete(&key)
                    .await
                    .map_err(|e| repo.store_err(e))?,
                None => {}
            }
        }
        if others.is_empty() {
            return Ok(mine);
        }
        mine.end().await?;
        if Instant::now() >= deadline {
            let holder = read_beacon(repo, &others[0])
                .await?
                .map(|b| b.hostname)
                .unwrap_or_default();
            return Err(Error::PruneRunning { holder });
        }
        let mut jitter = [0u8; 1];
        let _ = getrandom::fill(&mut jitter);
        let pause = w.timing.heartbeat + Duration::from_millis(u64::from(jitter[0]) * 4);
        w.cancel
            .sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
            .await?;
    }
}

/// Waits until every session has ended or is stale (stale ones are removed).
/// Returns (sessions waited for, `Some(stale removed)`), or `None` for the
/// second when `max_wait` ran out.
pub(crate) async fn wait_for_sessions(
    repo: &Repository,
    sessions: &[String],
    w: Waiting<'_>,
    lock: &Live,
    progress: &Reporter,
) -> Result<(usize, Option<usize>)> {
    let deadline = Instant::now() + w.max_wait;
    let mut watch = Watch::default();
    let mut pending: Vec<String> = sessions.to_vec();
    let mut stale = 0;
    loop {
        let pending_len = pending.len();
        let mut still = Vec::new();
        for key in pending {
            match watch.observe(repo, &key, w.timing).await? {
                Some(true) => still.push(key),
                Some(false) => {
                    tracing::info!("removing stale session {key}");
                    repo.delete(&key).await?;
                    stale += 1;
                }
                None => {}
            }
        }
        progress.add(0, (pending_len - still.len()) as u64);
        if still.is_empty() {
            return Ok((sessions.len(), Some(stale)));
        }
        if Instant::now() >= deadline {
            return Ok((sessions.len(), None));
        }
        lock.check_alive().await?;
        pending = still;
        // Never sleep past the deadline: max_wait holds to within a check.
        let left = deadline.saturating_duration_since(Instant::now());
        w.cancel.sleep(w.timing.heartbeat.min(left)).await?;
    }
}
