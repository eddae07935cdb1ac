//! End-to-end scenarios of the service: a private dbus-daemon, a private Dovecot, real mbsync,
//! the real daemon binary. Each test has its own everything and a hard timeout. The main
//! scenarios run with isync 1.4 and 1.5 (`..._isync14`, `..._isync15`), which print progress
//! differently.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::{
    MbsyncVersion::{self, Isync14, Isync15},
    daemon::{
        Dict, World, assert_progress_is_honest, connect, describe, error_name, get, is_final,
        mbsync_pids_for, read_until_final, service, wait_until, with_timeout,
    },
};

/// alice: 2,000 + 500 + 50 messages; bob: 20.
const SPEC: &[(&str, &str, usize)] =
    &[("alice", "INBOX", 2000), ("alice", "Archive", 500), ("alice", "Sent", 50), ("bob", "INBOX", 20)];

fn state(d: &Dict) -> String {
    get::<String>(d, "state").unwrap_or_default()
}

/// Scenario 1: a 2,550-message sync reports growing progress up to the total and ends exact.
async fn full_sync_reports_growing_progress_and_ends_exact(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, SPEC).await;
        // About 1.4 MB through the proxy at 400 KB/s: a few seconds, long enough to watch.
        w.tb.proxy.set_rate(Some(400_000));
        let svc = &w.svc;
        let mut progress = svc.receive_progress_changed().await.unwrap();
        let mut finished = svc.receive_sync_finished().await.unwrap();
        svc.sync("alice").await.unwrap();

        let mut records: Vec<Dict> = Vec::new();
        let mut times = Vec::new();
        let mut checked_mid_sync = false;
        let (ok, message) = loop {
            tokio::select! {
                Some(s) = progress.next() => {
                    let args = s.args().unwrap();
                    assert_eq!(args.account, "alice");
                    times.push(std::time::Instant::now());
                    records.push(args.progress);
                    let done = records.last().and_then(|r| get::<u32>(r, "messages_done")).unwrap_or(0);
                    if !checked_mid_sync && done > 100 {
                        checked_mid_sync = true;
                        let now = svc.get_progress("alice").await.unwrap();
                        assert_eq!(state(&now), "syncing");
                        let pid: u32 = get(&now, "pid").expect("a pid mid-sync");
                        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
                        assert_eq!(comm.trim(), "mbsync");
                        assert_eq!(get::<String>(&now, "owner").as_deref(), Some("service"));
                        let cmd: Vec<String> = get(&now, "command").unwrap();
                        assert!(cmd.ends_with(&["-V".to_owned(), "alice".to_owned()]), "{cmd:?}");
                        // The daemon runs the version under test (it resolves a bare name itself).
                        let version_of = |program: &std::ffi::OsStr| {
                            std::process::Command::new(program).arg("--version").output().unwrap().stdout
                        };
                        assert_eq!(
                            version_of(cmd[0].as_ref()),
                            version_of(w.tb.mbsync_program().as_os_str()),
                            "{cmd:?}"
                        );
                        assert_eq!(get::<u32>(&now, "owner_pid"), Some(w.daemon.pid()));
                        let started: u64 = get(&now, "started_at").unwrap();
                        let updated: u64 = get(&now, "last_update").unwrap();
                        assert!(started <= updated, "{started} > {updated}");
                        // -V names the box in work; the counters come from the pty.
                        assert!(get::<String>(&now, "mailbox").is_some(), "no mailbox mid-sync");
                        assert!(get::<String>(&now, "operation").is_some(), "no operation mid-sync");
                        assert_eq!(get::<bool>(&now, "stuck"), Some(false));
                        assert_eq!(get::<u32>(&now, "channels_total"), Some(1));
                    }
                }
                Some(s) = finished.next() => {
                    let args = s.args().unwrap();
                    break (args.ok, args.message.to_owned());
                }
            }
        };
        assert!(ok, "sync failed: {message}\n{}", w.daemon.log());
        assert!(checked_mid_sync, "never saw the sync mid-way: {} signals", records.len());
        read_until_final(&mut progress, "alice", &mut records).await;
        assert_progress_is_honest(&records, true);
        let done: Vec<u32> = records.iter().filter_map(|r| get::<u32>(r, "messages_done")).collect();
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "messages_done went backwards: {done:?}");
        assert!(done.len() >= 5, "too few progress updates: {done:?}");
        assert!(
            records.iter().any(|r| get::<f64>(r, "rate").is_some_and(|rate| rate > 0.0)),
            "a sync of seconds reports a rate"
        );
        let last = records.last().unwrap();
        assert_eq!(state(last), "idle");
        assert_eq!(get::<String>(last, "last_result").as_deref(), Some("ok"));
        assert_eq!(get::<u32>(last, "messages_done"), Some(2550));
        assert_eq!(get::<u32>(last, "messages_total"), Some(2550));
        assert_eq!(get::<u32>(last, "boxes_total"), Some(3), "{}", describe(&records));
        assert_eq!(get::<u32>(last, "channels_total"), Some(1));
        // At most ~10 signals per second (plus the first and the final one).
        let span = times.last().unwrap().duration_since(times[0]).as_secs_f64();
        assert!(
            records.len() as f64 <= span * 10.0 + 3.0,
            "{} signals in {span:.2} s exceed the throttle",
            records.len()
        );
        w.tb.assert_in_sync("alice");
    })
    .await;
}

