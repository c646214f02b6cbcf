//! Logs of repeated failures, rate-limited per component and kind: within
//! each interval the first few of a kind are logged in full, the rest are
//! counted and summed up in one line when the interval ends. Never silent:
//! every suppressed failure is in a summary, and the counters and dead
//! letters hold each one.
//!
//! A poison flood (an upstream schema change) would otherwise write a line
//! per message, tens of thousands a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures of one kind logged in full per interval.
pub const IN_FULL: u32 = 5;
/// How long an interval lasts.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One kind's interval.
struct Window {
    /// When the interval began.
    since: Instant,
    /// Logged in full in it.
    logged: u32,
    /// Counted, not logged, in it.
    suppressed: u64,
    /// The latest suppressed one, for the summary.
    last: String,
}

/// Rate-limited failure logs of one component.
#[derive(Default)]
pub struct FailureLog {
    /// By kind (a handful of static names: `dead-lettered`, `failed`, …).
    windows: Mutex<HashMap<&'static str, Window>>,
}

impl std::fmt::Debug for FailureLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailureLog")
    }
}

/// What to do with a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it in full.
    Log,
    /// Counted for the next summary.
    Suppressed,
}

/// A summary line's content: `count` more of `kind`, the latest `last`.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    /// What failed (`dead-lettered`, `failed attempts`, …).
    pub kind: &'static str,
    /// How many were left out of the log.
    pub count: u64,
    /// The latest of them, in words.
    pub last: String,
    /// The interval they fell in.
    pub over: Duration,
}

impl FailureLog {
    /// Counts one failure of `kind` (described by `what`, built only if
    /// it is kept) at `now`: whether to log it, and a summary of the
    /// interval that ended, if one did with failures left unlogged.
    pub fn note(
        &self,
        kind: &'static str,
        now: Instant,
        what: impl FnOnce() -> String,
    ) -> (Verdict, Option<Summary>) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = windows.entry(kind).or_insert_with(|| Window {
            since: now,
            logged: 0,
            suppressed: 0,
            last: String::new(),
        });
        let summary = if now.saturating_duration_since(w.since) >= INTERVAL {
            let ended = end(kind, w, now);
            *w = Window {
                since: now,
                logged: 0,
                suppressed: 0,
                last: String::new(),
            };
            ended
        } else {
            None
        };
        if w.logged < IN_FULL {
            w.logged += 1;
            (Verdict::Log, summary)
        } else {
            w.suppressed += 1;
            w.last = what();
            (Verdict::Suppressed, summary)
        }
    }

    /// Summaries of the intervals that have ended by `now` with failures
    /// left unlogged (a flood that stopped is summed up all the same).
    pub fn due(&self, now: Instant) -> Vec<Summary> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        windows.retain(|kind, w| {
            if now.saturating_duration_since(w.since) < INTERVAL {
                return true;
            }
            out.extend(end(kind, w, now));
            false
        });
        out
    }
}

/// The summary of `w`, if anything in it went unlogged.
fn end(kind: &'static str, w: &Window, now: Instant) -> Option<Summary> {
    (w.suppressed > 0).then(|| Summary {
        kind,
        count: w.suppressed,
        last: w.last.clone(),
        over: now.saturating_duration_since(w.since),
    })
}

impl Summary {
    /// Writes the summary line for `component`.
    pub fn log(&self, component: &str) {
        tracing::warn!(
            component,
            kind = self.kind,
            count = self.count,
            "{} more {} in the last {:.0?}, not logged one by one (the latest: {}); counters and dead letters hold every one",
            self.count,
            self.kind,
            self.over,
            self.last
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_few_are_logged_then_one_summary_per_interval() {
        let log = FailureLog::default();
        let t0 = Instant::now();
        let mut logged = 0;
        for i in 0..1000u32 {
            let (v, s) = log.note("dead-lettered", t0, || format!("message {i}"));
            assert_eq!(s, None);
            logged += u32::from(v == Verdict::Log);
        }
        assert_eq!(logged, IN_FULL);
        // Another kind has its own allowance.
        assert_eq!(log.note("failed", t0, String::new).0, Verdict::Log);
        assert!(log.due(t0 + INTERVAL / 2).is_empty());
        // The next failure after the interval carries the summary.
        let (v, s) = log.note("dead-lettered", t0 + INTERVAL, || "next".into());
        assert_eq!(v, Verdict::Log);
        let s = s.unwrap();
        assert_eq!(
            (s.kind, s.count, s.last.as_str()),
            ("dead-lettered", 995, "message 999")
        );
    }

    #[test]
    fn a_flood_that_stops_is_still_summed_up() {
        let log = FailureLog::default();
        let t0 = Instant::now();
        for _ in 0..8 {
            log.note("failed", t0, || "trap".into());
        }
        let due = log.due(t0 + INTERVAL);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].count, due[0].last.as_str()), (3, "trap"));
        // Summed up once only; a quiet kind leaves nothing behind.
        assert!(log.due(t0 + INTERVAL * 3).is_empty());
        log.note("quiet", t0, String::new);
        assert!(log.due(t0 + INTERVAL).is_empty());
    }
}
