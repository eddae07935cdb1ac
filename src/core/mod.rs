//! The core: accounts, supervised runs and their progress. It knows nothing of D-Bus: the bus
//! layer calls it, hands it a [`Locks`] implementation (bus-name ownership) and publishes the
//! [`CoreEvent`]s it sends.
//!
//! # Theory of operation
//! Each account has a [`Slot`] holding its progress model and, while it syncs, a handle to its
//! run. A run is one task: it owns the mbsync process, feeds its output through the parser into
//! the model, and publishes through a leading-edge throttle. The run task alone ends a run: it
//! reaps mbsync, *then* releases the channel locks, *then* publishes the final state, so a client
//! that reacts to `SyncFinished` by syncing again never meets its own stale lock.
//!
//! Channels, not accounts, are what may not be synced twice: a group shares channels with its
//! members, so `busy` maps every channel of every running sync (or one being taken over) to the
//! account that runs it.
//!
//! Syncs the service does not run are *external* ([`external`]): a lock holder (an `exec`) or a
//! bare mbsync. An account that shares a channel with one shows it (`state = external`).
//! [`takeover`] stops them and restarts their scope under the service.

mod external;
mod takeover;

pub use external::ExternalKey;
pub use takeover::Stopped;

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    config::{self, Config, Paths},
    error::{Error, Result},
    foreign, mbsync_check,
    mbsyncrc::{self, MbsyncConfig},
    names,
    progress::{Outcome, Progress, Record},
    run::{self, Stop},
    runner::Mbsync,
    state,
};

/// What the core tells the outside world.
#[derive(Debug)]
pub enum CoreEvent {
    /// An account's record changed (throttled; first and final states always sent).
    /// Shared: the bus layer hands one record to the signal, the account object, the notifier
    /// and the job view without copying it.
    Progress { account: String, record: std::sync::Arc<Record> },
    /// A supervised sync ended.
    Finished { account: String, ok: bool, message: String },
    /// The set of accounts changed (the mbsync config was edited).
    AccountsChanged(Vec<String>),
    /// Answer once every event before this one is published (shutdown waits for it).
    Flush(tokio::sync::oneshot::Sender<()>),
    /// The service took an external sync over by itself (`AutoTakeover`); `why` says what was
    /// wrong with it.
    TookOver { account: String, why: String, stopped: Box<Stopped> },
    /// A sync could not start for a reason a person must fix (the config, a missing mbsync).
    Problem { account: String, message: String },
}

/// Why a channel lock could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError {
    /// Another program holds it; `holder` describes it for people.
    Elsewhere { channel: String, holder: String },
    /// The bus refused or failed.
    Failed(String),
}

/// Another program that holds channel locks (an `exec`, a third-party client).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    /// Its bus connection (unique name).
    pub id: String,
    /// Its process, as the bus knows it.
    pub pid: Option<u32>,
}

/// Why a graceful handoff did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffError {
    /// The holder said no (or cannot be asked); its reason.
    Refused(String),
    /// The names did not come within the timeout; the holder keeps them.
    Timeout,
    /// The bus failed.
    Failed(String),
}

/// The single-sync lock, per channel. The bus layer implements it with bus-name ownership.
pub trait Locks: Send + Sync + 'static {
    /// Take the lock of every channel, in order; all of them or none.
    fn acquire(&self, channels: &[String]) -> impl Future<Output = Result<(), LockError>> + Send;
    /// Give them back.
    fn release(&self, channels: &[String]) -> impl Future<Output = ()> + Send;
    /// Who else holds these channels' locks now (free ones and our own are left out).
    fn holders(&self, channels: &[String]) -> impl Future<Output = BTreeMap<String, Holder>> + Send;
    /// Take the locks from whoever holds them (a forced takeover); all of them or none.
    fn replace(&self, channels: &[String]) -> impl Future<Output = Result<(), LockError>> + Send;
    /// Queue for the locks, ask `holder` to hand them over, and wait until every one is ours,
    /// at most `timeout`. On failure nothing is held and the queue is left.
    fn handoff(
        &self,
        channels: &[String],
        holder: &Holder,
        account: &str,
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<(), HandoffError>> + Send;
}

