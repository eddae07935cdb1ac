//! The watchdog: a stalled sync is `stuck` and raises a desktop notification a person can act
//! on; external syncs that are overdue or stuck offer "Take over" (or are taken over by
//! themselves with `AutoTakeover`); a failure notifies once per streak. A recording
//! `org.freedesktop.Notifications` server on the private bus stands in for the desktop; a sync is
//! stalled by pausing the throttling proxy in front of Dovecot (mbsync gives up on a silent server
//! only after its own 20 s `Timeout`, so `stall_timeout` is 2 s here).

// D-Bus member names read better in prose without backticks.
#![allow(clippy::doc_markdown)]

mod support;

use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt;
use support::{
    MbsyncVersion::{self, Isync14, Isync15},
    Testbed,
    daemon::{
        Daemon, World, get, mbsync_pids_for, run_cli, service, spawn_exec, wait_until, wakeups, with_timeout,
        write_service_config,
    },
    notifications::{Notified, Recorder},
    sampler::Sampler,
};
use zbus::OwnedVariant;

type Dict = HashMap<String, OwnedVariant>;

const SPEC: &[(&str, &str, usize)] =
    &[("alice", "INBOX", 2000), ("alice", "Archive", 500), ("bob", "INBOX", 20)];
const LONG: Duration = Duration::from_secs(30);
/// stall_timeout + 1 s: the bound for publishing `stuck`.
const STUCK_WITHIN: Duration = Duration::from_secs(3);

fn state(d: &Dict) -> String {
    get::<String>(d, "state").unwrap_or_default()
}

/// A test bed for `version` with `config` in config.toml, its daemon, and a recording
/// notification server (with or without the actions capability).
async fn world(version: MbsyncVersion, config: &str, actions: bool) -> (World, Recorder) {
    let tb = Testbed::with_mbsync(version, SPEC);
    write_service_config(&tb, config);
    let w = World::around(tb).await;
    let recorder = Recorder::start(w.bus.address(), actions).await;
    (w, recorder)
}

/// Start a throttled sync of alice, let it move, then stall it; returns once it is `stuck`.
async fn stall_a_sync(w: &World) {
    w.tb.proxy.set_rate(Some(100_000));
    w.svc.sync("alice").await.unwrap();
    wait_until("alice to pull messages", LONG, || async {
        get::<u32>(&w.svc.get_progress("alice").await.unwrap(), "messages_done").unwrap_or(0) > 0
    })
    .await;
    w.tb.proxy.pause();
    wait_stuck(w).await;
}

async fn wait_moving(w: &World) {
    wait_until("alice to move again", LONG, || async {
        state(&w.svc.get_progress("alice").await.unwrap()) == "syncing"
    })
    .await;
}

async fn wait_stuck(w: &World) {
    let start = std::time::Instant::now();
    wait_until("alice to be stuck", STUCK_WITHIN + Duration::from_secs(1), || async {
        state(&w.svc.get_progress("alice").await.unwrap()) == "stuck"
    })
    .await;
    println!("stuck {:?} after the pause", start.elapsed());
}

async fn finished(w: &World, stream: &mut himalaya_sync::bus::service::SyncFinishedStream) -> (bool, String) {
    let s = tokio::time::timeout(LONG, stream.next()).await.expect("no SyncFinished").unwrap();
    let args = s.args().unwrap();
    assert_eq!(args.account, "alice", "{}", w.daemon.log());
    (args.ok, args.message.to_owned())
}

fn hint_str(n: &Notified, key: &str) -> Option<String> {
    n.hints.get(key).and_then(|v| String::try_from(v.try_clone().ok()?).ok())
}

