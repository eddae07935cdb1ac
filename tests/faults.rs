//! The fault campaign (issue 8): a fault hits a sync mid-way (the proxy throttles the server so
//! there is a "mid-way"), the run ends with a reason, nothing is left running or locked, and the
//! next sync is exact: every server message once locally and once on the server, nothing lost,
//! nothing duplicated (by Message-ID). Faults that depend on mbsync's behaviour run with isync 1.4
//! and 1.5 (`..._isync14`, `..._isync15`).
//!
//! 1. `kill -9` of the service's mbsync;
//! 2. `kill -9` of an `exec` lock holder (its mbsync must not outlive it);
//! 3. Dovecot stopped mid-sync and started again;
//! 4. a stalled connection (the watchdog's `stuck`, then a cut; and mbsync's own `Timeout`);
//! 5. the local disk full (a small tmpfs as the local store: root only,
//!    `HIMALAYA_SYNC_SKIP_ROOT_TESTS=1` skips it for others);
//! 6. the session bus itself killed and started again (the service exits, the next activation
//!    resumes the sync);
//! 7. a soak: `SOAK_SYNCS` syncs (default 40) with mail arriving between them, the daemon's RSS,
//!    fds and threads flat, no zombies.

// D-Bus member and error names read better in prose without backticks.
#![allow(clippy::doc_markdown)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use himalaya_sync::bus::service::{ProgressChangedStream, ServiceProxy, SyncFinishedStream};
use support::{
    MbsyncVersion::{self, Isync14, Isync15},
    PrivateBus, Testbed,
    daemon::{
        BIN, Dict, World, assert_progress_is_honest, connect, describe, get, is_final, mbsync_pids_for,
        read_until_final, send_signal, service, spawn_exec, state_of, wait_until, with_timeout,
        write_service_config,
    },
    mail,
};
use zbus::{Connection, fdo::DBusProxy, names::BusName};

/// alice's INBOX: 1,000 messages, ~0.7 MB from the server; about 7 s at [`SLOW`].
const MESSAGES: usize = 1000;
const SPEC: &[(&str, &str, usize)] = &[("alice", "INBOX", MESSAGES)];
/// Server->client bytes/s while a fault is due: the sync is mid-way for seconds.
const SLOW: u64 = 100_000;
/// Messages a run must have pulled before the fault hits (it is then well under way).
const MID_WAY: u32 = 50;
const LONG: Duration = Duration::from_secs(30);

/// Both signal streams of a service, subscribed before anything starts.
struct Streams {
    progress: ProgressChangedStream,
    finished: SyncFinishedStream,
}

/// How a run ended, as its client saw it.
struct End {
    records: Vec<Dict>,
    ok: bool,
    message: String,
}

impl Streams {
    async fn new(svc: &ServiceProxy<'static>) -> Streams {
        Streams {
            progress: svc.receive_progress_changed().await.unwrap(),
            finished: svc.receive_sync_finished().await.unwrap(),
        }
    }

    /// Read `account`'s records until one has pulled more than `done` messages; its mbsync PID.
    async fn until_done(&mut self, account: &str, done: u32, records: &mut Vec<Dict>) -> u32 {
        while let Some(signal) = self.progress.next().await {
            let args = signal.args().unwrap();
            if args.account != account {
                continue;
            }
            let record = args.progress;
            assert!(!is_final(&record), "the run ended before the fault:\n{}", describe(records));
            let pulled = get::<u32>(&record, "messages_done").unwrap_or(0);
            let pid = get::<u32>(&record, "pid");
            records.push(record);
            if pulled > done {
                return pid.expect("a running record names its mbsync");
            }
        }
        panic!("the ProgressChanged stream ended");
    }

    /// Read `account`'s run to its final record, then its `SyncFinished` (always in that order:
    /// see tests/support/README.md on the 64-signal queues).
    async fn end(&mut self, account: &str, mut records: Vec<Dict>) -> End {
        read_until_final(&mut self.progress, account, &mut records).await;
        loop {
            let signal = self.finished.next().await.expect("the SyncFinished stream ended");
            let args = signal.args().unwrap();
            if args.account == account {
                return End { records, ok: args.ok, message: args.message.to_owned() };
            }
        }
    }

