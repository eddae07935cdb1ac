//! Scenarios 5-8 and the CLI: kill -9 leaves no mbsync, SIGTERM stops safely, D-Bus activation
//! through the shipped file, the introspection contract, idle costs nothing.

mod support;

use std::{path::Path, time::Duration};

use futures_util::StreamExt;
use support::{
    MbsyncVersion, Testbed,
    bus::PrivateBus,
    daemon::{
        BIN, Daemon, World, connect, get, mbsync_pids_for, service, spawn_exec, wait_until, wakeups,
        with_timeout, write_service_config,
    },
};
use zbus::{fdo::DBusProxy, names::BusName};

const SPEC: &[(&str, &str, usize)] =
    &[("alice", "INBOX", 2000), ("alice", "Archive", 500), ("bob", "INBOX", 20)];

async fn lock_is_free(conn: &zbus::Connection, channel: &str) -> bool {
    let dbus = DBusProxy::new(conn).await.unwrap();
    let name = BusName::try_from(format!("org.himalaya.Sync.Lock.{channel}")).unwrap();
    !dbus.name_has_owner(name).await.unwrap()
}

/// Scenario 5: kill -9 of the daemon mid-sync leaves no mbsync within 1 s and a free lock; a
/// restarted daemon syncs exact.
#[tokio::test]
async fn kill_9_leaves_no_mbsync_and_no_lock() {
    with_timeout(async {
        let tb = Testbed::new(SPEC);
        tb.proxy.set_rate(Some(100_000));
        let bus = PrivateBus::start(None);
        let log = tb.dir.path().join("daemon.log");
        let mut daemon = Daemon::start(bus.address(), &tb.env(), &log).await;
        let conn = connect(bus.address()).await;
        let svc = service(&conn).await;
        svc.sync("alice").await.unwrap();
        assert!(!lock_is_free(&conn, "alice").await, "the sync holds alice's lock");
        wait_until("mbsync to pull messages", Duration::from_secs(20), || async {
            get::<u32>(&svc.get_progress("alice").await.unwrap(), "messages_done").unwrap_or(0) > 0
        })
        .await;
        assert_eq!(mbsync_pids_for(&tb.mbsyncrc()).len(), 1);
        daemon.kill9();
        let killed = std::time::Instant::now();
        wait_until("mbsync to die with the daemon", Duration::from_secs(1), || async {
            mbsync_pids_for(&tb.mbsyncrc()).is_empty()
        })
        .await;
        println!("mbsync gone {:?} after kill -9", killed.elapsed());
        assert!(lock_is_free(&conn, "alice").await, "the bus dropped the dead daemon's lock");

        tb.proxy.set_rate(None);
        let _daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon2.log")).await;
        let svc = service(&conn).await;
        let mut finished = svc.receive_sync_finished().await.unwrap();
        svc.sync("alice").await.unwrap();
        let s = finished.next().await.unwrap();
        assert!(s.args().unwrap().ok, "{}", s.args().unwrap().message);
        tb.assert_in_sync("alice");
    })
    .await;
}

