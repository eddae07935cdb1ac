//! The core's errors. Each variant says what went wrong and what a person can do about it; the
//! bus layer maps them one to one onto `org.himalaya.Sync.Error.*` names (`bus::errors`).

use std::path::PathBuf;

/// An error of the core, independent of D-Bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "no account named {name:?} in {config}; known accounts: {known}. Check the name, or add a \
         Channel or Group of that name to the mbsync config"
    )]
    UnknownAccount { name: String, config: PathBuf, known: String },

    #[error("{name:?} is not a valid account name: {reason}")]
    InvalidAccount { name: String, reason: String },

    #[error(
        "account {account:?} is already being synced by this service (channel {channel:?}); wait \
         for it to finish or cancel it"
    )]
    AlreadySyncing { account: String, channel: String },

    #[error(
        "channel {channel:?} of account {account:?} is being synced by another program ({holder}); \
         wait for it to finish, or stop it"
    )]
    LockedElsewhere { account: String, channel: String, holder: String },

    #[error("no sync of account {account:?} is running")]
    NotRunning { account: String },

    #[error(
        "the holder of account {account:?} did not hand over within {timeout_ms} ms; it keeps \
         syncing. Try again with a longer timeout, or use TakeOver to stop it"
    )]
    HandoffTimeout { account: String, timeout_ms: u64 },

    #[error("no handoff of account {account:?}: {reason}")]
    HandoffRefused { account: String, reason: String },

    #[error(
        "mbsync ({program}) was not found or is not executable; install isync, or set `mbsync` \
         in {config}"
    )]
    MbsyncMissing { program: String, config: PathBuf },

    #[error("mbsync failed for account {account:?}: {reason}")]
    MbsyncFailed { account: String, reason: String },

    #[error("{0}")]
    ConfigError(String),

    #[error("{0}")]
    PermissionDenied(String),
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