#[tokio::test]
async fn full_sync_reports_growing_progress_and_ends_exact_isync14() {
    full_sync_reports_growing_progress_and_ends_exact(Isync14).await;
}

#[tokio::test]
async fn full_sync_reports_growing_progress_and_ends_exact_isync15() {
    full_sync_reports_growing_progress_and_ends_exact(Isync15).await;
}

/// The case: a big box, then the last one. A percentage appears only once the last
/// box's messages are queued (not at "2000/2000" when the first box is done), only goes forward,
/// and says 100 only at the end. The last box is slow enough (500 messages at 100 KB/s, about
/// 3 s) to outlast the second the total must stay put before a percentage is shown.
async fn percent_comes_with_the_last_box_and_only_goes_forward(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, &[("alice", "INBOX", 200), ("alice", "Archive", 500)]).await;
        w.tb.proxy.set_rate(Some(100_000));
        let mut progress = w.svc.receive_progress_changed().await.unwrap();
        let mut finished = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("alice").await.unwrap();
        // Progress first: an unread stream would stall the connection (zbus queues 64 per
        // stream), and the final record always comes before SyncFinished.
        let mut records = Vec::new();
        read_until_final(&mut progress, "alice", &mut records).await;
        assert_progress_is_honest(&records, true);
        let end = finished.next().await.unwrap();
        assert!(end.args().unwrap().ok, "{}", end.args().unwrap().message);
        let log = describe(&records);
        let (last, before) = records.split_last().unwrap();
        assert_eq!(get::<u32>(last, "messages_done"), Some(700), "{log}");
        let with_percent: Vec<&Dict> = before.iter().filter(|r| get::<f64>(r, "percent").is_some()).collect();
        assert!(!with_percent.is_empty(), "no percentage during the last box:\n{log}");
        for r in with_percent {
            assert_eq!(get::<u32>(r, "messages_total"), Some(700), "percent of a partial total:\n{log}");
            assert_eq!(get::<String>(r, "mailbox").as_deref(), Some("Archive"), "{log}");
        }
        w.tb.assert_in_sync("alice");
    })
    .await;
}

#[tokio::test]
async fn percent_comes_with_the_last_box_and_only_goes_forward_isync14() {
    percent_comes_with_the_last_box_and_only_goes_forward(Isync14).await;
}

#[tokio::test]
async fn percent_comes_with_the_last_box_and_only_goes_forward_isync15() {
    percent_comes_with_the_last_box_and_only_goes_forward(Isync15).await;
}

