//! `org.himalaya.Sync.LockHolder` at `/org/himalaya/Sync/LockHolder`: what a lock holder (an
//! `exec`) serves so that the service can follow its progress and ask it to hand over.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use zbus::{interface, object_server::SignalEmitter};

use super::{
    errors::SyncError,
    record::{Dict, to_dict},
};
use crate::{progress::Record, run::Stop};

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
    fn handoff(&self, account: &str, requester: &str) -> Result<(), SyncError> {
        if !self.handoff {
            return Err(SyncError::HandoffRefused(format!(
                "the holder of {:?} (himalaya-sync exec --no-handoff, PID {}) finishes its own run; \
                 wait for it, or use TakeOver",
                self.account,
                std::process::id()
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
