//! Everything an end-to-end test needs for mbsync: Dovecot + Proxy + a HOME with XDG dirs and an
//! mbsyncrc whose accounts go through the proxy.
//!
//! Layout of `dir`: `home/.mbsyncrc`, `home/.config`, `home/.local/state`, `run` (0700, the
//! `XDG_RUNTIME_DIR`), `mail/USER/` (the local Maildir store; INBOX is `mail/USER/INBOX`, other
//! boxes `mail/USER/NAME`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tempfile::TempDir;

use super::dovecot::{self, Dovecot};
use super::mail;
use super::mbsync::MbsyncVersion;
use super::process::{self, Finished, Spawned};
use super::proxy::Proxy;

/// Dovecot, a proxy in front of it, and a HOME with an mbsyncrc. No Drop impl (so tests may
/// move fields out); the field order makes drops go proxy, server, then the files.
pub struct Testbed {
    pub proxy: Proxy,
    pub dovecot: Dovecot,
    pub dir: TempDir,
    users: Vec<String>,
    passwords: Mutex<BTreeMap<String, String>>,
    /// The mbsync this test bed runs, and the daemon too (see [`Testbed::with_mbsync`]).
    mbsync: PathBuf,
}

impl Testbed {
    /// Start Dovecot with `spec` (see [`Dovecot::start`]), a proxy in front of it, and write
    /// `home/.mbsyncrc` with an account, stores and a channel named after each user in `spec`,
    /// plus `Group everyone` with all of them. mbsync is the one in `$PATH`, unchecked.
    pub fn new(spec: &[(&str, &str, usize)]) -> Testbed {
        Self::build(spec, PathBuf::from("mbsync"))
    }

    /// Like [`Testbed::new`], with the mbsync of `version` for the test bed's own runs and for
    /// the daemon: unless it is plain `mbsync`, the service's config.toml gets `mbsync = PATH`
    /// (and [`super::daemon::write_service_config`] keeps it). Fails the test, saying what to
    /// do, if that mbsync is missing.
    pub fn with_mbsync(version: MbsyncVersion, spec: &[(&str, &str, usize)]) -> Testbed {
        let bed = Self::build(spec, version.program());
        super::daemon::write_service_config(&bed, "");
        bed
    }

