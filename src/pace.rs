//! When to read mbsync's pty while its output is held for a throttled publish.
//!
//! Held output must still be read, or mbsync blocks on a full pty (it takes ~18 KB, measured on
//! Linux 6.18). But a pty watched by the runtime's reactor wakes the daemon at every write, and
//! isync 1.4 writes two records per message. So while holding, the pty is read on a timer paced
//! to mbsync's measured rate (at least every 50 ms), read again at once while it comes back
//! nearly full (isync 1.4 queueing a box prints megabytes per second for a moment), and watched
//! only while mbsync is quiet or has just printed a line (a `-V` step: opening, loading,
//! synchronizing a box, after which isync 1.4 queues the box's messages), so the first write of
//! a burst is seen at once and measured. Pure: the caller passes the clock.

use std::time::{Duration, Instant};

/// A read is due before this much can pile up at the measured rate: half of what a pty takes,
/// room for the rate to double between two reads.
const HOLD_FILL: f64 = 8.0 * 1024.0;
/// A read this large found the pty nearly full: mbsync may be waiting on it.
pub const NEARLY_FULL: usize = 12 * 1024;
/// The shortest gap between two timed reads (the runtime's timers tick in milliseconds).
const MIN_GAP: Duration = Duration::from_millis(1);
/// The longest gap between two timed reads: a burst that starts in it waits at most this long on
/// the full pty. isync 1.4 queues a box right after a step line, which is watched for instead
/// (see [`Plan::Watch`]), so this bounds only bursts that no line announces. Two reads per
/// 100 ms hold, not four at 30 ms: each costs a wakeup and a `timerfd_settime`, which alone took a
/// tenth of the daemon's samples in a profile on a VM.
const MAX_GAP: Duration = Duration::from_millis(50);
/// After the first write of a burst woke the daemon, the gap over which its rate is measured.
const FIRST_GAP: Duration = Duration::from_millis(2);

/// What to do while holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Let the reactor wake the daemon at the next write: mbsync is quiet.
    Watch,
    /// Read at this instant, with the pty not watched.
    ReadAt(Instant),
}

/// What the last read found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Last {
    /// Nothing (or nothing was read yet).
    #[default]
    Quiet,
    /// The first write after a quiet spell, seen by the reactor.
    Woke,
    /// Output, at a measured rate.
    Output,
    /// The pty nearly full.
    Full,
}

/// mbsync's output rate, measured from the reads.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    /// When the pty was last read or its output handed over: the start of the current gap.
    since: Option<Instant>,
    /// Bytes per second over the last timed gap.
    rate: f64,
    last: Last,
    /// The last read that found output held a line of mbsync's: a box's burst may come next.
    step: bool,
}

impl Pace {
    /// How to wait for output while it is held until `due`.
    #[must_use]
    pub fn plan(&self, now: Instant, due: Instant) -> Plan {
        let since = self.since.unwrap_or(now);
        let gap = match self.last {
            Last::Full => Duration::ZERO,
            // A timed read up to `MAX_GAP` away would leave a burst that starts now blocked on
            // the full pty until then (measured with a 30 ms gap: ~30 ms per box, most of a
            // small sync's time).
            _ if self.step => return Plan::Watch,
            Last::Woke => FIRST_GAP,
            Last::Output if self.rate > 0.0 => {
                Duration::from_secs_f64(HOLD_FILL / self.rate).clamp(MIN_GAP, MAX_GAP)
            }
            Last::Quiet | Last::Output => return Plan::Watch,
        };
        Plan::ReadAt((since + gap).min(due).max(now))
    }

    /// `bytes` were read at `now`; `woke` if the reactor's wakeup at a write led to the read;
    /// `line` if they held a line end (progress records end in `\r`, mbsync's other lines in
    /// `\n`).
    pub fn read(&mut self, now: Instant, bytes: usize, woke: bool, line: bool) {
        if let Some(since) = self.since {
            let secs = now.saturating_duration_since(since).as_secs_f64();
            // A read right after another says nothing of the rate, nor that mbsync is quiet.
            // After a nearly full read it says the pty was drained for now: the rate is then
            // measured anew over the short gap, as after a first write, rather than read again
            // at once (a syscall trace showed empty reads, each with a new timer, for up to a
            // millisecond at every burst) or after a gap at a rate the full pty capped.
            if secs < 0.001 && bytes == 0 {
                if self.last == Last::Full {
                    self.last = Last::Woke;
                }
                return;
            }
            // A wakeup ends a wait, not a measured gap.
            if !woke && secs >= 0.001 {
                self.rate = bytes as f64 / secs;
            }
        }
        if bytes > 0 {
            self.step = line;
        }
        self.last = match bytes {
            0 => Last::Quiet,
            n if n >= NEARLY_FULL => Last::Full,
            _ if woke => Last::Woke,
            _ => Last::Output,
        };
        self.since = Some(now);
    }

    /// The output read so far went out at `now`: the next gap starts.
    pub fn handed_over(&mut self, now: Instant) {
        self.since = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// A pace that a first write (60 bytes, seen by the reactor) woke at `t0`.
    fn woken_at(t0: Instant) -> Pace {
        let mut pace = Pace::default();
        pace.read(t0, 60, true, false);
        pace
    }

    #[test]
    fn a_quiet_mbsync_is_watched() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        assert_eq!(pace.plan(t0, ms(t0, 100)), Plan::Watch);
        pace.read(ms(t0, 20), 0, false, false);
        assert_eq!(pace.plan(ms(t0, 20), ms(t0, 100)), Plan::Watch);
    }

