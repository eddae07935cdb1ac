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

    #[error("{} is not a valid account name: {reason}", shown(.name))]
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

/// A name as a message shows it: quoted, and cut short when long. A hostile name of many MiB must
/// not come back whole (or grown by escaping past the bus's message limit) in the answer.
fn shown(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    if name.chars().nth(MAX_CHARS).is_none() {
        return format!("{name:?}");
    }
    let head: String = name.chars().take(MAX_CHARS).collect();
    format!("{head:?}... ({} bytes)", name.len())
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_invalid_name_is_cut_short_in_the_message() {
        let err =
            Error::InvalidAccount { name: "\u{1}".repeat(1 << 20), reason: "control characters".into() };
        let text = err.to_string();
        assert!(text.len() < 512, "{} bytes", text.len());
        assert!(text.contains("(1048576 bytes)"), "{text}");
        let short = Error::InvalidAccount { name: "-a".into(), reason: "an option".into() };
        assert_eq!(short.to_string(), "\"-a\" is not a valid account name: an option");
    }
}
