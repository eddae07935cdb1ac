//! What deserves a desktop notification, from the published records alone. Pure: records in,
//! show/close commands out; the bus layer (`bus::notify`) talks to the notification server.
//!
//! - The service's own sync stalled (`state = stuck`): "Restart", "Stop", "Dismiss". Closed when
//!   it moves again or ends; a later stall of the same run updates the same notification.
//! - An external sync that is overdue or stuck: "Take over", "Dismiss". Closed when it ends.
//! - A failed run: once per failure streak, with mbsync's reason; the next good sync closes it.
//!   Cancel and shutdown are no failures.
//!
//! Each notification has a key (the account, or the external sync's PID) and keeps its server id
//! across shows, so it is always updated in place (`replaces_id`), never duplicated. "Dismiss" (or
//! closing it by hand) silences it for the rest of that episode: that stall, that external sync,
//! that failure streak.

use std::collections::{BTreeMap, BTreeSet};

use crate::progress::{Owner, Record, State};

/// Which notification.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// The service's own run of an account: stuck, or failed.
    Account(String),
    /// An external sync, by its mbsync's PID (or its holder's).
    External(u32),
}

/// A button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Restart,
    Stop,
    TakeOver,
    Dismiss,
}

impl Action {
    /// The action key on the wire.
    #[must_use]
    pub fn id(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Stop => "stop",
            Self::TakeOver => "takeover",
            Self::Dismiss => "dismiss",
        }
    }

    /// The button's label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Restart => "Restart",
            Self::Stop => "Stop",
            Self::TakeOver => "Take over",
            Self::Dismiss => "Dismiss",
        }
    }

    /// The action an id names.
    #[must_use]
    pub fn from_id(id: &str) -> Option<Self> {
        [Self::Restart, Self::Stop, Self::TakeOver, Self::Dismiss].into_iter().find(|a| a.id() == id)
    }
}

/// A notification to show (or update in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub key: Key,
    /// The account its actions act on.
    pub account: String,
    pub summary: String,
    pub body: String,
    pub actions: Vec<Action>,
}

/// What the notifier must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Alert),
    Close(Key),
}

/// An episode: the same one is shown once, and a dismissed one stays silent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Episode {
    /// A stall of the run that started at this time (µs), the n-th of that run.
    Stall(u64, u32),
    /// A failure streak that began with the run that finished at this time.
    Failure(u64),
    /// An external sync (its key says which).
    External,
    /// A final word that stays until the user closes it (an automatic takeover).
    Final,
}

/// The model.
#[derive(Debug, Default)]
pub struct Alerts {
    /// Seconds without movement before a run counts as stuck (said in the text).
    stall_timeout_s: u64,
    /// Shown now, and in which episode.
    shown: BTreeMap<Key, Episode>,
    /// Dismissed, and in which episode.
    dismissed: BTreeMap<Key, Episode>,
    /// The current episode per key (for Stall: counts stalls of a run).
    stalls: BTreeMap<String, (u64, u32, bool)>,
    /// The failure streak an account is in, if any.
    streaks: BTreeMap<String, u64>,
    /// The accounts that show each external sync right now.
    externals: BTreeMap<u32, BTreeSet<String>>,
}

impl Alerts {
    #[must_use]
    pub fn new(stall_timeout_s: u64) -> Self {
        Self { stall_timeout_s, ..Self::default() }
    }

    /// An account's record changed.
    pub fn record(&mut self, account: &str, r: &Record) -> Vec<Command> {
        let mut out = Vec::new();
        self.own(account, r, &mut out);
        self.external(account, r, &mut out);
        out
    }