/// Everything the core is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub paths: Paths,
    /// The mbsync config file.
    pub mbsync_config: PathBuf,
}

/// The core. Cheap to clone.
pub struct Core<L: Locks> {
    shared: Arc<Shared<L>>,
}

impl<L: Locks> Clone for Core<L> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

struct Shared<L> {
    settings: Settings,
    locks: L,
    events: mpsc::UnboundedSender<CoreEvent>,
    inner: Mutex<Inner>,
    /// Woken when a re-read changed the mbsync config (the detector re-places its watches).
    config_changed: tokio::sync::Notify,
    /// Woken when an mbsync the service ran or followed has ended (the detector lets go of the
    /// lock files nobody holds any more).
    mbsync_ended: tokio::sync::Notify,
}

struct Inner {
    /// The parsed mbsync config, or why it could not be read.
    mbsync: std::result::Result<MbsyncConfig, String>,
    /// The installed mbsync's verdict on the config file, asked once per change of the file.
    mbsync_check: mbsync_check::Cache,
    accounts: BTreeMap<String, Slot>,
    /// channel -> the account whose run holds it.
    busy: BTreeMap<String, String>,
    /// Syncs running outside the service.
    externals: BTreeMap<ExternalKey, external::External>,
    state: state::State,
    store: state::Store,
    /// Set by `shutdown`: no new run may start.
    shutting_down: bool,
}

#[derive(Default)]
struct Slot {
    progress: Progress,
    run: Option<RunHandle>,
    /// The channels the account stands for, as of the last good config read.
    channels: Vec<String>,
}

struct RunHandle {
    stop: mpsc::UnboundedSender<Stop>,
    task: Option<JoinHandle<()>>,
}