    fn build(spec: &[(&str, &str, usize)], mbsync: PathBuf) -> Testbed {
        let dovecot = Dovecot::start(spec);
        let proxy = Proxy::start(dovecot.port());
        let mut dir =
            tempfile::Builder::new().prefix("hs-testbed").tempdir().expect("create testbed temp dir");
        super::maybe_keep(&mut dir, "testbed dir");
        let mut users: Vec<String> = Vec::new();
        for (user, _, _) in spec {
            if !users.iter().any(|u| u == user) {
                users.push((*user).to_owned());
            }
        }
        let passwords = users.iter().map(|u| (u.clone(), dovecot::password_of(u))).collect();
        let bed = Testbed { proxy, dovecot, dir, users, passwords: Mutex::new(passwords), mbsync };
        for d in [".config", ".local/state"] {
            fs::create_dir_all(bed.home().join(d)).expect("create XDG dirs");
        }
        let run = bed.runtime_dir();
        fs::create_dir_all(&run).expect("create XDG_RUNTIME_DIR");
        // The XDG base dir spec requires the runtime dir to be 0700.
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).expect("chmod run dir");
        for user in &bed.users {
            // mbsync creates boxes (Create Both) but not the store's Path itself.
            fs::create_dir_all(bed.maildir(user)).expect("create local maildir root");
        }
        bed.write_mbsyncrc();
        bed
    }

    /// The mbsync program this test bed runs (`mbsync` or a path).
    pub fn mbsync_program(&self) -> &std::path::Path {
        &self.mbsync
    }

    /// Users with a channel in the mbsyncrc, in `spec` order.
    pub fn users(&self) -> &[String] {
        &self.users
    }

    /// The HOME of processes under test.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `home/.mbsyncrc`.
    pub fn mbsyncrc(&self) -> PathBuf {
        self.home().join(".mbsyncrc")
    }

    /// The local Maildir store of `user` (`mail/USER`).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }

    /// The `XDG_RUNTIME_DIR` (`run`, mode 0700).
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Env vars a process under test should get: HOME, `XDG_CONFIG_HOME`, `XDG_STATE_HOME`,
    /// `XDG_RUNTIME_DIR` (no DBUS_* ones; take those from a [`super::PrivateBus`]).
    pub fn env(&self) -> Vec<(String, String)> {
        let s = |p: PathBuf| p.display().to_string();
        vec![
            ("HOME".into(), s(self.home())),
            ("XDG_CONFIG_HOME".into(), s(self.home().join(".config"))),
            ("XDG_STATE_HOME".into(), s(self.home().join(".local/state"))),
            ("XDG_RUNTIME_DIR".into(), s(self.runtime_dir())),
        ]
    }

    /// Rewrite the mbsyncrc with password `pass` for `user` (e.g. a wrong one).
    pub fn set_password(&self, user: &str, pass: &str) {
        assert!(self.users.iter().any(|u| u == user), "set_password: {user} has no channel in this testbed");
        self.passwords
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(user.to_owned(), pass.to_owned());
        self.write_mbsyncrc();
    }

    fn write_mbsyncrc(&self) {
        let passwords = self.passwords.lock().unwrap_or_else(PoisonError::into_inner);
        let port = self.proxy.port();
        let mut rc = String::from("# Written by tests/support/testbed.rs\n");
        for user in &self.users {
            let root = self.maildir(user);
            let pass = passwords.get(user).map_or("", String::as_str);
            // AuthMechs PLAIN: SASL PLAIN avoids the cleartext-LOGIN warning on stderr.
            let _ = write!(
                rc,
                "\nIMAPAccount {user}\nHost 127.0.0.1\nPort {port}\nUser {user}\nPass {pass}\n\
                 SSLType None\nAuthMechs PLAIN\n\n\
                 IMAPStore {user}-remote\nAccount {user}\n\n\
                 MaildirStore {user}-local\nPath {root}/\nInbox {root}/INBOX\nSubFolders Verbatim\n\n\
                 Channel {user}\nFar :{user}-remote:\nNear :{user}-local:\nPatterns *\n\
                 Create Both\nSyncState *\n",
                pass = quote(pass),
                root = root.display(),
            );
        }
        rc.push_str("\nGroup everyone\n");
        for user in &self.users {
            let _ = writeln!(rc, "Channel {user}");
        }
        fs::write(self.mbsyncrc(), rc).expect("write mbsyncrc");
    }

    /// `mbsync -c RC ARGS...` with the env of [`Testbed::env`]; add args or spawn it yourself.
    pub fn mbsync_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.mbsync);
        cmd.arg("-c").arg(self.mbsyncrc()).args(args).envs(self.env());
        cmd
    }

    /// Start mbsync (see [`Testbed::mbsync_command`]) with output collected.
    pub fn spawn_mbsync(&self, args: &[&str]) -> Spawned {
        Spawned::spawn(&format!("mbsync {}", args.join(" ")), &mut self.mbsync_command(args))
    }

    /// Run mbsync to completion within `timeout` (panics with its output on timeout).
    pub fn run_mbsync(&self, args: &[&str], timeout: Duration) -> Finished {
        process::run(&format!("mbsync {}", args.join(" ")), &mut self.mbsync_command(args), timeout)
    }

    /// The local Maildir dir of `user`'s `mailbox`.
    pub fn local_box(&self, user: &str, mailbox: &str) -> PathBuf {
        self.maildir(user).join(mailbox)
    }

    /// Message-IDs in the local box (cur/ and new/, not tmp/), sorted, duplicates kept.
    pub fn local_message_ids(&self, user: &str, mailbox: &str) -> Vec<String> {
        mail::read_message_ids(&self.local_box(user, mailbox))
    }

    /// Local boxes of `user` (name -> dir).
    pub fn local_mailboxes(&self, user: &str) -> BTreeMap<String, PathBuf> {
        mail::local_boxes(&self.maildir(user))
    }

    /// Assert every server box of `user` equals its local box (same Message-IDs, no duplicates)
    /// and there are no local-only boxes; panics with a summary of the differences.
    pub fn assert_in_sync(&self, user: &str) {
        if let Some(report) = self.sync_differences(user) {
            panic!(
                "{user}: server and local mail differ:\n{report}local store: {}",
                self.maildir(user).display()
            );
        }
    }

    /// The differences [`Testbed::assert_in_sync`] would report, or None if in sync.
    pub fn sync_differences(&self, user: &str) -> Option<String> {
        let server = self.dovecot.mailboxes(user);
        let local = self.local_mailboxes(user);
        let mut report = String::new();
        for name in local.keys().filter(|n| !server.contains_key(*n)) {
            let _ = writeln!(report, "  box {name}: only local");
        }
        for name in server.keys() {
            let server_ids = self.dovecot.message_ids(user, name);
            let local_ids = if local.contains_key(name) {
                self.local_message_ids(user, name)
            } else {
                let _ = writeln!(report, "  box {name}: missing locally");
                Vec::new()
            };
            if let Some(diff) = diff_box(&server_ids, &local_ids) {
                let _ = writeln!(report, "  box {name}: {diff}");
            }
        }
        (!report.is_empty()).then_some(report)
    }
}

/// Describe how a local box (ids with duplicates) differs from the server's, if it does.
fn diff_box(server: &std::collections::BTreeSet<String>, local: &[String]) -> Option<String> {
    const SHOW: usize = 5;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in local {
        *counts.entry(id).or_default() += 1;
    }
    let missing: Vec<&str> =
        server.iter().map(String::as_str).filter(|id| !counts.contains_key(id)).collect();
    let extra: Vec<&str> = counts.keys().copied().filter(|id| !server.contains(*id)).collect();
    let dups: Vec<String> =
        counts.iter().filter(|(_, n)| **n > 1).map(|(id, n)| format!("{id} x{n}")).collect();
    if missing.is_empty() && extra.is_empty() && dups.is_empty() {
        return None;
    }
    let first = |v: &[&str]| v.iter().take(SHOW).copied().collect::<Vec<_>>().join(" ");
    Some(format!(
        "server {} messages, local {} files ({} distinct); {} missing locally [{}], \
         {} only local [{}], {} duplicated [{}]",
        server.len(),
        local.len(),
        counts.len(),
        missing.len(),
        first(&missing),
        extra.len(),
        first(&extra),
        dups.len(),
        dups.iter().take(SHOW).cloned().collect::<Vec<_>>().join(" "),
    ))
}

/// Quote an mbsyncrc value (isync's parser understands "..." with backslash escapes).
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}
