//! `TakeOver` and `RequestHandoff`: stop a sync that runs elsewhere and restart it under the service,
//! never with two mbsync on one channel at any moment.
//!
//! Both restart *the scope the stopped sync had* (the seed's "determine sync type from command"):
//! a bare `mbsync -a` or a group holding the account is restarted as that group or as all
//! channels, under every lock it covers, so no channel is silently dropped.
//!
//! Order of a takeover: reserve the channels (a concurrent `Sync` or `TakeOver` now gets
//! `AlreadySyncing`), find every sync on them, check and hold each one's mbsync by a pidfd (a
//! process that is not this user's mbsync ends the call with `PermissionDenied` before anything is
//! signalled), take the holders' lock names (`REPLACE_EXISTING`), stop the bare ones, wait until
//! every stopped mbsync is gone, take the remaining locks, and only then start mbsync.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::{Core, ExternalKey, HandoffError, Holder, LockError, Locks, Scope};
use crate::{
    error::{Error, Result},
    foreign::{self, Synced},
    mbsyncrc::MbsyncConfig,
    process::{self, Held, ProcInfo, StopError},
    progress::Owner,
};

/// What a takeover or handoff stopped, and what now runs instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The stopped mbsync, when one was running (a holder may hold locks between runs).
    pub pid: Option<u32>,
    pub owner: Owner,
    pub command: Vec<String>,
    pub runtime_s: u64,
    /// The accounts now syncing under the service.
    pub restarted: Vec<String>,
}

/// The channels a takeover or handoff holds in the core's `busy` map while it works.
struct Reservation {
    config: MbsyncConfig,
    /// The requested account's channels.
    requested: Vec<String>,
    /// Those, and every channel the stopped sync covered.
    reserved: Vec<String>,
}

/// One sync found on the channels.
#[derive(Debug, Clone)]
struct Target {
    holder: Option<Holder>,
    /// Its mbsync, from /proc.
    mbsync: Option<ProcInfo>,
    /// The channels its command syncs.
    channels: BTreeSet<String>,
}

impl<L: Locks> Core<L> {
    /// Stop whatever syncs `account` outside the service and restart it supervised.
    ///
    /// # Errors
    /// Invalid or unknown account; `AlreadySyncing` (the service's own sync); `NotRunning`
    /// (nothing runs anywhere); `PermissionDenied` (the process is not this user's mbsync:
    /// nothing was signalled); `LockedElsewhere` (a holder that does not allow replacement).
    pub async fn take_over(&self, account: &str) -> Result<Stopped> {
        let mut r = self.reserve_account(account)?;
        let result = self.take_over_reserved(account, &mut r).await;
        self.settle(&r, result)
    }

    async fn take_over_reserved(&self, account: &str, r: &mut Reservation) -> Result<Stopped> {
        let (config, reserved) = (&r.config, &mut r.reserved);
        let uid = process::my_uid();
        let mut targets = self.targets(config, &r.requested).await;
        if targets.is_empty() {
            return Err(Error::NotRunning { account: account.into() });
        }
        let scope = self.widen(account, config, &mut targets, reserved)?;
        // Every check before the first signal.
        let mut held = Vec::new();
        for target in &targets {
            if let Some(info) = &target.mbsync {
                match Held::open_mbsync(info, uid) {
                    Ok(h) => held.push(h),
                    Err(StopError::Gone { .. }) => {}
                    Err(err) => {
                        return Err(Error::PermissionDenied(format!("TakeOver of {account:?}: {err}")));
                    }
                }
            }
        }
        let holders: BTreeMap<String, Holder> = self.shared.locks.holders(&scope.channels).await;
        let taken: Vec<String> = holders.keys().cloned().collect();
        if !taken.is_empty() {
            self.shared.locks.replace(&taken).await.map_err(|err| lock_error(account, err))?;
        }
        let grace = self.shared.settings.config.stop_grace();
        for h in &held {
            let by_holder = targets.iter().any(|t| t.holder.is_some() && t.mbsync.as_ref() == Some(&h.info));
            // A holder stops its own mbsync when it loses its names; give it the grace period.
            if !(by_holder && h.exited_within(grace).await) {
                h.stop(grace).await;
            }
        }
        // A holder whose mbsync we do not hold may be about to start one: it took its names just
        // before we took them and has not seen NameLost yet. An `exec` then gives up and exits;
        // wait for that, then stop whatever mbsync it still runs.
        let unheld: BTreeSet<&Holder> = holders
            .values()
            .filter(|h| !targets.iter().any(|t| t.holder.as_ref() == Some(*h) && t.mbsync.is_some()))
            .collect();
        for holder in unheld {
            let Some(pid) = holder.pid else { continue };
            process::wait_exit(pid, grace).await;
            if let Some(h) = child_mbsync(pid, uid).and_then(|info| Held::open_mbsync(&info, uid).ok()) {
                tracing::warn!(
                    pid = h.info.pid,
                    "a holder started mbsync after losing its lock; stopping it"
                );
                h.stop(grace).await;
            }
        }
        let first = &targets[0];
        let stopped = stopped_of(first, held.first());
        let rest: Vec<String> = scope.channels.iter().filter(|c| !taken.contains(c)).cloned().collect();
        if let Err(err) = self.shared.locks.acquire(&rest).await {
            self.shared.locks.release(&taken).await;
            return Err(lock_error(account, err));
        }
        self.start(&scope, true).await?;
        Ok(Stopped { restarted: vec![scope.account], ..stopped })
    }

