//! A one-shot alarm on its own timerfd, for the deadlines a running sync moves every few
//! milliseconds (the next paced read of the pty, the next throttled publish).
//!
//! tokio's timer wheel would serve them at a cost measured through a sync: the runtime woke every
//! 64.0 ms with nothing to do (a deadline that lies past a 64 ms slot boundary is first moved to
//! a finer slot at that boundary: ~15 wakeups a second, a quarter of the daemon's), and each
//! deadline set earlier than the wheel's next one woke the runtime's own driver through an
//! eventfd. A timerfd wakes once, at its deadline; moving it is one `timerfd_settime`.

use std::time::Duration;

use nix::sys::{
    time::TimeSpec,
    timer::Expiration,
    timerfd::{ClockId, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::{io::unix::AsyncFd, time::Instant};

/// An `AsRawFd` for tokio's `AsyncFd`.
struct Fd(TimerFd);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsFd::as_fd(&self.0).as_raw_fd()
    }
}

/// One deadline at a time; [`Alarm::set`] moves it, [`Alarm::wait`] waits for it.
pub struct Alarm {
    /// `None` if no timerfd could be made or watched: tokio's timer stands in.
    fd: Option<AsyncFd<Fd>>,
    /// The deadline the timerfd is set to, until it fires.
    armed: Option<Instant>,
}

impl std::fmt::Debug for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alarm").field("timerfd", &self.fd.is_some()).field("armed", &self.armed).finish()
    }
}

impl Default for Alarm {
    fn default() -> Self {
        Self::new()
    }
}

impl Alarm {
    /// A new alarm, not set. Must be called within the tokio runtime.
    #[must_use]
    pub fn new() -> Self {
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)
            .map_err(std::io::Error::from)
            .and_then(|fd| crate::process::register(Fd(fd)));
        let fd = fd.map_err(|err| tracing::debug!(%err, "no timerfd; using the runtime's timer")).ok();
        Self { fd, armed: None }
    }

    /// Go off at `deadline` (at once if it has passed), or never with `None`. A system call only
    /// when the deadline changes: the caller may set the same one at every turn of its loop.
    pub fn set(&mut self, deadline: Option<Instant>) {
        if self.armed == deadline {
            return;
        }
        self.armed = deadline;
        let Some(fd) = &self.fd else { return };
        let timer = &fd.get_ref().0;
        let result = match deadline {
            // Relative to now: tokio's `Instant` is CLOCK_MONOTONIC too, but keeps its seconds
            // private. Zero would disarm the timer; a passed deadline fires at once instead.
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1));
                timer.set(Expiration::OneShot(TimeSpec::from_duration(left)), TimerSetTimeFlags::empty())
            }
            None => timer.unset(),
        };
        if let Err(err) = result {
            // Not expected for a valid timerfd; tokio's timer stands in from here on.
            tracing::warn!(%err, "cannot set a timerfd; using the runtime's timer");
            self.fd = None;
        }
    }

    /// Wait until the deadline set. Pending forever if none is set. Cancel-safe: the deadline
    /// stays set.
    pub async fn wait(&mut self) {
        let Some(deadline) = self.armed else { return std::future::pending().await };
        let Some(fd) = &self.fd else {
            tokio::time::sleep_until(deadline).await;
            self.armed = None;
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable().await else {
                // The reactor is gone (the runtime shuts down): nothing will run after this.
                return std::future::pending().await;
            };
            let mut ticks = [0u8; 8];
            match guard
                .try_io(|fd| nix::unistd::read(&fd.get_ref().0, &mut ticks).map_err(std::io::Error::from))
            {
                // A one-shot timer is quiet until set again: without this the next wait would
                // first read it once more, in vain.
                Ok(_) => {
                    guard.clear_ready();
                    break;
                }
                // Readiness left over from an earlier deadline (moving the timer resets it).
                Err(_would_block) => {}
            }
        }
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wait for `alarm`; it must not have gone off before `ms` after `start`.
    async fn went_off_after(alarm: &mut Alarm, start: Instant, ms: u64) {
        alarm.wait().await;
        assert!(start.elapsed() >= Duration::from_millis(ms), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn goes_off_at_its_deadline_not_before() {
        let mut alarm = Alarm::new();
        assert!(alarm.fd.is_some(), "a timerfd on Linux");
        let start = Instant::now();
        alarm.set(Some(start + Duration::from_millis(30)));
        went_off_after(&mut alarm, start, 30).await;
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn goes_off_again_when_set_again_after_going_off() {
        let mut alarm = Alarm::new();
        let start = Instant::now();
        alarm.set(Some(start + Duration::from_millis(5)));
        went_off_after(&mut alarm, start, 5).await;
        // Its readiness was cleared at the first: the second wait waits for the new deadline.
        let again = Instant::now();
        alarm.set(Some(again + Duration::from_millis(20)));
        went_off_after(&mut alarm, again, 20).await;
    }

    #[tokio::test]
    async fn a_moved_deadline_replaces_the_old_one() {
        let mut alarm = Alarm::new();
        let start = Instant::now();
        alarm.set(Some(start + Duration::from_millis(5)));
        alarm.set(Some(start + Duration::from_millis(60)));
        went_off_after(&mut alarm, start, 60).await;
    }

    #[tokio::test]
    async fn a_stale_expiry_does_not_end_the_next_wait() {
        let mut alarm = Alarm::new();
        // Set, left to expire unwaited (a select took another branch), then moved on.
        alarm.set(Some(Instant::now() + Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        tokio::task::yield_now().await;
        let start = Instant::now();
        alarm.set(Some(start + Duration::from_millis(40)));
        went_off_after(&mut alarm, start, 40).await;
    }

    #[tokio::test]
    async fn a_passed_deadline_fires_at_once_and_none_never() {
        let mut alarm = Alarm::new();
        alarm.set(Some(Instant::now().checked_sub(Duration::from_millis(5)).unwrap()));
        tokio::time::timeout(Duration::from_millis(500), alarm.wait()).await.expect("fires at once");
        alarm.set(Some(Instant::now() + Duration::from_millis(5)));
        alarm.set(None);
        let waited = tokio::time::timeout(Duration::from_millis(50), alarm.wait()).await;
        assert!(waited.is_err(), "an unset alarm never goes off");
    }
}