/// SIGTERM or SIGINT mid-sync (an upgrade, `systemctl --user restart`, logout): the daemon stops
/// mbsync safely, sends the final signals, releases the lock and exits 0; the sync is recorded as
/// interrupted (not failed), and the next daemon resumes it by itself and ends exact.
#[tokio::test]
async fn sigterm_and_sigint_interrupt_syncs_and_the_next_start_resumes_them() {
    with_timeout(async {
        for (signal, version) in [("TERM", MbsyncVersion::Isync14), ("INT", MbsyncVersion::Isync15)] {
            let tb = Testbed::with_mbsync(version, SPEC);
            tb.proxy.set_rate(Some(100_000));
            let World { svc, conn, mut daemon, bus, tb } = World::around(tb).await;
            let mut finished = svc.receive_sync_finished().await.unwrap();
            svc.sync("alice").await.unwrap();
            wait_until("mbsync to pull messages", Duration::from_secs(20), || async {
                get::<u32>(&svc.get_progress("alice").await.unwrap(), "messages_done").unwrap_or(0) > 0
            })
            .await;
            let status = daemon.stop(signal, Duration::from_secs(15));
            assert_eq!(status.code(), Some(0), "SIG{signal}; log:\n{}", daemon.log());
            assert!(mbsync_pids_for(&tb.mbsyncrc()).is_empty());
            assert!(lock_is_free(&conn, "alice").await);
            // The final signal went out before the daemon left.
            let end = tokio::time::timeout(Duration::from_secs(2), finished.next())
                .await
                .unwrap_or_else(|_| panic!("SIG{signal}: no SyncFinished before exit"))
                .unwrap();
            assert!(
                end.args().unwrap().message.starts_with("sync interrupted"),
                "{}",
                end.args().unwrap().message
            );
            let state =
                std::fs::read_to_string(tb.home().join(".local/state/himalaya-sync/state.json")).unwrap();
            assert!(state.contains("\"interrupted\": true"), "{state}");
            tb.proxy.set_rate(None);
            let _daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon2.log")).await;
            let svc = service(&conn).await;
            let mut finished = svc.receive_sync_finished().await.unwrap();
            // Resumed by itself: no client asked.
            wait_until("the interrupted sync to resume", Duration::from_secs(10), || async {
                get::<String>(&svc.get_progress("alice").await.unwrap(), "state").as_deref() != Some("idle")
            })
            .await;
            let end = finished.next().await.unwrap();
            assert!(end.args().unwrap().ok, "the resumed sync: {}", end.args().unwrap().message);
            tb.assert_in_sync("alice");
        }
    })
    .await;
}

/// A sync the user cancelled is not resumed by the next start.
#[tokio::test]
async fn a_cancelled_sync_is_not_resumed() {
    with_timeout(async {
        let tb = Testbed::new(SPEC);
        tb.proxy.set_rate(Some(100_000));
        let World { svc, conn, mut daemon, bus, tb } = World::around(tb).await;
        let mut finished = svc.receive_sync_finished().await.unwrap();
        svc.sync("alice").await.unwrap();
        svc.cancel("alice").await.unwrap();
        assert_eq!(finished.next().await.unwrap().args().unwrap().message, "sync cancelled");
        assert_eq!(daemon.stop("TERM", Duration::from_secs(15)).code(), Some(0));
        let _daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon2.log")).await;
        let svc = service(&conn).await;
        // The resume runs right after the name is taken; give it time to (wrongly) start.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let record = svc.get_progress("alice").await.unwrap();
        assert_eq!(get::<String>(&record, "state").as_deref(), Some("idle"));
        assert_eq!(get::<String>(&record, "last_result").as_deref(), Some("cancelled"));
        assert!(mbsync_pids_for(&tb.mbsyncrc()).is_empty(), "a cancelled sync was resumed");
    })
    .await;
}

/// Scenario 6: the shipped activation file starts the daemon on the first call.
#[tokio::test]
async fn dbus_activation_through_the_shipped_file() {
    with_timeout(async {
        let tb = Testbed::new(&[("bob", "INBOX", 20)]);
        let services = tb.dir.path().join("services");
        std::fs::create_dir_all(&services).unwrap();
        let template = include_str!("../systemd/org.himalaya.Sync.service.in");
        let bindir = Path::new(BIN).parent().unwrap().to_str().unwrap();
        std::fs::write(services.join("org.himalaya.Sync.service"), template.replace("@BINDIR@", bindir))
            .unwrap();
        let bus = PrivateBus::start_with_env(Some(&services), &tb.env());
        let conn = connect(bus.address()).await;
        let svc = service(&conn).await;
        // No daemon runs: this call activates it.
        let mut accounts = svc.list_accounts().await.unwrap_or_else(|e| panic!("{e}\n{}", bus.log()));
        accounts.sort();
        assert_eq!(accounts, ["bob", "everyone"]);
        let mut finished = svc.receive_sync_finished().await.unwrap();
        svc.sync("bob").await.unwrap();
        assert!(finished.next().await.unwrap().args().unwrap().ok);
        tb.assert_in_sync("bob");
        // Stop the activated daemon (the bus does not).
        let dbus = DBusProxy::new(&conn).await.unwrap();
        let pid = dbus
            .get_connection_unix_process_id(BusName::try_from("org.himalaya.Sync").unwrap())
            .await
            .unwrap();
        support::daemon::send_signal(pid, "TERM");
        wait_until("the activated daemon to exit", Duration::from_secs(10), || async {
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
        })
        .await;
    })
    .await;
}