/// Scenario 2: a second Sync is refused (also through a group sharing the channel); Cancel
/// stops mbsync; a re-sync is exact.
async fn second_sync_is_refused_and_cancel_stops_safely(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, SPEC).await;
        w.tb.proxy.set_rate(Some(100_000));
        let svc = &w.svc;
        let mut finished = svc.receive_sync_finished().await.unwrap();
        let mut progress = svc.receive_progress_changed().await.unwrap();
        svc.sync("alice").await.unwrap();
        assert_eq!(error_name(svc.sync("alice").await), "org.himalaya.Sync.Error.AlreadySyncing");
        assert_eq!(error_name(svc.sync("everyone").await), "org.himalaya.Sync.Error.AlreadySyncing");
        assert_eq!(error_name(svc.cancel("bob").await), "org.himalaya.Sync.Error.NotRunning");
        let pid: u32 = get(&svc.get_progress("alice").await.unwrap(), "pid").unwrap();
        // Let it get into the data, and cancel right after a signal: the stop's own signal
        // still keeps the throttle's spacing.
        let mut records = Vec::new();
        while records.last().is_none_or(|r| get::<u32>(r, "messages_done").unwrap_or(0) == 0) {
            let signal = progress.next().await.unwrap();
            records.push(signal.args().unwrap().progress);
        }
        let mut times = vec![Instant::now()];
        svc.cancel("alice").await.unwrap();
        // Progress first: an unread stream would stall the connection (zbus queues 64 per
        // stream), and the final record always comes before SyncFinished.
        while !records.last().is_some_and(is_final) {
            let signal = progress.next().await.unwrap();
            times.push(Instant::now());
            records.push(signal.args().unwrap().progress);
        }
        // Sent 100 ms apart at least; 50 ms leaves room for the bus's and this test's jitter. The
        // final state is never held.
        for (i, gap) in times.windows(2).map(|w| w[1] - w[0]).enumerate().take(times.len() - 2) {
            let n = i + 1;
            assert!(
                gap >= Duration::from_millis(50),
                "signal {n} after the cancel came {gap:?} after the one before"
            );
        }
        assert_progress_is_honest(&records, false);
        let args = finished.next().await.unwrap();
        let args = args.args().unwrap();
        assert_eq!((args.account, args.ok, args.message), ("alice", false, "sync cancelled"));
        assert_eq!(get::<String>(records.last().unwrap(), "last_result").as_deref(), Some("cancelled"));
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || mbsync_pids_for(&w.tb.mbsyncrc()).is_empty()
        );
        assert!(mbsync_pids_for(&w.tb.mbsyncrc()).is_empty(), "mbsync still runs after Cancel");
        let record = svc.get_progress("alice").await.unwrap();
        assert_eq!(state(&record), "idle");
        assert_eq!(get::<String>(&record, "last_result").as_deref(), Some("cancelled"));
        assert_eq!(error_name(svc.cancel("alice").await), "org.himalaya.Sync.Error.NotRunning");

        // Nothing lost: a full-speed re-sync ends exact.
        w.tb.proxy.set_rate(None);
        svc.sync("alice").await.unwrap();
        let mut records = Vec::new();
        read_until_final(&mut progress, "alice", &mut records).await;
        assert_progress_is_honest(&records, true);
        let args = finished.next().await.unwrap();
        let args = args.args().unwrap();
        assert!(args.ok, "re-sync failed: {}", args.message);
        w.tb.assert_in_sync("alice");
    })
    .await;
}

#[tokio::test]
async fn second_sync_is_refused_and_cancel_stops_safely_isync14() {
    second_sync_is_refused_and_cancel_stops_safely(Isync14).await;
}

#[tokio::test]
async fn second_sync_is_refused_and_cancel_stops_safely_isync15() {
    second_sync_is_refused_and_cancel_stops_safely(Isync15).await;
}

/// Scenario 3: two clients watching one sync both see the final state of every change.
async fn two_clients_see_the_same_final_state(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, SPEC).await;
        w.tb.proxy.set_rate(Some(400_000));
        let (c1, c2) = (connect(w.bus.address()).await, connect(w.bus.address()).await);
        let (s1, s2) = (service(&c1).await, service(&c2).await);
        let mut streams =
            vec![s1.receive_progress_changed().await.unwrap(), s2.receive_progress_changed().await.unwrap()];
        let mut fin = s1.receive_sync_finished().await.unwrap();
        s2.sync("everyone").await.unwrap();
        let mut lasts = Vec::new();
        let mut states = Vec::new();
        for stream in &mut streams {
            let mut records: Vec<Dict> = Vec::new();
            read_until_final(stream, "everyone", &mut records).await;
            assert_progress_is_honest(&records, true);
            let mut seen: Vec<String> = records.iter().map(state).collect();
            seen.dedup();
            states.push(seen);
            lasts.push(records.pop().expect("no signal at all"));
        }
        // SyncFinished after the progress streams: an unread stream would stall its connection
        // (zbus queues 64 per stream), and the final record always comes before SyncFinished.
        let end = fin.next().await.unwrap();
        assert!(end.args().unwrap().ok, "{}", end.args().unwrap().message);
        assert_eq!(states[0], states[1], "both clients see the same state changes");
        assert_eq!(states[0].first().map(String::as_str), Some("syncing"));
        assert_eq!(states[0].last().map(String::as_str), Some("idle"));
        for key in ["messages_done", "messages_total", "channels_done", "boxes_done"] {
            assert_eq!(get::<u32>(&lasts[0], key), get::<u32>(&lasts[1], key), "{key}");
        }
        assert_eq!(get::<u32>(&lasts[0], "messages_done"), Some(2570));
        assert_eq!(get::<u32>(&lasts[0], "channels_done"), Some(2));
        assert_eq!(get::<u32>(&lasts[0], "boxes_done"), Some(4));
        w.tb.assert_in_sync("alice");
        w.tb.assert_in_sync("bob");
    })
    .await;
}

