//! `org.himalaya.Sync` on `/org/himalaya/Sync`: each method is one call into the core.

use std::collections::HashMap;

use zbus::{interface, message::Header, object_server::SignalEmitter};

use super::{
    errors::SyncError,
    lock::BusLocks,
    record::{Dict, to_dict, v},
};
use crate::core::{Core, Stopped};

/// What `TakeOver` and `RequestHandoff` answer.
fn stopped_dict(s: &Stopped) -> Dict {
    let mut d = Dict::new();
    if let Some(pid) = s.pid {
        d.insert("stopped_pid".into(), v(pid));
    }
    d.insert("stopped_owner".into(), v(s.owner.as_str()));
    d.insert("stopped_command".into(), v(s.command.clone()));
    d.insert("stopped_runtime_s".into(), v(s.runtime_s));
    d.insert("restarted".into(), v(s.restarted.clone()));
    d
}

/// zbus gives a method without arguments whatever body came; a call with arguments is a wrong
/// call, answered as one (as for every other method) instead of quietly served.
fn no_arguments(header: &Header<'_>, method: &str) -> Result<(), SyncError> {
    match header.signature() {
        zbus::Signature::Unit => Ok(()),
        other => Err(SyncError::ZBus(
            zbus::fdo::Error::InvalidArgs(format!(
                "{method} takes no arguments, but was called with signature \"{other}\""
            ))
            .into(),
        )),
    }
}

/// The main interface.
pub struct Service {
    pub(crate) core: Core<BusLocks>,
}

/// The service interface's name (as in the `#[interface]` below), for signals emitted by hand.
pub const SERVICE_INTERFACE: &str = "org.himalaya.Sync";

#[interface(
    name = "org.himalaya.Sync",
    proxy(default_path = "/org/himalaya/Sync", default_service = "org.himalaya.Sync")
)]
impl Service {
    /// The channels and groups of the user's mbsync config.
    #[allow(clippy::needless_pass_by_value)] // zbus hands the header over by value.
    fn list_accounts(&self, #[zbus(header)] header: Header<'_>) -> Result<Vec<String>, SyncError> {
        no_arguments(&header, "ListAccounts")?;
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

    /// Stop whatever syncs the account outside the service (a lock holder or a bare mbsync),
    /// wait until it is gone, and restart the same scope supervised. Returns what was stopped.
    async fn take_over(&self, account: &str) -> Result<Dict, SyncError> {
        Ok(stopped_dict(&self.core.take_over(account).await?))
    }

    /// Ask the holder of the account's locks to hand over gracefully, then restart its scope
    /// here. Nothing is killed; on timeout the holder keeps its locks.
    async fn request_handoff(&self, account: &str, timeout_ms: u32) -> Result<Dict, SyncError> {
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
        Ok(stopped_dict(&self.core.request_handoff(account, timeout).await?))
    }

    /// The account's progress record.
    fn get_progress(&self, account: &str) -> Result<Dict, SyncError> {
        Ok(to_dict(&self.core.progress(account)?))
    }

    /// Every account's progress record.
    #[allow(clippy::needless_pass_by_value)] // zbus hands the header over by value.
    fn get_all_progress(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, Dict>, SyncError> {
        no_arguments(&header, "GetAllProgress")?;
        Ok(self.core.all_progress().iter().map(|(k, r)| (k.clone(), to_dict(r))).collect())
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

    /// Whether the service takes overdue or stuck external syncs over by itself; the one switch
    /// every client shows and toggles. Starts from config.toml's `auto_takeover`, then kept in
    /// the state file.
    #[zbus(property)]
    fn auto_takeover(&self) -> bool {
        self.core.auto_takeover()
    }

    #[zbus(property)]
    fn set_auto_takeover(&mut self, on: bool) -> zbus::fdo::Result<()> {
        self.core.set_auto_takeover(on).map_err(|err| {
            zbus::fdo::Error::Failed(format!(
                "AutoTakeover is {}, but only until the service restarts: the state file cannot be \
                 written ({err})",
                if on { "on" } else { "off" }
            ))
        })
    }

    /// Seconds after which an external sync counts as overdue (config.toml's
    /// `auto_takeover_timeout`).
    #[zbus(property(emits_changed_signal = "const"))]
    fn auto_takeover_timeout(&self) -> u32 {
        u32::try_from(self.core.auto_takeover_timeout()).unwrap_or(u32::MAX)
    }

    /// The service version.
    #[zbus(property(emits_changed_signal = "const"))]
    #[allow(clippy::unused_self)] // zbus property getters take `&self`.
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }
}