    #[test]
    fn a_first_write_is_measured_over_a_short_gap() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        pace.read(ms(t0, 30), 60, true, false);
        assert_eq!(pace.plan(ms(t0, 30), ms(t0, 100)), Plan::ReadAt(ms(t0, 32)));
    }

    #[test]
    fn steady_output_is_read_before_half_a_pty_piles_up() {
        let t0 = Instant::now();
        let mut pace = woken_at(t0);
        // 400 KB/s: 4 KB in 10 ms; 8 KB take ~20 ms.
        pace.read(ms(t0, 10), 4000, false, false);
        let Plan::ReadAt(at) = pace.plan(ms(t0, 10), ms(t0, 200)) else { panic!("not timed") };
        assert!((ms(t0, 29)..ms(t0, 32)).contains(&at), "{:?}", at - t0);
        // Never past the hold's end.
        assert_eq!(pace.plan(ms(t0, 10), ms(t0, 20)), Plan::ReadAt(ms(t0, 20)));
        // The gap starts again when the output is handed over.
        pace.handed_over(ms(t0, 20));
        let Plan::ReadAt(at) = pace.plan(ms(t0, 20), ms(t0, 300)) else { panic!("not timed") };
        assert!((ms(t0, 39)..ms(t0, 42)).contains(&at), "{:?}", at - t0);
    }

    #[test]
    fn a_slow_writer_is_still_read_often_enough_for_a_burst() {
        let t0 = Instant::now();
        let mut pace = woken_at(t0);
        // isync 1.4's ~120 KB/s would allow ~68 ms; a box's queue burst may start at any time.
        pace.read(ms(t0, 20), 2400, false, false);
        assert_eq!(pace.plan(ms(t0, 20), ms(t0, 200)), Plan::ReadAt(ms(t0, 20) + MAX_GAP));
    }

    #[test]
    fn a_nearly_full_pty_is_read_again_at_once() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        pace.read(ms(t0, 5), NEARLY_FULL + 100, false, false);
        assert_eq!(pace.plan(ms(t0, 5), ms(t0, 100)), Plan::ReadAt(ms(t0, 5)));
        // A fast burst (4 MB/s) is read every few milliseconds after that.
        pace.read(ms(t0, 7), 8000, false, false);
        let Plan::ReadAt(at) = pace.plan(ms(t0, 7), ms(t0, 100)) else { panic!("not timed") };
        assert!(at - ms(t0, 7) <= Duration::from_millis(3), "{:?}", at - t0);
    }

    #[test]
    fn a_drained_pty_is_not_read_again_at_once() {
        let t0 = Instant::now();
        let mut pace = woken_at(t0);
        pace.read(ms(t0, 2), 8000, false, false);
        pace.read(ms(t0, 3), NEARLY_FULL + 100, false, false);
        assert_eq!(pace.plan(ms(t0, 3), ms(t0, 100)), Plan::ReadAt(ms(t0, 3)));
        // Empty right after: the next read is a gap away, not at once again.
        let now = ms(t0, 3) + Duration::from_micros(30);
        pace.read(now, 0, false, false);
        assert_eq!(pace.plan(now, ms(t0, 100)), Plan::ReadAt(ms(t0, 3) + FIRST_GAP));
    }

    #[test]
    fn after_a_line_the_next_write_is_watched_for() {
        let t0 = Instant::now();
        let mut pace = woken_at(t0);
        pace.read(ms(t0, 10), 1200, false, false);
        assert!(matches!(pace.plan(ms(t0, 10), ms(t0, 100)), Plan::ReadAt(_)));
        // "Synchronizing...": isync 1.4 queues the box next, at megabytes a second.
        pace.read(ms(t0, 40), 300, false, true);
        assert_eq!(pace.plan(ms(t0, 40), ms(t0, 100)), Plan::Watch);
        // The burst's first write wakes the run and is measured over the short gap.
        pace.read(ms(t0, 45), 4000, true, false);
        assert_eq!(pace.plan(ms(t0, 45), ms(t0, 100)), Plan::ReadAt(ms(t0, 45) + FIRST_GAP));
        // A line read with a burst behind it: the full pty comes first.
        pace.read(ms(t0, 50), NEARLY_FULL, false, true);
        assert_eq!(pace.plan(ms(t0, 50), ms(t0, 100)), Plan::ReadAt(ms(t0, 50)));
    }

    #[test]
    fn a_read_right_after_another_keeps_the_rate() {
        let t0 = Instant::now();
        let mut pace = woken_at(t0);
        pace.read(ms(t0, 10), 1200, false, false);
        let before = pace.plan(ms(t0, 10), ms(t0, 500));
        pace.read(ms(t0, 10), 100, false, false);
        assert_eq!(pace.plan(ms(t0, 10), ms(t0, 500)), before);
        // Nor does an empty one say mbsync went quiet.
        pace.read(ms(t0, 10), 0, false, false);
        assert_eq!(pace.plan(ms(t0, 10), ms(t0, 500)), before);
    }
}
