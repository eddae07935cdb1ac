//! The progress model: parser [`Event`]s in, the account's progress [`Record`] out.
//!
//! Pure: the caller passes the clock (`now_us`, unix microseconds), so the model is tested with
//! made-up times.
//!
//! # Theory of operation
//! mbsync's counters add up over every box and channel of a run, and their totals grow while it
//! runs: the box total grows per channel once both stores are listed, and a message total grows
//! when a box's messages are queued, after its `Synchronizing...`. So the record carries counts
//! at once, and claims a percentage and an ETA only once the totals are *settled*: the last
//! channel is in its last box, that box is past `Synchronizing...` *and has queued messages
//! since* (until then the total is the previous boxes', complete but not final), and the message
//! total has not moved for a second. "Its last box" counts the boxes that said
//! `Synchronizing...` (`-V`) against the box total, not the boxes done: a finished box is counted
//! done before the next one opens, and isync 1.5 may show that count late. Every record mbsync
//! prints carries its counters as they are at that moment, so the records after a
//! `Synchronizing...` speak of that box or later. The rate (messages per second) is measured over
//! a sliding window of recent samples.
//!
//! `percent` is what a progress bar shows, so it only goes forward within a run: it is below 100
//! (at most [`MAX_RUNNING_PERCENT`]) until the run ends, and 100 only when it ends with
//! [`Outcome::Ok`]. Once shown it stays until the run ends; if the total grows after all (a push
//! into IMAP queues gradually), it holds its value until the real fraction passes it instead of
//! going down, while the counts show the new total at once. A failed or cancelled run keeps the
//! last value.
//!
//! How a run's counts end: isync 1.4 prints every change, so its last record is final. isync
//! 1.5 prints records at most every ~300 ms and ends with a summary of the *done* counts
//! ([`Event::Summary`]), which replaces the done counts of the last record (the totals only grow
//! to match). A run that exits 0 has synced every channel and box, so then those are all done
//! too (isync 1.5 prints no summary when no box was synced, leaving `C: 0/1`).

use std::collections::VecDeque;

use crate::parser::{Counter, Event, SideCounters, Stats, Summary};

/// The window over which the message rate is measured.
const RATE_WINDOW_US: u64 = 5_000_000;
/// The shortest span that gives a rate worth showing.
const MIN_RATE_SPAN_US: u64 = 500_000;
/// How long the message total must stay put before it counts as settled. IMAP pulls queue a
/// whole box within milliseconds; a Maildir far side or pushes into IMAP queue gradually.
const SETTLE_US: u64 = 1_000_000;
/// The highest `percent` of a run that has not ended: 100 means done, and only the end says so.
pub const MAX_RUNNING_PERCENT: f64 = 99.9;

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
    /// Stopped by a shutdown or handed over: resumed later, never a failure.
    Interrupted,
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
    /// An external sync running longer than `auto_takeover_timeout` (the seed's "likely stuck").
    pub overdue: bool,
    /// `ok`, `failed` or `cancelled`, of the last finished run.
    pub last_result: Option<String>,
    pub last_error: Option<String>,
}

