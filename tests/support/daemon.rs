//! The real `himalaya-sync daemon` binary on a test's private bus, and async helpers to talk to
//! it. Tests drive it only through the bus, as every client does.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use himalaya_sync::bus::service::{ProgressChangedStream, ServiceProxy};
use zbus::{Connection, OwnedVariant, fdo::DBusProxy, names::BusName};

use super::{MbsyncVersion, Testbed, bus::PrivateBus};

/// Every end-to-end test's bound: none may hang CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Run a test body with [`TEST_TIMEOUT`].
pub async fn with_timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f).await.expect("the test timed out")
}

/// One test's world: the test bed, a private bus, the daemon on it, a client connection and
/// the service proxy. Fields drop in order: client first, test bed last.
pub struct World {
    pub svc: ServiceProxy<'static>,
    pub conn: Connection,
    pub daemon: Daemon,
    pub bus: PrivateBus,
    pub tb: Testbed,
}

impl World {
    /// A test bed with `spec`, and the daemon serving it.
    pub async fn start(spec: &[(&str, &str, usize)]) -> World {
        Self::around(Testbed::new(spec)).await
    }

    /// A test bed with `spec` whose mbsync, and the daemon's, is that of `version`.
    pub async fn start_with(version: MbsyncVersion, spec: &[(&str, &str, usize)]) -> World {
        Self::around(Testbed::with_mbsync(version, spec)).await
    }

    /// The daemon around a test bed the test prepared (edited configs, ...).
    pub async fn around(tb: Testbed) -> World {
        let bus = PrivateBus::start(None);
        let daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon.log")).await;
        let conn = connect(bus.address()).await;
        let svc = service(&conn).await;
        World { svc, conn, daemon, bus, tb }
    }
}

/// Write the service's config.toml into the test bed's XDG config dir. Unless `toml` sets
/// `mbsync` itself, it gets the test bed's mbsync when that is not plain `mbsync`.
pub fn write_service_config(tb: &Testbed, toml: &str) {
    let dir = tb.home().join(".config/himalaya-sync");
    std::fs::create_dir_all(&dir).unwrap();
    let sets_mbsync = toml.lines().any(|l| l.split('=').next().is_some_and(|k| k.trim() == "mbsync"));
    let program = tb.mbsync_program();
    let text = if sets_mbsync || program == Path::new("mbsync") {
        toml.to_owned()
    } else {
        // Debug quoting escapes `\\` and `"` as a TOML basic string does.
        format!("mbsync = {:?}\n{toml}", program.to_str().expect("a UTF-8 mbsync path"))
    };
    std::fs::write(dir.join("config.toml"), text).unwrap();
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_himalaya-sync");

/// A running daemon; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Start the daemon on `bus` with the test bed's environment and wait until it owns
    /// `org.himalaya.Sync`.
    pub async fn start(bus: &str, env: &[(String, String)], log: &Path) -> Daemon {
        Self::start_program(Path::new(BIN), bus, env, log).await
    }

    /// [`Daemon::start`] with another build of the daemon (a bench's baseline).
    pub async fn start_program(program: &Path, bus: &str, env: &[(String, String)], log: &Path) -> Daemon {
        let mut cmd = Command::new(program);
        cmd.arg("daemon")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DBUS_SESSION_BUS_ADDRESS", bus)
            .env("HIMALAYA_SYNC_LOG", "himalaya_sync=debug")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).expect("create the daemon log"));
        let child = cmd.spawn().expect("start the daemon");
        let daemon = Daemon { child: Some(child), log: log.to_owned() };
        let conn = connect(bus).await;
        let dbus = DBusProxy::new(&conn).await.unwrap();
        wait_until("the daemon to own org.himalaya.Sync", Duration::from_secs(10), || async {
            dbus.name_has_owner(BusName::try_from("org.himalaya.Sync").unwrap()).await.unwrap_or(false)
        })
        .await;
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send `signal` (`TERM`, `INT`), then wait (bounded) for the exit status.
    pub fn stop(&mut self, signal: &str, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        send_signal(child.id(), signal);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                panic!("the daemon did not exit within {timeout:?} of SIG{signal}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Run the CLI (`himalaya-sync ARGS`) against the test's bus with the test bed's environment.
pub fn run_cli(bus: &str, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DBUS_SESSION_BUS_ADDRESS", bus)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run the CLI")
}

/// Send a signal with kill(1) (tests only).
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// A client connection to the private bus.
pub async fn connect(bus: &str) -> Connection {
    zbus::connection::Builder::address(bus).build().await.expect("connect to the private bus")
}

/// The service proxy on `conn`.
pub async fn service(conn: &Connection) -> ServiceProxy<'static> {
    ServiceProxy::new(conn).await.unwrap()
}