#[tokio::test]
async fn two_clients_see_the_same_final_state_isync14() {
    two_clients_see_the_same_final_state(Isync14).await;
}

#[tokio::test]
async fn two_clients_see_the_same_final_state_isync15() {
    two_clients_see_the_same_final_state(Isync15).await;
}

/// The lock: a channel whose lock name another connection owns is not synced; the error names
/// the holder's PID; a group sync takes all its channels' locks or none.
#[tokio::test]
async fn a_lock_held_elsewhere_is_locked_elsewhere_with_the_pid() {
    with_timeout(async {
        let w = World::start(&[("alice", "INBOX", 20), ("bob", "INBOX", 20)]).await;
        let holder = connect(w.bus.address()).await;
        let flags =
            zbus::fdo::RequestNameFlags::DO_NOT_QUEUE | zbus::fdo::RequestNameFlags::ALLOW_REPLACEMENT;
        let reply = holder.request_name_with_flags("org.himalaya.Sync.Lock.bob", flags).await.unwrap();
        assert_eq!(reply, zbus::fdo::RequestNameReply::PrimaryOwner);
        let svc = &w.svc;
        let dbus = zbus::fdo::DBusProxy::new(&w.conn).await.unwrap();
        for account in ["bob", "everyone"] {
            let err = svc.sync(account).await.unwrap_err();
            assert_eq!(zbus::DBusError::name(&err).to_string(), "org.himalaya.Sync.Error.LockedElsewhere");
            let text = zbus::DBusError::description(&err).unwrap_or_default();
            assert!(text.contains(&format!("PID {}", std::process::id())), "{text}");
        }
        // All or none: the group sync gave alice's lock back.
        let alice = zbus::names::BusName::try_from("org.himalaya.Sync.Lock.alice").unwrap();
        assert!(!dbus.name_has_owner(alice).await.unwrap());
        assert!(mbsync_pids_for(&w.tb.mbsyncrc()).is_empty());
        // alice alone is free to sync; once the holder lets go, bob is too.
        let mut finished = svc.receive_sync_finished().await.unwrap();
        svc.sync("alice").await.unwrap();
        assert!(finished.next().await.unwrap().args().unwrap().ok);
        holder.release_name("org.himalaya.Sync.Lock.bob").await.unwrap();
        svc.sync("bob").await.unwrap();
        assert!(finished.next().await.unwrap().args().unwrap().ok);
        w.tb.assert_in_sync("bob");
    })
    .await;
}

/// A bare mbsync (no lock name: cron, a shell) syncing a channel: Sync of any account that
/// includes it is refused with its PID, other channels sync, and once it is gone all is free.
#[tokio::test]
async fn a_bare_mbsync_is_locked_elsewhere_with_its_pid() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        w.tb.proxy.set_rate(Some(100_000));
        let bare = w.tb.spawn_mbsync(&["alice"]);
        let pid = bare.pid();
        for account in ["alice", "everyone"] {
            let err = w.svc.sync(account).await.unwrap_err();
            assert_eq!(zbus::DBusError::name(&err).to_string(), "org.himalaya.Sync.Error.LockedElsewhere");
            let text = zbus::DBusError::description(&err).unwrap_or_default();
            assert!(text.contains(&format!("bare mbsync, PID {pid}")), "{text}");
        }
        let dbus = zbus::fdo::DBusProxy::new(&w.conn).await.unwrap();
        let alice = zbus::names::BusName::try_from("org.himalaya.Sync.Lock.alice").unwrap();
        assert!(!dbus.name_has_owner(alice).await.unwrap(), "the refused sync gave its locks back");
        let mut finished = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("bob").await.unwrap();
        assert!(finished.next().await.unwrap().args().unwrap().ok);
        // The bare run ends (here: it finishes at full speed); alice is free again.
        w.tb.proxy.set_rate(None);
        bare.wait(Duration::from_secs(60)).assert_code(0, "the bare mbsync");
        w.svc.sync("alice").await.unwrap();
        let end = finished.next().await.unwrap();
        assert!(end.args().unwrap().ok, "{}", end.args().unwrap().message);
        w.tb.assert_in_sync("alice");
    })
    .await;
}

