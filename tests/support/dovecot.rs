//! A private Dovecot IMAP server on 127.0.0.1 with generated mailboxes.
//!
//! Config: tests/fixtures/dovecot.conf.in. Layout of the temp dir ROOT:
//! `dovecot/{dovecot.conf,users,state,log}`, `server/USER/Maildir` (Maildir++: `.Archive` etc).
//! The socket dir (`base_dir`) is a separate short temp dir under /tmp: unix socket paths are
//! limited to ~108 bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::mail;

const TEMPLATE: &str = include_str!("../fixtures/dovecot.conf.in");
/// How long Dovecot may take until its port greets.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Dovecot may take to exit after SIGTERM (measured ≤ 2.5 s) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Users every server has; passwords come from [`password_of`].
pub const USERS: [&str; 2] = ["alice", "bob"];

/// A running private Dovecot; stopped on drop.
pub struct Dovecot {
    child: Option<Child>,
    port: u16,
    /// uid/gid that owns server/ (mail processes run as it), when running as root.
    owner: Option<(u32, u32)>,
    users: Vec<String>,
    base_dir: TempDir,
    dir: TempDir,
}

/// Who Dovecot's processes run as.
struct Identity {
    internal_user: String,
    login_user: String,
    internal_group: String,
    mail_uid: u32,
    mail_gid: u32,
}

impl Identity {
    fn detect() -> Identity {
        let (uid, gid) = super::current_ids();
        if uid == 0 {
            // Dovecot refuses mail uid 0, so mail runs as nobody/nogroup; the helpers use the
            // users the Debian package creates.
            Identity {
                internal_user: "dovecot".into(),
                login_user: "dovenull".into(),
                internal_group: "dovecot".into(),
                mail_uid: 65534,
                mail_gid: 65534,
            }
        } else {
            // Unprivileged: everything runs as the current user and group.
            let user = id_output("-un");
            Identity {
                internal_user: user.clone(),
                login_user: user,
                internal_group: id_output("-gn"),
                mail_uid: uid,
                mail_gid: gid,
            }
        }
    }
}