/// What a run syncs: the account whose record shows it, mbsync's positional arguments, and the
/// channels (sorted, unique) whose locks it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    account: String,
    args: Vec<String>,
    channels: Vec<String>,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl<L: Locks> Core<L> {
    /// A core with the accounts of the mbsync config (a broken config is reported by every call
    /// that needs it, not fatal here) and the last results from the state file.
    pub fn new(settings: Settings, locks: L, events: mpsc::UnboundedSender<CoreEvent>) -> Self {
        let store = state::Store::new(&settings.paths.state_dir());
        let state = store.load();
        let mut inner = Inner {
            mbsync: Err(String::new()),
            mbsync_check: mbsync_check::Cache::default(),
            accounts: BTreeMap::new(),
            busy: BTreeMap::new(),
            externals: BTreeMap::new(),
            state,
            store,
            shutting_down: false,
        };
        reload_into(&mut inner, &settings);
        if let Err(err) = &inner.mbsync {
            tracing::warn!("{err}");
        }
        Self {
            shared: Arc::new(Shared {
                settings,
                locks,
                events,
                inner: Mutex::new(inner),
                config_changed: tokio::sync::Notify::new(),
                mbsync_ended: tokio::sync::Notify::new(),
            }),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere already; the data is still consistent enough
        // to serve (every mutation is a single assignment).
        self.shared.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-read the mbsync config; tells the world when the accounts changed.
    fn reload(&self, inner: &mut Inner) {
        let before: Vec<String> = inner.accounts.keys().cloned().collect();
        let config_before = inner.mbsync.as_ref().ok().cloned();
        reload_into(inner, &self.shared.settings);
        if inner.mbsync.as_ref().ok() != config_before.as_ref() {
            self.shared.config_changed.notify_one();
        }
        let after: Vec<String> = inner.accounts.keys().cloned().collect();
        if before != after {
            self.emit(CoreEvent::AccountsChanged(after));
        }
    }

    /// Resolves when the mbsync config read differs from the one before (a stored permit makes
    /// a change between two waits count).
    pub async fn config_changed(&self) {
        self.shared.config_changed.notified().await;
    }

    /// Resolves when an mbsync the service ran or followed has ended since the last wait.
    pub async fn mbsync_ended(&self) {
        self.shared.mbsync_ended.notified().await;
    }

    fn emit(&self, event: CoreEvent) {
        // The receiver only goes away at shutdown, when nobody listens any more.
        if self.shared.events.send(event).is_err() {
            tracing::debug!("core event dropped: the bus layer is gone");
        }
    }

    /// The mbsync config as last read, if it was good.
    #[must_use]
    pub fn mbsync_config(&self) -> Option<MbsyncConfig> {
        self.inner().mbsync.as_ref().ok().cloned()
    }

    /// What the core was configured with.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Names a user can sync.
    ///
    /// # Errors
    /// The mbsync config cannot be read or parsed.
    pub fn accounts(&self) -> Result<Vec<String>> {
        let mut inner = self.inner();
        self.reload(&mut inner);
        inner.mbsync.as_ref().map_err(|e| Error::ConfigError(e.clone()))?;
        Ok(inner.accounts.keys().cloned().collect())
    }

    /// The account names known right now, without re-reading the config.
    #[must_use]
    pub fn known_accounts(&self) -> Vec<String> {
        self.inner().accounts.keys().cloned().collect()
    }

    /// One account's record.
    ///
    /// # Errors
    /// An invalid or unknown account name, or a broken mbsync config.
    pub fn progress(&self, account: &str) -> Result<Record> {
        validate_name(account)?;
        let mut inner = self.inner();
        if !inner.accounts.contains_key(account) {
            self.lookup(&mut inner, account)?;
        }
        Ok(inner.view(account, now_us(), self.overdue_after()))
    }

    /// Every account's record, after re-reading the config.
    #[must_use]
    pub fn all_progress(&self) -> BTreeMap<String, Record> {
        self.reload(&mut self.inner());
        self.records()
    }

    /// Every account's record as known now, without re-reading the config (for the bus layer
    /// reacting to [`CoreEvent::AccountsChanged`], which a re-read just produced).
    #[must_use]
    pub fn records(&self) -> BTreeMap<String, Record> {
        let inner = self.inner();
        let now = now_us();
        inner.accounts.keys().map(|k| (k.clone(), inner.view(k, now, self.overdue_after()))).collect()
    }

    /// Whether `pid` is the mbsync of one of the service's own runs.
    #[must_use]
    pub fn runs_mbsync(&self, pid: u32) -> bool {
        self.inner()
            .accounts
            .values()
            .any(|slot| slot.run.is_some() && slot.progress.record().pid == Some(pid))
    }

    fn overdue_after(&self) -> u64 {
        self.shared.settings.config.auto_takeover_timeout.saturating_mul(1_000_000)
    }

    /// Whether the service takes overdue or stuck external syncs over by itself.
    #[must_use]
    pub fn auto_takeover(&self) -> bool {
        self.inner().state.auto_takeover.unwrap_or(self.shared.settings.config.auto_takeover)
    }

    /// Set `AutoTakeover`; kept in the state file from now on. Turned on, it acts at once on the
    /// external syncs that are overdue or stuck.
    ///
    /// # Errors
    /// The state file cannot be written (the switch is set anyway, for this run).
    pub fn set_auto_takeover(&self, on: bool) -> std::io::Result<()> {
        let (state, store) = {
            let mut inner = self.inner();
            inner.state.auto_takeover = Some(on);
            (inner.state.clone(), inner.store.clone())
        };
        let saved = store.save(&state);
        if on {
            let keys: Vec<ExternalKey> = self.inner().externals.keys().cloned().collect();
            for key in keys {
                self.maybe_auto_take_over(&key);
            }
        }
        saved
    }

    /// Seconds after which an external sync counts as overdue.
    #[must_use]
    pub fn auto_takeover_timeout(&self) -> u64 {
        self.shared.settings.config.auto_takeover_timeout
    }

    /// Validate `account` and return the channels it stands for.
    fn lookup(&self, inner: &mut Inner, account: &str) -> Result<Vec<String>> {
        validate_name(account)?;
        // Unknown, or the config was broken at the last read (it may be fixed now): read again.
        if !inner.accounts.contains_key(account) || inner.mbsync.is_err() {
            self.reload(inner);
        }
        let config = inner.mbsync.as_ref().map_err(|e| Error::ConfigError(e.clone()))?;
        match config.channels_of(account) {
            Some(channels) if inner.accounts.contains_key(account) => Ok(channels),
            _ => Err(Error::UnknownAccount {
                name: account.to_owned(),
                config: self.shared.settings.mbsync_config.clone(),
                known: known_list(inner.accounts.keys()),
            }),
        }
    }

    fn unreserve(&self, channels: &[String]) {
        let mut inner = self.inner();
        for channel in channels {
            inner.busy.remove(channel);
        }
    }

    /// Start a supervised sync of `account`. Returns once mbsync runs; the end comes as
    /// [`CoreEvent::Finished`].
    ///
    /// # Errors
    /// Invalid or unknown account, a sync of one of its channels already running here
    /// (`AlreadySyncing`) or elsewhere (`LockedElsewhere`), mbsync missing, or mbsync could not
    /// be started.
    pub async fn sync(&self, account: &str) -> Result<()> {
        let result = self.sync_inner(account).await;
        if let Err(err @ (Error::ConfigError(_) | Error::MbsyncMissing { .. })) = &result {
            self.emit(CoreEvent::Problem { account: account.to_owned(), message: err.to_string() });
        }
        result
    }

    async fn sync_inner(&self, account: &str) -> Result<()> {
        let scope = {
            let mut inner = self.inner();
            let mut channels = self.lookup(&mut inner, account)?;
            // Sorted, so two group syncs always take shared channels in the same order.
            channels.sort();
            channels.dedup();
            inner.reserve(account, &channels)?;
            Scope { account: account.to_owned(), args: vec![account.to_owned()], channels }
        };
        let result = self.start(&scope, false).await;
        if result.is_err() {
            self.unreserve(&scope.channels);
        }
        result
    }

    /// Start mbsync for `scope`, whose channels are reserved; with `locked`, their locks are
    /// already ours (a takeover or handoff took them).
    async fn start(&self, scope: &Scope, locked: bool) -> Result<()> {
        let (account, channels) = (scope.account.as_str(), scope.channels.as_slice());
        let settings = &self.shared.settings;
        let path_var = std::env::var_os("PATH");
        let missing =
            |program: String| Error::MbsyncMissing { program, config: settings.paths.config_file() };
        let Some(program) = config::find_program(&settings.config.mbsync, path_var.as_deref()) else {
            if locked {
                self.shared.locks.release(channels).await;
            }
            return Err(missing(settings.config.mbsync.display().to_string()));
        };
        if !locked {
            self.shared.locks.acquire(channels).await.map_err(|err| match err {
                LockError::Elsewhere { channel, holder } => {
                    Error::LockedElsewhere { account: account.into(), channel, holder }
                }
                LockError::Failed(reason) => Error::MbsyncFailed {
                    account: account.into(),
                    reason: format!("mbsync was not started: the sync lock could not be taken: {reason}"),
                },
            })?;
        }
        if let Err(err) = self.check_after_locking(scope) {
            self.shared.locks.release(channels).await;
            return Err(err);
        }
        let mut args = vec!["-c".to_owned(), settings.mbsync_config.display().to_string(), "-V".to_owned()];
        args.extend(scope.args.iter().cloned());
        let mbsync = match Mbsync::spawn(&program, &args) {
            Ok(mbsync) => mbsync,
            Err(err) => {
                self.shared.locks.release(channels).await;
                return Err(if err.kind() == std::io::ErrorKind::NotFound {
                    missing(program.display().to_string())
                } else {
                    Error::MbsyncFailed {
                        account: account.into(),
                        reason: format!("cannot start mbsync: {err}"),
                    }
                });
            }
        };
        tracing::info!(account, pid = mbsync.pid(), "sync started");
        let mut command = vec![program.display().to_string()];
        command.extend(args);
        let (stop_tx, stop_rx) = mpsc::unbounded_channel();
        let record = {
            let mut inner = self.inner();
            let slot = inner.accounts.entry(account.to_owned()).or_default();
            slot.progress.start(mbsync.pid(), command, now_us());
            slot.run = Some(RunHandle { stop: stop_tx, task: None });
            slot.progress.record().clone()
        };
        self.emit(CoreEvent::Progress { account: account.into(), record: std::sync::Arc::new(record) });
        let task = tokio::spawn(self.clone().boxed_run_task(scope.clone(), mbsync, stop_rx));
        if let Some(run) = self.inner().accounts.get_mut(account).and_then(|s| s.run.as_mut()) {
            run.task = Some(task);
        }
        Ok(())
    }

    /// With the locks held, the last checks before mbsync starts: no shutdown under way, the
    /// config still maps the account to the channels just locked (it may have been edited
    /// meanwhile), and no bare mbsync (one that holds no lock name) syncs any of them.
    fn check_after_locking(&self, scope: &Scope) -> Result<()> {
        let account = scope.account.as_str();
        let config = {
            let mut inner = self.inner();
            if inner.shutting_down {
                return Err(shutting_down(account));
            }
            self.reload(&mut inner);
            let config = inner.mbsync.as_ref().map_err(|e| Error::ConfigError(e.clone()))?;
            let missing = scope.channels.iter().find(|c| config.channel(c).is_none());
            let same = match scope.args.as_slice() {
                [name] if name == account => {
                    let mut now = config.channels_of(account).unwrap_or_default();
                    now.sort();
                    now.dedup();
                    now == scope.channels
                }
                _ => missing.is_none(),
            };
            if !same {
                return Err(Error::ConfigError(format!(
                    "the mbsync config changed while the sync of {account:?} was starting; try again"
                )));
            }
            config.clone()
        };
        match self.find_bare(&config, &scope.channels) {
            Some(found) => Err(Error::LockedElsewhere {
                account: account.into(),
                channel: found.channel,
                holder: format!("a bare mbsync, PID {}: {}", found.pid, found.command.join(" ")),
            }),
            None => Ok(()),
        }
    }

    /// A bare mbsync of this user and config that syncs one of `channels`.
    fn find_bare(&self, config: &MbsyncConfig, channels: &[String]) -> Option<foreign::Found> {
        self.search(config, channels, foreign::find)
    }

    /// Run `f` with a search for bare mbsync runs of this user and config on `channels`.
    pub(crate) fn search<T>(
        &self,
        config: &MbsyncConfig,
        channels: &[String],
        f: impl FnOnce(&foreign::Search<'_>) -> T,
    ) -> T {
        let settings = &self.shared.settings;
        f(&foreign::Search {
            channels,
            config,
            config_path: &settings.mbsync_config,
            default_config_path: &settings.paths.mbsync_config(None),
            uid: crate::process::my_uid(),
            own_pid: std::process::id(),
        })
    }

    /// Stop the service's own sync of `account` safely (SIGTERM, then SIGKILL after the grace
    /// period). Returns at once; the end comes as [`CoreEvent::Finished`].
    ///
    /// # Errors
    /// Invalid or unknown account, or no sync of it running here.
    pub fn cancel(&self, account: &str) -> Result<()> {
        validate_name(account)?;
        let mut inner = self.inner();
        // A running sync can be stopped even if its account vanished from a (broken) config.
        if let Some(run) = inner.accounts.get(account).and_then(|s| s.run.as_ref()) {
            return if run.stop.send(Stop::Cancel).is_ok() {
                Ok(())
            } else {
                Err(Error::NotRunning { account: account.into() })
            };
        }
        self.lookup(&mut inner, account)?;
        match inner.accounts.get(account).and_then(|s| s.run.as_ref()) {
            Some(run) if run.stop.send(Stop::Cancel).is_ok() => Ok(()),
            _ => Err(Error::NotRunning { account: account.into() }),
        }
    }

    /// Stop the service's own sync of `account` and start it again once it has ended (a stuck
    /// sync's "Restart": mbsync's journal makes the stop safe and the new run exact).
    ///
    /// # Errors
    /// Invalid or unknown account, or no sync of it running here.
    pub fn restart(&self, account: &str) -> Result<()> {
        validate_name(account)?;
        let inner = self.inner();
        match inner.accounts.get(account).and_then(|s| s.run.as_ref()) {
            Some(run) if run.stop.send(Stop::Restart).is_ok() => Ok(()),
            _ => Err(Error::NotRunning { account: account.into() }),
        }
    }

    /// Resolves once every event sent so far has been published.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.emit(CoreEvent::Flush(tx));
        let _ = rx.await;
    }

    /// Stop every run and wait until each is reaped and its locks released. The runs stopped
    /// here are recorded as interrupted, and [`Core::resume_interrupted`] restarts them.
    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut inner = self.inner();
            inner.shutting_down = true;
            inner
                .accounts
                .values_mut()
                .filter_map(|slot| {
                    let run = slot.run.as_mut()?;
                    let _ = run.stop.send(Stop::Shutdown);
                    run.task.take()
                })
                .collect()
        };
        for task in tasks {
            if let Err(err) = task.await {
                tracing::error!(%err, "a run task failed");
            }
        }
    }

    /// Restart the syncs an earlier shutdown interrupted (mbsync's journal makes that exact).
    pub async fn resume_interrupted(&self) {
        let accounts: Vec<String> = {
            let mut inner = self.inner();
            let names: Vec<String> =
                inner.state.accounts.iter().filter(|(_, s)| s.interrupted).map(|(n, _)| n.clone()).collect();
            for name in &names {
                if let Some(s) = inner.state.accounts.get_mut(name) {
                    // Resumed once: a resume that cannot start is not retried at every start.
                    s.interrupted = false;
                }
            }
            names
        };
        for account in accounts {
            match self.sync(&account).await {
                Ok(()) => tracing::info!(account, "resumed a sync interrupted by the last shutdown"),
                Err(err) => tracing::warn!(account, %err, "cannot resume an interrupted sync"),
            }
        }
    }

    /// [`Core::run_task`] behind a named type: a restarted run starts the next one, and a future
    /// that contains its own type cannot be checked for `Send`.
    fn boxed_run_task(
        self,
        scope: Scope,
        mbsync: Mbsync,
        stop: mpsc::UnboundedReceiver<Stop>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.run_task(scope, mbsync, stop))
    }

    /// The run task: see the module docs.
    async fn run_task(self, scope: Scope, mut mbsync: Mbsync, mut stop: mpsc::UnboundedReceiver<Stop>) {
        let account = scope.account.clone();
        let limits = self.shared.settings.config.run_limits();
        let sink = CoreSink { core: &self, account: &account };
        let ended = run::drive(&mut mbsync, &sink, &mut stop, limits).await;
        let outcome = ended.outcome();
        tracing::info!(account, ?outcome, "sync ended");
        self.shared.mbsync_ended.notify_one();
        // Reaped: now the locks may go, and only then does the world hear of the end.
        self.shared.locks.release(&scope.channels).await;
        let (record, state) = {
            let mut inner = self.inner();
            for channel in &scope.channels {
                inner.busy.remove(channel);
            }
            let slot = inner.accounts.entry(account.clone()).or_default();
            slot.run = None;
            slot.progress.finish(&outcome, now_us());
            let record = slot.progress.record().clone();
            inner.state.accounts.insert(
                account.clone(),
                state::AccountState {
                    last_result: record.last_result.clone(),
                    last_error: record.last_error.clone(),
                    finished_at: record.finished_at,
                    interrupted: ended.stopped == Some(Stop::Shutdown) && outcome == Outcome::Interrupted,
                },
            );
            (record, (inner.state.clone(), inner.store.clone()))
        };
        // Saved outside the lock: an fsync must not stall other accounts' progress.
        let (state, store) = state;
        if let Err(err) = store.save(&state) {
            tracing::warn!(%err, "cannot save the state file");
        }
        self.emit(CoreEvent::Progress { account: account.clone(), record: std::sync::Arc::new(record) });
        let (ok, message) = match outcome {
            Outcome::Ok => (true, "sync finished".to_owned()),
            Outcome::Cancelled => (false, "sync cancelled".to_owned()),
            Outcome::Interrupted if ended.stopped == Some(Stop::Restart) => {
                (false, "sync restarted".to_owned())
            }
            Outcome::Interrupted => {
                (false, "sync interrupted; it resumes when the service is back".to_owned())
            }
            Outcome::Failed(reason) => (false, reason),
        };
        self.emit(CoreEvent::Finished { account: account.clone(), ok, message });
        if ended.stopped == Some(Stop::Restart)
            && let Err(err) = self.sync(&account).await
        {
            tracing::warn!(account, %err, "cannot restart the sync");
        }
    }

    fn with_slot<T>(&self, account: &str, f: impl FnOnce(&mut Slot) -> T) -> T {
        let mut inner = self.inner();
        match inner.accounts.get_mut(account) {
            Some(slot) => f(slot),
            None => f(inner.accounts.entry(account.to_owned()).or_default()),
        }
    }

    /// A lock name of ours was taken away (a forced takeover): stop the run that held it, since
    /// its channel may now be synced by someone else.
    pub fn lock_lost(&self, channel: &str) {
        let inner = self.inner();
        let Some(account) = inner.busy.get(channel) else { return };
        if let Some(run) = inner.accounts.get(account).and_then(|s| s.run.as_ref()) {
            tracing::warn!(account, channel, "lost the lock of a running sync; stopping it");
            let _ = run.stop.send(Stop::LockLost);
        }
    }

    /// Feed parsed events to the model; whether the record changed.
    fn apply(&self, account: &str, events: &mut Vec<crate::parser::Event>) -> bool {
        if events.is_empty() {
            return false;
        }
        let now = now_us();
        self.with_slot(account, |slot| {
            let mut changed = false;
            for event in events.drain(..) {
                changed |= slot.progress.apply(&event, now);
            }
            changed
        })
    }

    fn publish(&self, account: &str) {
        let record = self.with_slot(account, |slot| slot.progress.record().clone());
        self.emit(CoreEvent::Progress { account: account.to_owned(), record: std::sync::Arc::new(record) });
    }
}

