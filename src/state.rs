//! The last result of each account, kept across daemon restarts in
//! `$XDG_STATE_HOME/himalaya-sync/state.json`: written 0600 to a new file, then renamed over the
//! old one, so a crash leaves either the old or the new state, never half of one. A corrupt file
//! is moved aside with a warning: losing the last results is never worth refusing to start.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// What is remembered of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    pub finished_at: Option<u64>,
    /// Its sync was stopped by the service's shutdown: the next start resumes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// The whole state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountState>,
    /// The `AutoTakeover` switch, once a client set it (else config.toml's `auto_takeover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_takeover: Option<bool>,
}

/// The state file on disk.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join("state.json") }
    }

    /// Load the state; a missing file is an empty state, a corrupt one is moved aside.
    #[must_use]
    pub fn load(&self) -> State {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return State::default(),
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "cannot read state; starting empty");
                return State::default();
            }
        };
        match serde_json::from_slice(&text) {
            Ok(state) => state,
            Err(err) => {
                let aside = self.path.with_extension(format!("json.corrupt-{}", std::process::id()));
                tracing::warn!(
                    path = %self.path.display(), aside = %aside.display(), %err,
                    "state file is corrupt; moved aside, starting empty"
                );
                if let Err(err) = fs::rename(&self.path, &aside) {
                    tracing::warn!(%err, "cannot move the corrupt state file aside");
                }
                State::default()
            }
        }
    }

    /// Write the state: 0600, write-then-rename.
    ///
    /// # Errors
    /// The directory or file cannot be written.
    pub fn save(&self, state: &State) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let tmp = dir.join(format!(".state.json.{}.tmp", std::process::id()));
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(state).map_err(io::Error::other)?)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn sample() -> State {
        let mut s = State::default();
        s.accounts.insert(
            "alice".into(),
            AccountState {
                last_result: Some("ok".into()),
                last_error: None,
                finished_at: Some(7),
                interrupted: false,
            },
        );
        s
    }

    #[test]
    fn round_trip_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("himalaya-sync"));
        assert_eq!(store.load(), State::default());
        store.save(&sample()).unwrap();
        assert_eq!(store.load(), sample());
        let mode = fs::metadata(dir.path().join("himalaya-sync/state.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path().join("himalaya-sync")).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn corrupt_file_is_moved_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        fs::write(dir.path().join("state.json"), b"{\"accounts\": {\"alice\": 3").unwrap();
        assert_eq!(store.load(), State::default());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert_eq!(aside.len(), 1, "the corrupt file is kept for the user");
        store.save(&sample()).unwrap();
        assert_eq!(store.load(), sample());
    }
}