    /// The service took an external sync over by itself.
    pub fn took_over(
        &mut self,
        account: &str,
        why: &str,
        pid: Option<u32>,
        command: &[String],
    ) -> Vec<Command> {
        let key = pid.map_or_else(|| Key::Account(account.to_owned()), Key::External);
        self.shown.insert(key.clone(), Episode::Final);
        let what = match pid {
            Some(pid) => format!("mbsync PID {pid} ({})", command.join(" ")),
            None => "its lock holder".to_owned(),
        };
        vec![Command::Show(Alert {
            key,
            account: account.to_owned(),
            summary: format!("Took over the sync of {account}"),
            body: format!("{what} was stopped because {why}; himalaya-sync syncs {account} now."),
            actions: Vec::new(),
        })]
    }

    /// A sync could not even start, for a reason a person must fix: a failure like a failed run
    /// (once per streak; the next good sync closes it).
    pub fn problem(&mut self, account: &str, message: &str) -> Vec<Command> {
        let key = Key::Account(account.to_owned());
        let streak = *self.streaks.entry(account.to_owned()).or_insert(0);
        let mut out = Vec::new();
        if self.shown.get(&key) != Some(&Episode::Failure(streak)) {
            let alert = Alert {
                key,
                account: account.to_owned(),
                summary: format!("Mail sync of {account} cannot start"),
                body: message.to_owned(),
                actions: vec![Action::Dismiss],
            };
            self.show(alert, Episode::Failure(streak), &mut out);
        }
        out
    }

    /// The user dismissed a notification (the button, or closed it by hand).
    pub fn dismissed(&mut self, key: &Key) {
        if let Some(episode) = self.shown.remove(key) {
            self.dismissed.insert(key.clone(), episode);
        }
    }

    fn own(&mut self, account: &str, r: &Record, out: &mut Vec<Command>) {
        let key = Key::Account(account.to_owned());
        if r.owner == Some(Owner::Service) {
            let started = r.started_at.unwrap_or(0);
            let stall = self.stalls.entry(account.to_owned()).or_insert((started, 0, false));
            if stall.0 != started {
                *stall = (started, 0, false);
            }
            match (r.stuck, stall.2) {
                (true, false) => {
                    *stall = (started, stall.1 + 1, true);
                    let episode = Episode::Stall(started, stall.1);
                    self.show(self.stuck_alert(account, r), episode, out);
                }
                (false, true) => {
                    stall.2 = false;
                    self.close(&key, out);
                }
                _ => {}
            }
            return;
        }
        // Not running (any more): a stall is over.
        if self.stalls.remove(account).is_some_and(|s| s.2) {
            self.close(&key, out);
        }
        match r.last_result.as_deref() {
            Some("failed") if r.state == State::Failed => {
                let finished = r.finished_at.unwrap_or(0);
                let streak = *self.streaks.entry(account.to_owned()).or_insert(finished);
                let episode = Episode::Failure(streak);
                if self.shown.get(&key) != Some(&episode) {
                    let reason = r.last_error.clone().unwrap_or_else(|| "mbsync failed".into());
                    let alert = Alert {
                        key: key.clone(),
                        account: account.to_owned(),
                        summary: format!("Mail sync of {account} failed"),
                        body: reason,
                        actions: vec![Action::Dismiss],
                    };
                    self.show(alert, episode, out);
                }
            }
            Some("ok") if self.streaks.remove(account).is_some() => {
                self.dismissed.remove(&key);
                self.close(&key, out);
            }
            _ => {}
        }
    }

    fn external(&mut self, account: &str, r: &Record, out: &mut Vec<Command>) {
        let pid = if r.state == State::External { r.pid.or(r.owner_pid) } else { None };
        // This account no longer shows the externals it showed before.
        let mut gone = Vec::new();
        for (p, accounts) in &mut self.externals {
            if Some(*p) != pid && accounts.remove(account) && accounts.is_empty() {
                gone.push(*p);
            }
        }
        for p in gone {
            self.externals.remove(&p);
            let key = Key::External(p);
            self.dismissed.remove(&key);
            if self.shown.get(&key) != Some(&Episode::Final) {
                self.close(&key, out);
            }
        }
        let Some(pid) = pid else { return };
        let first = self.externals.entry(pid).or_default();
        first.insert(account.to_owned());
        let key = Key::External(pid);
        if r.overdue || r.stuck {
            if !self.shown.contains_key(&key) {
                self.show(external_alert(account, r, pid), Episode::External, out);
            }
        } else if self.shown.get(&key) == Some(&Episode::External) {
            // A stuck one moves again.
            self.close(&key, out);
        }
    }