/// A run's progress goes into its account's slot and out as [`CoreEvent::Progress`].
struct CoreSink<'a, L: Locks> {
    core: &'a Core<L>,
    account: &'a str,
}

impl<L: Locks> run::Sink for CoreSink<'_, L> {
    fn apply(&self, events: &mut Vec<crate::parser::Event>) -> bool {
        self.core.apply(self.account, events)
    }

    fn stopping(&self) {
        self.core.with_slot(self.account, |slot| slot.progress.stopping(now_us()));
    }

    fn stalled(&self, stalled: bool) {
        self.core.with_slot(self.account, |slot| slot.progress.set_stuck(stalled, now_us()));
    }

    fn publish(&self) {
        self.core.publish(self.account);
    }
}

impl Inner {
    /// Mark `channels` busy for `account` before the first await, so a concurrent `Sync` or
    /// `TakeOver` sees them taken.
    fn reserve(&mut self, account: &str, channels: &[String]) -> Result<()> {
        if self.shutting_down {
            return Err(shutting_down(account));
        }
        if let Some((channel, _)) = channels.iter().find_map(|c| self.busy.get_key_value(c)) {
            return Err(Error::AlreadySyncing { account: account.into(), channel: channel.clone() });
        }
        for channel in channels {
            self.busy.insert(channel.clone(), account.to_owned());
        }
        Ok(())
    }