    /// Start a sync of `account` and follow it to its end; it must end well, exact counts.
    async fn sync_ok(&mut self, svc: &ServiceProxy<'static>, account: &str) {
        svc.sync(account).await.unwrap();
        let end = self.end(account, Vec::new()).await;
        assert!(end.ok, "the sync after the fault failed: {}\n{}", end.message, describe(&end.records));
        assert_progress_is_honest(&end.records, true);
    }
}

/// Exact: local mail equals the server's (no box only on one side, no local duplicate), and the
/// server holds exactly the generated messages 1..=N of each box, each once (a sync that pushed
/// a half-written local file back would show here as an extra or a duplicate).
fn assert_exact(tb: &Testbed, user: &str, boxes: &[(&str, usize)]) {
    tb.assert_in_sync(user);
    for &(mailbox, count) in boxes {
        let dir = mail::server_box_dir(&tb.dovecot.maildir(user), mailbox);
        let server = mail::read_message_ids(&dir);
        let mut expected: Vec<String> = (1..=count).map(|n| mail::message_id(mailbox, n)).collect();
        expected.sort();
        if server != expected {
            let lost = expected.iter().filter(|id| server.binary_search(id).is_err()).count();
            let foreign: Vec<&String> =
                server.iter().filter(|id| expected.binary_search(id).is_err()).collect();
            let twice: Vec<&String> = server.windows(2).filter(|w| w[0] == w[1]).map(|w| &w[0]).collect();
            panic!(
                "{user}/{mailbox} on the server: {} files for {count} generated messages; {lost} lost, \
                 {} duplicated {:?}, {} foreign {:?}",
                server.len(),
                twice.len(),
                twice.iter().take(5).collect::<Vec<_>>(),
                foreign.len(),
                foreign.iter().take(5).collect::<Vec<_>>()
            );
        }
        assert_eq!(tb.local_message_ids(user, mailbox).len(), count, "{user}/{mailbox} locally");
    }
}

/// Replace `from` by `to` in the test bed's mbsyncrc (which must contain it).
fn patch_mbsyncrc(tb: &Testbed, from: &str, to: &str) {
    let rc = std::fs::read_to_string(tb.mbsyncrc()).unwrap();
    assert!(rc.contains(from), "the test bed's mbsyncrc changed shape:\n{rc}");
    std::fs::write(tb.mbsyncrc(), rc.replace(from, to)).unwrap();
}

async fn lock_is_free(conn: &Connection, channel: &str) -> bool {
    let dbus = DBusProxy::new(conn).await.unwrap();
    let name = himalaya_sync::names::lock_name(channel).unwrap();
    !dbus.name_has_owner(BusName::try_from(name).unwrap()).await.unwrap()
}

/// Whether `pid` has exited (gone, or a zombie waiting for a parent that does not reap).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}

/// After a failed run: the record says failed with `message`, no mbsync of the test bed is
/// left, the channel's lock name is free.
async fn assert_failed_and_clean(w: &World, account: &str, end: &End) {
    assert!(!end.ok, "the run survived the fault: {}", end.message);
    assert_progress_is_honest(&end.records, false);
    let record = w.svc.get_progress(account).await.unwrap();
    assert_eq!(state_of(&record), "failed", "{record:?}");
    assert_eq!(get::<String>(&record, "last_error").as_deref(), Some(end.message.as_str()));
    assert!(mbsync_pids_for(&w.tb.mbsyncrc()).is_empty(), "an mbsync outlived the run");
    assert!(lock_is_free(&w.conn, account).await, "the lock of {account} is still held");
}

// 1. kill -9 of the service's mbsync.

