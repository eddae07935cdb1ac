//! One object per account, `/org/himalaya/Sync/account/<label>`, interface
//! `org.himalaya.Sync.Account`: its properties emit `PropertiesChanged`, so `GDBusProxy` and Plasma
//! bindings follow an account with no code.

use serde::ser::{Serialize, SerializeMap, Serializer};
use zbus::{Type, as_variant, interface, wire::Signature};

use super::record::{Dict, Wire, to_dict};
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

/// The `changed` dictionary (`a{sv}`) of the `PropertiesChanged` that goes with a publish: always
/// `Progress`, and those of `State`, `Owner` and `Pid` that differ from the last record, with
/// the values their getters return. Serialised straight from the borrowed record: building
/// `Variant`s of it would copy the whole progress dictionary at every publish.
pub(crate) struct Changed<'a> {
    progress: &'a Wire<'a>,
    state: Option<&'a str>,
    owner: Option<&'a str>,
    pid: Option<u32>,
}

impl<'a> Changed<'a> {
    pub(crate) fn new(old: &Record, new: &'a Record, progress: &'a Wire<'a>) -> Self {
        Self {
            progress,
            state: (old.state != new.state).then(|| new.state.as_str()),
            owner: (old.owner != new.owner).then(|| new.owner.map_or("", |o| o.as_str())),
            pid: (old.pid != new.pid).then(|| new.pid.unwrap_or(0)),
        }
    }
}

impl Serialize for Changed<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("Progress", &as_variant::Serialize(self.progress))?;
        if let Some(state) = self.state {
            map.serialize_entry("State", &as_variant::Serialize(&state))?;
        }
        if let Some(owner) = self.owner {
            map.serialize_entry("Owner", &as_variant::Serialize(&owner))?;
        }
        if let Some(pid) = self.pid {
            map.serialize_entry("Pid", &as_variant::Serialize(&pid))?;
        }
        map.end()
    }
}

impl Type for Changed<'_> {
    const SIGNATURE: &'static Signature = <std::collections::HashMap<&str, zbus::Variant<'_>>>::SIGNATURE;
}
