//! A private dbus-daemon (session-bus type) for one test. It never touches the user's bus.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

/// How long dbus-daemon may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A private dbus-daemon; killed on drop.
pub struct PrivateBus {
    /// None after [`PrivateBus::kill`] until [`PrivateBus::restart`].
    child: Option<Child>,
    address: String,
    service_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    dir: TempDir,
}

impl PrivateBus {
    /// Start a bus whose config lives in a fresh temp dir. `service_dir` becomes the bus's
    /// `<servicedir>` (for D-Bus activation tests; activated services get
    /// `DBUS_SESSION_BUS_ADDRESS` and `DBUS_STARTER_ADDRESS` of this bus from the daemon, and
    /// otherwise the daemon's environment).
    pub fn start(service_dir: Option<&Path>) -> PrivateBus {
        Self::start_with_env(service_dir, &[])
    }

    /// Like [`PrivateBus::start`], and the daemon gets the extra environment `env`, which
    /// activated services inherit (e.g. [`super::Testbed::env`], so an activated service finds
    /// the test's HOME and XDG dirs).
    pub fn start_with_env(service_dir: Option<&Path>, env: &[(String, String)]) -> PrivateBus {
        let mut dir =
            tempfile::Builder::new().prefix("hs-bus").tempdir().expect("create temp dir for the private bus");
        super::maybe_keep(&mut dir, "private bus dir");
        let listen = format!("unix:dir={}", dir.path().display());
        let (child, address) = launch(dir.path(), &listen, service_dir, env);
        PrivateBus {
            child: Some(child),
            address,
            service_dir: service_dir.map(Path::to_owned),
            env: env.to_vec(),
            dir,
        }
    }

    /// `kill -9` the bus daemon: every connection to it closes at once (its clients see the bus
    /// gone), nothing is cleaned up. Idempotent; [`PrivateBus::restart`] brings a bus back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a new bus daemon at the same socket path, with the same service dir and
    /// environment (killing the running one first, if any): a session bus that went down and
    /// came back. [`PrivateBus::address`] is then the new one (same path, a new guid); nothing
    /// of the old bus survives (names, match rules, activated services' connections).
    pub fn restart(&mut self) {
        self.kill();
        let path = self
            .address
            .strip_prefix("unix:")
            .and_then(|rest| rest.split(',').find_map(|kv| kv.strip_prefix("path=")))
            .unwrap_or_else(|| panic!("restart: not a unix:path address: {}", self.address))
            .to_owned();
        // A killed daemon leaves its socket file behind.
        let _ = fs::remove_file(&path);
        let (child, address) =
            launch(self.dir.path(), &format!("unix:path={path}"), self.service_dir.as_deref(), &self.env);
        self.child = Some(child);
        self.address = address;
    }

    /// The bus address, e.g. `unix:path=/tmp/hs-busXXXX/dbus-abc,guid=...`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The daemon's stderr so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("bus.log")).unwrap_or_default()
    }

    /// The temp dir holding bus.conf and bus.log.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Write `dir/bus.conf` (listening on `listen`), start `dbus-daemon` with it and `env`, its
/// stderr appended to `dir/bus.log`, and read the address it prints.
fn launch(dir: &Path, listen: &str, service_dir: Option<&Path>, env: &[(String, String)]) -> (Child, String) {
    let config = dir.join("bus.conf");
    fs::write(&config, bus_config(listen, service_dir)).expect("write bus.conf");
    let log_path = dir.join("bus.log");
    let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("open bus.log");

    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--print-address=1"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start dbus-daemon: {e}"));

    // Read the address line in a thread, so a daemon that prints nothing cannot hang the test.
    let stdout = child.stdout.take().expect("dbus-daemon stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let res = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(res);
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(line)) if !line.trim().is_empty() => (child, line.trim().to_owned()),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "dbus-daemon printed no address ({other:?}); bus.log:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
    }
}

/// The bus config, listening on `listen` (a D-Bus address). Without the `eavesdrop`/receive
/// allowances zbus hangs at Hello.
fn bus_config(listen: &str, service_dir: Option<&Path>) -> String {
    let mut conf = String::from(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
"#,
    );
    let _ = writeln!(conf, "  <listen>{}</listen>", xml_escape_str(listen));
    conf.push_str("  <auth>EXTERNAL</auth>\n");
    if let Some(sd) = service_dir {
        let _ = writeln!(conf, "  <servicedir>{}</servicedir>", xml_escape(sd));
        // An activated process that exits without taking its name is only noticed at this
        // timeout (default 25 s, measured); 10 s keeps failing activation tests short.
        conf.push_str("  <limit name=\"service_start_timeout\">10000</limit>\n");
    }
    conf.push_str(
        r#"  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
    );
    conf
}

fn xml_escape(p: &Path) -> String {
    xml_escape_str(&p.display().to_string())
}

fn xml_escape_str(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