fn id_output(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().unwrap_or_else(|e| panic!("run id {flag}: {e}"));
    assert!(out.status.success(), "id {flag} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Dovecot {
    /// Start a server with users alice/alicepw and bob/bobpw (plus any other user named in
    /// `spec`, password `USERpw`) and generated mailboxes: `spec` lists (user, mailbox, count),
    /// e.g. `&[("alice", "INBOX", 2000), ("alice", "Archive", 500), ("bob", "INBOX", 20)]`.
    pub fn start(spec: &[(&str, &str, usize)]) -> Dovecot {
        let id = Identity::detect();
        // As root the files we write must belong to the mail uid; otherwise they already do.
        let owner = super::running_as_root().then_some((id.mail_uid, id.mail_gid));

        let mut dir =
            tempfile::Builder::new().prefix("hs-dovecot").tempdir().expect("create Dovecot temp dir");
        super::maybe_keep(&mut dir, "Dovecot root");
        // Mail and auth processes run as other users and must traverse ROOT.
        set_mode(dir.path(), 0o755);
        let root = dir.path();
        for d in ["dovecot/state", "dovecot/log", "server"] {
            fs::create_dir_all(root.join(d)).expect("create Dovecot dirs");
        }
        mail::set_owner(&root.join("server"), owner);

        let mut users: Vec<String> = USERS.iter().map(|u| (*u).to_owned()).collect();
        for (user, _, _) in spec {
            if !users.iter().any(|u| u == user) {
                users.push((*user).to_owned());
            }
        }
        let mut passwd = String::new();
        for u in &users {
            let _ = writeln!(passwd, "{u}:{{PLAIN}}{}::::::", password_of(u));
        }
        fs::write(root.join("dovecot/users"), passwd).expect("write users file");

        for user in &users {
            mail::set_owner(&ensure_dir(&root.join("server").join(user)), owner);
            mail::create_maildir(&root.join("server").join(user).join("Maildir"), owner);
        }
        for (user, mailbox, count) in spec {
            let maildir = root.join("server").join(user).join("Maildir");
            let box_dir = mail::server_box_dir(&maildir, mailbox);
            mail::write_messages(&box_dir, user, mailbox, 1..=*count, owner, false);
        }

        let base_dir =
            tempfile::Builder::new().prefix("hs-dv").tempdir_in("/tmp").expect("create Dovecot base_dir");
        // Login processes (dovenull) connect to sockets in here.
        set_mode(base_dir.path(), 0o755);

        let mut dovecot = Dovecot { child: None, port: 0, owner, users, base_dir, dir };
        dovecot.launch(&id, None);
        dovecot
    }

    /// Start the server again after [`Dovecot::stop`] (stopping it first if it runs), on the
    /// same port, with the same config, mail and index files: a server that went down and came
    /// back, as clients (and the proxy in front of it) see it. Waits for its greeting.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.launch(&Identity::detect(), Some(port));
    }

    /// Start `dovecot -F` on `fixed` (a restart), else on a free port, and wait for its
    /// greeting. A port taken by someone else between our probe and Dovecot's bind gets up to 3
    /// tries: another port each time, or, for a fixed one, the same port a moment later (the
    /// old server's sockets may still be closing).
    fn launch(&mut self, id: &Identity, fixed: Option<u16>) {
        const ATTEMPTS: usize = 3;
        let root = self.dir.path().to_owned();
        let greeting = format!(
            "testbed-{}",
            self.base_dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        );
        for attempt in 1..=ATTEMPTS {
            if fixed.is_some() && attempt > 1 {
                std::thread::sleep(Duration::from_millis(500));
            }
            let port = fixed.unwrap_or_else(free_port);
            let conf = TEMPLATE
                .replace("@ROOT@", &root.display().to_string())
                .replace("@BASEDIR@", &self.base_dir.path().display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@GREETING@", &greeting)
                .replace("@INTERNALUSER@", &id.internal_user)
                .replace("@LOGINUSER@", &id.login_user)
                .replace("@INTERNALGROUP@", &id.internal_group)
                .replace("@MAILUID@", &id.mail_uid.to_string())
                .replace("@MAILGID@", &id.mail_gid.to_string())
                .replace("@FIRSTUID@", &id.mail_uid.to_string())
                .replace("@FIRSTGID@", &id.mail_gid.to_string());
            let conf_path = root.join("dovecot/dovecot.conf");
            fs::write(&conf_path, conf).expect("write dovecot.conf");
            let stderr = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(root.join("dovecot/log/stderr.log"))
                .expect("open Dovecot stderr log");
            let child = Command::new("dovecot")
                .arg("-c")
                .arg(&conf_path)
                .arg("-F")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start dovecot: {e}"));
            self.child = Some(child);
            self.port = port;
            // Only this attempt's part of the (appended) logs tells why it failed.
            let log_before = self.log_lens();

            let start = Instant::now();
            loop {
                if greets(port, &greeting) {
                    return;
                }
                let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    self.child = None;
                    let log = self.log();
                    if self.log_since(log_before).contains("Address already in use") && attempt < ATTEMPTS {
                        break; // port race: try another port (or the same one again)
                    }
                    panic!("dovecot exited with {status} during start; log:\n{log}");
                }
                if start.elapsed() > START_TIMEOUT {
                    self.stop();
                    panic!(
                        "dovecot did not greet on 127.0.0.1:{port} within {START_TIMEOUT:?}; \
                         log:\n{}",
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!("the last attempt returns or panics");
    }

    /// The IMAP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir ROOT (see the module doc for its layout).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Users known to the server, alice and bob first.
    pub fn users(&self) -> &[String] {
        &self.users
    }

    /// The server Maildir of `user` (INBOX; other boxes are `.Name` inside it).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.root().join("server").join(user).join("Maildir")
    }

    /// Add `n` more messages to a server box (created if missing); their ids continue after
    /// the highest existing one. They are delivered into new/ as a delivery agent would.
    pub fn add_messages(&self, user: &str, mailbox: &str, n: usize) {
        let dir = mail::server_box_dir(&self.maildir(user), mailbox);
        let last = mail::max_number(mail::read_message_ids(&dir), mailbox);
        mail::write_messages(&dir, user, mailbox, last + 1..=last + n, self.owner, true);
    }

    /// Message-IDs of every message in a server box, read from the Maildir files.
    pub fn message_ids(&self, user: &str, mailbox: &str) -> BTreeSet<String> {
        mail::read_message_ids(&mail::server_box_dir(&self.maildir(user), mailbox)).into_iter().collect()
    }

    /// Server boxes of `user` (name -> Maildir dir), from the Maildir++ tree.
    pub fn mailboxes(&self, user: &str) -> BTreeMap<String, PathBuf> {
        mail::server_boxes(&self.maildir(user))
    }

    /// Dovecot's log and stderr, for failure messages.
    pub fn log(&self) -> String {
        let [log, stderr] = self.log_files();
        format!("--- dovecot.log ---\n{log}--- stderr ---\n{stderr}")
    }

    /// Current sizes of the two log files.
    fn log_lens(&self) -> [usize; 2] {
        self.log_files().map(|f| f.len())
    }

    /// What was appended to the log files since `before` (from [`Dovecot::log_lens`]).
    fn log_since(&self, before: [usize; 2]) -> String {
        let files = self.log_files();
        files.iter().zip(before).map(|(f, n)| f.get(n..).unwrap_or_default()).collect()
    }

    fn log_files(&self) -> [String; 2] {
        ["dovecot.log", "stderr.log"]
            .map(|name| fs::read_to_string(self.root().join("dovecot/log").join(name)).unwrap_or_default())
    }

    /// Stop the server: SIGTERM, wait (bounded), then SIGKILL; then end what is left of it.
    /// Idempotent; also done on drop.
    ///
    /// Dovecot 2.3's master exits on SIGTERM without ending its IMAP processes: they go on
    /// serving their open connections (an mbsync kept syncing for seconds through a "stopped"
    /// server). A server that is stopped is gone, as after `systemctl stop`, which ends the whole
    /// unit: so every process the master had started that is still there then gets SIGTERM (an
    /// IMAP process says `* BYE` and closes), and SIGKILL if it stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let family = descendants(child.id());
        // std has no SIGTERM and there is no libc crate here, so use kill(1).
        signal_all("TERM", &[(child.id(), None)]);
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let left =
            || family.iter().copied().filter(|&(pid, start)| start_time(pid) == start).collect::<Vec<_>>();
        if left().is_empty() {
            return;
        }
        signal_all("TERM", &left());
        let start = Instant::now();
        while start.elapsed() < LEFTOVER_TIMEOUT && !left().is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_all("KILL", &left());
    }
}

/// How long processes a stopped master left behind get to exit after SIGTERM.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// Send `signal` with kill(1) to each pid (start times are only for the caller's filter).
fn signal_all(signal: &str, pids: &[(u32, Option<u64>)]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(|(pid, _)| pid.to_string()))
        .stderr(Stdio::null())
        .status();
}

/// Fields of /proc/PID/stat after the command name (field 3, the state, is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split(' ').map(str::to_owned).collect())
}

/// The start time of a live process (None once it is gone or a zombie): with the pid it names
/// one process, never a later one that got the same pid.
fn start_time(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    if fields.first().is_some_and(|s| s == "Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Every live descendant of `root`, with its start time.
fn descendants(root: u32) -> Vec<(u32, Option<u64>)> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| Some((pid, stat_fields(pid)?.get(1)?.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    found.into_iter().skip(1).map(|pid| (pid, start_time(pid))).filter(|(_, start)| start.is_some()).collect()
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The password of a test user: `alicepw`, `bobpw`, `USERpw`.
pub fn password_of(user: &str) -> String {
    format!("{user}pw")
}

/// A port that was free a moment ago (bind to port 0, read it, close).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// True if 127.0.0.1:`port` accepts a connection and sends `* OK ... <greeting>`.
fn greets(port: u16, greeting: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.ends_with(b"\r\n") && buf.len() < 4096 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = stream.write_all(b"a LOGOUT\r\n");
    let line = String::from_utf8_lossy(&buf);
    line.starts_with("* OK") && line.contains(greeting)
}

fn ensure_dir(path: &Path) -> PathBuf {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    path.to_owned()
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}
