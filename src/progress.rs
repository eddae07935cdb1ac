//! The progress model: parser [`Event`]s in, the account's progress [`Record`] out.
//!
//! Pure: the caller passes the clock (`now_us`, unix microseconds), so the model is tested with
//! made-up times.
//!
//! # Theory of operation
//! mbsync's counters add up over every box and channel of a run, and their totals grow while it
//! runs: the box total grows per channel once both stores are listed, and a message total grows
//! when a box's messages are queued. So the record carries counts at once, and claims a
//! percentage and an ETA only once the totals are *settled*: the last channel is in its last box,
//! that box is past `Synchronizing...`, and the message total has not moved for a second. The rate (messages per
//! second) is measured over a sliding window of recent samples.

use std::collections::VecDeque;

use crate::parser::{Counter, Event, SideCounters, Stats};

/// The window over which the message rate is measured.
const RATE_WINDOW_US: u64 = 5_000_000;
/// The shortest span that gives a rate worth showing.
const MIN_RATE_SPAN_US: u64 = 500_000;
/// How long the message total must stay put before it counts as settled. IMAP pulls queue a
/// whole box within milliseconds; a Maildir far side or pushes into IMAP queue gradually.
const SETTLE_US: u64 = 1_000_000;

/// What an account is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum State {
    #[default]
    Idle,
    Syncing,
    Stopping,
    Stuck,
    External,
    Failed,
}

impl State {
    /// The word clients see.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Syncing => "syncing",
            Self::Stopping => "stopping",
            Self::Stuck => "stuck",
            Self::External => "external",
            Self::Failed => "failed",
        }
    }

    /// Whether an mbsync is (still) running in this state.
    #[must_use]
    pub fn is_running(self) -> bool {
        matches!(self, Self::Syncing | Self::Stopping | Self::Stuck | Self::External)
    }
}

/// Who runs the sync an account's record speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This service.
    Service,
    /// Another lock holder (an `exec` or a third-party client).
    Client,
    /// A bare mbsync that holds no lock name.
    Process,
}

impl Owner {
    /// The word clients see.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Client => "client",
            Self::Process => "process",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(String),
    Cancelled,
}

/// One account's progress, as published (DESIGN.md, "Progress record"). `None` = unknown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub state: State,
    pub owner: Option<Owner>,
    pub pid: Option<u32>,
    pub owner_pid: Option<u32>,
    pub command: Option<Vec<String>>,
    pub started_at: Option<u64>,
    pub last_update: Option<u64>,
    pub finished_at: Option<u64>,
    pub channel: Option<String>,
    pub channels: Option<Counter>,
    pub boxes: Option<Counter>,
    /// New messages moved in either direction (`+` of both sides): the "15/98" users know.
    pub messages: Option<Counter>,
    pub far: Option<SideCounters>,
    pub near: Option<SideCounters>,
    pub mailbox: Option<String>,
    pub operation: Option<String>,
    /// Messages per second over the last few seconds.
    pub rate: Option<f64>,
    pub eta_s: Option<u64>,
    /// 0–100, only once totals are settled.
    pub percent: Option<f64>,
    pub stuck: bool,
    /// `ok`, `failed` or `cancelled`, of the last finished run.
    pub last_result: Option<String>,
    pub last_error: Option<String>,
}

/// The model of one account's progress.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    record: Record,
    samples: VecDeque<(u64, u64)>,
    synchronizing: bool,
    /// When the message total last changed.
    total_changed_at: u64,
}

impl Progress {
    /// An idle account, optionally with the last result remembered from an earlier run.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The published record.
    #[must_use]
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Restore the last result from persisted state (kept across daemon restarts).
    pub fn restore_last(&mut self, result: Option<String>, error: Option<String>, at: Option<u64>) {
        self.record.last_result = result;
        self.record.last_error = error;
        self.record.finished_at = at;
        if self.record.last_result.as_deref() == Some("failed") {
            self.record.state = State::Failed;
        }
    }

    /// A supervised run starts: counters reset, the last result kept.
    pub fn start(&mut self, pid: u32, command: Vec<String>, now_us: u64) {
        let last_result = self.record.last_result.take();
        let last_error = self.record.last_error.take();
        let finished_at = self.record.finished_at.take();
        *self = Self::default();
        self.record = Record {
            state: State::Syncing,
            owner: Some(Owner::Service),
            pid: Some(pid),
            owner_pid: Some(std::process::id()),
            command: Some(command),
            started_at: Some(now_us),
            last_update: Some(now_us),
            operation: Some("Starting".into()),
            last_result,
            last_error,
            finished_at,
            ..Record::default()
        };
    }