/// Scenario 1: `stuck` comes within stall_timeout + 1 s, with a notification that has the actions; when
/// the sync moves again it is `syncing`, and the notification is closed. The sync ends exact.
async fn a_stall_is_stuck_notified_and_closed_when_it_moves(version: MbsyncVersion) {
    with_timeout(async {
        let (w, recorder) = world(version, "stall_timeout = 2\n", true).await;
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        let mut changes = w.svc.receive_progress_changed().await.unwrap();
        stall_a_sync(&w).await;
        let record = w.svc.get_progress("alice").await.unwrap();
        assert_eq!(get::<bool>(&record, "stuck"), Some(true));
        let path = himalaya_sync::names::account_path("alice").unwrap();
        let account =
            zbus::Proxy::new(&w.conn, "org.himalaya.Sync", path, "org.himalaya.Sync.Account").await.unwrap();
        assert_eq!(account.get_property::<String>("State").await.unwrap(), "stuck");
        let n = recorder.wait_notified(1, Duration::from_secs(5)).await;
        assert_eq!(n.app_name, "himalaya-sync");
        assert_eq!(n.action_ids(), ["restart", "stop", "dismiss"], "{n:?}");
        assert_eq!(hint_str(&n, "category").as_deref(), Some("email"));
        assert_eq!(n.hints.get("urgency").and_then(|v| u8::try_from(v.try_clone().ok()?).ok()), Some(1));
        assert!(n.summary.contains("alice") && n.body.contains("2 s"), "{n:?}");
        assert!(n.body.contains("messages"), "says what mbsync last did: {}", n.body);
        // A ProgressChanged said so too.
        let mut saw_stuck = false;
        while let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(300), changes.next()).await {
            saw_stuck |= get::<bool>(&s.args().unwrap().progress, "stuck") == Some(true);
        }
        assert!(saw_stuck, "no ProgressChanged with stuck = true");
        // No longer read: an unread stream would stall the connection (zbus queues 64 per stream)
        // and with it the SyncFinished awaited below.
        drop(changes);

        w.tb.proxy.resume();
        wait_moving(&w).await;
        recorder.wait_closed(n.id, Duration::from_secs(5)).await;
        w.tb.proxy.set_rate(None);
        let (ok, message) = finished(&w, &mut fin).await;
        assert!(ok, "{message}");
        assert_eq!(recorder.notified().len(), 1, "one notification for one stall");
        w.tb.assert_in_sync("alice");
    })
    .await;
}

#[tokio::test]
async fn a_stall_is_stuck_notified_and_closed_when_it_moves_isync14() {
    a_stall_is_stuck_notified_and_closed_when_it_moves(Isync14).await;
}

#[tokio::test]
async fn a_stall_is_stuck_notified_and_closed_when_it_moves_isync15() {
    a_stall_is_stuck_notified_and_closed_when_it_moves(Isync15).await;
}

/// Scenarios 2 and 3: Restart re-syncs (exact); a second stall updates the same notification; Dismiss
/// closes it and no new one comes for that stall; Stop stops (no mbsync left).
#[tokio::test]
async fn restart_dismiss_a_second_stall_and_stop() {
    with_timeout(async {
        let (w, recorder) = world(Isync14, "stall_timeout = 2\n", true).await;
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        stall_a_sync(&w).await;
        let first = recorder.wait_notified(1, Duration::from_secs(5)).await;
        recorder.invoke(first.id, "restart").await;
        let (ok, message) = finished(&w, &mut fin).await;
        assert_eq!((ok, message.as_str()), (false, "sync restarted"));
        recorder.wait_closed(first.id, Duration::from_secs(5)).await;
        wait_until("the restarted run", LONG, || async { mbsync_pids_for(&w.tb.mbsyncrc()).len() == 1 })
            .await;
        // The restarted run stalls too (the proxy is still paused): the same notification,
        // updated in place.
        wait_stuck(&w).await;
        let second = recorder.wait_notified(2, Duration::from_secs(5)).await;
        assert_eq!(second.replaces_id, first.id, "updated in place, not a new one");
        recorder.invoke(second.id, "dismiss").await;
        recorder.wait_closed(second.id, Duration::from_secs(5)).await;
        // Still stuck: nothing new for this stall.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(recorder.notified().len(), 2, "no new notification for a dismissed stall");
        assert_eq!(state(&w.svc.get_progress("alice").await.unwrap()), "stuck");

        // It moves, stalls again: notified again, in place; Stop stops it.
        w.tb.proxy.resume();
        wait_moving(&w).await;
        w.tb.proxy.pause();
        wait_stuck(&w).await;
        let third = recorder.wait_notified(3, Duration::from_secs(5)).await;
        assert_eq!(third.replaces_id, first.id);
        recorder.invoke(third.id, "stop").await;
        let (ok, message) = finished(&w, &mut fin).await;
        assert_eq!((ok, message.as_str()), (false, "sync cancelled"));
        assert!(mbsync_pids_for(&w.tb.mbsyncrc()).is_empty(), "Stop left an mbsync");
        w.tb.proxy.resume();
        w.tb.proxy.set_rate(None);
        w.svc.sync("alice").await.unwrap();
        let (ok, message) = finished(&w, &mut fin).await;
        assert!(ok, "{message}");
        w.tb.assert_in_sync("alice");
    })
    .await;
}

