//! One object per account, `/org/himalaya/Sync/account/<label>`, interface
//! `org.himalaya.Sync.Account`: its properties emit `PropertiesChanged`, so `GDBusProxy` and Plasma
//! bindings follow an account with no code.

use zbus::interface;

use super::record::{Dict, to_dict};
use crate::progress::Record;

/// The account objects' interface.
pub const ACCOUNT_INTERFACE: &str = "org.himalaya.Sync.Account";

/// An account object: a copy of the account's last published record.
pub struct Account {
    pub(crate) name: String,
    pub(crate) record: std::sync::Arc<Record>,
}

#[interface(name = "org.himalaya.Sync.Account")]
impl Account {
    /// The account name, as mbsync knows it.
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// `idle`, `syncing`, `stopping`, `stuck`, `external` or `failed`.
    #[zbus(property)]
    pub(crate) fn state(&self) -> String {
        self.record.state.as_str().to_owned()
    }

    /// Who runs the current sync: `service`, `client`, `process`, or empty when none runs.
    #[zbus(property)]
    pub(crate) fn owner(&self) -> String {
        self.record.owner.map(|o| o.as_str().to_owned()).unwrap_or_default()
    }

    /// The PID of the running mbsync, 0 when none runs.
    #[zbus(property)]
    pub(crate) fn pid(&self) -> u32 {
        self.record.pid.unwrap_or(0)
    }

    /// The whole progress record.
    #[zbus(property)]
    fn progress(&self) -> Dict {
        to_dict(&self.record)
    }
}
