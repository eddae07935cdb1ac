//! The daemon: connect, serve, publish core events, stop cleanly.
//!
//! Shutdown (SIGTERM, SIGINT, or losing `org.himalaya.Sync`): every run is stopped safely
//! (SIGTERM to mbsync's group, SIGKILL after the grace period), reaped, its locks released, then
//! the process exits 0.

use std::{collections::BTreeMap, sync::Arc};

use futures_util::StreamExt;
use tokio::{signal::unix, sync::mpsc};
use zbus::{Connection, connection, fdo::DBusProxy, object_server::InterfaceRef};

use super::{
    BUS_NAME, PATH,
    account::{ACCOUNT_INTERFACE, Account, Changed},
    jobview,
    lock::BusLocks,
    notify, record,
    service::{SERVICE_INTERFACE, Service, ServiceSignals},
};
use crate::{
    core::{Core, CoreEvent, Settings},
    names,
    progress::Record,
};

/// Errors that keep the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot connect to the session bus: {0}")]
    Connect(zbus::Error),
    #[error("another himalaya-sync daemon already owns {BUS_NAME} on this bus")]
    NameTaken,
    #[error("D-Bus error: {0}")]
    Bus(#[from] zbus::Error),
    #[error("cannot install a signal handler: {0}")]
    Signal(#[from] std::io::Error),
}

/// Run the daemon on the session bus until asked to stop.
///
/// # Errors
/// The bus cannot be reached or the name is taken.
pub async fn run(settings: Settings) -> Result<(), DaemonError> {
    // Connect without a name first: the objects must be served before the name is taken, and
    // the lock needs the connection the objects live on.
    let conn = connection::Builder::session().build().await.map_err(DaemonError::Connect)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let core = Core::new(settings, BusLocks::new(conn.clone()), tx);
    serve(&conn, core.clone(), rx).await?;

    let dbus = DBusProxy::new(&conn).await?;
    let mut lost = dbus.receive_name_lost().await?;
    let flags = zbus::fdo::RequestNameFlags::DO_NOT_QUEUE;
    match conn.request_name_with_flags(BUS_NAME, flags).await {
        Ok(zbus::fdo::RequestNameReply::PrimaryOwner) => {}
        Ok(_) | Err(zbus::Error::NameTaken) => return Err(DaemonError::NameTaken),
        Err(err) => return Err(err.into()),
    }
    tracing::info!("serving {BUS_NAME}");
    super::follow::start(&conn, core.clone()).await?;
    core.scan_bare();
    tokio::spawn(crate::detect::watch(core.clone()));
    let resume = core.clone();
    tokio::spawn(async move { resume.resume_interrupted().await });

    let mut term = unix::signal(unix::SignalKind::terminate())?;
    let mut int = unix::signal(unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            signal = lost.next() => {
                let Some(signal) = signal else { break };
                let Ok(args) = signal.args() else { continue };
                if args.name.as_str() == BUS_NAME {
                    tracing::warn!("lost {BUS_NAME}; shutting down");
                    break;
                }
                // We also hear NameLost for our own releases: only a lock that someone else
                // owns now was really taken away.
                if let Some(channel) = names::channel_of_lock_name(args.name.as_str())
                    && let Ok(owner) = dbus.get_name_owner(args.name.clone()).await
                    && conn.unique_name().is_none_or(|ours| *ours != owner)
                {
                    core.lock_lost(&channel);
                }
            }
            () = conn.closed() => {
                tracing::warn!("the bus connection closed; shutting down");
                break;
            }
        }
    }
    tracing::info!("shutting down");
    core.shutdown().await;
    // The runs' final states and SyncFinished signals are queued: send them before leaving.
    core.flush().await;
    Ok(())
}

/// Serve the objects on `conn` and publish core events there. Does not take the bus name.
///
/// # Errors
/// An object cannot be registered.
pub async fn serve(
    conn: &Connection,
    core: Core<BusLocks>,
    events: mpsc::UnboundedReceiver<CoreEvent>,
) -> zbus::Result<()> {
    let server = conn.object_server();
    server.at(PATH, Service { core: core.clone() }).await?;
    let service: InterfaceRef<Service> = server.interface(PATH).await?;
    let mut accounts = BTreeMap::new();
    sync_account_objects(conn, &core, &mut accounts).await;
    let config = &core.settings().config;
    let notifier = config.notifications.then(|| notify::start(conn, core.clone(), config.stall_timeout));
    let jobs = jobview::start(conn, core.clone());
    tokio::spawn(publish(conn.clone(), core, service, accounts, events, Sinks { notifier, jobs }));
    Ok(())
}