/// Scenario 4: an exec holder and a bare mbsync past auto_takeover_timeout: a notification with Take over,
/// which takes over (never two mbsync). With AutoTakeover set through the bus it happens without
/// a click, and the switch persists across a daemon restart.
#[tokio::test]
async fn overdue_external_syncs_offer_take_over_and_auto_takeover_acts() {
    with_timeout(async {
        let (w, recorder) = world(Isync14, "auto_takeover_timeout = 1\n", true).await;
        assert!(!w.svc.auto_takeover().await.unwrap());
        assert_eq!(w.svc.auto_takeover_timeout().await.unwrap(), 1);
        w.tb.proxy.set_rate(Some(100_000));
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        let mut fin = w.svc.receive_sync_finished().await.unwrap();

        let exec = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice"]);
        let n = recorder.wait_notified(1, Duration::from_secs(10)).await;
        assert_eq!(n.action_ids(), ["takeover", "dismiss"], "{n:?}");
        assert!(n.body.contains("lock holder"), "{}", n.body);
        let record = w.svc.get_progress("alice").await.unwrap();
        assert_eq!(get::<bool>(&record, "overdue"), Some(true));
        recorder.invoke(n.id, "takeover").await;
        assert_eq!(exec.wait(Duration::from_secs(10)).code(), Some(143), "the holder was taken over");
        wait_until("the service to sync alice", LONG, || async {
            get::<String>(&w.svc.get_progress("alice").await.unwrap(), "owner").as_deref() == Some("service")
        })
        .await;
        w.svc.cancel("alice").await.unwrap();
        finished(&w, &mut fin).await;

        // AutoTakeover through the bus: a bare mbsync is taken over without a click.
        let mut changed = w.svc.receive_auto_takeover_changed().await;
        w.svc.set_auto_takeover(true).await.unwrap();
        let signal = tokio::time::timeout(Duration::from_secs(5), changed.next()).await.unwrap().unwrap();
        assert!(signal.get().await.unwrap(), "PropertiesChanged says on");
        let before = recorder.notified().len();
        let bare = w.tb.spawn_mbsync(&["alice"]);
        let said = recorder.wait_notified(before + 1, Duration::from_secs(10)).await;
        let said = if said.action_ids().is_empty() {
            said
        } else {
            // The overdue offer may come first; the word on the takeover follows.
            recorder.wait_notified(before + 2, Duration::from_secs(10)).await
        };
        assert!(said.summary.contains("Took over"), "{said:?}");
        assert!(said.body.contains(&bare.pid().to_string()), "{said:?}");
        let bare = bare.wait(Duration::from_secs(10));
        assert_eq!(bare.status.code(), None, "stopped by a signal");
        w.tb.proxy.set_rate(None);
        let (ok, message) = finished(&w, &mut fin).await;
        assert!(ok, "{message}");
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("alice");

        // Kept across a restart of the daemon.
        let World { svc: _, conn, mut daemon, bus, tb } = w;
        assert_eq!(daemon.stop("TERM", Duration::from_secs(10)).code(), Some(0));
        let _daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon2.log")).await;
        assert!(service(&conn).await.auto_takeover().await.unwrap(), "AutoTakeover persists");
    })
    .await;
}

