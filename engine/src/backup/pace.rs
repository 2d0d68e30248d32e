//! Read pacing: a backup reads its source no faster than a set rate, so that
//! it does not take the disk from the application whose volume it reads.
//!
//! The file workers report each window they have read (8 MiB per chunking
//! thread); the pacer keeps the time at which the bytes read so far are due
//! at the rate, and a worker that is ahead of it sleeps until then. The rate
//! holds over seconds, not within one window. A reader that fell behind (its
//! own chunking took the time) may catch up by at most [`CREDIT`], so the
//! time spent processing a window is not charged on top of the rate, and an
//! idle pause gives no burst longer than that.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cancel::CancelToken;

/// Longest single sleep: a cancelled backup stops within this.
const STEP: Duration = Duration::from_millis(100);

/// How far behind its schedule a reader may be and still catch up.
const CREDIT: Duration = Duration::from_secs(1);

/// Paces the reads of one backup (all its file workers together).
#[derive(Debug)]
pub(crate) struct Pacer {
    bytes_per_second: u64,
    /// When the bytes read so far are due at the rate.
    due: Mutex<Option<Instant>>,
}

impl Pacer {
    /// A pacer at `bytes_per_second` (at least 1).
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        Pacer {
            bytes_per_second: bytes_per_second.max(1),
            due: Mutex::new(None),
        }
    }

    /// Records `n` bytes read at `now`; returns the instant before which the
    /// reader must not go on.
    fn reserve(&self, n: u64, now: Instant) -> Instant {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let from = match *due {
            Some(d) => d.max(now.checked_sub(CREDIT).unwrap_or(now)),
            None => now,
        };
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_second as f64);
        let until = from + cost;
        *due = Some(until);
        until
    }

    /// Records `n` bytes just read and sleeps until they are due; returns
    /// early (false) when `cancel` fires.
    pub(crate) fn pace(&self, n: u64, cancel: &CancelToken) -> bool {
        let until = self.reserve(n, Instant::now());
        loop {
            if cancel.is_cancelled() {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            std::thread::sleep((until - now).min(STEP));
        }
    }
}

/// Parses sizes like `4096`, `512K`, `16MiB`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4096, 512KiB or 16MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?}; use K, M, G or T"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses a rate like `50MiB/s` or `512KiB` (per second) into bytes per
/// second. A unit is required: restic's `--limit-upload 1024` means KiB/s,
/// and a bare number would be read both ways.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let size = t.strip_suffix("/s").unwrap_or(t).trim();
    if size.is_empty() || size.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{s:?} has no unit; write a rate like 50MiB/s or 512KiB/s"
        ));
    }
    match parse_size(size)? {
        0 => Err(format!(
            "{s:?} would never read anything; leave the limit out for no limit"
        )),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn reads_are_due_at_the_rate_and_idle_time_is_saved_up_to_a_second() {
        let p = Pacer::new(2 * MIB);
        let t0 = Instant::now();
        // 4 MiB at 2 MiB/s: due 2 s later, then 1 MiB more 0.5 s after that.
        assert_eq!(p.reserve(4 * MIB, t0), t0 + Duration::from_secs(2));
        assert_eq!(
            p.reserve(MIB, t0 + Duration::from_secs(1)),
            t0 + Duration::from_millis(2500)
        );
        // Processing made the reader 0.3 s late: the next window is charged
        // from when it was due, not from now.
        let late = t0 + Duration::from_millis(2800);
        assert_eq!(p.reserve(MIB, late), t0 + Duration::from_secs(3));
        // After a 10 s pause, at most one second is made up.
        let later = t0 + Duration::from_secs(13);
        assert_eq!(p.reserve(2 * MIB, later), later);
        assert_eq!(p.reserve(2 * MIB, later), later + Duration::from_secs(1));
    }

    #[test]
    fn workers_share_one_rate() {
        let p = Pacer::new(MIB);
        let t0 = Instant::now();
        let a = p.reserve(MIB, t0);
        let b = p.reserve(MIB, t0);
        assert_eq!(a, t0 + Duration::from_secs(1));
        assert_eq!(
            b,
            t0 + Duration::from_secs(2),
            "the second worker waits behind the first"
        );
    }

    #[test]
    fn rates_need_a_unit() {
        assert_eq!(parse_rate("50MiB/s"), Ok(50 * MIB));
        assert_eq!(parse_rate("512KiB"), Ok(512 << 10));
        assert_eq!(parse_rate(" 2 M/s "), Ok(2 * MIB));
        assert!(parse_rate("1024").unwrap_err().contains("no unit"));
        assert!(parse_rate("0MiB/s").unwrap_err().contains("never"));
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn a_cancelled_reader_does_not_sleep_out_its_debt() {
        let p = Pacer::new(1);
        let cancel = CancelToken::new();
        cancel.cancel();
        // One MiB at 1 byte/s would be 12 days.
        assert!(!p.pace(MIB, &cancel));
    }
}
