//! Syncs that run outside the service: lock holders (an `exec`, a third-party client) the bus
//! layer reports as their lock names change owner, and bare mbsync runs the detector finds. Each
//! is shown on every account that shares a channel with it (`state = external`) until it ends;
//! then the account shows its own last state again, by itself.

use std::collections::BTreeSet;

use super::{Core, Holder, Locks, now_us};
use crate::{
    process::{Held, ProcInfo},
    progress::{Owner, Record, State},
};

/// Which external sync: a lock holder's bus connection, or a bare mbsync's PID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExternalKey {
    Holder(String),
    Process(u32),
}

/// One external sync.
#[derive(Debug)]
pub(super) struct External {
    pub owner: Owner,
    /// The channels it holds (a holder) or syncs (a bare mbsync).
    pub channels: BTreeSet<String>,
    /// The lock holder's process, or the bare mbsync itself.
    pub owner_pid: Option<u32>,
    /// A bare mbsync's parent: an `exec` holder's child is shown as the holder's.
    pub parent: Option<u32>,
    /// Its mbsync, when known.
    pub pid: Option<u32>,
    pub command: Option<Vec<String>>,
    pub started_at: u64,
    /// The last record a holder published (`GetProgress`, `ProgressChanged`).
    pub relayed: Option<Record>,
    /// The timer that marks it overdue (one per external sync).
    pub overdue_timer: Option<tokio::task::AbortHandle>,
    /// `AutoTakeover` acted on it already (once is enough: a failed takeover is not retried in
    /// a loop).
    pub auto_tried: bool,
}

impl Drop for External {
    fn drop(&mut self) {
        if let Some(timer) = self.overdue_timer.take() {
            timer.abort();
        }
    }
}

impl External {
    /// The record of an account this sync covers; `own` gives the account's last result.
    pub fn record(&self, own: &Record, now: u64, overdue_after: u64) -> Record {
        let mut r = self.relayed.clone().unwrap_or_default();
        r.state = State::External;
        r.owner = Some(self.owner);
        r.owner_pid = self.owner_pid;
        r.pid = r.pid.or(self.pid);
        if r.command.is_none() {
            r.command.clone_from(&self.command);
        }
        let started = *r.started_at.get_or_insert(self.started_at);
        r.last_update = r.last_update.or(Some(started));
        r.overdue = overdue_after > 0 && now.saturating_sub(started) > overdue_after;
        r.last_result.clone_from(&own.last_result);
        r.last_error.clone_from(&own.last_error);
        r.finished_at = own.finished_at;
        r
    }
}

impl<L: Locks> Core<L> {
    /// `holder` now owns `channel`'s lock; `record` is what it publishes, if it does.
    pub fn holder_acquired(&self, holder: &Holder, channel: &str, record: Option<Record>) {
        let mut inner = self.inner();
        let external =
            inner.externals.entry(ExternalKey::Holder(holder.id.clone())).or_insert_with(|| External {
                owner: Owner::Client,
                channels: BTreeSet::new(),
                owner_pid: holder.pid,
                parent: None,
                pid: None,
                command: None,
                started_at: now_us(),
                relayed: None,
                overdue_timer: None,
                auto_tried: false,
            });
        external.channels.insert(channel.to_owned());
        if let Some(record) = record {
            absorb(external, record);
        }
        let mut channels = external.channels.clone();
        // Its mbsync may have been found as a bare one first: it is the holder's.
        inner.externals.retain(|key, e| {
            let child =
                matches!(key, ExternalKey::Process(_)) && holder.pid.is_some() && e.parent == holder.pid;
            if child {
                channels.extend(e.channels.iter().cloned());
            }
            !child
        });
        drop(inner);
        tracing::info!(holder = holder.id, channel, "a lock holder syncs");
        let key = ExternalKey::Holder(holder.id.clone());
        self.arm_overdue(&key);
        self.publish_covering(&channels);
        self.maybe_auto_take_over(&key);
    }

    /// Whether the bus connection `id` holds a lock of ours.
    #[must_use]
    pub fn is_holder(&self, id: &str) -> bool {
        self.inner().externals.contains_key(&ExternalKey::Holder(id.to_owned()))
    }

    /// A holder published a new record.
    pub fn holder_progress(&self, holder_id: &str, record: Record) {
        let mut inner = self.inner();
        let Some(external) = inner.externals.get_mut(&ExternalKey::Holder(holder_id.to_owned())) else {
            return;
        };
        let became_stuck = record.stuck && !external.relayed.as_ref().is_some_and(|r| r.stuck);
        absorb(external, record);
        let channels = external.channels.clone();
        drop(inner);
        self.publish_covering(&channels);
        if became_stuck {
            self.maybe_auto_take_over(&ExternalKey::Holder(holder_id.to_owned()));
        }
    }

    /// `channel`'s lock is free now, or ours: no holder syncs it any more.
    pub fn lock_freed(&self, channel: &str) {
        let mut inner = self.inner();
        let mut touched = false;
        inner.externals.retain(|key, external| {
            if matches!(key, ExternalKey::Holder(_)) && external.channels.remove(channel) {
                touched = true;
            }
            !external.channels.is_empty()
        });
        drop(inner);
        if touched {
            self.publish_covering(&BTreeSet::from([channel.to_owned()]));
        }
    }