    /// The record an account shows: its own run's, else that of an external sync sharing one of
    /// its channels, else its own last state.
    fn view(&self, account: &str, now: u64, overdue_after: u64) -> Record {
        let Some(slot) = self.accounts.get(account) else { return Record::default() };
        let own = slot.progress.record();
        if slot.run.is_some() {
            return own.clone();
        }
        match self.externals.values().find(|e| slot.channels.iter().any(|c| e.channels.contains(c))) {
            Some(external) => external.record(own, now, overdue_after),
            None => own.clone(),
        }
    }
}

/// Read the mbsync config as the installed mbsync does: a file it refuses is refused with its own
/// `FILE:LINE:` message (asked only when the file changed, through `check`), else the accounts.
///
/// # Errors
/// Why the config cannot be used, for a person.
pub fn read_mbsync_config(
    check: &mut mbsync_check::Cache,
    settings: &Settings,
) -> Result<MbsyncConfig, String> {
    let path = &settings.mbsync_config;
    // A device, FIFO or directory (`-c /dev/zero`) is no config, and reading one may never end;
    // nor is a file of many MiB. Refused before mbsync is asked or a byte read.
    if let Ok(meta) = std::fs::metadata(path)
        && (!meta.is_file() || meta.len() > MAX_CONFIG_BYTES)
    {
        let what = if meta.is_file() { "larger than 16 MiB" } else { "not a regular file" };
        return Err(format!(
            "the mbsync config {} is {what}; give the path of your mbsyncrc",
            path.display()
        ));
    }
    let program = || config::find_program(&settings.config.mbsync, std::env::var_os("PATH").as_deref());
    check.check(path, program).map_err(|err| {
        format!("mbsync refuses the config file {}: {err}; fix what it names", path.display())
    })?;
    let bytes = std::fs::read(path)
        .map_err(|err| format!("cannot read the mbsync config {}: {err}", path.display()))?;
    mbsyncrc::parse_bytes(&bytes)
        .map_err(|err| format!("the mbsync config {} is invalid: {err}", path.display()))
}