    /// Ask the holder of `account`'s locks to hand them over, then restart its scope here.
    ///
    /// # Errors
    /// Invalid or unknown account; `AlreadySyncing`; `NotRunning`; `HandoffRefused` (the holder
    /// said no, a bare mbsync, or several holders); `HandoffTimeout` (the holder keeps its lock).
    pub async fn request_handoff(&self, account: &str, timeout: Duration) -> Result<Stopped> {
        let mut r = self.reserve_account(account)?;
        let result = self.handoff_reserved(account, &mut r, timeout).await;
        self.settle(&r, result)
    }

    async fn handoff_reserved(
        &self,
        account: &str,
        r: &mut Reservation,
        timeout: Duration,
    ) -> Result<Stopped> {
        let (config, reserved) = (&r.config, &mut r.reserved);
        let refused = |reason: String| Error::HandoffRefused { account: account.into(), reason };
        let mut targets = self.targets(config, &r.requested).await;
        let holders: BTreeSet<Holder> = targets.iter().filter_map(|t| t.holder.clone()).collect();
        if let Some(bare) = targets.iter().find(|t| t.holder.is_none()) {
            let pid = bare.mbsync.as_ref().map_or(0, |m| m.pid);
            return Err(refused(format!(
                "PID {pid} is a bare mbsync that holds no lock and cannot be asked; use TakeOver"
            )));
        }
        let holder = match holders.len() {
            0 => return Err(Error::NotRunning { account: account.into() }),
            1 => holders.into_iter().next().expect("one holder"),
            n => {
                return Err(refused(format!(
                    "its channels are held by {n} different programs; use TakeOver"
                )));
            }
        };
        let scope = self.widen(account, config, &mut targets, reserved)?;
        let others: BTreeSet<Holder> =
            self.shared.locks.holders(&scope.channels).await.into_values().collect();
        if others.iter().any(|h| *h != holder) {
            return Err(refused("its channels are held by several programs; use TakeOver".into()));
        }
        let held =
            targets[0].mbsync.as_ref().and_then(|info| Held::open_mbsync(info, process::my_uid()).ok());
        self.shared.locks.handoff(&scope.channels, &holder, account, timeout).await.map_err(
            |err| match err {
                HandoffError::Refused(reason) => refused(reason),
                HandoffError::Timeout => {
                    Error::HandoffTimeout { account: account.into(), timeout_ms: timeout.as_millis() as u64 }
                }
                HandoffError::Failed(reason) => refused(format!("the holder could not be asked: {reason}")),
            },
        )?;
        // The protocol says the holder reaped its mbsync before it released the names; a holder
        // that did not gets the grace period, then is stopped like a bare one.
        if let Some(h) = &held {
            let grace = self.shared.settings.config.stop_grace();
            if !h.exited_within(grace).await {
                tracing::warn!(pid = h.info.pid, "a holder handed over with its mbsync still running");
                h.stop(grace).await;
            }
        }
        let stopped = stopped_of(&targets[0], held.as_ref());
        self.start(&scope, true).await?;
        Ok(Stopped { restarted: vec![scope.account], ..stopped })
    }

    /// Validate `account`, and reserve its channels.
    fn reserve_account(&self, account: &str) -> Result<Reservation> {
        let mut inner = self.inner();
        let mut channels = self.lookup(&mut inner, account)?;
        channels.sort();
        channels.dedup();
        let config = inner.mbsync.as_ref().map_err(|e| Error::ConfigError(e.clone()))?.clone();
        inner.reserve(account, &channels)?;
        Ok(Reservation { config, reserved: channels.clone(), requested: channels })
    }