async fn kill_9_of_the_services_mbsync(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, SPEC).await;
        w.tb.proxy.set_rate(Some(SLOW));
        let mut s = Streams::new(&w.svc).await;
        w.svc.sync("alice").await.unwrap();
        let mut records = Vec::new();
        let pid = s.until_done("alice", MID_WAY, &mut records).await;
        assert_eq!(mbsync_pids_for(&w.tb.mbsyncrc()), [pid], "the record's pid is the mbsync running");
        send_signal(pid, "KILL");
        let end = s.end("alice", records).await;
        println!("kill -9 of mbsync ({version:?}): {}", end.message);
        assert_eq!(end.message, "mbsync was killed by signal 9");
        assert_failed_and_clean(&w, "alice", &end).await;
        w.tb.proxy.set_rate(None);
        s.sync_ok(&w.svc, "alice").await;
        assert_exact(&w.tb, "alice", &[("INBOX", MESSAGES)]);
    })
    .await;
}

#[tokio::test]
async fn kill_9_of_the_services_mbsync_isync14() {
    kill_9_of_the_services_mbsync(Isync14).await;
}

#[tokio::test]
async fn kill_9_of_the_services_mbsync_isync15() {
    kill_9_of_the_services_mbsync(Isync15).await;
}

// 2. kill -9 of an exec lock holder.

/// The children of `parent`, from /proc (`ppid` is field 4 of `/proc/PID/stat`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> =
                stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
            fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

async fn kill_9_of_an_exec_holder(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, SPEC).await;
        w.tb.proxy.set_rate(Some(SLOW));
        let exec = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice"]);
        wait_until("alice to show the holder's sync", LONG, || async {
            let r = w.svc.get_progress("alice").await.unwrap();
            state_of(&r) == "external"
                && get::<String>(&r, "owner").as_deref() == Some("client")
                && get::<u32>(&r, "messages_done").unwrap_or(0) > MID_WAY
        })
        .await;
        let ours = mbsync_pids_for(&w.tb.mbsyncrc());
        assert_eq!(ours.len(), 1, "one mbsync: {ours:?}");
        let mbsync = ours[0];
        assert_eq!(children_of(exec.pid()), [mbsync], "the holder's mbsync is its child");
        assert!(!lock_is_free(&w.conn, "alice").await);

        send_signal(exec.pid(), "KILL");
        let killed = Instant::now();
        let done = exec.wait(LONG);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&done.status), Some(9), "{done:?}");
        // Its mbsync goes with it (PR_SET_PDEATHSIG: SIGTERM, which mbsync's journal makes safe).
        support::wait_for("the holder's mbsync to die with it", Duration::from_secs(5), || exited(mbsync));
        println!("kill -9 of exec ({version:?}): its mbsync gone {:?} after", killed.elapsed());
        assert!(mbsync_pids_for(&w.tb.mbsyncrc()).is_empty());
        // The bus dropped the dead holder's names; the service saw its sync end.
        assert!(lock_is_free(&w.conn, "alice").await, "the dead holder's lock is still held");
        wait_until("the service to see the external sync end", LONG, || async {
            state_of(&w.svc.get_progress("alice").await.unwrap()) == "idle"
        })
        .await;

        w.tb.proxy.set_rate(None);
        let mut s = Streams::new(&w.svc).await;
        s.sync_ok(&w.svc, "alice").await;
        assert_exact(&w.tb, "alice", &[("INBOX", MESSAGES)]);
    })
    .await;
}

#[tokio::test]
async fn kill_9_of_an_exec_holder_takes_its_mbsync_along_isync14() {
    kill_9_of_an_exec_holder(Isync14).await;
}

#[tokio::test]
async fn kill_9_of_an_exec_holder_takes_its_mbsync_along_isync15() {
    kill_9_of_an_exec_holder(Isync15).await;
}

// 3. Dovecot stopped mid-sync, then started again on its port.