/// No mbsync config comes near this; a bigger file is the wrong one.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Read and parse the mbsync config into `inner`, keeping the slots of accounts that remain
/// (and of running ones even if they vanished from the file).
///
/// A file the installed mbsync refuses is refused (see [`read_mbsync_config`]).
fn reload_into(inner: &mut Inner, settings: &Settings) {
    let parsed = read_mbsync_config(&mut inner.mbsync_check, settings);
    // A broken edit loses nothing: the accounts (and their progress) of the last good read stay
    // visible; what needs the config answers ConfigError until it is fixed.
    let Ok(config) = &parsed else {
        inner.mbsync = parsed;
        return;
    };
    let names: BTreeSet<String> =
        config.account_names().into_iter().filter(|name| validate_name(name).is_ok()).collect();
    inner.accounts.retain(|name, slot| names.contains(name) || slot.run.is_some());
    for name in names {
        let state = inner.state.accounts.get(&name).cloned();
        let channels = config.channels_of(&name).unwrap_or_default();
        inner
            .accounts
            .entry(name)
            .or_insert_with(|| {
                let mut slot = Slot::default();
                if let Some(s) = state {
                    slot.progress.restore_last(s.last_result, s.last_error, s.finished_at);
                }
                slot
            })
            .channels = channels;
    }
    inner.mbsync = parsed;
}

fn shutting_down(account: &str) -> Error {
    Error::MbsyncFailed {
        account: account.into(),
        reason: "the service is shutting down; try again when it is back".into(),
    }
}

fn known_list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

/// Refuse names that can never be an mbsync account, before they reach anything else.
///
/// # Errors
/// `InvalidAccount` with the reason.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason: &str| Err(Error::InvalidAccount { name: name.into(), reason: reason.into() });
    if let Err(err) = names::lock_name(name) {
        return invalid(&err.to_string());
    }
    if name.starts_with('-') {
        return invalid("it starts with '-', which mbsync would read as an option");
    }
    if name.chars().any(char::is_control) {
        return invalid("it contains control characters");
    }
    if name.trim() != name {
        return invalid("it has leading or trailing white space");
    }
    if name.contains(':') {
        return invalid("':' selects mailboxes (CHANNEL:BOX); give a whole channel or group");
    }
    Ok(())
}