/// Extract `<interface name="NAME">…</interface>` from introspection XML.
fn interface_xml(xml: &str, name: &str) -> String {
    let start =
        xml.find(&format!("<interface name=\"{name}\">")).unwrap_or_else(|| panic!("no {name} in:\n{xml}"));
    let end = start + xml[start..].find("</interface>").unwrap() + "</interface>".len();
    xml[start..end].lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

/// Scenario 7: the live interfaces equal the contract in dbus/org.himalaya.Sync.xml
/// (`TEST_OVERWRITE=1` rewrites the file after an intended change).
#[tokio::test]
async fn live_introspection_matches_the_contract() {
    with_timeout(async {
        let World { svc: _svc, conn, daemon: _daemon, bus, tb } = World::start(&[("bob", "INBOX", 1)]).await;
        // An exec holder, held mid-run by a stalled server, serves the LockHolder interface.
        tb.proxy.pause();
        let _exec = spawn_exec(Some(bus.address()), &tb.env(), &["bob"]);
        wait_until("exec to hold bob's lock", Duration::from_secs(10), || async {
            !lock_is_free(&conn, "bob").await
        })
        .await;
        let introspect = |destination: &'static str, path: &'static str| {
            let conn = conn.clone();
            async move {
                zbus::fdo::IntrospectableProxy::builder(&conn)
                    .destination(destination)
                    .path(path)
                    .build()
                    .await
                    .unwrap()
                    .introspect()
                    .await
                    .unwrap()
            }
        };
        let main = introspect("org.himalaya.Sync", "/org/himalaya/Sync").await;
        let account = introspect("org.himalaya.Sync", "/org/himalaya/Sync/account/bob").await;
        let holder = introspect("org.himalaya.Sync.Lock.bob", "/org/himalaya/Sync/LockHolder").await;
        let live = format!(
            "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n\
             \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n\
             <!-- The org.himalaya.Sync bus API: the contract clients rely on. Checked against the\n\
             running service by tests/lifecycle.rs; TEST_OVERWRITE=1 cargo test rewrites it. -->\n\
             <node>\n{}\n<!-- On /org/himalaya/Sync/account/<label>, one object per account. -->\n{}\n\
             <!-- On /org/himalaya/Sync/LockHolder of every lock holder (himalaya-sync exec). -->\n{}\n</node>\n",
            interface_xml(&main, "org.himalaya.Sync"),
            interface_xml(&account, "org.himalaya.Sync.Account"),
            interface_xml(&holder, "org.himalaya.Sync.LockHolder"),
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.himalaya.Sync.xml");
        if std::env::var_os("TEST_OVERWRITE").is_some() {
            std::fs::write(&path, &live).unwrap();
        }
        let contract = std::fs::read_to_string(&path).unwrap();
        assert_eq!(live, contract, "the live API differs from dbus/org.himalaya.Sync.xml");
    })
    .await;
}

/// Scenario 8: after a sync the idle daemon does not wake at all (no polling timers).
#[tokio::test]
async fn idle_daemon_does_not_wake() {
    with_timeout(async {
        let World { svc, conn: _conn, daemon, bus: _bus, tb: _tb } =
            World::start(&[("bob", "INBOX", 20)]).await;
        let mut finished = svc.receive_sync_finished().await.unwrap();
        svc.sync("bob").await.unwrap();
        assert!(finished.next().await.unwrap().args().unwrap().ok);
        // Let the last replies and signals settle, then watch.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = wakeups(daemon.pid());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = wakeups(daemon.pid());
        assert_eq!(after - before, 0, "the idle daemon woke {} times in 3 s", after - before);
        let threads = std::fs::read_dir(format!("/proc/{}/task", daemon.pid())).unwrap().count();
        assert_eq!(threads, 1, "a thread outlived the runs (the daemon runs on one)");
        let rss_kib = support::procstat::status_field(daemon.pid(), "VmRSS:");
        println!("idle RSS: {rss_kib} KiB");
    })
    .await;
}

/// The CLI: status --json, watch --json (first line the state, then changes), sync exit codes.
#[tokio::test]
async fn cli_status_watch_and_sync() {
    with_timeout(async {
        let World { svc: _svc, conn: _conn, daemon: _daemon, bus, tb } =
            World::start(&[("bob", "INBOX", 20)]).await;
        let run = |args: &[&str]| support::daemon::run_cli(bus.address(), &tb.env(), args);
        let out = run(&["status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["accounts"]["bob"]["state"], "idle");

        let (_watch, mut lines) = spawn_watch(bus.address(), &["watch", "--json"]);
        let first: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(first["event"], "state");
        assert_eq!(first["accounts"]["bob"]["state"], "idle");

        let out = run(&["sync", "bob"]);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("bob: sync finished"));
        let mut events = Vec::new();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let done = v["event"] == "finished";
            events.push(v);
            if done {
                break;
            }
        }
        assert_eq!(events.first().unwrap()["progress"]["state"], "syncing");
        let last_progress = events.iter().rev().find(|e| e["event"] == "progress").unwrap();
        assert_eq!(last_progress["progress"]["state"], "idle");
        assert_eq!(last_progress["progress"]["messages_done"], 20);
        assert_eq!(events.last().unwrap()["ok"], true);

        // For people: a compact table, header first, one row per account.
        let out = run(&["status", "bob"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert_eq!(rows[0][..3], ["ACCOUNT", "STATE", "MESSAGES"], "{text}");
        assert_eq!(rows[1][..3], ["bob", "idle", "ok"], "{text}");
        let out = run(&["cancel", "bob"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("org.himalaya.Sync.Error.NotRunning"));
        let out = run(&["sync", "nosuch"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("org.himalaya.Sync.Error.UnknownAccount"));
    })
    .await;
}

/// `watch --json` follows the service across restarts: started before the service it says it is
/// down, then up with a fresh state when it comes; a SIGTERM and a kill -9 of the daemon mid-sync
/// are `service up:false`, never an exit; the next daemon brings `up:true`, a state line and its
/// progress; `AutoTakeover` changes come as their own events.
#[tokio::test]
async fn watch_follows_the_service_across_restarts() {
    with_timeout(async {
        let tb = Testbed::new(&[("bob", "INBOX", 20)]);
        let bus = PrivateBus::start(None);
        let (mut watch, mut lines) = spawn_watch(bus.address(), &["watch", "--json"]);
        let mut next = async || -> serde_json::Value {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("a watch line in time")
                .unwrap()
                .expect("watch is still running");
            serde_json::from_str(&line).unwrap()
        };
        assert_eq!(next().await, serde_json::json!({ "event": "service", "up": false }));

        let log = |n: u32| tb.dir.path().join(format!("daemon{n}.log"));
        let mut daemon = Daemon::start(bus.address(), &tb.env(), &log(1)).await;
        assert_eq!(next().await, serde_json::json!({ "event": "service", "up": true }));
        let state = next().await;
        assert_eq!(state["event"], "state");
        assert_eq!(state["accounts"]["bob"]["state"], "idle");
        assert_eq!(state["auto_takeover"], false);
        assert_eq!(state["auto_takeover_timeout"], 300);

        let conn = connect(bus.address()).await;
        service(&conn).await.set_auto_takeover(true).await.unwrap();
        assert_eq!(next().await, serde_json::json!({ "event": "auto_takeover", "on": true }));

        // SIGTERM, then a kill -9 while a sync runs: each time down, then up with a fresh state.
        for (n, kill9) in [(2, false), (3, true)] {
            if kill9 {
                tb.proxy.set_rate(Some(2_000));
                service(&conn).await.sync("bob").await.unwrap();
                loop {
                    let e = next().await;
                    if e["event"] == "progress" && e["progress"]["state"] == "syncing" {
                        break;
                    }
                }
                daemon.kill9();
            } else {
                assert_eq!(daemon.stop("TERM", Duration::from_secs(15)).code(), Some(0));
            }
            let down = loop {
                let e = next().await;
                if e["event"] == "service" {
                    break e;
                }
            };
            assert_eq!(down["up"], false, "after daemon {}", n - 1);
            tb.proxy.set_rate(None);
            daemon = Daemon::start(bus.address(), &tb.env(), &log(n)).await;
            assert_eq!(next().await, serde_json::json!({ "event": "service", "up": true }));
            let state = next().await;
            assert_eq!(state["event"], "state", "{state}");
            assert_eq!(state["auto_takeover"], true, "kept in the state file");
        }
        // The new daemon's runs are followed as the first one's were.
        let out = support::daemon::run_cli(bus.address(), &tb.env(), &["sync", "bob"]);
        assert!(out.status.success(), "{out:?}");
        let finished = loop {
            let e = next().await;
            if e["event"] == "finished" {
                break e;
            }
        };
        assert_eq!(finished["account"], "bob");
        assert_eq!(finished["ok"], true);
        assert!(watch.try_wait().unwrap().is_none(), "watch never exits while the bus lives");
        drop(daemon);
    })
    .await;
}

/// Start the CLI with `args` (a `watch`) on `bus`; the child and its output lines.
fn spawn_watch(bus: &str, args: &[&str]) -> (tokio::process::Child, Lines) {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DBUS_SESSION_BUS_ADDRESS", bus)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    (child, lines)
}

/// A watch's output lines.
type Lines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;
/// Read `lines` until one satisfies `pred` (bounded); all read so far.
async fn until(lines: &mut Lines, what: &str, mut pred: impl FnMut(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line for {what} in 30 s; saw {seen:#?}"))
            .unwrap()
            .expect("watch is still running");
        let done = pred(&line);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// `watch --waybar` and `watch --format` through a sync, a failure and a service restart: valid
/// waybar JSON with the right class every line, the template filled in, no exit on restart.
#[tokio::test]
async fn watch_for_status_bars() {
    with_timeout(async {
        let World { svc, conn, mut daemon, bus, tb } = World::start(&[("bob", "INBOX", 200)]).await;
        let (mut waybar, mut bar_lines) = spawn_watch(bus.address(), &["watch", "--waybar"]);
        let (mut format, mut format_lines) =
            spawn_watch(bus.address(), &["watch", "--format", "{account} {state} {done}/{total} {percent}"]);
        let bar = |line: &str| -> serde_json::Value { serde_json::from_str(line).expect("waybar JSON") };
        let first = until(&mut bar_lines, "the first bar", |_| true).await;
        assert_eq!(bar(&first[0])["class"], "idle");
        assert_eq!(bar(&first[0])["text"], "");
        assert!(bar(&first[0])["tooltip"].as_str().unwrap().contains("bob: idle"), "{}", first[0]);

        // A sync: syncing with counts, then idle again; the template follows it.
        tb.proxy.set_rate(Some(40_000));
        svc.sync("bob").await.unwrap();
        let seen = until(&mut bar_lines, "the sync's end", |l| bar(l)["class"] == "idle").await;
        let syncing: Vec<serde_json::Value> =
            seen.iter().map(|l| bar(l)).filter(|b| b["class"] == "syncing").collect();
        assert!(!syncing.is_empty(), "{seen:#?}");
        assert!(syncing.iter().any(|b| b["text"].as_str().unwrap().starts_with("bob ")), "{seen:#?}");
        for b in &syncing {
            if let Some(p) = b.get("percentage") {
                assert!(p.as_u64().unwrap() < 100, "never 100 before the end: {b}");
            }
        }
        // 100 only once the run ended well.
        let seen = until(&mut format_lines, "the template's end", |l| l == "bob idle 200/200 100").await;
        assert!(seen.iter().any(|l| l.starts_with("bob syncing ")), "{seen:#?}");
        assert!(!seen.iter().any(|l| l.starts_with("bob syncing ") && l.ends_with(" 100")), "{seen:#?}");
        assert!(seen.windows(2).all(|w| w[0] != w[1]), "a line only when it changes: {seen:#?}");

        // A failure.
        tb.proxy.set_rate(None);
        tb.set_password("bob", "wrong");
        svc.sync("bob").await.unwrap();
        let seen = until(&mut bar_lines, "the failure", |l| bar(l)["class"] == "failed").await;
        let failed = bar(seen.last().unwrap());
        assert_eq!(failed["text"], "bob failed");
        assert!(failed["tooltip"].as_str().unwrap().contains("AUTHENTICATIONFAILED"), "{failed}");
        until(&mut format_lines, "the failure", |l| l.starts_with("bob failed")).await;

        // A restart: a line for the service gone, then the state again; no exit.
        assert_eq!(daemon.stop("TERM", Duration::from_secs(15)).code(), Some(0));
        let seen = until(&mut bar_lines, "the service gone", |l| {
            bar(l)["tooltip"] == "himalaya-sync: the service is not running"
        })
        .await;
        assert_eq!(bar(seen.last().unwrap())["text"], "");
        until(&mut format_lines, "the service gone", str::is_empty).await;
        let _daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon2.log")).await;
        until(&mut bar_lines, "the service back", |l| {
            bar(l)["tooltip"].as_str().unwrap().contains("bob: failed")
        })
        .await;
        until(&mut format_lines, "the service back", |l| l.starts_with("bob failed")).await;
        assert!(waybar.try_wait().unwrap().is_none() && format.try_wait().unwrap().is_none());
        drop(conn);
    })
    .await;
}

/// A helper mbsync starts (here a `PassCmd`) that outlives mbsync and keeps its stderr open must
/// not keep the run alive: the run ends when mbsync does (plus a short drain).
#[tokio::test]
async fn a_helper_holding_mbsyncs_output_does_not_hold_the_run() {
    with_timeout(async {
        let tb = Testbed::new(&[("bob", "INBOX", 20)]);
        let rc = std::fs::read_to_string(tb.mbsyncrc()).unwrap();
        // The helper writes its PID, so the test can end it afterwards.
        let pidfile = tb.dir.path().join("helper.pid");
        let patched = rc.replace(
            "User bob\nPass \"bobpw\"\n",
            &format!("User bob\nPassCmd \"sleep 30 >&2 & echo $! >{}; echo bobpw\"\n", pidfile.display()),
        );
        assert_ne!(rc, patched, "the test bed's mbsyncrc changed shape:\n{rc}");
        std::fs::write(tb.mbsyncrc(), patched).unwrap();
        let World { svc, conn: _conn, daemon, bus: _bus, tb } = World::around(tb).await;
        let mut finished = svc.receive_sync_finished().await.unwrap();
        let started = std::time::Instant::now();
        svc.sync("bob").await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), finished.next())
            .await
            .unwrap_or_else(|_| panic!("the run waited for the helper; log:\n{}", daemon.log()))
            .unwrap();
        assert!(end.args().unwrap().ok, "{}", end.args().unwrap().message);
        println!("run ended {:?} after Sync", started.elapsed());
        tb.assert_in_sync("bob");
        // The account is free again at once.
        svc.sync("bob").await.unwrap();
        assert!(finished.next().await.unwrap().args().unwrap().ok);
        let helper = std::fs::read_to_string(&pidfile).unwrap();
        support::daemon::send_signal(helper.trim().parse().unwrap(), "TERM");
    })
    .await;
}

/// A corrupt config.toml and a corrupt state file are reported, never fatal; the corrupt state
/// is kept aside for the user.
#[tokio::test]
async fn corrupt_config_and_state_files_are_not_fatal() {
    with_timeout(async {
        let tb = Testbed::new(&[("bob", "INBOX", 5)]);
        let state_dir = tb.home().join(".local/state/himalaya-sync");
        std::fs::create_dir_all(&state_dir).unwrap();
        write_service_config(&tb, "stall_timeout = \"soon\"\n[[[");
        std::fs::write(state_dir.join("state.json"), "{\"accounts\": {\"bob\": ").unwrap();
        let World { svc, conn: _conn, daemon, bus: _bus, tb: _tb } = World::around(tb).await;
        let mut finished = svc.receive_sync_finished().await.unwrap();
        svc.sync("bob").await.unwrap();
        assert!(finished.next().await.unwrap().args().unwrap().ok);
        let log = daemon.log();
        assert!(log.contains("config.toml") && log.contains("using the defaults"), "{log}");
        assert!(log.contains("state file is corrupt"), "{log}");
        let names: Vec<String> = std::fs::read_dir(&state_dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(names.iter().any(|n| n.contains("corrupt")), "{names:?}");
        let state = std::fs::read_to_string(state_dir.join("state.json")).unwrap();
        assert!(state.contains("\"ok\""), "a fresh state was written: {state}");
    })
    .await;
}

/// How mbsync is run, seen from inside: a `PassCmd` (run by mbsync, so it shares its stdin,
/// environment and process group) records what it got.
#[tokio::test]
async fn mbsync_runs_with_null_stdin_no_gpg_tty_wide_columns_in_its_own_group() {
    with_timeout(async {
        let tb = Testbed::new(&[("bob", "INBOX", 5)]);
        let d = tb.dir.path().to_str().unwrap().to_owned();
        let rc = std::fs::read_to_string(tb.mbsyncrc()).unwrap();
        let probe = format!(
            "PassCmd \"echo ${{GPG_TTY:-unset}} >{d}/gpg_tty; readlink /proc/self/fd/0 >{d}/stdin; \
             cut -d' ' -f5 /proc/$$/stat >{d}/pgid; echo $COLUMNS >{d}/columns; echo bobpw\"\n"
        );
        let patched = rc.replace("Pass \"bobpw\"\n", &probe);
        assert_ne!(rc, patched, "the test bed's mbsyncrc changed shape:\n{rc}");
        std::fs::write(tb.mbsyncrc(), patched).unwrap();
        let bus = PrivateBus::start(None);
        let mut env = tb.env();
        env.push(("GPG_TTY".into(), "/dev/pts/99".into()));
        let _daemon = Daemon::start(bus.address(), &env, &tb.dir.path().join("daemon.log")).await;
        let conn = connect(bus.address()).await;
        let svc = service(&conn).await;
        let mut progress = svc.receive_progress_changed().await.unwrap();
        let mut finished = svc.receive_sync_finished().await.unwrap();
        svc.sync("bob").await.unwrap();
        let first = progress.next().await.unwrap();
        let pid: u32 = get(&first.args().unwrap().progress, "pid").expect("the first record names the pid");
        // No longer read: an unread stream would stall the connection (zbus queues 64 per stream).
        drop(progress);
        assert!(finished.next().await.unwrap().args().unwrap().ok);
        let read = |name: &str| std::fs::read_to_string(tb.dir.path().join(name)).unwrap().trim().to_owned();
        assert_eq!(read("gpg_tty"), "unset", "GPG_TTY must not reach mbsync's helpers");
        assert_eq!(read("stdin"), "/dev/null");
        assert_eq!(read("pgid"), pid.to_string(), "mbsync leads its own process group");
        assert_eq!(read("columns"), "1000");
    })
    .await;
}

/// A program that ignores SIGTERM (here a stand-in for a hung mbsync) is killed with SIGKILL
/// after `stop_grace`, with its whole process group.
#[tokio::test]
async fn cancel_escalates_to_sigkill_after_the_grace_period() {
    with_timeout(async {
        use std::os::unix::fs::PermissionsExt;
        let tb = Testbed::new(&[("bob", "INBOX", 1)]);
        let stub = tb.dir.path().join("stubborn-mbsync");
        std::fs::write(&stub, "#!/bin/sh\ntrap '' TERM\nsleep 30\n").unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        write_service_config(&tb, &format!("mbsync = {:?}\nstop_grace = 1\n", stub.to_str().unwrap()));
        let World { svc, conn: _conn, daemon: _daemon, bus: _bus, tb: _tb } = World::around(tb).await;
        let mut finished = svc.receive_sync_finished().await.unwrap();
        svc.sync("bob").await.unwrap();
        let pid: u32 = get(&svc.get_progress("bob").await.unwrap(), "pid").unwrap();
        // Let the shell install its trap.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = std::time::Instant::now();
        svc.cancel("bob").await.unwrap();
        let end = finished.next().await.unwrap();
        let waited = asked.elapsed();
        assert_eq!(end.args().unwrap().message, "sync cancelled");
        assert!(waited >= Duration::from_millis(900), "killed before the grace period: {waited:?}");
        assert!(waited < Duration::from_secs(5), "not killed after the grace period: {waited:?}");
        // The whole group is gone: the shell and its sleep.
        let group_alive = std::fs::read_dir("/proc").unwrap().filter_map(Result::ok).any(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> =
                stat.rsplit_once(") ").map(|(_, r)| r.split(' ').collect()).unwrap_or_default();
            fields.get(2) == Some(&pid.to_string().as_str()) && fields.first() != Some(&"Z")
        });
        assert!(!group_alive, "a process of mbsync's group survived");
    })
    .await;
}