/// Dovecot is stopped (SIGTERM: it ends its IMAP processes too) while mbsync pulls; a sync
/// while it is down fails at once; started again on its port, the next sync is exact.
///
/// `PipelineDepth 1`: mbsync asks for one message at a time, so the server is never more than
/// one message ahead of the throttled proxy. By default mbsync asks for all of them at once, and
/// Dovecot writes a box this size into the loopback socket buffers within a second; stopped
/// after that, it is no fault at all for mbsync, which reads what it asked for from the buffers
/// and ends well (seen: "sync finished", exact).
async fn dovecot_stopped_mid_sync(version: MbsyncVersion) {
    with_timeout(async {
        let tb = Testbed::with_mbsync(version, SPEC);
        patch_mbsyncrc(&tb, "AuthMechs PLAIN\n", "AuthMechs PLAIN\nPipelineDepth 1\n");
        let mut w = World::around(tb).await;
        w.tb.proxy.set_rate(Some(SLOW));
        let mut s = Streams::new(&w.svc).await;
        w.svc.sync("alice").await.unwrap();
        let mut records = Vec::new();
        s.until_done("alice", MID_WAY, &mut records).await;
        w.tb.dovecot.stop();
        let end = s.end("alice", records).await;
        println!("Dovecot stopped mid-sync ({version:?}): {}", end.message);
        assert!(end.message.contains("BYE") || end.message.contains("EOF"), "{}", end.message);
        assert_failed_and_clean(&w, "alice", &end).await;

        // While it is down a sync fails at once, with mbsync's reason.
        w.svc.sync("alice").await.unwrap();
        let down = s.end("alice", Vec::new()).await;
        println!("a sync while Dovecot is down ({version:?}): {}", down.message);
        assert!(!down.ok && !down.message.is_empty(), "{}", down.message);
        assert_failed_and_clean(&w, "alice", &down).await;

        w.tb.dovecot.restart();
        w.tb.proxy.set_rate(None);
        s.sync_ok(&w.svc, "alice").await;
        assert_exact(&w.tb, "alice", &[("INBOX", MESSAGES)]);
    })
    .await;
}

#[tokio::test]
async fn dovecot_stopped_mid_sync_isync14() {
    dovecot_stopped_mid_sync(Isync14).await;
}

#[tokio::test]
async fn dovecot_stopped_mid_sync_isync15() {
    dovecot_stopped_mid_sync(Isync15).await;
}

// 4. A stalled connection: stuck, then cut; and mbsync's own Timeout.

/// The server stops answering mid-sync (the proxy pauses): the watchdog marks the run `stuck`
/// (`stall_timeout = 1`), mbsync stays; then the connection is cut: failed with a reason.
async fn stalled_then_cut(version: MbsyncVersion) {
    with_timeout(async {
        let tb = Testbed::with_mbsync(version, SPEC);
        write_service_config(&tb, "stall_timeout = 1\nnotifications = false\n");
        tb.proxy.set_rate(Some(SLOW));
        let w = World::around(tb).await;
        let mut s = Streams::new(&w.svc).await;
        w.svc.sync("alice").await.unwrap();
        let mut records = Vec::new();
        let pid = s.until_done("alice", MID_WAY, &mut records).await;
        w.tb.proxy.pause();
        // Stuck: the record says so, the same mbsync still runs.
        loop {
            let signal = s.progress.next().await.unwrap();
            let args = signal.args().unwrap();
            if args.account != "alice" {
                continue;
            }
            let record = args.progress;
            assert!(!is_final(&record), "the run ended while stalled:\n{}", describe(&records));
            let stuck = state_of(&record) == "stuck";
            records.push(record);
            if stuck {
                break;
            }
        }
        assert_eq!(mbsync_pids_for(&w.tb.mbsyncrc()), [pid]);
        w.tb.proxy.refuse(true);
        w.tb.proxy.cut();
        let end = s.end("alice", records).await;
        println!("stalled, then cut ({version:?}): {}", end.message);
        assert!(end.message.contains("EOF") || end.message.contains("Socket error"), "{}", end.message);
        assert_failed_and_clean(&w, "alice", &end).await;
        w.tb.proxy.refuse(false);
        w.tb.proxy.resume();
        w.tb.proxy.set_rate(None);
        s.sync_ok(&w.svc, "alice").await;
        assert_exact(&w.tb, "alice", &[("INBOX", MESSAGES)]);
    })
    .await;
}

#[tokio::test]
async fn stalled_connection_is_stuck_then_cut_isync14() {
    stalled_then_cut(Isync14).await;
}

#[tokio::test]
async fn stalled_connection_is_stuck_then_cut_isync15() {
    stalled_then_cut(Isync15).await;
}

