//! A circuit breaker: after repeated failures stop calling a server for a
//! while, then let one probe through to see whether it is back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive failures that open the circuit.
const THRESHOLD: u32 = 3;
/// First open period; doubles while probes keep failing.
const BASE: Duration = Duration::from_millis(500);
/// Longest open period. The host pings Redis itself at the end of each
/// period (`RedisStore::check_health`), so this bounds how long readiness
/// lags behind a Redis that came back.
const MAX: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum State {
    /// Calls pass; counting consecutive failures.
    Closed { failures: u32 },
    /// Calls refused until `until`.
    Open { until: Instant, period: Duration },
    /// One probe is out; others are refused until it reports.
    HalfOpen { period: Duration },
}

/// Thread-safe breaker state.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }
}

impl Breaker {
    /// Whether a call may go out now; `Err` says for how long it stays open.
    pub fn allow(&self) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *s {
            State::Closed { .. } => Ok(()),
            State::HalfOpen { .. } => Err(Duration::ZERO),
            State::Open { until, period } => {
                let now = Instant::now();
                if now >= until {
                    *s = State::HalfOpen { period };
                    Ok(())
                } else {
                    Err(until - now)
                }
            }
        }
    }

    /// Reports a call's result.
    pub fn record(&self, ok: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s = match (&*s, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < THRESHOLD => State::Closed {
                failures: failures + 1,
            },
            (State::Closed { .. }, false) => State::Open {
                until: Instant::now() + BASE,
                period: BASE,
            },
            (State::HalfOpen { period } | State::Open { period, .. }, false) => {
                let period = (*period * 2).min(MAX);
                State::Open {
                    until: Instant::now() + period,
                    period,
                }
            }
        };
    }

    /// Whether calls are currently refused.
    pub fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Closed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_and_probes_back() {
        let b = Breaker::default();
        for _ in 0..THRESHOLD {
            assert!(b.allow().is_ok());
            b.record(false);
        }
        assert!(b.allow().is_err(), "open after {THRESHOLD} failures");
        std::thread::sleep(BASE + Duration::from_millis(20));
        assert!(b.allow().is_ok(), "one probe after the open period");
        assert!(b.allow().is_err(), "only one probe at a time");
        b.record(true);
        assert!(b.allow().is_ok() && !b.is_open());
    }

    #[test]
    fn failed_probe_doubles_the_period() {
        let b = Breaker::default();
        for _ in 0..THRESHOLD {
            b.record(false);
        }
        std::thread::sleep(BASE + Duration::from_millis(20));
        assert!(b.allow().is_ok());
        b.record(false);
        let wait = b.allow().unwrap_err();
        assert!(wait > BASE && wait <= BASE * 2, "{wait:?}");
    }
}