    /// Apply one parser event. Returns whether the record changed. (Compares only what the
    /// event can touch: this runs for every one of mbsync's thousands of records.)
    pub fn apply(&mut self, event: &Event, now_us: u64) -> bool {
        let r = &mut self.record;
        let mut changed = match event {
            Event::Stats(stats) => {
                let before = (r.channels, r.boxes, r.far, r.near);
                self.apply_stats(stats, now_us);
                let r = &self.record;
                before != (r.channels, r.boxes, r.far, r.near)
            }
            Event::Channel(name) => {
                self.synchronizing = false;
                let changed = r.channel.as_deref() != Some(name.as_str()) || r.mailbox.is_some();
                r.channel = Some(name.clone());
                r.mailbox = None;
                changed
            }
            Event::Mailbox { side: _, name } => {
                self.synchronizing = false;
                let operation = format!("Opening {name}");
                let changed = r.mailbox.as_deref() != Some(name.as_str())
                    || r.operation.as_deref() != Some(operation.as_str());
                r.mailbox = Some(name.clone());
                r.operation = Some(operation);
                changed
            }
            Event::Operation(op) => {
                if op == "Synchronizing" {
                    self.synchronizing = true;
                }
                let changed = r.operation.as_deref() != Some(op.as_str());
                r.operation = Some(op.clone());
                changed
            }
            // Applied by the model from the next commit on.
            Event::Info(_) | Event::Summary(_) => false,
        };
        let r = &self.record;
        let estimates = (r.rate, r.eta_s, r.percent);
        self.update_estimates(now_us);
        let r = &self.record;
        changed |= estimates != (r.rate, r.eta_s, r.percent);
        if changed {
            self.record.last_update = Some(now_us);
        }
        changed
    }

    /// The run is being stopped (Cancel, shutdown).
    pub fn stopping(&mut self, now_us: u64) {
        self.record.state = State::Stopping;
        self.record.operation = Some("Stopping".into());
        self.record.last_update = Some(now_us);
    }

    /// The run ended: counters stay visible, rate and ETA go.
    pub fn finish(&mut self, outcome: &Outcome, now_us: u64) {
        let (state, result, error) = match outcome {
            Outcome::Ok => (State::Idle, "ok", None),
            Outcome::Cancelled => (State::Idle, "cancelled", None),
            Outcome::Failed(reason) => (State::Failed, "failed", Some(reason.clone())),
        };
        let r = &mut self.record;
        r.state = state;
        r.pid = None;
        r.owner = None;
        r.owner_pid = None;
        r.operation = None;
        r.rate = None;
        r.eta_s = None;
        r.stuck = false;
        r.last_result = Some(result.into());
        r.last_error = error;
        r.finished_at = Some(now_us);
        r.last_update = Some(now_us);
        if *outcome == Outcome::Ok {
            r.percent = Some(100.0);
        }
    }

    fn apply_stats(&mut self, s: &Stats, now_us: u64) {
        let r = &mut self.record;
        r.channels = Some(s.channels);
        r.boxes = Some(s.boxes);
        r.far = Some(s.far);
        r.near = Some(s.near);
        let messages =
            Counter { done: s.far.new.done + s.near.new.done, total: s.far.new.total + s.near.new.total };
        if r.messages.is_none_or(|m| m.total != messages.total) {
            self.total_changed_at = now_us;
        }
        r.messages = Some(messages);
        if self.samples.back().is_none_or(|&(_, done)| done != messages.done) {
            self.samples.push_back((now_us, messages.done));
        }
        while self.samples.len() > 2
            && self.samples.front().is_some_and(|&(t, _)| now_us.saturating_sub(t) > RATE_WINDOW_US)
        {
            self.samples.pop_front();
        }
        if s.boxes.done >= s.boxes.total && s.boxes.total > 0 {
            // All boxes listed so far are done: whatever comes next is a new box.
            self.synchronizing = false;
        }
    }

    fn settled(&self, now_us: u64) -> bool {
        let (Some(c), Some(b)) = (self.record.channels, self.record.boxes) else {
            return false;
        };
        self.synchronizing
            && now_us.saturating_sub(self.total_changed_at) >= SETTLE_US
            && c.total > 0
            && c.done + 1 >= c.total
            && b.total > 0
            && b.done + 1 >= b.total
    }