/// The server stops answering and nobody cuts: mbsync gives up by itself after its `Timeout`
/// (2 s here, 20 s by default), and says so.
async fn stalled_until_mbsyncs_timeout(version: MbsyncVersion) {
    with_timeout(async {
        let tb = Testbed::with_mbsync(version, SPEC);
        patch_mbsyncrc(&tb, "AuthMechs PLAIN\n", "AuthMechs PLAIN\nTimeout 2\n");
        tb.proxy.set_rate(Some(SLOW));
        let w = World::around(tb).await;
        let mut s = Streams::new(&w.svc).await;
        w.svc.sync("alice").await.unwrap();
        let mut records = Vec::new();
        s.until_done("alice", MID_WAY, &mut records).await;
        w.tb.proxy.pause();
        let paused = Instant::now();
        let end = s.end("alice", records).await;
        println!(
            "stalled until mbsync's Timeout ({version:?}): {} after {:?}",
            end.message,
            paused.elapsed()
        );
        // "Socket error on 127.0.0.1 (127.0.0.1:PORT): timeout." (1.4.4 and 1.5.1)
        assert!(end.message.contains("timeout"), "{}", end.message);
        assert_failed_and_clean(&w, "alice", &end).await;
        w.tb.proxy.resume();
        w.tb.proxy.set_rate(None);
        s.sync_ok(&w.svc, "alice").await;
        assert_exact(&w.tb, "alice", &[("INBOX", MESSAGES)]);
    })
    .await;
}

#[tokio::test]
async fn stalled_connection_until_mbsyncs_timeout_isync14() {
    stalled_until_mbsyncs_timeout(Isync14).await;
}

#[tokio::test]
async fn stalled_connection_until_mbsyncs_timeout_isync15() {
    stalled_until_mbsyncs_timeout(Isync15).await;
}

// 5. The local disk full.

/// A tmpfs mounted over a directory; unmounted on drop (lazily if still busy).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount -t tmpfs on {}: {out:?}", path.display());
        Tmpfs { path: path.to_owned() }
    }

    /// Make it `size` large, keeping its files.
    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "remount {} with size={size}: {out:?}", self.path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.path).output().is_ok_and(|o| o.status.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("cannot unmount the tmpfs on {}", self.path.display());
        }
    }
}

/// Whether a root-only test may run: as root yes; otherwise it fails, saying why, unless
/// `HIMALAYA_SYNC_SKIP_ROOT_TESTS=1` allows skipping it.
fn root_or_skip(test: &str) -> bool {
    if support::running_as_root() {
        return true;
    }
    let skip = std::env::var("HIMALAYA_SYNC_SKIP_ROOT_TESTS").is_ok_and(|v| v == "1");
    assert!(
        skip,
        "{test} mounts a tmpfs and must run as root (CI does); set HIMALAYA_SYNC_SKIP_ROOT_TESTS=1 to \
         skip it"
    );
    println!("{test}: skipped (not root, HIMALAYA_SYNC_SKIP_ROOT_TESTS=1)");
    false
}

/// 400 messages need 1.6 MB of tmpfs (a page per file), and 512 KiB hold about a hundred.
async fn local_disk_full(version: MbsyncVersion) {
    const COUNT: usize = 400;
    if !root_or_skip("local_disk_full") {
        return;
    }
    with_timeout(async {
        let w = World::start_with(version, &[("alice", "INBOX", COUNT)]).await;
        let disk = Tmpfs::mount(&w.tb.maildir("alice"), "512k");
        let mut s = Streams::new(&w.svc).await;
        w.svc.sync("alice").await.unwrap();
        let end = s.end("alice", Vec::new()).await;
        println!("local disk full ({version:?}): {}", end.message);
        assert!(end.message.contains("No space left on device"), "{}", end.message);
        assert_failed_and_clean(&w, "alice", &end).await;
        let pulled = w.tb.local_message_ids("alice", "INBOX").len();
        assert!(pulled < COUNT, "all {pulled} fit: the disk was not full");
        // Nothing lost on the server.
        let server = mail::read_message_ids(&w.tb.dovecot.maildir("alice"));
        assert_eq!(server.len(), COUNT, "the server lost or gained mail");

        disk.resize("16m");
        s.sync_ok(&w.svc, "alice").await;
        assert_exact(&w.tb, "alice", &[("INBOX", COUNT)]);
        drop(disk);
    })
    .await;
}