/// Each account is an object whose properties emit `PropertiesChanged` (`GDBusProxy`, Plasma
/// bindings follow them), and the objects follow edits of the mbsync config.
#[tokio::test]
async fn account_objects_emit_properties_changed_and_follow_the_config() {
    with_timeout(async {
        let w = World::start(&[("bob", "INBOX", 20)]).await;
        let props = zbus::fdo::PropertiesProxy::builder(&w.conn)
            .destination("org.himalaya.Sync")
            .path("/org/himalaya/Sync/account/bob")
            .build()
            .await
            .unwrap();
        let iface = zbus::names::InterfaceName::try_from("org.himalaya.Sync.Account").unwrap();
        let state = props.get(iface.clone(), "State").await.unwrap();
        assert_eq!(String::try_from(state).unwrap(), "idle");
        let mut changes = props.receive_properties_changed().await.unwrap();
        let mut finished = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("bob").await.unwrap();
        assert!(finished.next().await.unwrap().args().unwrap().ok);
        let mut states = Vec::new();
        let mut saw_progress = false;
        while let Ok(Some(signal)) = tokio::time::timeout(Duration::from_millis(500), changes.next()).await {
            let args = signal.args().unwrap();
            assert_eq!(args.interface_name().as_str(), "org.himalaya.Sync.Account");
            if let Some(v) = args.changed_properties().get("State") {
                states.push(String::try_from(v.try_clone().unwrap()).unwrap());
            }
            saw_progress |= args.changed_properties().contains_key("Progress");
        }
        assert_eq!(states, ["syncing", "idle"]);
        assert!(saw_progress);

        // A channel added to the mbsync config appears as an account and an object.
        let mut accounts_changed = w.svc.inner().receive_property_changed::<Vec<String>>("Accounts").await;
        let rc = std::fs::read_to_string(w.tb.mbsyncrc()).unwrap();
        std::fs::write(
            w.tb.mbsyncrc(),
            format!("{rc}\nChannel bob-copy\nFar :bob-remote:\nNear :bob-local:\nPatterns INBOX\n"),
        )
        .unwrap();
        let mut listed = w.svc.list_accounts().await.unwrap();
        listed.sort();
        assert_eq!(listed, ["bob", "bob-copy", "everyone"]);
        let accounts_now = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let change = accounts_changed.next().await.unwrap();
                let value = change.get().await.unwrap();
                if value.contains(&"bob-copy".to_owned()) {
                    return value;
                }
            }
        })
        .await
        .expect("Accounts emitted PropertiesChanged");
        assert_eq!(accounts_now.len(), 3);
        let copy = zbus::fdo::PropertiesProxy::builder(&w.conn)
            .destination("org.himalaya.Sync")
            .path("/org/himalaya/Sync/account/bob_2dcopy")
            .build()
            .await
            .unwrap();
        let name = copy.get(iface, "Name").await.unwrap();
        assert_eq!(String::try_from(name).unwrap(), "bob-copy");
    })
    .await;
}

/// A lock taken away (a forced takeover with `REPLACE_EXISTING`, which our `ALLOW_REPLACEMENT`
/// permits) stops the run that held it: never two mbsync on one channel.
#[tokio::test]
async fn a_lock_taken_away_stops_the_run_that_held_it() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        w.tb.proxy.set_rate(Some(100_000));
        let mut finished = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("alice").await.unwrap();
        wait_until("mbsync to start", Duration::from_secs(20), || async {
            !mbsync_pids_for(&w.tb.mbsyncrc()).is_empty()
        })
        .await;
        let taker = connect(w.bus.address()).await;
        let flags = zbus::fdo::RequestNameFlags::REPLACE_EXISTING | zbus::fdo::RequestNameFlags::DO_NOT_QUEUE;
        let reply = taker.request_name_with_flags("org.himalaya.Sync.Lock.alice", flags).await.unwrap();
        assert_eq!(reply, zbus::fdo::RequestNameReply::PrimaryOwner);
        let end = finished.next().await.unwrap();
        assert_eq!(end.args().unwrap().message, "sync cancelled");
        assert!(mbsync_pids_for(&w.tb.mbsyncrc()).is_empty(), "our mbsync still runs without the lock");
        // The new holder keeps the lock: our run's release did not take it from them.
        let dbus = zbus::fdo::DBusProxy::new(&w.conn).await.unwrap();
        let owner = dbus
            .get_name_owner(zbus::names::BusName::try_from("org.himalaya.Sync.Lock.alice").unwrap())
            .await
            .unwrap();
        assert_eq!(Some(owner.as_str()), taker.unique_name().map(|u| u.as_str()));
    })
    .await;
}
