//! `org.himalaya.Sync.LockHolder` at `/org/himalaya/Sync/LockHolder`: what a lock holder (an
//! `exec`) serves so that the service can follow its progress and ask it to hand over.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use zbus::{
    Connection, fdo::DBusProxy, interface, message::Header, names::WellKnownName,
    object_server::SignalEmitter,
};

use super::{
    errors::SyncError,
    record::{Dict, to_dict},
};
use crate::{names::channel_of_lock_name, progress::Record, run::Stop};

/// Whether `caller` owns or is queued for a lock name this connection owns or is queued for (or,
/// once this holder holds none any more, for any lock name: its names have just gone to it).
async fn queued_for_our_locks(conn: &Connection, caller: &str) -> bool {
    let Some(me) = conn.unique_name().map(|n| n.as_str().to_owned()) else { return false };
    let Ok(dbus) = DBusProxy::new(conn).await else { return false };
    let Ok(names) = dbus.list_names().await else { return false };
    let (mut ours, mut theirs) = (false, false);
    for name in names.iter().filter(|n| channel_of_lock_name(n.as_str()).is_some()) {
        let Ok(name) = WellKnownName::try_from(name.as_str()) else { continue };
        let Ok(owners) = dbus.list_queued_owners(name).await else { continue };
        let (mine, its) = (owners.iter().any(|o| *o == me.as_str()), owners.iter().any(|o| *o == caller));
        if mine && its {
            return true;
        }
        (ours, theirs) = (ours || mine, theirs || its);
    }
    !ours && theirs
}

/// The holder's object path.
pub const HOLDER_PATH: &str = "/org/himalaya/Sync/LockHolder";

/// The interface a lock holder serves.
pub struct LockHolder {
    /// The account it syncs.
    pub account: String,
    /// Whether it hands over when asked (`exec --no-handoff` does not).
    pub handoff: bool,
    /// Stops its run.
    pub stop: mpsc::UnboundedSender<Stop>,
    /// Its current record.
    pub record: Arc<Mutex<Record>>,
}

#[interface(name = "org.himalaya.Sync.LockHolder", proxy(default_path = "/org/himalaya/Sync/LockHolder"))]
impl LockHolder {
    /// Hand the locks over to `requester` (queued for them): stop mbsync at a safe point, publish
    /// the last progress, reap it, release the names. Returns once the stop has begun.
    async fn handoff(
        &self,
        account: &str,
        requester: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), SyncError> {
        if !self.handoff {
            return Err(SyncError::HandoffRefused(format!(
                "the holder of {:?} (himalaya-sync exec --no-handoff, PID {}) finishes its own run; \
                 wait for it, or use TakeOver",
                self.account,
                std::process::id()
            )));
        }
        // Only to the caller itself, queued for our locks (as the service's RequestHandoff is):
        // anyone else's word would end this run for nobody.
        let caller = header.sender().map(|s| s.as_str().to_owned()).unwrap_or_default();
        if requester != caller || !queued_for_our_locks(conn, &caller).await {
            return Err(SyncError::HandoffRefused(format!(
                "the holder of {:?} hands its locks over only to the caller, queued for them; {caller} \
                 is not. Ask the service instead (RequestHandoff)",
                self.account
            )));
        }
        tracing::info!(account, requester, "handing over");
        self.stop.send(Stop::Handoff).map_err(|_| {
            SyncError::HandoffRefused("the run has already ended; the locks follow at once".into())
        })
    }

    /// The holder's progress record.
    fn get_progress(&self) -> Dict {
        to_dict(&self.record.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every meaningful change of its progress (throttled like the service's).
    #[zbus(signal)]
    pub async fn progress_changed(
        emitter: &SignalEmitter<'_>,
        account: &str,
        progress: Dict,
    ) -> zbus::Result<()>;
}
