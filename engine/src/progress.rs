//! Progress of the long operations other than backup: restore,
//! `check --read-data` and prune. Like backup's, a callback in the options,
//! called from the operation at most every 100 ms, when a phase begins or its
//! totals grow, and once when it ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What an operation is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Restore: writing file contents. Items are packs read.
    Restore,
    /// Check: index files, pack headers, snapshots and trees. No totals.
    CheckStructure,
    /// `check --read-data`: packs downloaded and verified.
    CheckReadData,
    /// Prune: reading the index and deciding. No totals.
    PrunePlan,
    /// Prune: waiting for backups that started before the plan. Items are sessions.
    PruneWait,
    /// Prune: copying the used blobs out of packs. Items are packs, bytes are their sizes.
    PruneRepack,
    /// Prune: deleting packs. Items are packs, bytes are their sizes.
    PruneDelete,
}

impl Phase {
    /// A short name for messages (`restore`, `check read-data`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Restore => "restore",
            Phase::CheckStructure => "check structure",
            Phase::CheckReadData => "check read-data",
            Phase::PrunePlan => "prune plan",
            Phase::PruneWait => "prune wait",
            Phase::PruneRepack => "prune repack",
            Phase::PruneDelete => "prune delete",
        }
    }
}

/// One progress report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Progress {
    /// The phase this report is about.
    pub phase: Phase,
    /// Seconds since the operation started.
    pub seconds_elapsed: f64,
    /// Bytes done in this phase.
    pub bytes_done: u64,
    /// Bytes to do in this phase, where known.
    pub total_bytes: Option<u64>,
    /// Items (see [`Phase`]) done in this phase.
    pub items_done: u64,
    /// Items to do in this phase, where known.
    pub total_items: Option<u64>,
}

/// A progress callback.
#[derive(Clone)]
pub struct ProgressFn(Arc<dyn Fn(&Progress) + Send + Sync>);

impl ProgressFn {
    /// Wraps a callback.
    pub fn new(f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        ProgressFn(Arc::new(f))
    }
}

impl std::fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressFn")
    }
}

/// Shortest time between two reports within a phase.
const INTERVAL: Duration = Duration::from_millis(100);

/// Counts an operation's work and calls its callback at a bounded rate.
pub(crate) struct Reporter {
    callback: Option<ProgressFn>,
    started: Instant,
    bytes: AtomicU64,
    items: AtomicU64,
    state: Mutex<State>,
}

struct State {
    phase: Phase,
    total_bytes: Option<u64>,
    total_items: Option<u64>,
    last: Instant,
}

impl Reporter {
    pub(crate) fn new(callback: Option<ProgressFn>, first: Phase) -> Self {
        let now = Instant::now();
        Reporter {
            callback,
            started: now,
            bytes: AtomicU64::new(0),
            items: AtomicU64::new(0),
            state: Mutex::new(State {
                phase: first,
                total_bytes: None,
                total_items: None,
                last: now,
            }),
        }
    }

    /// Starts `phase` with its totals, and reports it.
    pub(crate) fn phase(&self, phase: Phase, total_bytes: Option<u64>, total_items: Option<u64>) {
        if self.callback.is_none() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.bytes.store(0, Ordering::Relaxed);
        self.items.store(0, Ordering::Relaxed);
        *s = State {
            phase,
            total_bytes,
            total_items,
            last: Instant::now(),
        };
        self.emit(&s);
    }

    /// Adds to the current phase's totals (work found while it runs: a
    /// restore's next pass), and reports them.
    pub(crate) fn grow(&self, bytes: u64, items: u64) {
        if self.callback.is_none() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.total_bytes = Some(s.total_bytes.unwrap_or(0) + bytes);
        s.total_items = Some(s.total_items.unwrap_or(0) + items);
        s.last = Instant::now();
        self.emit(&s);
    }

    /// Counts work done; reports when the last report is old enough.
    pub(crate) fn add(&self, bytes: u64, items: u64) {
        if self.callback.is_none() {
            return;
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.items.fetch_add(items, Ordering::Relaxed);
        // A busy lock means another thread is reporting right now.
        let Ok(mut s) = self.state.try_lock() else {
            return;
        };
        if s.last.elapsed() >= INTERVAL {
            s.last = Instant::now();
            self.emit(&s);
        }
    }

    /// Reports the current phase now (its end).
    pub(crate) fn finish(&self) {
        if self.callback.is_none() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.last = Instant::now();
        self.emit(&s);
    }

    fn emit(&self, s: &State) {
        if let Some(ProgressFn(cb)) = &self.callback {
            cb(&Progress {
                phase: s.phase,
                seconds_elapsed: self.started.elapsed().as_secs_f64(),
                bytes_done: self.bytes.load(Ordering::Relaxed),
                total_bytes: s.total_bytes,
                items_done: self.items.load(Ordering::Relaxed),
                total_items: s.total_items,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect() -> (ProgressFn, Arc<Mutex<Vec<Progress>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (
            ProgressFn::new(move |p: &Progress| s.lock().unwrap().push(p.clone())),
            seen,
        )
    }

    #[test]
    fn a_phase_is_reported_when_it_starts_and_ends_and_counts_restart() {
        let (cb, seen) = collect();
        let r = Reporter::new(Some(cb), Phase::PrunePlan);
        r.phase(Phase::PruneRepack, Some(300), Some(3));
        for _ in 0..3 {
            r.add(100, 1);
        }
        r.finish();
        r.phase(Phase::PruneDelete, None, Some(2));
        r.add(0, 2);
        r.finish();
        let seen = seen.lock().unwrap();
        let first = &seen[0];
        assert_eq!(
            (first.phase, first.bytes_done, first.total_bytes),
            (Phase::PruneRepack, 0, Some(300))
        );
        let ends: Vec<_> = seen
            .iter()
            .filter(|p| p.total_items == Some(p.items_done) && p.items_done > 0)
            .map(|p| (p.phase, p.bytes_done, p.items_done))
            .collect();
        assert_eq!(
            ends,
            [(Phase::PruneRepack, 300, 3), (Phase::PruneDelete, 0, 2)]
        );
        assert!(seen
            .windows(2)
            .all(|w| w[0].seconds_elapsed <= w[1].seconds_elapsed));
    }

    #[test]
    fn reports_within_a_phase_are_spaced() {
        let (cb, seen) = collect();
        let r = Reporter::new(Some(cb), Phase::Restore);
        r.phase(Phase::Restore, Some(1000), None);
        for _ in 0..1000 {
            r.add(1, 0);
        }
        // The start, and no report for each of the 1000 quick adds.
        assert!(seen.lock().unwrap().len() < 10);
        r.finish();
        assert_eq!(seen.lock().unwrap().last().unwrap().bytes_done, 1000);
    }
}