#[tokio::test]
async fn local_disk_full_isync14() {
    local_disk_full(Isync14).await;
}

#[tokio::test]
async fn local_disk_full_isync15() {
    local_disk_full(Isync15).await;
}

// 6. The session bus itself goes down and comes back.

/// The D-Bus activation file of the service, rendered for the binary under test, in a new
/// `services` dir of the test bed.
fn activation_dir(tb: &Testbed) -> PathBuf {
    let services = tb.dir.path().join("services");
    std::fs::create_dir_all(&services).unwrap();
    let template = include_str!("../systemd/org.himalaya.Sync.service.in");
    let bindir = Path::new(BIN).parent().unwrap().to_str().unwrap();
    std::fs::write(services.join("org.himalaya.Sync.service"), template.replace("@BINDIR@", bindir)).unwrap();
    services
}

async fn service_pid(conn: &Connection) -> u32 {
    let dbus = DBusProxy::new(conn).await.unwrap();
    dbus.get_connection_unix_process_id(BusName::try_from("org.himalaya.Sync").unwrap()).await.unwrap()
}

/// The bus daemon is killed mid-sync: the service (started by D-Bus activation) stops its
/// mbsync, records the sync as interrupted and exits; a new bus at the same address activates it
/// again at the first call, and it resumes the sync by itself, which ends exact.
#[tokio::test]
async fn bus_restart_the_service_exits_and_resumes_when_activated_again() {
    with_timeout(async {
        let tb = Testbed::new(SPEC);
        tb.proxy.set_rate(Some(SLOW));
        let services = activation_dir(&tb);
        let mut env = tb.env();
        // The activated service logs to the bus daemon's stderr: bus.log.
        env.push(("HIMALAYA_SYNC_LOG".into(), "himalaya_sync=debug".into()));
        let mut bus = PrivateBus::start_with_env(Some(&services), &env);
        let conn = connect(bus.address()).await;
        let svc = service(&conn).await;
        // No service runs: this call activates it.
        svc.sync("alice").await.unwrap_or_else(|e| panic!("{e}\n{}", bus.log()));
        let first = service_pid(&conn).await;
        wait_until("the sync to be mid-way", LONG, || async {
            get::<u32>(&svc.get_progress("alice").await.unwrap(), "messages_done").unwrap_or(0) > MID_WAY
        })
        .await;
        let mbsync = mbsync_pids_for(&tb.mbsyncrc());
        assert_eq!(mbsync.len(), 1, "{mbsync:?}");
        drop(svc);
        drop(conn);

        bus.kill();
        let killed = Instant::now();
        support::wait_for_or_log(
            "the service to exit with its bus",
            Duration::from_secs(15),
            || exited(first),
            || bus.log(),
        );
        println!("bus killed: the service exited {:?} after", killed.elapsed());
        assert!(exited(mbsync[0]) && mbsync_pids_for(&tb.mbsyncrc()).is_empty(), "an mbsync outlived it");
        let log = bus.log();
        assert!(log.contains("shutting down") && log.contains("outcome=Interrupted"), "{log}");
        let state = std::fs::read_to_string(tb.home().join(".local/state/himalaya-sync/state.json")).unwrap();
        assert!(state.contains("\"interrupted\": true"), "the sync is recorded as interrupted: {state}");

        bus.restart();
        let conn = connect(bus.address()).await;
        let svc = service(&conn).await;
        // Any call activates the service again; it resumes the sync by itself.
        let record = svc.get_progress("alice").await.unwrap_or_else(|e| panic!("{e}\n{}", bus.log()));
        let second = service_pid(&conn).await;
        assert_ne!(first, second, "a new service process");
        println!(
            "activated again: {} (last result {:?})",
            state_of(&record),
            get::<String>(&record, "last_result")
        );
        wait_until("the resumed sync to end", LONG, || async {
            let r = svc.get_progress("alice").await.unwrap();
            is_final(&r) && get::<String>(&r, "last_result").as_deref() != Some("interrupted")
        })
        .await;
        let record = svc.get_progress("alice").await.unwrap();
        assert_eq!(get::<String>(&record, "last_result").as_deref(), Some("ok"), "{record:?}\n{}", bus.log());
        assert_eq!(
            get::<u32>(&record, "messages_done"),
            Some(get::<u32>(&record, "messages_total").unwrap())
        );
        assert!(bus.log().contains("resumed a sync interrupted by the last shutdown"), "{}", bus.log());
        assert_exact(&tb, "alice", &[("INBOX", MESSAGES)]);
        send_signal(second, "TERM");
        support::wait_for("the activated service to exit", Duration::from_secs(15), || exited(second));
    })
    .await;
}

