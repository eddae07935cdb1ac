//! `himalaya-sync exec ACCOUNT`: a well-behaved lock holder for cron, systemd timers and scripts.
//! It runs mbsync without the service, with the service's runner, parser and drive loop, under
//! every channel lock of the account, and serves `org.himalaya.Sync.LockHolder` so that the
//! service relays its progress and may ask it to hand over (DESIGN.md, "Takeover and handoff").
//!
//! Exit status: mbsync's (128+N if signal N ended it, 1 if it exited 0 yet printed an error: see
//! [`crate::runner::Exit::success`]); 0 after a handoff; 75 (`EX_TEMPFAIL`, "try again later")
//! when the account is being synced already, by the service or anyone else, and mbsync was not
//! started; 1 for a bad account, config or a missing mbsync.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use tokio::{signal::unix, sync::mpsc};
use zbus::{Connection, fdo::DBusProxy, names::BusName, object_server::SignalEmitter};

use crate::{
    bus::{
        BUS_NAME,
        holder::{HOLDER_PATH, LockHolder},
        lock::BusLocks,
        record::to_dict,
    },
    config,
    core::{LockError, Locks, Settings, read_mbsync_config, validate_name},
    foreign, mbsync_check, mbsyncrc,
    parser::Event,
    progress::{Owner, Progress, Record},
    run::{self, Stop},
    runner::Mbsync,
};

/// Exit status when the account is busy elsewhere (sysexits' `EX_TEMPFAIL`).
pub const EXIT_BUSY: u8 = 75;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("himalaya-sync exec: {message}");
    ExitCode::from(code)
}

/// The user's session bus, as cron sees it: `DBUS_SESSION_BUS_ADDRESS`, else
/// `$XDG_RUNTIME_DIR/bus`, else `/run/user/UID/bus`.
#[must_use]
pub fn session_bus_address() -> Option<String> {
    if let Some(address) = std::env::var("DBUS_SESSION_BUS_ADDRESS").ok().filter(|a| !a.is_empty()) {
        return Some(address);
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_absolute());
    let fallback = PathBuf::from(format!("/run/user/{}", crate::process::my_uid()));
    [runtime, Some(fallback)]
        .into_iter()
        .flatten()
        .map(|dir| dir.join("bus"))
        .find(|p| p.exists())
        .map(|p| format!("unix:path={}", p.display()))
}

/// Run `exec ACCOUNT`.
pub async fn exec(settings: Settings, account: &str, handoff: bool) -> ExitCode {
    if let Err(err) = validate_name(account) {
        return fail(1, &err.to_string());
    }
    let rc = &settings.mbsync_config;
    let config = match read_mbsync_config(&mut mbsync_check::Cache::default(), &settings) {
        Ok(config) => config,
        Err(message) => return fail(1, &message),
    };
    let Some(mut channels) = config.channels_of(account) else {
        return fail(1, &format!("no account named {account:?} in {}", rc.display()));
    };
    channels.sort();
    channels.dedup();
    let path_var = std::env::var_os("PATH");
    let Some(program) = config::find_program(&settings.config.mbsync, path_var.as_deref()) else {
        return fail(
            1,
            &format!("mbsync ({}) was not found; install isync", settings.config.mbsync.display()),
        );
    };
    let args = vec!["-c".to_owned(), rc.display().to_string(), "-V".to_owned(), account.to_owned()];
    let conn = match session_bus_address() {
        Some(address) => match connect(&address).await {
            Ok(conn) => Some(conn),
            Err(err) => {
                tracing::warn!(%err, "cannot connect to the session bus");
                None
            }
        },
        None => None,
    };
    let Some(conn) = conn else {
        eprintln!(
            "himalaya-sync exec: warning: no session bus; running mbsync without the lock (mbsync's \
             own mailbox locks still protect the mail)"
        );
        return run_unlocked(&settings, &program, &args).await;
    };
    let holder = Holder { conn, account: account.to_owned(), channels, settings, handoff };
    holder.run(&program, &args, &config).await
}

async fn connect(address: &str) -> zbus::Result<Connection> {
    zbus::connection::Builder::address(address).build().await
}

/// A sink for a run nobody watches.
struct Unwatched;

impl run::Sink for Unwatched {
    fn apply(&self, events: &mut Vec<Event>) -> bool {
        events.clear();
        false
    }
    fn stopping(&self) {}
    fn stalled(&self, _: bool) {}
    fn publish(&self) {}
}