    fn update_estimates(&mut self, now_us: u64) {
        let rate = match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, d0)), Some(&(_, d1))) if now_us.saturating_sub(t0) >= MIN_RATE_SPAN_US => {
                Some((d1 - d0.min(d1)) as f64 * 1e6 / (now_us - t0) as f64)
            }
            _ => None,
        };
        self.record.rate = rate.map(|r| (r * 10.0).round() / 10.0);
        let settled = self.settled(now_us);
        let messages = self.record.messages.unwrap_or_default();
        self.record.percent = (settled && messages.total > 0)
            .then(|| (messages.done as f64 * 1000.0 / messages.total as f64).round() / 10.0);
        self.record.eta_s = match rate {
            Some(r) if settled && r > 0.0 => {
                Some(((messages.total.saturating_sub(messages.done)) as f64 / r).ceil() as u64)
            }
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::Side;

    fn stats(c: (u64, u64), b: (u64, u64), near_new: (u64, u64)) -> Event {
        Event::Stats(Stats {
            channels: Counter { done: c.0, total: c.1 },
            boxes: Counter { done: b.0, total: b.1 },
            far: SideCounters::default(),
            near: SideCounters {
                new: Counter { done: near_new.0, total: near_new.1 },
                ..SideCounters::default()
            },
        })
    }

    fn started() -> Progress {
        let mut p = Progress::new();
        p.start(42, vec!["mbsync".into(), "alice".into()], 1_000_000);
        p
    }

    #[test]
    fn start_sets_owner_pid_and_command() {
        let p = started();
        let r = p.record();
        assert_eq!(r.state, State::Syncing);
        assert_eq!(r.owner, Some(Owner::Service));
        assert_eq!(r.pid, Some(42));
        assert_eq!(r.started_at, Some(1_000_000));
        assert_eq!(r.command.as_deref().map(<[String]>::len), Some(2));
    }

    #[test]
    fn counts_come_at_once_and_percent_only_when_settled() {
        let mut p = started();
        assert!(p.apply(&stats((0, 2), (0, 3), (15, 98)), 1_100_000));
        let r = p.record();
        assert_eq!(r.messages, Some(Counter { done: 15, total: 98 }));
        assert_eq!(r.percent, None, "first channel of two: totals still grow");
        assert_eq!(r.eta_s, None);
        // Last channel, last box, synchronizing: settled.
        p.apply(&Event::Channel("bob".into()), 1_200_000);
        p.apply(&stats((1, 2), (3, 4), (100, 120)), 1_300_000);
        p.apply(&Event::Mailbox { side: Side::Far, name: "INBOX".into() }, 1_300_000);
        p.apply(&Event::Operation("Synchronizing".into()), 1_300_000);
        p.apply(&stats((1, 2), (3, 4), (110, 120)), 1_400_000);
        assert_eq!(p.record().percent, None, "the total just moved");
        p.apply(&stats((1, 2), (3, 4), (116, 120)), 1_800_000);
        assert_eq!(p.record().percent, None, "the total may still move");
        p.apply(&stats((1, 2), (3, 4), (118, 120)), 2_300_000);
        let r = p.record();
        assert_eq!(r.percent, Some(98.3));
        assert_eq!(r.mailbox.as_deref(), Some("INBOX"));
        assert_eq!(r.channel.as_deref(), Some("bob"));
    }

    #[test]
    fn rate_and_eta_from_the_window() {
        let mut p = started();
        p.apply(&Event::Operation("Synchronizing".into()), 1_000_000);
        for i in 0..=15u64 {
            // 10 messages per 100 ms = 100 msg/s, 1000 to do.
            p.apply(&stats((0, 1), (0, 1), (i * 10, 1000)), 1_000_000 + i * 100_000);
        }
        let r = p.record();
        assert_eq!(r.rate, Some(100.0));
        assert_eq!(r.eta_s, Some(9)); // 850 left at 100/s
        assert_eq!(r.percent, Some(15.0));
    }

    #[test]
    fn no_rate_before_half_a_second() {
        let mut p = started();
        p.apply(&stats((0, 1), (0, 1), (0, 10)), 1_000_000);
        p.apply(&stats((0, 1), (0, 1), (5, 10)), 1_200_000);
        assert_eq!(p.record().rate, None);
    }

    #[test]
    fn info_lines_change_nothing() {
        let mut p = started();
        assert!(!p.apply(&Event::Info("Maildir notice: x".into()), 2_000_000));
        assert_eq!(p.record().last_update, Some(1_000_000));
    }

    #[test]
    fn finish_keeps_counts_and_records_the_outcome() {
        let mut p = started();
        p.apply(&stats((1, 1), (1, 1), (98, 98)), 1_500_000);
        p.finish(&Outcome::Failed("IMAP error: unexpected EOF".into()), 2_000_000);
        let r = p.record();
        assert_eq!(r.state, State::Failed);
        assert_eq!(r.pid, None);
        assert_eq!(r.messages, Some(Counter { done: 98, total: 98 }));
        assert_eq!(r.last_result.as_deref(), Some("failed"));
        assert_eq!(r.last_error.as_deref(), Some("IMAP error: unexpected EOF"));
        // The next run keeps the last result until it ends.
        p.start(43, vec![], 3_000_000);
        assert_eq!(p.record().last_result.as_deref(), Some("failed"));
        assert_eq!(p.record().messages, None);
        p.finish(&Outcome::Ok, 4_000_000);
        assert_eq!(p.record().state, State::Idle);
        assert_eq!(p.record().last_error, None);
    }
}