// 7. The soak.

/// What /proc says of a process: RSS in KiB, open fds, threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footprint {
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn footprint(pid: u32) -> Footprint {
    let field = |name: &str| support::procstat::status_field(pid, name);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    Footprint { rss_kib: field("VmRSS:"), fds, threads: field("Threads:") }
}

/// Children of `pid` that are zombies (exited, never reaped).
fn zombies_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
        })
        .collect()
}

/// The daemon at rest after a run: its mbsync reaped and no thread but its one (waited for,
/// bounded, since a helper thread ends a moment after the run's last signal).
fn settled_footprint(pid: u32) -> Footprint {
    let start = Instant::now();
    loop {
        let f = footprint(pid);
        if (f.threads == 1 && children_of(pid).is_empty()) || start.elapsed() > Duration::from_secs(5) {
            return f;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `SOAK_SYNCS` consecutive syncs of a small account (default 40; the long run is 500) with 3 new
/// messages delivered before each: every run ends well and exact, and the daemon's RSS (within
/// 1 MiB), fds and threads after sync 5 and at the end are the same; no zombie children.
#[tokio::test]
async fn soak_many_syncs_keep_the_daemon_flat() {
    const NEW_PER_SYNC: usize = 3;
    const BASELINE_AT: usize = 5;
    let syncs: usize = std::env::var("SOAK_SYNCS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    assert!(syncs > BASELINE_AT, "SOAK_SYNCS must be more than {BASELINE_AT}");
    // Its own bound: a sync of this account takes about a second on the 2-core VM.
    let bound = Duration::from_secs(120 + 3 * syncs as u64);
    let run = async {
        let w = World::start(&[("bob", "INBOX", 20)]).await;
        let pid = w.daemon.pid();
        let mut s = Streams::new(&w.svc).await;
        let started = Instant::now();
        let mut baseline = None;
        for i in 1..=syncs {
            if i > 1 {
                w.tb.dovecot.add_messages("bob", "INBOX", NEW_PER_SYNC);
            }
            s.sync_ok(&w.svc, "bob").await;
            if i == BASELINE_AT {
                baseline = Some(settled_footprint(pid));
            }
        }
        let elapsed = started.elapsed();
        let end = settled_footprint(pid);
        let base = baseline.expect("taken at sync 5");
        let zombies = zombies_of(pid);
        println!(
            "soak: {syncs} syncs in {elapsed:?}; after sync {BASELINE_AT}: RSS {} KiB, {} fds, {} threads; \
             after sync {syncs}: RSS {} KiB, {} fds, {} threads; RSS growth {} KiB; zombies {zombies:?}",
            base.rss_kib,
            base.fds,
            base.threads,
            end.rss_kib,
            end.fds,
            end.threads,
            end.rss_kib.cast_signed() - base.rss_kib.cast_signed(),
        );
        assert!(end.rss_kib < base.rss_kib + 1024, "RSS grew more than 1 MiB: {base:?} -> {end:?}");
        assert_eq!(end.fds, base.fds, "open fds changed");
        assert_eq!(end.threads, base.threads, "threads changed");
        assert!(zombies.is_empty(), "zombie children of the daemon: {zombies:?}");
        assert_exact(&w.tb, "bob", &[("INBOX", 20 + NEW_PER_SYNC * (syncs - 1))]);
    };
    tokio::time::timeout(bound, run).await.expect("the soak did not end in time");
}
