//! The one place where core errors become D-Bus errors.

use zbus::DBusError;

use crate::error::Error;

/// Every error the service answers, named `org.himalaya.Sync.Error.<Variant>`; the text is the
/// core's message, written for a person.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org.himalaya.Sync.Error")]
pub enum SyncError {
    #[zbus(error)]
    ZBus(zbus::Error),
    UnknownAccount(String),
    InvalidAccount(String),
    AlreadySyncing(String),
    LockedElsewhere(String),
    NotRunning(String),
    HandoffTimeout(String),
    HandoffRefused(String),
    MbsyncMissing(String),
    MbsyncFailed(String),
    ConfigError(String),
    PermissionDenied(String),
}

impl From<Error> for SyncError {
    fn from(err: Error) -> Self {
        let text = err.to_string();
        match err {
            Error::UnknownAccount { .. } => Self::UnknownAccount(text),
            Error::InvalidAccount { .. } => Self::InvalidAccount(text),
            Error::AlreadySyncing { .. } => Self::AlreadySyncing(text),
            Error::LockedElsewhere { .. } => Self::LockedElsewhere(text),
            Error::NotRunning { .. } => Self::NotRunning(text),
            Error::HandoffTimeout { .. } => Self::HandoffTimeout(text),
            Error::HandoffRefused { .. } => Self::HandoffRefused(text),
            Error::MbsyncMissing { .. } => Self::MbsyncMissing(text),
            Error::MbsyncFailed { .. } => Self::MbsyncFailed(text),
            Error::ConfigError(_) => Self::ConfigError(text),
            Error::PermissionDenied(_) => Self::PermissionDenied(text),
        }
    }
}

impl SyncError {
    /// The D-Bus error name and message of an error a client received, for printing.
    #[must_use]
    pub fn describe(err: &zbus::Error) -> (String, String) {
        match err {
            zbus::Error::MethodError(name, message, _) => {
                (name.to_string(), message.clone().unwrap_or_default())
            }
            zbus::Error::FDO(fdo) => ("org.freedesktop.DBus.Error".into(), fdo.to_string()),
            other => ("org.freedesktop.DBus.Error.Failed".into(), other.to_string()),
        }
    }
}