    /// A bare mbsync syncs `channels`: show it, and hold it by a pidfd to see its end.
    pub fn process_found(&self, info: &ProcInfo, channels: &BTreeSet<String>) {
        let key = ExternalKey::Process(info.pid);
        {
            let inner = self.inner();
            let holders_child = inner
                .externals
                .iter()
                .any(|(k, e)| matches!(k, ExternalKey::Holder(_)) && e.owner_pid == Some(info.ppid));
            if holders_child || inner.externals.contains_key(&key) {
                return;
            }
        }
        let held = match Held::open_mbsync(info, crate::process::my_uid()) {
            Ok(held) => held,
            Err(err) => {
                tracing::debug!(%err, "a found mbsync is not followed");
                return;
            }
        };
        let started_at = now_us().saturating_sub(held.info.runtime_s() * 1_000_000);
        self.inner().externals.insert(
            key,
            External {
                owner: Owner::Process,
                channels: channels.clone(),
                owner_pid: Some(info.pid),
                parent: Some(info.ppid),
                pid: Some(info.pid),
                command: Some(info.argv.clone()),
                started_at,
                relayed: None,
                overdue_timer: None,
                auto_tried: false,
            },
        );
        self.arm_overdue(&ExternalKey::Process(info.pid));
        tracing::info!(pid = info.pid, ?channels, "a bare mbsync syncs");
        self.publish_covering(channels);
        let core = self.clone();
        tokio::spawn(async move {
            held.exited().await;
            core.process_gone(held.info.pid);
        });
    }

    fn process_gone(&self, pid: u32) {
        let removed = self.inner().externals.remove(&ExternalKey::Process(pid));
        if let Some(external) = removed {
            tracing::info!(pid, "a bare mbsync ended");
            self.shared.mbsync_ended.notify_one();
            self.publish_covering(&external.channels);
        }
    }

    /// The external syncs on any of `channels`, with their mbsync's PID when known.
    pub(super) fn externals_on(&self, channels: &[String]) -> Vec<(ExternalKey, Option<u32>)> {
        self.inner()
            .externals
            .iter()
            .filter(|(_, e)| channels.iter().any(|c| e.channels.contains(c)))
            .map(|(k, e)| (k.clone(), e.pid))
            .collect()
    }

    /// One timer per external sync: when it has run for `auto_takeover_timeout`, it is overdue
    /// (published, and taken over if `AutoTakeover` is on).
    fn arm_overdue(&self, key: &ExternalKey) {
        let timeout = self.overdue_after();
        let mut inner = self.inner();
        let Some(external) = inner.externals.get_mut(key) else { return };
        if timeout == 0 || external.overdue_timer.is_some() {
            return;
        }
        let due = external.started_at.saturating_add(timeout).saturating_sub(now_us());
        let (core, key) = (self.clone(), key.clone());
        let task = tokio::spawn(async move {
            // A little past the deadline, so the record computed then says overdue.
            tokio::time::sleep(std::time::Duration::from_micros(due + 1_000)).await;
            core.external_overdue(&key);
        });
        external.overdue_timer = Some(task.abort_handle());
    }

    fn external_overdue(&self, key: &ExternalKey) {
        let Some(channels) = self.inner().externals.get(key).map(|e| e.channels.clone()) else { return };
        tracing::info!(?key, "an external sync is overdue");
        self.publish_covering(&channels);
        self.maybe_auto_take_over(key);
    }

    /// With `AutoTakeover` on, take an overdue or stuck external sync over (once).
    pub(super) fn maybe_auto_take_over(&self, key: &ExternalKey) {
        if !self.auto_takeover() {
            return;
        }
        let now = now_us();
        let overdue_after = self.overdue_after();
        let (account, why) = {
            let mut inner = self.inner();
            let Some(external) = inner.externals.get_mut(key) else { return };
            let overdue = overdue_after > 0 && now.saturating_sub(external.started_at) > overdue_after;
            let stuck = external.relayed.as_ref().is_some_and(|r| r.stuck);
            if external.auto_tried || !(overdue || stuck) {
                return;
            }
            external.auto_tried = true;
            let why = if stuck {
                "it had stopped moving".to_owned()
            } else {
                format!("it had run for more than {} s", overdue_after / 1_000_000)
            };
            let channels = external.channels.clone();
            // The account that is exactly this sync's channels, else the first that covers it.
            let covering: Vec<(&String, &super::Slot)> = inner
                .accounts
                .iter()
                .filter(|(_, s)| s.channels.iter().any(|c| channels.contains(c)))
                .collect();
            let exact = covering.iter().find(|(_, s)| {
                s.channels.len() == channels.len() && s.channels.iter().all(|c| channels.contains(c))
            });
            let Some((account, _)) = exact.or(covering.first()) else { return };
            ((*account).clone(), why)
        };
        let core = self.clone();
        tokio::spawn(async move {
            match core.take_over(&account).await {
                Ok(stopped) => {
                    tracing::info!(account, why, "took an external sync over (AutoTakeover)");
                    core.emit(super::CoreEvent::TookOver { account, why, stopped: Box::new(stopped) });
                }
                Err(err) => tracing::warn!(account, %err, "AutoTakeover could not take the sync over"),
            }
        });
    }

    /// Publish every account that shares a channel with `channels` and runs nothing itself.
    fn publish_covering(&self, channels: &BTreeSet<String>) {
        let records: Vec<(String, Record)> = {
            let inner = self.inner();
            let now = now_us();
            inner
                .accounts
                .iter()
                .filter(|(_, slot)| slot.run.is_none() && slot.channels.iter().any(|c| channels.contains(c)))
                .map(|(name, _)| (name.clone(), inner.view(name, now, self.overdue_after())))
                .collect()
        };
        for (account, record) in records {
            self.emit(super::CoreEvent::Progress { account, record: std::sync::Arc::new(record) });
        }
    }
}

/// Take a holder's published record: its counters, and who its mbsync is.
fn absorb(external: &mut External, record: Record) {
    if record.pid.is_some() {
        external.pid = record.pid;
    }
    if record.command.is_some() {
        external.command.clone_from(&record.command);
    }
    if let Some(started) = record.started_at {
        external.started_at = started;
    }
    external.relayed = Some(record);
}
