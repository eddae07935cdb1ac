//! A leading-edge throttle for progress signals.
//!
//! ```text
//! changes:   x         x x x x x x x x           x
//! sent:      x         x    x    x    x(final)   x
//!            |<quiet>| |<-100ms->|               |
//! ```
//! A change after a quiet period goes out at once (latency = one bus hop); during a burst at most
//! one update per interval goes out, carrying the latest state; the caller sends the final state
//! unconditionally. Pure: the caller passes the clock.

use std::time::{Duration, Instant};

/// The default interval: at most ~10 signals per second per account.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// What to do with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Publish now.
    Send,
    /// Publish at this instant (arm a timer), unless a timer is already armed for it.
    SendAt(Instant),
    /// A publish is already scheduled; it will carry this change.
    Pending,
}

/// Throttle state for one account.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    last_sent: Option<Instant>,
    scheduled: bool,
}

impl Throttle {
    #[must_use]
    pub fn new(interval: Duration) -> Self {
        Self { interval, last_sent: None, scheduled: false }
    }

    /// The state changed at `now`.
    pub fn changed(&mut self, now: Instant) -> Decision {
        if self.scheduled {
            return Decision::Pending;
        }
        match self.last_sent {
            Some(last) if now.duration_since(last) < self.interval => {
                self.scheduled = true;
                Decision::SendAt(last + self.interval)
            }
            _ => {
                self.last_sent = Some(now);
                Decision::Send
            }
        }
    }

    /// The armed timer fired at `now`: publish the latest state.
    pub fn fired(&mut self, now: Instant) {
        self.scheduled = false;
        self.last_sent = Some(now);
    }

    /// Something was published outside the throttle (a run's first state, which its caller
    /// publishes): the next change waits its interval, and a pending timer has nothing to send.
    pub fn sent(&mut self, now: Instant) {
        self.scheduled = false;
        self.last_sent = Some(now);
    }

    /// Whether a timer is armed.
    #[must_use]
    pub fn is_scheduled(&self) -> bool {
        self.scheduled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_and_isolated_changes_go_out_at_once() {
        let t0 = Instant::now();
        let mut t = Throttle::new(100 * MS);
        assert_eq!(t.changed(t0), Decision::Send);
        assert_eq!(t.changed(t0 + 150 * MS), Decision::Send);
        assert_eq!(t.changed(t0 + 5000 * MS), Decision::Send);
    }

    #[test]
    fn a_burst_is_coalesced_to_one_per_interval() {
        let t0 = Instant::now();
        let mut t = Throttle::new(100 * MS);
        assert_eq!(t.changed(t0), Decision::Send);
        assert_eq!(t.changed(t0 + MS), Decision::SendAt(t0 + 100 * MS));
        for i in 2..100 {
            assert_eq!(t.changed(t0 + i * MS), Decision::Pending);
        }
        t.fired(t0 + 100 * MS);
        assert!(!t.is_scheduled());
        assert_eq!(t.changed(t0 + 101 * MS), Decision::SendAt(t0 + 200 * MS));
    }

    #[test]
    fn simulated_stream_never_exceeds_the_rate() {
        // 3400 changes/s for 2 s (mbsync's measured burst rate), timers fire on time.
        let t0 = Instant::now();
        let mut t = Throttle::new(100 * MS);
        let mut sent = Vec::new();
        let mut timer: Option<Instant> = None;
        for i in 0..6800u64 {
            let now = t0 + Duration::from_micros(i * 294);
            if let Some(at) = timer.filter(|&at| at <= now) {
                t.fired(at);
                sent.push(at);
                timer = None;
            }
            match t.changed(now) {
                Decision::Send => sent.push(now),
                Decision::SendAt(at) => timer = Some(at),
                Decision::Pending => {}
            }
        }
        for pair in sent.windows(2) {
            assert!(pair[1] - pair[0] >= 100 * MS, "{:?}", pair[1] - pair[0]);
        }
        assert!((19..=21).contains(&sent.len()), "{} signals in 2 s", sent.len());
    }
}