    fn show(&mut self, alert: Alert, episode: Episode, out: &mut Vec<Command>) {
        if self.dismissed.get(&alert.key) == Some(&episode) {
            return;
        }
        self.shown.insert(alert.key.clone(), episode);
        out.push(Command::Show(alert));
    }

    fn close(&mut self, key: &Key, out: &mut Vec<Command>) {
        if self.shown.remove(key).is_some() {
            out.push(Command::Close(key.clone()));
        }
    }

    fn stuck_alert(&self, account: &str, r: &Record) -> Alert {
        Alert {
            key: Key::Account(account.to_owned()),
            account: account.to_owned(),
            summary: format!("Mail sync of {account} is stuck"),
            body: format!("It has not moved for {} s. Last: {}.", self.stall_timeout_s, last_did(r)),
            actions: vec![Action::Restart, Action::Stop, Action::Dismiss],
        }
    }
}

fn external_alert(account: &str, r: &Record, pid: u32) -> Alert {
    let who = match r.owner {
        Some(Owner::Client) => "a lock holder (himalaya-sync exec or another client)",
        _ => "an mbsync started outside the service",
    };
    let command = r.command.as_deref().map(|c| c.join(" ")).unwrap_or_default();
    let why = if r.stuck { "has not moved for a while" } else { "has been running for long" };
    Alert {
        key: Key::External(pid),
        account: account.to_owned(),
        summary: format!("A sync of {account} {why}"),
        body: format!("It is run by {who}, PID {pid}: {command}. Last: {}.", last_did(r)),
        actions: vec![Action::TakeOver, Action::Dismiss],
    }
}