/// The model of one account's progress.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    record: Record,
    samples: VecDeque<(u64, u64)>,
    /// The box in work is past `Synchronizing...`.
    synchronizing: bool,
    /// How many boxes said `Synchronizing...` in this run: the number of the box in work.
    boxes_synced: u64,
    /// The message total when the box in work said `Synchronizing...`: its own messages are
    /// queued once the total has grown past this.
    total_at_sync: u64,
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

    /// The run is a lock holder's (`exec`), not the service's.
    pub fn set_owner(&mut self, owner: Owner) {
        self.record.owner = Some(owner);
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
                    self.boxes_synced += 1;
                    self.total_at_sync = r.messages.map_or(0, |m| m.total);
                }
                let changed = r.operation.as_deref() != Some(op.as_str());
                r.operation = Some(op.clone());
                changed
            }
            Event::Summary(summary) => {
                let before = (r.channels, r.boxes, r.far, r.near);
                let stats = self.summary_stats(summary);
                self.apply_stats(&stats, now_us);
                let r = &self.record;
                before != (r.channels, r.boxes, r.far, r.near)
            }
            Event::Info(_) => false,
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

    /// The run stalled (no output for the stall timeout) or moves again. A stopping run stays
    /// stopping; the flag says it either way. Returns whether the record changed.
    pub fn set_stuck(&mut self, stuck: bool, now_us: u64) -> bool {
        let r = &mut self.record;
        if r.stuck == stuck {
            return false;
        }
        r.stuck = stuck;
        match (stuck, r.state) {
            (true, State::Syncing) => r.state = State::Stuck,
            (false, State::Stuck) => r.state = State::Syncing,
            _ => {}
        }
        r.last_update = Some(now_us);
        true
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
            Outcome::Interrupted => (State::Idle, "interrupted", None),
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
            // Exit 0: every channel and box was synced.
            r.channels = r.channels.map(|c| Counter { done: c.total, ..c });
            r.boxes = r.boxes.map(|b| Counter { done: b.total, ..b });
            r.percent = Some(100.0);
        }
    }

    /// The counters after the isync 1.5 summary: its done counts, each total at least that.
    fn summary_stats(&self, s: &Summary) -> Stats {
        let r = &self.record;
        let count = |seen: Option<Counter>, done: u64| Counter {
            done,
            total: seen.map_or(done, |c| c.total.max(done)),
        };
        let side = |seen: Option<SideCounters>, done: &crate::parser::SideDone| {
            let seen = seen.unwrap_or_default();
            SideCounters {
                new: count(Some(seen.new), done.new),
                flags: count(Some(seen.flags), done.flags),
                trashed: count(Some(seen.trashed), done.trashed),
                expunged: done.expunged.map(|d| count(seen.expunged, d)).or(seen.expunged),
            }
        };
        Stats {
            channels: count(r.channels, s.channels),
            boxes: count(r.boxes, s.boxes),
            far: side(r.far, &s.far),
            near: side(r.near, &s.near),
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
    }

    fn settled(&self, now_us: u64) -> bool {
        let (Some(c), Some(b), Some(m)) = (self.record.channels, self.record.boxes, self.record.messages)
        else {
            return false;
        };
        self.synchronizing
            && m.total > self.total_at_sync
            && now_us.saturating_sub(self.total_changed_at) >= SETTLE_US
            && c.total > 0
            && c.done + 1 >= c.total
            && b.total > 0
            && self.boxes_synced >= b.total
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
        let now = (settled && messages.total > 0).then(|| {
            let percent = (messages.done as f64 * 1000.0 / messages.total as f64).round() / 10.0;
            percent.min(MAX_RUNNING_PERCENT)
        });
        // Never backwards, never withdrawn: see the module docs.
        self.record.percent = match (now, self.record.percent) {
            (Some(now), Some(shown)) => Some(now.max(shown)),
            (now, shown) => now.or(shown),
        };
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
        // alice's three boxes; then bob, the last channel, with one.
        for name in ["INBOX", "Archive", "Sent"] {
            p.apply(&Event::Mailbox { side: Side::Far, name: name.into() }, 1_100_000);
            p.apply(&Event::Operation("Synchronizing".into()), 1_100_000);
        }
        p.apply(&stats((0, 2), (3, 3), (98, 98)), 1_200_000);
        p.apply(&Event::Info("a notice".into()), 2_300_000);
        assert_eq!(p.record().percent, None, "all boxes listed so far are done, but not the last channel");
        p.apply(&Event::Channel("bob".into()), 2_400_000);
        p.apply(&stats((1, 2), (3, 4), (98, 98)), 2_400_000);
        p.apply(&Event::Mailbox { side: Side::Far, name: "INBOX".into() }, 2_400_000);
        p.apply(&Event::Operation("Synchronizing".into()), 2_400_000);
        p.apply(&Event::Info("a notice".into()), 3_600_000);
        assert_eq!(p.record().percent, None, "its messages are not queued yet: 98/98 is no end");
        p.apply(&stats((1, 2), (3, 4), (110, 120)), 3_700_000);
        assert_eq!(p.record().percent, None, "the total just moved");
        p.apply(&stats((1, 2), (3, 4), (116, 120)), 4_200_000);
        assert_eq!(p.record().percent, None, "the total may still move");
        p.apply(&stats((1, 2), (3, 4), (118, 120)), 4_700_000);
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
    fn a_stall_is_stuck_until_it_moves_again() {
        let mut p = started();
        assert!(p.set_stuck(true, 2_000_000));
        assert_eq!((p.record().state, p.record().stuck), (State::Stuck, true));
        assert!(!p.set_stuck(true, 3_000_000), "no change, no publish");
        assert!(p.set_stuck(false, 4_000_000));
        assert_eq!((p.record().state, p.record().stuck), (State::Syncing, false));
        // A stopping run stays stopping, stuck or not.
        p.stopping(5_000_000);
        p.set_stuck(true, 6_000_000);
        assert_eq!((p.record().state, p.record().stuck), (State::Stopping, true));
        p.finish(&Outcome::Cancelled, 7_000_000);
        assert!(!p.record().stuck);
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

    /// The last box: Synchronizing, then `total` queued at `t` (µs), nothing else running.
    fn last_box(total: u64, t: u64) -> Progress {
        let mut p = started();
        p.apply(&stats((0, 1), (0, 1), (0, 0)), t);
        p.apply(&Event::Operation("Synchronizing".into()), t);
        p.apply(&stats((0, 1), (0, 1), (0, total)), t);
        p
    }

    #[test]
    fn percent_is_below_100_until_the_end_and_100_only_for_ok() {
        let mut p = last_box(1000, 1_000_000);
        p.apply(&stats((0, 1), (0, 1), (999, 1000)), 3_000_000);
        assert_eq!(p.record().percent, Some(99.9), "99.9 rounds to 99.9");
        p.apply(&stats((0, 1), (0, 1), (1000, 1000)), 3_100_000);
        assert_eq!(p.record().percent, Some(MAX_RUNNING_PERCENT), "all done, but mbsync still runs");
        p.apply(&stats((0, 1), (1, 1), (1000, 1000)), 3_200_000);
        p.apply(&stats((1, 1), (1, 1), (1000, 1000)), 3_300_000);
        assert_eq!(p.record().percent, Some(MAX_RUNNING_PERCENT));
        p.stopping(3_400_000);
        assert_eq!(p.record().percent, Some(MAX_RUNNING_PERCENT));
        let mut failed = p.clone();
        p.finish(&Outcome::Ok, 3_500_000);
        assert_eq!(p.record().percent, Some(100.0));
        failed.finish(&Outcome::Cancelled, 3_500_000);
        assert_eq!(failed.record().percent, Some(MAX_RUNNING_PERCENT), "how far it got, not 100");
    }

    #[test]
    fn percent_holds_when_the_total_grows_and_never_goes_back() {
        let mut p = last_box(100, 1_000_000);
        p.apply(&stats((0, 1), (0, 1), (50, 100)), 2_500_000);
        assert_eq!(p.record().percent, Some(50.0));
        // More is queued (a push into IMAP queues gradually): 50/200 would be 25%.
        p.apply(&stats((0, 1), (0, 1), (50, 200)), 2_600_000);
        let r = p.record();
        assert_eq!(r.messages, Some(Counter { done: 50, total: 200 }), "the counts show it at once");
        assert_eq!(r.percent, Some(50.0), "held, not withdrawn, not lower");
        assert_eq!(r.eta_s, None, "no ETA while the total moves");
        p.apply(&stats((0, 1), (0, 1), (90, 200)), 4_000_000);
        assert_eq!(p.record().percent, Some(50.0), "45% is still below what was shown");
        p.apply(&stats((0, 1), (0, 1), (120, 200)), 4_100_000);
        assert_eq!(p.record().percent, Some(60.0), "forward again once the fraction passes it");
        // A new run starts from nothing.
        p.finish(&Outcome::Ok, 5_000_000);
        p.start(43, vec![], 6_000_000);
        assert_eq!(p.record().percent, None);
    }

    #[test]
    fn summary_gives_the_done_counts_and_ok_completes_channels_and_boxes() {
        use crate::parser::{SideDone, Summary};
        let summary = |channels, boxes, near_new| {
            Event::Summary(Summary {
                channels,
                boxes,
                far: SideDone::default(),
                near: SideDone { new: near_new, ..SideDone::default() },
            })
        };
        // The last (rate-limited) record lags; the summary is what was done.
        let mut p = started();
        p.apply(&stats((0, 1), (1, 2), (2472, 2500)), 2_000_000);
        assert!(p.apply(&summary(1, 2, 2500), 2_100_000));
        let r = p.record();
        assert_eq!(r.messages, Some(Counter { done: 2500, total: 2500 }));
        assert_eq!(r.boxes, Some(Counter { done: 2, total: 2 }));
        assert_eq!(r.channels, Some(Counter { done: 1, total: 1 }));
        assert_eq!(r.near.map(|n| n.new), Some(Counter { done: 2500, total: 2500 }));
        // A total the last record had not shown yet grows to match.
        let mut p = started();
        p.apply(&stats((0, 1), (0, 2), (0, 9)), 2_000_000);
        p.apply(&summary(1, 2, 250), 2_100_000);
        assert_eq!(p.record().messages, Some(Counter { done: 250, total: 250 }));
        // A failed run's summary: done counts only; what was not done stays not done.
        let mut p = started();
        p.apply(&stats((1, 2), (2, 3), (40, 60)), 2_000_000);
        p.apply(&summary(2, 2, 40), 2_100_000);
        p.finish(&Outcome::Failed("IMAP error".into()), 2_200_000);
        let r = p.record();
        assert_eq!(
            (r.channels, r.boxes),
            (Some(Counter { done: 2, total: 2 }), Some(Counter { done: 2, total: 3 }))
        );
        assert_eq!(r.messages, Some(Counter { done: 40, total: 60 }));
        // isync 1.5 prints no summary when no box was synced: exit 0 still means all done.
        let mut p = started();
        p.apply(&stats((0, 1), (0, 0), (0, 0)), 2_000_000);
        p.finish(&Outcome::Ok, 2_100_000);
        let r = p.record();
        assert_eq!(
            (r.channels, r.boxes),
            (Some(Counter { done: 1, total: 1 }), Some(Counter { done: 0, total: 0 }))
        );
    }

    /// Feeds a real capture through the parser and the model, `step_us` apart per progress
    /// record (1.4.4 prints about one per ms, 1.5.1 one per 300 ms) and 1 ms per other line,
    /// then ends the run with `Ok`. Returns every record that changed (what the daemon would
    /// publish, before throttling) and the final one.
    fn replay(bytes: &[u8], step_us: u64) -> (Vec<Record>, Record) {
        let mut parser = crate::parser::Parser::new();
        let mut events = Vec::new();
        parser.feed(bytes, &mut events);
        parser.finish(&mut events);
        let mut p = started();
        let mut now = 1_000_000;
        let mut seen = Vec::new();
        for event in &events {
            now += if matches!(event, Event::Stats(_)) { step_us } else { 1_000 };
            if p.apply(event, now) {
                seen.push(p.record().clone());
            }
        }
        p.finish(&Outcome::Ok, now + 1_000);
        (seen, p.record().clone())
    }

    /// What every run must show: exact counts at the end, percent only once the totals are
    /// final, never backwards, below 100 until the end.
    fn assert_progress_is_honest(name: &str, seen: &[Record], last: &Record, messages: u64, boxes: u64) {
        assert_eq!(last.messages, Some(Counter { done: messages, total: messages }), "{name}");
        assert_eq!(last.boxes, Some(Counter { done: boxes, total: boxes }), "{name}");
        assert_eq!(last.channels, Some(Counter { done: 1, total: 1 }), "{name}");
        assert_eq!(last.percent, Some(100.0), "{name}");
        let mut shown = 0.0;
        for r in seen {
            if let Some(percent) = r.percent {
                assert!(percent >= shown, "{name}: percent went back from {shown} to {percent}");
                assert!(percent < 100.0, "{name}: 100 before the end: {r:?}");
                assert_eq!(r.messages.map(|m| m.total), Some(messages), "{name}: percent of a partial total");
                shown = percent;
            }
        }
    }

    #[test]
    fn real_runs_end_exact_and_percent_only_goes_forward() {
        let capture =
            |path: &str| std::fs::read(format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR")));
        for (name, step_us, messages, boxes) in [
            ("captures/pty_verbose_two_boxes.stdout", 40_000, 250, 2),
            ("captures-isync-1.5.1/pty_verbose_two_boxes.stdout", 300_000, 250, 2),
            ("captures-isync-1.5.1/pty_verbose_initial_alice.raw", 300_000, 2500, 2),
        ] {
            let bytes = capture(name).expect(name);
            let (seen, last) = replay(&bytes, step_us);
            assert_progress_is_honest(name, &seen, &last, messages, boxes);
            // At these paces the last box lasts more than a second after its total settled, so
            // the percentage does appear before the end (the 1.5.1 two-box run printed no
            // record in its last box).
            let appears = seen.iter().any(|r| r.percent.is_some());
            assert_eq!(appears, !name.contains("1.5.1/pty_verbose_two"), "{name}");
        }
        // The 1.5.1 capture of 2,500 messages: the record before the summary lags.
        let bytes = capture("captures-isync-1.5.1/pty_verbose_initial_alice.raw").expect("capture");
        let (seen, _) = replay(&bytes, 300_000);
        let before_summary = &seen[seen.len() - 2];
        assert_eq!(before_summary.messages, Some(Counter { done: 2472, total: 2500 }));
        assert_eq!(before_summary.boxes, Some(Counter { done: 1, total: 2 }));
        let summary = &seen[seen.len() - 1];
        assert_eq!(summary.messages, Some(Counter { done: 2500, total: 2500 }));
        assert_eq!(summary.channels, Some(Counter { done: 1, total: 1 }));
    }
}