/// Scenario 5: wrong password: one notification with mbsync's reason, however often it fails; a fixed
/// password and a good sync close it. Cancel is no failure.
#[tokio::test]
async fn a_failure_notifies_once_per_streak_and_a_good_sync_closes_it() {
    with_timeout(async {
        let (w, recorder) = world(Isync14, "", true).await;
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("bob").await.unwrap();
        w.svc.cancel("bob").await.unwrap();
        let _ = tokio::time::timeout(LONG, fin.next()).await;
        w.tb.set_password("bob", "wrong");
        for _ in 0..2 {
            w.svc.sync("bob").await.unwrap();
            let s = tokio::time::timeout(LONG, fin.next()).await.unwrap().unwrap();
            assert!(!s.args().unwrap().ok);
        }
        let n = recorder.wait_notified(1, Duration::from_secs(5)).await;
        assert!(n.summary.contains("bob") && n.body.contains("AUTHENTICATIONFAILED"), "{n:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(recorder.notified().len(), 1, "once per failure streak: {:?}", recorder.notified());
        w.tb.set_password("bob", "bobpw");
        w.svc.sync("bob").await.unwrap();
        let s = tokio::time::timeout(LONG, fin.next()).await.unwrap().unwrap();
        assert!(s.args().unwrap().ok, "{}", s.args().unwrap().message);
        recorder.wait_closed(n.id, Duration::from_secs(5)).await;

        // A config mbsync refuses: the sync cannot start, which a person must fix too.
        let rc = std::fs::read_to_string(w.tb.mbsyncrc()).unwrap();
        std::fs::write(w.tb.mbsyncrc(), rc.replace("SSLType None", "SSLType None\nBogusKeyword yes"))
            .unwrap();
        let err = w.svc.sync("bob").await.unwrap_err();
        assert_eq!(zbus::DBusError::name(&err).as_str(), "org.himalaya.Sync.Error.ConfigError");
        let problem = recorder.wait_notified(2, Duration::from_secs(5)).await;
        assert!(problem.body.contains("BogusKeyword"), "{problem:?}");
        assert_eq!(problem.replaces_id, n.id, "the account's notification, in place");
        std::fs::write(w.tb.mbsyncrc(), rc).unwrap();
        w.svc.sync("bob").await.unwrap();
        let s = tokio::time::timeout(LONG, fin.next()).await.unwrap().unwrap();
        assert!(s.args().unwrap().ok, "{}", s.args().unwrap().message);
        wait_until("the problem notification to close", Duration::from_secs(5), || async {
            recorder.closed().iter().filter(|id| **id == n.id).count() == 2
        })
        .await;
    })
    .await;
}

/// Scenario 6: a server without the actions capability gets the text without buttons; no server at all
/// is logged once and syncs go on; `notifications = false` sends nothing.
#[tokio::test]
async fn no_actions_no_server_and_notifications_off() {
    with_timeout(async {
        let (w, recorder) = world(Isync14, "stall_timeout = 2\n", false).await;
        stall_a_sync(&w).await;
        let n = recorder.wait_notified(1, Duration::from_secs(5)).await;
        assert!(n.actions.is_empty(), "no buttons without the capability: {n:?}");
        assert!(n.body.contains("2 s"));
        drop(recorder);
        w.tb.proxy.resume();
        w.tb.proxy.set_rate(None);
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        assert!(finished(&w, &mut fin).await.0);

        // No server at all: two stalls, one line in the log, no error anywhere.
        let tb = Testbed::new(SPEC);
        write_service_config(&tb, "stall_timeout = 2\n");
        let w = World::around(tb).await;
        stall_a_sync(&w).await;
        w.tb.proxy.resume();
        wait_moving(&w).await;
        w.tb.proxy.pause();
        wait_stuck(&w).await;
        let log = w.daemon.log();
        assert_eq!(log.matches("no desktop notification server").count(), 1, "said once:\n{log}");
        w.svc.cancel("alice").await.unwrap();
        drop(w);

        let (w, recorder) = world(Isync14, "stall_timeout = 2\nnotifications = false\n", true).await;
        stall_a_sync(&w).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(recorder.notified().is_empty(), "notifications = false: {:?}", recorder.notified());
        w.svc.cancel("alice").await.unwrap();
    })
    .await;
}

/// Scenario 7: a stalled sync wakes the daemon about once per deadline, not every second: once stuck,
/// nothing ticks until the sync moves or ends.
#[tokio::test]
async fn a_stalled_sync_does_not_tick() {
    with_timeout(async {
        let (w, _recorder) = world(Isync14, "stall_timeout = 2\n", true).await;
        stall_a_sync(&w).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = wakeups(w.daemon.pid());
        tokio::time::sleep(Duration::from_secs(4)).await;
        let woke = wakeups(w.daemon.pid()) - before;
        println!("a stuck sync woke the daemon {woke} times in 4 s");
        assert!(woke <= 4, "the daemon woke {woke} times in 4 s of a stall (a 1 s tick would be 4+)");
        w.svc.cancel("alice").await.unwrap();
    })
    .await;
}

/// The client command flips the same switch every client sees.
#[tokio::test]
async fn the_auto_takeover_command_sets_the_property() {
    with_timeout(async {
        let w = World::start(&[("bob", "INBOX", 1)]).await;
        let cli = |args: &'static [&'static str]| {
            let (bus, env) = (w.bus.address().to_owned(), w.tb.env());
            async move {
                let out = tokio::task::spawn_blocking(move || run_cli(&bus, &env, args)).await.unwrap();
                assert_eq!(out.status.code(), Some(0), "{out:?}");
                String::from_utf8(out.stdout).unwrap().trim().to_owned()
            }
        };
        // The test's proxy caches the property and learns of a change from PropertiesChanged,
        // which may come a moment after the command returned (CI caught a read in between).
        let svc = &w.svc;
        let sees = |on: bool| {
            wait_until("the proxy to see the switch", Duration::from_secs(5), move || async move {
                svc.auto_takeover().await.unwrap() == on
            })
        };
        assert_eq!(cli(&["auto-takeover"]).await, "off");
        assert_eq!(cli(&["auto-takeover", "on"]).await, "on");
        sees(true).await;
        assert_eq!(cli(&["auto-takeover", "toggle"]).await, "off");
        sees(false).await;
    })
    .await;
}