/// Poll an async condition every 20 ms until true; panic with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every live process whose executable is mbsync, by PID (from /proc: comm).
pub fn mbsync_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie is already dead; only its parent's reaping is missing.
            comm.trim() == "mbsync" && !state.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'))
        })
        .collect()
}

/// The mbsync processes whose mbsync config is `rc` (so parallel tests don't see each other's).
pub fn mbsync_pids_for(rc: &Path) -> Vec<u32> {
    let rc = rc.to_string_lossy().into_owned();
    mbsync_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == rc.as_bytes()))
        })
        .collect()
}

/// Look up a key of a progress record.
pub fn get<T: TryFrom<OwnedVariant>>(
    d: &std::collections::HashMap<String, OwnedVariant>,
    key: &str,
) -> Option<T> {
    d.get(key).and_then(|v| v.try_clone().ok()).and_then(|v| T::try_from(v).ok())
}

/// The error name of a failed call.
pub fn error_name<T: std::fmt::Debug>(result: Result<T, himalaya_sync::bus::errors::SyncError>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(err) => zbus::DBusError::name(&err).to_string(),
    }
}

/// Start `himalaya-sync exec ARGS` (a lock holder) on `bus` with the test bed's environment.
pub fn spawn_exec(bus: Option<&str>, env: &[(String, String)], args: &[&str]) -> super::Spawned {
    let mut cmd = Command::new(BIN);
    cmd.arg("exec")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HIMALAYA_SYNC_LOG", "himalaya_sync=debug")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some(bus) = bus {
        cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
    }
    super::Spawned::spawn(&format!("himalaya-sync exec {}", args.join(" ")), &mut cmd)
}

/// The owner (unique name) of a bus name, if any.
pub async fn name_owner(conn: &Connection, name: &str) -> Option<String> {
    let dbus = DBusProxy::new(conn).await.unwrap();
    dbus.get_name_owner(BusName::try_from(name.to_owned()).unwrap()).await.ok().map(|o| o.to_string())
}

/// A progress record as a client gets it.
pub type Dict = std::collections::HashMap<String, OwnedVariant>;

/// The `state` of a record (`""` if missing).
pub fn state_of(d: &Dict) -> String {
    get::<String>(d, "state").unwrap_or_default()
}

/// Whether `d` is the record of an ended run (state neither running nor stopping).
pub fn is_final(d: &Dict) -> bool {
    matches!(state_of(d).as_str(), "idle" | "failed")
}

/// Read `ProgressChanged` from `stream` into `records` until `account`'s final record (the
/// daemon always sends it, after which it sends `SyncFinished`, on another stream) is there.
pub async fn read_until_final(stream: &mut ProgressChangedStream, account: &str, records: &mut Vec<Dict>) {
    if records.last().is_some_and(is_final) {
        return;
    }
    while let Some(signal) = stream.next().await {
        let args = signal.args().unwrap();
        if args.account != account {
            continue;
        }
        let done = is_final(&args.progress);
        records.push(args.progress);
        if done {
            return;
        }
    }
    panic!("the ProgressChanged stream ended before the final record");
}

/// What the records of one run, in signal order, must show with every isync version: `percent`
/// never goes back and is below 100 until the final record; a successful run ends exact
/// (done == total for messages, boxes and channels) at 100 %.
pub fn assert_progress_is_honest(records: &[Dict], ok: bool) {
    let (last, before) = records.split_last().expect("no progress records");
    assert!(is_final(last), "the last record is not final: {last:?}");
    let percents: Vec<f64> = records.iter().filter_map(|r| get::<f64>(r, "percent")).collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "percent went back: {percents:?}");
    for r in before {
        assert!(get::<f64>(r, "percent").is_none_or(|p| p < 100.0), "100 % before the end: {percents:?}");
    }
    if ok {
        for key in ["messages", "boxes", "channels"] {
            let done = get::<u32>(last, &format!("{key}_done"));
            let total = get::<u32>(last, &format!("{key}_total"));
            assert!(done.is_some() && done == total, "{key}: {done:?}/{total:?} at the end: {last:?}");
        }
        assert_eq!(get::<f64>(last, "percent"), Some(100.0), "{percents:?}");
    }
}

/// A short line per record for failure messages: `syncing 120/2550 b1/3 c0/1 4.7%`.
pub fn describe(records: &[Dict]) -> String {
    records
        .iter()
        .map(|r| {
            let n = |k: &str| get::<u32>(r, k).map_or("?".to_owned(), |v| v.to_string());
            let percent = get::<f64>(r, "percent").map_or(String::new(), |p| format!(" {p}%"));
            format!(
                "{} {}/{} b{}/{} c{}/{}{percent}",
                state_of(r),
                n("messages_done"),
                n("messages_total"),
                n("boxes_done"),
                n("boxes_total"),
                n("channels_done"),
                n("channels_total")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sum of voluntary and involuntary context switches of every thread of `pid`: it only
/// grows when a thread wakes up.
pub fn wakeups(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(Result::ok)
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}
