//! One mbsync run's lifecycle: read its output into a progress model, publish through the
//! leading-edge throttle, stop it safely when asked, and end when it is reaped. The daemon's core
//! and the `exec` lock holder both drive their mbsync with [`drive`]: one code path.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until},
};

use crate::{
    alarm::Alarm,
    parser::{Event, Parser},
    progress::Outcome,
    runner::{Exit, Mbsync, Output},
    throttle::{self, Decision, Throttle},
};

/// Why a run is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A user's Cancel.
    Cancel,
    /// The process that owns the run is shutting down (SIGTERM, logout, upgrade).
    Shutdown,
    /// Its lock name was taken away (a forced takeover).
    LockLost,
    /// The lock holder was asked to hand over gracefully.
    Handoff,
    /// Stop, then start again (a stuck sync's "Restart").
    Restart,
}

/// Where a run's progress goes: a model behind the caller's own lock, and a publisher.
pub trait Sink {
    /// Feed parsed events into the model; whether the record changed.
    fn apply(&self, events: &mut Vec<Event>) -> bool;
    /// The run is being stopped: mark the model.
    fn stopping(&self);
    /// The run stalled (nothing on its output for the stall timeout), or moves again after a
    /// stall: mark the model. The caller publishes.
    fn stalled(&self, stalled: bool);
    /// Publish the model's current record.
    fn publish(&self);
}

/// How a driven run ended.
#[derive(Debug)]
pub struct Ended {
    pub exit: Exit,
    /// The first stop request, if any came before mbsync exited.
    pub stopped: Option<Stop>,
}

impl Ended {
    /// The outcome users see. mbsync's exit code 0 is a success even if a stop raced with its
    /// end; a stopped run is no failure: mbsync's journal makes the stop safe.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self.stopped {
            _ if self.exit.success() => Outcome::Ok,
            Some(Stop::Shutdown | Stop::Handoff | Stop::Restart) => Outcome::Interrupted,
            Some(Stop::Cancel | Stop::LockLost) => Outcome::Cancelled,
            None => Outcome::Failed(self.exit.reason()),
        }
    }
}

/// How a run is driven.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Between SIGTERM and SIGKILL when stopping.
    pub grace: Duration,
    /// Nothing on mbsync's output for this long: the run is stuck.
    pub stall: Duration,
}

/// Drive `mbsync` to its end: parse its output into `sink`, publish at most once per throttle
/// interval (the first state is assumed published by the caller), and on the first message from
/// `stop` send SIGTERM to its process group, SIGKILL after the grace period.
///
/// The stall watch is one timer per run that fires at most once per stall timeout: output only
/// records when it came, and the timer, when it fires early, is moved to the new deadline.
pub async fn drive(
    mbsync: &mut Mbsync,
    sink: &impl Sink,
    stop: &mut mpsc::UnboundedReceiver<Stop>,
    limits: Limits,
) -> Ended {
    let mut parser = Parser::new();
    let mut events = Vec::new();
    let mut throttle = Throttle::new(throttle::DEFAULT_INTERVAL);
    let mut publish_at: Option<Instant> = None;
    // Moved at nearly every publish: a timerfd, not the runtime's timer wheel (see `alarm`).
    let mut publish_alarm = Alarm::new();
    let mut kill_at: Option<Instant> = None;
    let mut stopped = None;
    let started = Instant::now();
    throttle.sent(started.into_std());
    mbsync.hold_until(Some(started + throttle::DEFAULT_INTERVAL));
    let mut moved_at = started;
    let stall_check = tokio::time::sleep_until(moved_at + limits.stall);
    tokio::pin!(stall_check);
    let mut stuck = false;
    let exit = loop {
        publish_alarm.set(publish_at);
        // Biased: a stop is acted on first, and a due publish runs before more output is read
        // (it takes what is held itself). Should the hold's end hand the output over first (the
        // publish timer ticks on the next millisecond), the throttle answers `Pending` and the
        // publish carries it all the same.
        tokio::select! {
            biased;
            Some(reason) = stop.recv(), if stopped.is_none() => {
                stopped = Some(reason);
                tracing::info!(pid = mbsync.pid(), ?reason, "stopping mbsync");
                mbsync.signal(Signal::SIGTERM);
                kill_at = Some(Instant::now() + limits.grace);
                sink.stopping();
                // What a stopped mbsync still prints goes out as it comes.
                mbsync.hold_until(None);
                changed(&mut throttle, &mut publish_at, sink, mbsync, false);
            }
            () = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                kill_at = None;
                tracing::warn!(pid = mbsync.pid(), "mbsync ignored SIGTERM; killing it");
                mbsync.signal(Signal::SIGKILL);
            }
            () = publish_alarm.wait(), if publish_at.is_some() => {
                publish_at = None;
                // The publish carries what the pty holds now (up to a short read), not only what the
                // last paced read found.
                if let Some(bytes) = mbsync.take_held() {
                    moved_at = Instant::now();
                    parser.feed_latest(&bytes, &mut events);
                    mbsync.recycle(bytes);
                    sink.apply(&mut events);
                }
                let now = Instant::now();
                throttle.fired(now.into_std());
                sink.publish();
                if stopped.is_none() {
                    mbsync.hold_until(Some(now + throttle::DEFAULT_INTERVAL));
                }
            }
            () = &mut stall_check, if !stuck => {
                let deadline = moved_at + limits.stall;
                if Instant::now() >= deadline {
                    stuck = true;
                    tracing::info!(pid = mbsync.pid(), "mbsync has not moved for {:?}", limits.stall);
                    sink.stalled(true);
                    changed(&mut throttle, &mut publish_at, sink, mbsync, stopped.is_none());
                } else {
                    stall_check.as_mut().reset(deadline);
                }
            }
            out = mbsync.next() => match out {
                Output::Stdout(bytes) => {
                    moved_at = Instant::now();
                    let mut moved = false;
                    if stuck {
                        stuck = false;
                        stall_check.as_mut().reset(moved_at + limits.stall);
                        sink.stalled(false);
                        moved = true;
                    }
                    parser.feed_latest(&bytes, &mut events);
                    mbsync.recycle(bytes);
                    if sink.apply(&mut events) | moved {
                        changed(&mut throttle, &mut publish_at, sink, mbsync, stopped.is_none());
                    }
                }
                Output::Exited(exit) => {
                    parser.finish(&mut events);
                    sink.apply(&mut events);
                    break exit;
                }
            },
        }
    };
    Ended { exit, stopped }
}

/// The record changed: publish it now, or at the throttle's next slot (a stop, a stall, and the
/// end of a stall too: one signal per interval, whatever changed). With `hold`, mbsync's output
/// is held until the next publish (see [`Mbsync::hold_until`]).
fn changed(
    throttle: &mut Throttle,
    publish_at: &mut Option<Instant>,
    sink: &impl Sink,
    mbsync: &mut Mbsync,
    hold: bool,
) {
    let now = Instant::now();
    match throttle.changed(now.into_std()) {
        Decision::Send => {
            sink.publish();
            if hold {
                mbsync.hold_until(Some(now + throttle::DEFAULT_INTERVAL));
            }
        }
        Decision::SendAt(at) => {
            *publish_at = Some(at.into());
            if hold {
                mbsync.hold_until(*publish_at);
            }
        }
        Decision::Pending => {}
    }
}
