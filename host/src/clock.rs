//! Time as components, the cache and the dispatcher see it: the system's,
//! or a virtual clock driven by event time (replay and the test harness),
//! so the same input gives the same output.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The time source of a host or a replay.
#[derive(Clone, Default)]
pub enum Clock {
    /// Wall and monotonic time of this machine; sleeps really wait.
    #[default]
    System,
    /// Time moves only when told to: to each event's time, and by the
    /// length of every sleep (a backoff takes no real time).
    Virtual(VirtualClock),
}

/// A shared virtual clock, in nanoseconds since the Unix epoch.
#[derive(Clone, Default)]
pub struct VirtualClock {
    ns: Arc<AtomicU64>,
}

fn ns_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl VirtualClock {
    /// A clock showing `t`.
    pub fn starting_at(t: SystemTime) -> Self {
        VirtualClock {
            ns: Arc::new(AtomicU64::new(ns_since_epoch(t))),
        }
    }

    /// Moves the clock to `t` unless it already shows a later time (time
    /// never goes back: an event older than a retry's backoff keeps it).
    pub fn advance_to(&self, t: SystemTime) {
        self.ns.fetch_max(ns_since_epoch(t), Ordering::AcqRel);
    }

    /// Moves the clock forward by `d`.
    pub fn advance_by(&self, d: Duration) {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(d))
            });
    }

    /// Nanoseconds since the Unix epoch.
    pub fn ns(&self) -> u64 {
        self.ns.load(Ordering::Acquire)
    }

    /// The time it shows.
    pub fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.ns())
    }
}

/// The instant monotonic nanoseconds count from, for the system clock.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl Clock {
    /// Wall-clock time.
    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Virtual(v) => v.now(),
        }
    }

    /// Monotonic nanoseconds (from an arbitrary origin): for TTLs and rates.
    pub fn mono_ns(&self) -> u64 {
        match self {
            Clock::System => u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX),
            Clock::Virtual(v) => v.ns(),
        }
    }

    /// Waits `d`: really on the system clock, by moving a virtual one.
    pub async fn sleep(&self, d: Duration) {
        match self {
            Clock::System => tokio::time::sleep(d).await,
            Clock::Virtual(v) => v.advance_by(d),
        }
    }

    /// Whether time is virtual (replay, tests): the host then also makes
    /// everything else that could differ between runs deterministic.
    pub fn is_virtual(&self) -> bool {
        matches!(self, Clock::Virtual(_))
    }
}

/// `wasi:clocks/wall-clock` on a virtual clock.
pub(crate) struct WasiWallClock(pub VirtualClock);

impl wasmtime_wasi::HostWallClock for WasiWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.ns())
    }
}

/// `wasi:clocks/monotonic-clock` on a virtual clock.
pub(crate) struct WasiMonotonicClock(pub VirtualClock);

impl wasmtime_wasi::HostMonotonicClock for WasiMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn virtual_time_moves_only_when_told() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_753_862_400);
        let v = VirtualClock::starting_at(t0);
        let c = Clock::Virtual(v.clone());
        assert_eq!(c.now(), t0);
        c.sleep(Duration::from_millis(40)).await;
        assert_eq!(c.now(), t0 + Duration::from_millis(40));
        v.advance_to(t0);
        assert_eq!(c.now(), t0 + Duration::from_millis(40), "never back");
        v.advance_to(t0 + Duration::from_secs(1));
        assert_eq!(c.mono_ns() - 1_753_862_400_000_000_000, 1_000_000_000);
    }
}