    /// A failed takeover or handoff gives its reservation back; a successful one's run has it.
    fn settle<T>(&self, r: &Reservation, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.unreserve(&r.reserved);
        }
        result
    }

    /// Every sync on `channels`: lock holders (with their mbsync, if one runs) and bare mbsync.
    async fn targets(&self, config: &MbsyncConfig, channels: &[String]) -> Vec<Target> {
        let uid = process::my_uid();
        let mut targets: Vec<Target> = Vec::new();
        let holders: BTreeSet<Holder> = self.shared.locks.holders(channels).await.into_values().collect();
        let known = self.externals_on(channels);
        for holder in holders {
            let relayed_pid = known
                .iter()
                .find(|(k, _)| *k == ExternalKey::Holder(holder.id.clone()))
                .and_then(|(_, pid)| *pid);
            let mbsync = relayed_pid
                .and_then(ProcInfo::read)
                .filter(|p| p.is_mbsync_of(uid))
                .or_else(|| holder.pid.and_then(|pid| child_mbsync(pid, uid)));
            let channels = match &mbsync {
                Some(info) => channels_of_argv(config, info),
                None => channels.iter().cloned().collect(),
            };
            targets.push(Target { holder: Some(holder), mbsync, channels });
        }
        let bare = self.search(config, channels, foreign::scan);
        for (info, _) in bare {
            if targets.iter().any(|t| t.mbsync.as_ref().is_some_and(|m| m.pid == info.pid)) {
                continue;
            }
            // A holder that started its mbsync after we looked for its child: it is the holder's.
            if let Some(t) =
                targets.iter_mut().find(|t| t.holder.as_ref().and_then(|h| h.pid) == Some(info.ppid))
            {
                t.channels = channels_of_argv(config, &info);
                t.mbsync = Some(info);
                continue;
            }
            let channels = channels_of_argv(config, &info);
            targets.push(Target { holder: None, mbsync: Some(info), channels });
        }
        targets
    }

    /// The scope to restart: every channel the targets sync, reserved here too. The account is
    /// the one whose channels are exactly that set (the group or channel the stopped sync ran),
    /// else the requested one with the channel names as mbsync's arguments.
    fn widen(
        &self,
        account: &str,
        config: &MbsyncConfig,
        targets: &mut [Target],
        reserved: &mut Vec<String>,
    ) -> Result<Scope> {
        let mut channels: BTreeSet<String> = reserved.iter().cloned().collect();
        for t in targets.iter() {
            channels.extend(t.channels.iter().cloned());
        }
        let extra: Vec<String> = channels.iter().filter(|c| !reserved.contains(c)).cloned().collect();
        {
            self.inner().reserve(account, &extra)?;
        }
        reserved.extend(extra);
        let all_channels = config.channels.len() == channels.len();
        let exact = |name: &str| {
            config.channels_of(name).is_some_and(|mut c| {
                c.sort();
                c.dedup();
                c.len() == channels.len() && c.iter().all(|x| channels.contains(x))
            })
        };
        let (name, args) = if exact(account) {
            (account.to_owned(), vec![account.to_owned()])
        } else if let Some(name) = config.account_names().into_iter().find(|n| exact(n)) {
            (name.clone(), vec![name])
        } else if all_channels {
            (account.to_owned(), vec!["-a".to_owned()])
        } else {
            (account.to_owned(), channels.iter().cloned().collect())
        };
        let channels: Vec<String> = channels.into_iter().collect();
        if name != account {
            // The record is published under the stopped sync's own name.
            let mut inner = self.inner();
            for c in &channels {
                inner.busy.insert(c.clone(), name.clone());
            }
        }
        Ok(Scope { account: name, args, channels })
    }
}

/// The channels an mbsync's argv syncs, among the config's.
fn channels_of_argv(config: &MbsyncConfig, info: &ProcInfo) -> BTreeSet<String> {
    match foreign::synced_channels(info.argv.get(1..).unwrap_or_default(), config) {
        Synced::All => config.channels.iter().map(|c| c.name.clone()).collect(),
        Synced::Channels(set) => set.into_iter().filter(|c| config.channel(c).is_some()).collect(),
        Synced::Nothing => BTreeSet::new(),
    }
}

/// The mbsync child of process `parent` (an `exec` holder's), if it is this user's mbsync.
fn child_mbsync(parent: u32, uid: u32) -> Option<ProcInfo> {
    process::all_pids().filter_map(ProcInfo::read).find(|p| p.ppid == parent && p.is_mbsync_of(uid))
}

fn stopped_of(target: &Target, held: Option<&Held>) -> Stopped {
    let info = held.map(|h| &h.info).or(target.mbsync.as_ref());
    Stopped {
        pid: info.map(|i| i.pid),
        owner: if target.holder.is_some() { Owner::Client } else { Owner::Process },
        command: info.map(|i| i.argv.clone()).unwrap_or_default(),
        runtime_s: info.map_or(0, ProcInfo::runtime_s),
        restarted: Vec::new(),
    }
}

fn lock_error(account: &str, err: LockError) -> Error {
    match err {
        LockError::Elsewhere { channel, holder } => {
            Error::LockedElsewhere { account: account.into(), channel, holder }
        }
        LockError::Failed(reason) => Error::MbsyncFailed {
            account: account.into(),
            reason: format!("mbsync was not started: the sync lock could not be taken: {reason}"),
        },
    }
}
