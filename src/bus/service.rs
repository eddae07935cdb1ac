//! `org.himalaya.Sync` on `/org/himalaya/Sync`: each method is one call into the core.

use std::collections::HashMap;

use zbus::{interface, object_server::SignalEmitter};

use super::{
    errors::SyncError,
    lock::BusLocks,
    record::{Dict, to_dict},
};
use crate::core::Core;

/// The main interface.
pub struct Service {
    pub(crate) core: Core<BusLocks>,
}

#[interface(
    name = "org.himalaya.Sync",
    proxy(default_path = "/org/himalaya/Sync", default_service = "org.himalaya.Sync")
)]
impl Service {
    /// The channels and groups of the user's mbsync config.
    fn list_accounts(&self) -> Result<Vec<String>, SyncError> {
        Ok(self.core.accounts()?)
    }

    /// Start a supervised sync; fails if one of the account's channels is syncing anywhere.
    async fn sync(&self, account: &str) -> Result<(), SyncError> {
        Ok(self.core.sync(account).await?)
    }

    /// Stop the service's own sync of the account safely.
    fn cancel(&self, account: &str) -> Result<(), SyncError> {
        Ok(self.core.cancel(account)?)
    }

    /// The account's progress record.
    fn get_progress(&self, account: &str) -> Result<Dict, SyncError> {
        Ok(to_dict(&self.core.progress(account)?))
    }

    /// Every account's progress record.
    fn get_all_progress(&self) -> HashMap<String, Dict> {
        self.core.all_progress().iter().map(|(k, r)| (k.clone(), to_dict(r))).collect()
    }

    /// Every meaningful change of an account's progress (at most ~10/s, the final state always).
    #[zbus(signal)]
    pub async fn progress_changed(
        emitter: &SignalEmitter<'_>,
        account: &str,
        progress: Dict,
    ) -> zbus::Result<()>;

    /// The end of a supervised sync.
    #[zbus(signal)]
    pub async fn sync_finished(
        emitter: &SignalEmitter<'_>,
        account: &str,
        ok: bool,
        message: &str,
    ) -> zbus::Result<()>;

    /// The account names (as `ListAccounts`, without re-reading the config).
    #[zbus(property)]
    fn accounts(&self) -> Vec<String> {
        self.core.known_accounts()
    }

    /// The service version.
    #[zbus(property(emits_changed_signal = "const"))]
    #[allow(clippy::unused_self)] // zbus property getters take `&self`.
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }
}