/// An `exec` holder watches its own run the same way: the service relays `stuck = true` (state
/// stays `external`) and offers "Take over"; moving again clears it.
#[tokio::test]
async fn a_stuck_exec_holder_is_relayed_and_offered_for_takeover() {
    with_timeout(async {
        let (w, recorder) = world(Isync14, "stall_timeout = 2\n", true).await;
        w.tb.proxy.set_rate(Some(100_000));
        let exec = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice"]);
        wait_until("the holder's progress", LONG, || async {
            get::<u32>(&w.svc.get_progress("alice").await.unwrap(), "messages_done").unwrap_or(0) > 0
        })
        .await;
        w.tb.proxy.pause();
        wait_until("the holder's stall to be relayed", STUCK_WITHIN + Duration::from_secs(1), || async {
            let r = w.svc.get_progress("alice").await.unwrap();
            state(&r) == "external" && get::<bool>(&r, "stuck") == Some(true)
        })
        .await;
        let n = recorder.wait_notified(1, Duration::from_secs(5)).await;
        assert_eq!(n.action_ids(), ["takeover", "dismiss"], "{n:?}");
        assert!(n.summary.contains("has not moved"), "{n:?}");
        w.tb.proxy.resume();
        wait_until("the holder to move again", LONG, || async {
            get::<bool>(&w.svc.get_progress("alice").await.unwrap(), "stuck") == Some(false)
        })
        .await;
        recorder.wait_closed(n.id, Duration::from_secs(5)).await;
        w.tb.proxy.set_rate(None);
        exec.wait(LONG).assert_code(0, "the holder's own run");
        w.tb.assert_in_sync("alice");
    })
    .await;
}