/// What mbsync last did: `INBOX, Synchronizing, 15/98 messages`.
fn last_did(r: &Record) -> String {
    let mut parts: Vec<String> = Vec::new();
    parts.extend(r.mailbox.clone());
    parts.extend(r.operation.clone());
    if let Some(m) = r.messages {
        parts.push(format!("{}/{} messages", m.done, m.total));
    }
    if parts.is_empty() { "nothing reported yet".into() } else { parts.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        parser::Counter,
        progress::{Outcome, Progress},
    };

    fn running() -> Progress {
        let mut p = Progress::new();
        p.start(7, vec!["mbsync".into(), "alice".into()], 1_000);
        p
    }

    fn keys(cmds: &[Command]) -> Vec<String> {
        cmds.iter()
            .map(|c| match c {
                Command::Show(a) => format!("show {:?} {:?}", a.key, a.actions),
                Command::Close(k) => format!("close {k:?}"),
            })
            .collect()
    }

    #[test]
    fn a_stall_shows_once_closes_when_moving_and_a_second_stall_shows_again() {
        let mut a = Alerts::new(120);
        let mut p = running();
        assert!(a.record("alice", p.record()).is_empty());
        p.set_stuck(true, 2_000);
        let cmds = a.record("alice", p.record());
        assert_eq!(keys(&cmds), [r#"show Account("alice") [Restart, Stop, Dismiss]"#]);
        let Command::Show(alert) = &cmds[0] else { unreachable!() };
        assert!(alert.body.contains("120 s"), "{}", alert.body);
        assert!(a.record("alice", p.record()).is_empty(), "not twice for one stall");
        p.set_stuck(false, 3_000);
        assert_eq!(keys(&a.record("alice", p.record())), [r#"close Account("alice")"#]);
        p.set_stuck(true, 4_000);
        assert_eq!(a.record("alice", p.record()).len(), 1, "a second stall shows again (in place)");
    }

    #[test]
    fn a_dismissed_stall_stays_silent_until_the_next_stall() {
        let mut a = Alerts::new(120);
        let mut p = running();
        p.set_stuck(true, 2_000);
        a.record("alice", p.record());
        a.dismissed(&Key::Account("alice".into()));
        assert!(a.record("alice", p.record()).is_empty());
        p.set_stuck(false, 3_000);
        assert!(a.record("alice", p.record()).is_empty(), "nothing shown, nothing to close");
        p.set_stuck(true, 4_000);
        assert_eq!(a.record("alice", p.record()).len(), 1);
    }

    #[test]
    fn failures_notify_once_per_streak_and_a_good_sync_closes() {
        let mut a = Alerts::new(120);
        let mut p = running();
        p.finish(&Outcome::Failed("AUTHENTICATIONFAILED".into()), 2_000);
        let cmds = a.record("alice", p.record());
        assert_eq!(keys(&cmds), [r#"show Account("alice") [Dismiss]"#]);
        let Command::Show(alert) = &cmds[0] else { unreachable!() };
        assert!(alert.body.contains("AUTHENTICATIONFAILED"));
        p.start(8, vec![], 3_000);
        assert!(a.record("alice", p.record()).is_empty());
        p.finish(&Outcome::Failed("AUTHENTICATIONFAILED".into()), 4_000);
        assert!(a.record("alice", p.record()).is_empty(), "the same streak");
        p.start(9, vec![], 5_000);
        p.finish(&Outcome::Ok, 6_000);
        assert_eq!(keys(&a.record("alice", p.record())), [r#"close Account("alice")"#]);
        // Cancel and shutdown are no failures.
        p.start(10, vec![], 7_000);
        p.finish(&Outcome::Cancelled, 8_000);
        p.start(11, vec![], 9_000);
        p.finish(&Outcome::Interrupted, 10_000);
        assert!(a.record("alice", p.record()).is_empty());
    }

    #[test]
    fn a_sync_that_cannot_start_notifies_once_until_a_good_sync() {
        let mut a = Alerts::new(120);
        let cmds = a.problem("alice", "mbsync refuses the config file");
        assert_eq!(keys(&cmds), [r#"show Account("alice") [Dismiss]"#]);
        assert!(a.problem("alice", "mbsync refuses the config file").is_empty());
        let mut p = running();
        p.finish(&Outcome::Ok, 2_000);
        assert_eq!(keys(&a.record("alice", p.record())), [r#"close Account("alice")"#]);
    }

    #[test]
    fn an_overdue_external_sync_shows_once_for_every_account_and_closes_when_it_ends() {
        let mut a = Alerts::new(120);
        let external = Record {
            state: State::External,
            owner: Some(Owner::Process),
            pid: Some(42),
            command: Some(vec!["mbsync".into(), "-a".into()]),
            messages: Some(Counter { done: 3, total: 9 }),
            ..Record::default()
        };
        assert!(a.record("alice", &external).is_empty(), "not overdue yet");
        let overdue = Record { overdue: true, ..external };
        assert_eq!(keys(&a.record("alice", &overdue)), ["show External(42) [TakeOver, Dismiss]"]);
        assert!(a.record("everyone", &overdue).is_empty(), "one notification per external sync");
        assert!(a.record("alice", &Record::default()).is_empty(), "everyone still shows it");
        assert_eq!(keys(&a.record("everyone", &Record::default())), ["close External(42)"]);
    }

    #[test]
    fn an_automatic_takeover_stays_when_the_external_sync_ends() {
        let mut a = Alerts::new(120);
        let overdue = Record {
            state: State::External,
            owner: Some(Owner::Client),
            pid: Some(5),
            overdue: true,
            ..Record::default()
        };
        a.record("alice", &overdue);
        let cmds = a.took_over("alice", "it had run for more than 300 s", Some(5), &["mbsync".into()]);
        assert_eq!(keys(&cmds), ["show External(5) []"]);
        assert!(a.record("alice", &Record::default()).is_empty(), "the final word is not closed");
    }
}