async fn run_unlocked(settings: &Settings, program: &std::path::Path, args: &[String]) -> ExitCode {
    let mut mbsync = match Mbsync::spawn(program, args) {
        Ok(m) => m,
        Err(err) => return fail(1, &format!("cannot start mbsync: {err}")),
    };
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel();
    forward_signals(stop_tx);
    let ended = run::drive(&mut mbsync, &Unwatched, &mut stop_rx, settings.config.run_limits()).await;
    exit_of(&ended)
}

/// mbsync's exit status as ours; its reason on stderr when it failed.
fn exit_of(ended: &run::Ended) -> ExitCode {
    if ended.stopped == Some(Stop::Handoff) || ended.exit.success() {
        return ExitCode::SUCCESS;
    }
    eprintln!("himalaya-sync exec: {}", ended.exit.reason());
    let code = match (ended.exit.code, ended.exit.signal) {
        // 0 with an error line (isync's exit 0 after a failed store) is a failure too.
        (Some(code), _) if code != 0 => code,
        (None, Some(signal)) => 128 + signal,
        _ => 1,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// SIGTERM and SIGINT stop mbsync safely instead of killing exec alone.
fn forward_signals(stop: mpsc::UnboundedSender<Stop>) {
    let (Ok(mut term), Ok(mut int)) =
        (unix::signal(unix::SignalKind::terminate()), unix::signal(unix::SignalKind::interrupt()))
    else {
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop.send(Stop::Shutdown);
    });
}

struct Holder {
    conn: Connection,
    account: String,
    channels: Vec<String>,
    settings: Settings,
    handoff: bool,
}

/// A holder's run: its model and the channel to its publisher.
struct HolderSink {
    progress: Mutex<Progress>,
    record: Arc<Mutex<Record>>,
    publish: mpsc::UnboundedSender<Record>,
}

impl HolderSink {
    fn with<T>(&self, f: impl FnOnce(&mut Progress) -> T) -> T {
        f(&mut self.progress.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl run::Sink for HolderSink {
    fn apply(&self, events: &mut Vec<Event>) -> bool {
        let now = now_us();
        self.with(|p| events.drain(..).fold(false, |changed, e| p.apply(&e, now) | changed))
    }

    fn stopping(&self) {
        self.with(|p| p.stopping(now_us()));
    }

    fn stalled(&self, stalled: bool) {
        self.with(|p| p.set_stuck(stalled, now_us()));
    }

    fn publish(&self) {
        let record = self.with(|p| p.record().clone());
        record.clone_into(&mut self.record.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = self.publish.send(record);
    }
}

impl Holder {
    async fn run(
        self,
        program: &std::path::Path,
        args: &[String],
        config: &mbsyncrc::MbsyncConfig,
    ) -> ExitCode {
        let (stop_tx, mut stop_rx) = mpsc::unbounded_channel();
        let record = Arc::new(Mutex::new(Record::default()));
        // Served before any name is taken, so a Handoff can never meet a missing object.
        let iface = LockHolder {
            account: self.account.clone(),
            handoff: self.handoff,
            stop: stop_tx.clone(),
            record: Arc::clone(&record),
        };
        if let Err(err) = self.conn.object_server().at(HOLDER_PATH, iface).await {
            return fail(1, &format!("cannot serve {HOLDER_PATH}: {err}"));
        }
        let Ok(dbus) = DBusProxy::new(&self.conn).await else { return fail(1, "the bus does not answer") };
        // Subscribed before the names are requested: a takeover right after must not be missed.
        let Ok(lost) = dbus.receive_name_lost().await else { return fail(1, "the bus does not answer") };
        let locks = BusLocks::new(self.conn.clone());
        if let Err(err) = locks.acquire(&self.channels).await {
            return match err {
                LockError::Elsewhere { channel, holder } => {
                    let by_service = self.held_by_service(&dbus, &channel).await;
                    let who = if by_service { "the himalaya-sync service".to_owned() } else { holder };
                    fail(
                        EXIT_BUSY,
                        &format!(
                            "{:?} is already being synced by {who} (channel {channel:?}); mbsync was not started",
                            self.account
                        ),
                    )
                }
                LockError::Failed(reason) => fail(1, &format!("cannot take the sync lock: {reason}")),
            };
        }
        self.watch_lost(lost, stop_tx.clone());
        forward_signals(stop_tx);
        let search = foreign::Search {
            channels: &self.channels,
            config,
            config_path: &self.settings.mbsync_config,
            default_config_path: &self.settings.paths.mbsync_config(None),
            uid: crate::process::my_uid(),
            own_pid: std::process::id(),
        };
        if let Some(found) = foreign::find(&search) {
            locks.release(&self.channels).await;
            return fail(
                EXIT_BUSY,
                &format!(
                    "a bare mbsync (PID {}) already syncs channel {:?}; mbsync was not started",
                    found.pid, found.channel
                ),
            );
        }
        // Taken over (or asked to stop) before mbsync even started: start nothing. The bus is
        // asked too: the NameLost of a takeover may still be on its way.
        if !self.owns_all(&dbus).await {
            locks.release(&self.channels).await;
            return fail(EXIT_BUSY, "the lock was taken over before mbsync started; mbsync was not started");
        }
        if let Ok(reason) = stop_rx.try_recv() {
            locks.release(&self.channels).await;
            if reason == Stop::Handoff {
                tracing::info!(account = self.account, "handed over before mbsync started");
                return ExitCode::SUCCESS;
            }
            return fail(
                EXIT_BUSY,
                &format!("stopped before mbsync started ({reason:?}); mbsync was not started"),
            );
        }
        let mut mbsync = match Mbsync::spawn(program, args) {
            Ok(m) => m,
            Err(err) => {
                locks.release(&self.channels).await;
                return fail(1, &format!("cannot start mbsync: {err}"));
            }
        };
        let mut command = vec![program.display().to_string()];
        command.extend(args.iter().cloned());
        let mut progress = Progress::new();
        progress.start(mbsync.pid(), command, now_us());
        progress.set_owner(Owner::Client);
        let (publish_tx, publish_rx) = mpsc::unbounded_channel();
        let publisher = tokio::spawn(publish(self.conn.clone(), self.account.clone(), publish_rx));
        let sink = HolderSink { progress: Mutex::new(progress), record, publish: publish_tx };
        run::Sink::publish(&sink);
        let ended = run::drive(&mut mbsync, &sink, &mut stop_rx, self.settings.config.run_limits()).await;
        // Reaped. The last progress goes out before the names, so the next owner starts after it.
        let outcome = ended.outcome();
        sink.with(|p| p.finish(&outcome, now_us()));
        run::Sink::publish(&sink);
        drop(sink);
        let _ = publisher.await;
        locks.release(&self.channels).await;
        if ended.stopped == Some(Stop::Handoff) {
            tracing::info!(account = self.account, "handed over");
        }
        exit_of(&ended)
    }

    /// Whether this connection still owns every lock of the account.
    async fn owns_all(&self, dbus: &DBusProxy<'_>) -> bool {
        let Some(me) = self.conn.unique_name() else { return false };
        for channel in &self.channels {
            let Ok(lock) = crate::names::lock_name(channel) else { return false };
            let Ok(lock) = BusName::try_from(lock.as_str()) else { return false };
            match dbus.get_name_owner(lock).await {
                Ok(owner) if owner == *me => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether the service's connection owns the lock of `channel`.
    async fn held_by_service(&self, dbus: &DBusProxy<'_>, channel: &str) -> bool {
        let Ok(lock) = crate::names::lock_name(channel) else { return false };
        let (Ok(lock), Ok(service)) = (BusName::try_from(lock.as_str()), BusName::try_from(BUS_NAME)) else {
            return false;
        };
        match (dbus.get_name_owner(lock).await, dbus.get_name_owner(service).await) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    /// A lock name taken away (a forced takeover) stops mbsync at once.
    fn watch_lost(&self, mut lost: zbus::fdo::NameLostStream, stop: mpsc::UnboundedSender<Stop>) {
        let ours: Vec<String> =
            self.channels.iter().filter_map(|c| crate::names::lock_name(c).ok()).collect();
        tokio::spawn(async move {
            while let Some(signal) = lost.next().await {
                if let Ok(args) = signal.args()
                    && ours.iter().any(|n| n == args.name.as_str())
                {
                    tracing::warn!(name = %args.name, "lock taken away; stopping mbsync");
                    let _ = stop.send(Stop::LockLost);
                }
            }
        });
    }
}

/// Emit the holder's records as `ProgressChanged`, in order, until the run ends.
async fn publish(conn: Connection, account: String, mut records: mpsc::UnboundedReceiver<Record>) {
    let Ok(emitter) = SignalEmitter::new(&conn, HOLDER_PATH) else { return };
    while let Some(record) = records.recv().await {
        if let Err(err) = LockHolder::progress_changed(&emitter, &account, to_dict(&record)).await {
            tracing::debug!(%err, "cannot emit ProgressChanged");
        }
    }
}