/// Add objects for new accounts, remove those of vanished ones.
async fn sync_account_objects(
    conn: &Connection,
    core: &Core<BusLocks>,
    objects: &mut BTreeMap<String, String>,
) {
    let progress = core.records();
    let server = conn.object_server();
    let gone: Vec<String> = objects.keys().filter(|k| !progress.contains_key(*k)).cloned().collect();
    for name in gone {
        if let Some(path) = objects.remove(&name)
            && let Err(err) = server.remove::<Account, _>(path.as_str()).await
        {
            tracing::warn!(%path, %err, "cannot remove an account object");
        }
    }
    for (name, record) in progress {
        if objects.contains_key(&name) {
            continue;
        }
        let Ok(path) = names::account_path(&name) else { continue };
        match server.at(path.as_str(), Account { name: name.clone(), record: record.into() }).await {
            Ok(_) => {
                objects.insert(name, path);
            }
            Err(err) => tracing::warn!(%path, %err, "cannot serve an account object"),
        }
    }
}

/// The tasks that show records outside the bus API: desktop notifications (unless turned off)
/// and Plasma's job view.
struct Sinks {
    notifier: Option<mpsc::UnboundedSender<notify::Input>>,
    jobs: mpsc::UnboundedSender<jobview::Input>,
}

/// The one task that turns core events into signals, in order.
async fn publish(
    conn: Connection,
    core: Core<BusLocks>,
    service: InterfaceRef<Service>,
    mut objects: BTreeMap<String, String>,
    mut events: mpsc::UnboundedReceiver<CoreEvent>,
    sinks: Sinks,
) {
    let Sinks { notifier, jobs } = sinks;
    let tell = |input: notify::Input| {
        if let Some(notifier) = &notifier
            && notifier.send(input).is_err()
        {
            tracing::debug!("the notifier is gone");
        }
    };
    while let Some(event) = events.recv().await {
        let result = match event {
            CoreEvent::Progress { account, record } => {
                if notifier.is_some() {
                    tell(notify::Input::Record { account: account.clone(), record: record.clone() });
                }
                if jobs
                    .send(jobview::Input::Record { account: account.clone(), record: record.clone() })
                    .is_err()
                {
                    tracing::debug!("the job view task is gone");
                }
                publish_progress(&conn, &objects, &account, record).await
            }
            CoreEvent::Finished { account, ok, message } => {
                service.sync_finished(&account, ok, &message).await
            }
            // Said to people by the notifier; nothing on the bus API.
            CoreEvent::TookOver { account, why, stopped } => {
                tell(notify::Input::TookOver { account, why, stopped });
                Ok(())
            }
            CoreEvent::Problem { account, message } => {
                tell(notify::Input::Problem { account, message });
                Ok(())
            }
            CoreEvent::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
            CoreEvent::AccountsChanged(_) => {
                sync_account_objects(&conn, &core, &mut objects).await;
                let iface = service.get().await;
                iface.accounts_changed(service.signal_emitter()).await
            }
        };
        if let Err(err) = result {
            tracing::warn!(%err, "cannot emit a signal");
        }
    }
}

/// Publish a record: `ProgressChanged`, and the account object's new record in one
/// `PropertiesChanged` carrying every property that changed (a `GDBusProxy`, as in a GNOME Shell
/// extension, then never sees a new State beside an old Owner or Progress), both in one write.
/// Two writes cost two wakeups of the bus daemon and, as it reads each, two of this daemon's
/// runtime (the socket turns writable again); a publish is what the daemon does most while a
/// sync runs.
async fn publish_progress(
    conn: &Connection,
    objects: &BTreeMap<String, String>,
    account: &str,
    record: Arc<Record>,
) -> zbus::Result<()> {
    let progress = record::Wire(&record);
    let mut messages = Vec::with_capacity(2);
    messages.push(signal(conn, PATH, SERVICE_INTERFACE, "ProgressChanged").build(&(account, &progress))?);
    if let Some(path) = objects.get(account)
        && let Ok(iface) = conn.object_server().interface::<_, Account>(path.as_str()).await
    {
        let old = std::mem::replace(&mut iface.get_mut().await.record, record.clone());
        let changed = Changed::new(&old, &record, &progress);
        let body = (ACCOUNT_INTERFACE, changed, &[] as &[&str]);
        // Not expected (the path was valid when the object was served); the signal still goes.
        match signal(conn, path, PROPERTIES_INTERFACE, "PropertiesChanged").build(&body) {
            Ok(message) => messages.push(message),
            Err(err) => tracing::warn!(%path, %err, "cannot build PropertiesChanged"),
        }
    }
    conn.send_all(&messages).await
}

/// A signal from `path` of this connection, as `SignalEmitter::emit` builds it.
fn signal<'a>(
    conn: &'a Connection,
    path: &'a str,
    interface: &'static str,
    member: &'static str,
) -> zbus::message::Builder<'a> {
    let builder = zbus::Message::signal(path, interface, member);
    match conn.unique_name() {
        Some(name) => builder.sender(name),
        None => builder,
    }
}

const PROPERTIES_INTERFACE: &str = "org.freedesktop.DBus.Properties";
