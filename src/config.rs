//! The service's own settings (`$XDG_CONFIG_HOME/himalaya-sync/config.toml`) and where its
//! files live. Parsing is pure; [`Paths::from_env`] only reads environment variables.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// The service configuration. Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The mbsync program: a path, or a name looked up in `$PATH`.
    pub mbsync: PathBuf,
    /// The mbsync config (else `$XDG_CONFIG_HOME/isyncrc`, else `~/.mbsyncrc`).
    pub mbsync_config: Option<PathBuf>,
    /// Seconds without counter movement before a sync counts as stuck.
    pub stall_timeout: u64,
    /// Take over external syncs without asking.
    pub auto_takeover: bool,
    /// Seconds an external sync may run before the user is offered to take it over.
    pub auto_takeover_timeout: u64,
    /// Desktop notifications on or off.
    pub notifications: bool,
    /// Seconds between SIGTERM and SIGKILL when a sync is stopped.
    pub stop_grace: u64,
    /// Per-account settings, by account name.
    pub accounts: BTreeMap<String, AccountConfig>,
}

/// Settings of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// Seconds between automatic syncs (none when absent).
    pub interval: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mbsync: PathBuf::from("mbsync"),
            mbsync_config: None,
            stall_timeout: 120,
            auto_takeover: false,
            auto_takeover_timeout: 300,
            notifications: true,
            stop_grace: 5,
            accounts: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Parse `config.toml` text.
    ///
    /// # Errors
    /// Invalid TOML, an unknown key or a value of the wrong type; the message names it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())?;
        if config.stall_timeout == 0 {
            return Err("stall_timeout must be at least 1 second".into());
        }
        Ok(config)
    }

    /// The grace period between SIGTERM and SIGKILL.
    #[must_use]
    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace)
    }

    /// How runs are driven: the stop grace and the stall timeout.
    #[must_use]
    pub fn run_limits(&self) -> crate::run::Limits {
        crate::run::Limits { grace: self.stop_grace(), stall: Duration::from_secs(self.stall_timeout) }
    }
}

/// Where the service's files are, from the XDG base directory variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub home: PathBuf,
    pub config_home: PathBuf,
    pub state_home: PathBuf,
}

impl Paths {
    /// Resolve from `HOME`, `XDG_CONFIG_HOME` and `XDG_STATE_HOME` (relative values are ignored,
    /// as the XDG spec says).
    #[must_use]
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_absolute());
        let home = var("HOME").unwrap_or_else(|| PathBuf::from("/"));
        Self {
            config_home: var("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config")),
            state_home: var("XDG_STATE_HOME").unwrap_or_else(|| home.join(".local/state")),
            home,
        }
    }

    /// `config.toml`.
    #[must_use]
    pub fn config_file(&self) -> PathBuf {
        self.config_home.join("himalaya-sync/config.toml")
    }

    /// The state directory.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.state_home.join("himalaya-sync")
    }

    /// The mbsync config: `explicit`, else `$XDG_CONFIG_HOME/isyncrc` if it exists, else
    /// `~/.mbsyncrc` (mbsync's own order).
    #[must_use]
    pub fn mbsync_config(&self, explicit: Option<&Path>) -> PathBuf {
        if let Some(path) = explicit {
            return path.to_owned();
        }
        let xdg = self.config_home.join("isyncrc");
        if xdg.exists() { xdg } else { self.home.join(".mbsyncrc") }
    }
}

/// Find `program` like `execvp` would: a path with a `/` as is, else the first executable match
/// in `path_var`.
#[must_use]
pub fn find_program(program: &Path, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.as_os_str().is_empty() {
        return None;
    }
    if program.components().count() > 1 || program.is_absolute() {
        return is_exec(program).then(|| program.to_owned());
    }
    std::env::split_paths(path_var?).map(|dir| dir.join(program)).find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn every_key_parses() {
        let c = Config::parse(
            r#"
            mbsync = "/usr/local/bin/mbsync"
            mbsync_config = "/home/me/.mbsyncrc"
            stall_timeout = 60
            auto_takeover = true
            auto_takeover_timeout = 120
            notifications = false
            stop_grace = 2
            [accounts.work]
            interval = 300
            "#,
        )
        .unwrap();
        assert_eq!(c.mbsync, PathBuf::from("/usr/local/bin/mbsync"));
        assert_eq!(c.stall_timeout, 60);
        assert!(c.auto_takeover);
        assert!(!c.notifications);
        assert_eq!(c.accounts["work"].interval, Some(300));
    }

    #[test]
    fn bad_input_names_the_problem() {
        let err = Config::parse("stall_timeout = \"soon\"").unwrap_err();
        assert!(err.contains("stall_timeout"), "{err}");
        let err = Config::parse("stal_timeout = 5").unwrap_err();
        assert!(err.contains("stal_timeout"), "{err}");
        assert!(Config::parse("stall_timeout = 0").is_err());
        assert!(Config::parse("[[[").is_err());
    }

    #[test]
    fn mbsync_config_follows_mbsyncs_own_order() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            home: dir.path().join("home"),
            config_home: dir.path().join("config"),
            state_home: dir.path().join("state"),
        };
        // Nothing exists: mbsync's last resort, ~/.mbsyncrc.
        assert_eq!(paths.mbsync_config(None), dir.path().join("home/.mbsyncrc"));
        // $XDG_CONFIG_HOME/isyncrc wins once it exists.
        std::fs::create_dir_all(&paths.config_home).unwrap();
        std::fs::write(paths.config_home.join("isyncrc"), "").unwrap();
        assert_eq!(paths.mbsync_config(None), dir.path().join("config/isyncrc"));
        // An explicit path (-c, or mbsync_config in config.toml) wins over both.
        assert_eq!(paths.mbsync_config(Some(Path::new("/etc/rc"))), PathBuf::from("/etc/rc"));
    }

    #[test]
    fn find_program_searches_path() {
        let sh = find_program(Path::new("sh"), Some("/nonexistent:/bin".as_ref()));
        assert_eq!(sh, Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_program(Path::new("no-such-program-x"), Some("/bin".as_ref())), None);
        assert_eq!(find_program(Path::new("/bin/sh"), None), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_program(Path::new("/etc/passwd"), None), None, "not executable");
        assert_eq!(find_program(Path::new(""), Some("/bin".as_ref())), None);
    }
}
