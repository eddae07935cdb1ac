//! One mbsync per account, whoever started it: external syncs are seen, `TakeOver` stops them and
//! restarts their scope under the service, `RequestHandoff` asks an `exec` holder to hand over.
//! Real mbsync, Dovecot behind the throttling proxy, a private bus, the real daemon and `exec`;
//! a sampler reads /proc every few ms and fails the test if two mbsync ever sync one channel.

// D-Bus member and error names read better in prose without backticks.
#![allow(clippy::doc_markdown)]

mod support;

use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt;
use support::{
    MbsyncVersion::{self, Isync14, Isync15},
    daemon::{
        World, error_name, get, mbsync_pids_for, name_owner, run_cli, spawn_exec, wait_until, wakeups,
        with_timeout,
    },
    sampler::Sampler,
};
use zbus::OwnedVariant;

type Dict = HashMap<String, OwnedVariant>;

/// alice: 2,000 + 500 + 50 messages; bob: 20.
const SPEC: &[(&str, &str, usize)] =
    &[("alice", "INBOX", 2000), ("alice", "Archive", 500), ("alice", "Sent", 50), ("bob", "INBOX", 20)];

const LONG: Duration = Duration::from_secs(30);

fn state(d: &Dict) -> String {
    get::<String>(d, "state").unwrap_or_default()
}

/// Wait until `account` shows an external sync by `owner` (`client` or `process`).
async fn wait_external(w: &World, account: &str, owner: &str) -> Dict {
    wait_until(&format!("{account} to show an external sync by a {owner}"), LONG, || async {
        let last = w.svc.get_progress(account).await.unwrap();
        state(&last) == "external" && get::<String>(&last, "owner").as_deref() == Some(owner)
    })
    .await;
    w.svc.get_progress(account).await.unwrap()
}

/// A test bed with a slow server, a sampler, and an `exec` holder of alice the service sees.
async fn exec_holder_of_alice(version: MbsyncVersion) -> (World, Sampler, support::Spawned) {
    let w = World::start_with(version, SPEC).await;
    w.tb.proxy.set_rate(Some(100_000));
    let sampler = Sampler::start(&w.tb.mbsyncrc());
    let exec = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice"]);
    wait_external(&w, "alice", "client").await;
    (w, sampler, exec)
}

/// Wait for the service's own run of `account` to end; whether it succeeded, and its message.
async fn finished(
    stream: &mut himalaya_sync::bus::service::SyncFinishedStream,
    account: &str,
) -> (bool, String) {
    loop {
        let s = stream.next().await.expect("the service went away");
        let args = s.args().unwrap();
        if args.account == account {
            return (args.ok, args.message.to_owned());
        }
    }
}

fn strings(d: &Dict, key: &str) -> Vec<String> {
    get::<Vec<String>>(d, key).unwrap_or_default()
}

/// The seed's scenario 1: a bare mbsync started outside is seen, taken over, restarted with
/// progress; never two mbsync on the channel; the mail ends exact.
async fn takeover_of_a_bare_mbsync(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, SPEC).await;
        w.tb.proxy.set_rate(Some(100_000));
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        let bare = w.tb.spawn_mbsync(&["alice"]);
        let record = wait_external(&w, "alice", "process").await;
        assert_eq!(get::<u32>(&record, "pid"), Some(bare.pid()));
        assert!(strings(&record, "command").contains(&"alice".to_owned()), "{record:?}");
        // The group that shares the channel shows it too; bob does not.
        assert_eq!(state(&w.svc.get_progress("everyone").await.unwrap()), "external");
        assert_eq!(state(&w.svc.get_progress("bob").await.unwrap()), "idle");
        assert_eq!(error_name(w.svc.sync("alice").await), "org.himalaya.Sync.Error.LockedElsewhere");

        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        let answer = w.svc.take_over("alice").await.unwrap();
        assert_eq!(get::<u32>(&answer, "stopped_pid"), Some(bare.pid()));
        assert_eq!(get::<String>(&answer, "stopped_owner").as_deref(), Some("process"));
        assert!(strings(&answer, "stopped_command").contains(&"alice".to_owned()));
        assert_eq!(strings(&answer, "restarted"), ["alice"]);
        let now = w.svc.get_progress("alice").await.unwrap();
        assert_eq!(state(&now), "syncing");
        assert_eq!(get::<String>(&now, "owner").as_deref(), Some("service"));
        let bare = bare.wait(Duration::from_secs(5));
        assert_eq!(bare.status.code(), None, "the bare mbsync was stopped by a signal: {bare:?}");
        w.tb.proxy.set_rate(None);
        let (ok, message) = finished(&mut fin, "alice").await;
        assert!(ok, "{message}\n{}", w.daemon.log());
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("alice");
    })
    .await;
}

#[tokio::test]
async fn takeover_of_a_bare_mbsync_isync14() {
    takeover_of_a_bare_mbsync(Isync14).await;
}

#[tokio::test]
async fn takeover_of_a_bare_mbsync_isync15() {
    takeover_of_a_bare_mbsync(Isync15).await;
}

/// A bare `mbsync -a` is restarted with every channel it covered (here: the group holding both).
async fn takeover_of_a_bare_mbsync_all_restarts_every_channel(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, SPEC).await;
        w.tb.proxy.set_rate(Some(100_000));
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        let bare = w.tb.spawn_mbsync(&["-a"]);
        wait_external(&w, "bob", "process").await;
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        let answer = w.svc.take_over("bob").await.unwrap();
        assert_eq!(get::<u32>(&answer, "stopped_pid"), Some(bare.pid()));
        assert_eq!(strings(&answer, "restarted"), ["everyone"], "-a covers alice and bob: {answer:?}");
        let now = w.svc.get_progress("everyone").await.unwrap();
        assert_eq!(get::<u32>(&now, "channels_total").unwrap_or(2), 2);
        drop(bare);
        w.tb.proxy.set_rate(None);
        let (ok, message) = finished(&mut fin, "everyone").await;
        assert!(ok, "{message}");
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("alice");
        w.tb.assert_in_sync("bob");
    })
    .await;
}

#[tokio::test]
async fn takeover_of_a_bare_mbsync_all_restarts_every_channel_isync14() {
    takeover_of_a_bare_mbsync_all_restarts_every_channel(Isync14).await;
}

#[tokio::test]
async fn takeover_of_a_bare_mbsync_all_restarts_every_channel_isync15() {
    takeover_of_a_bare_mbsync_all_restarts_every_channel(Isync15).await;
}

/// An `exec` holder: its progress is relayed (owner client), TakeOver replaces its names, it
/// stops its mbsync at once and exits; the service finishes the sync.
async fn takeover_of_an_exec_holder(version: MbsyncVersion) {
    with_timeout(async {
        let (w, sampler, exec) = exec_holder_of_alice(version).await;
        wait_until("the holder's progress to be relayed", LONG, || async {
            get::<u32>(&w.svc.get_progress("alice").await.unwrap(), "messages_done").unwrap_or(0) > 0
        })
        .await;
        let record = w.svc.get_progress("alice").await.unwrap();
        assert_eq!(get::<u32>(&record, "owner_pid"), Some(exec.pid()));
        let mbsync_pid: u32 = get(&record, "pid").expect("the holder's mbsync");
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        let answer = w.svc.take_over("alice").await.unwrap();
        assert_eq!(get::<String>(&answer, "stopped_owner").as_deref(), Some("client"));
        assert_eq!(get::<u32>(&answer, "stopped_pid"), Some(mbsync_pid));
        assert_eq!(strings(&answer, "restarted"), ["alice"]);
        let exec = exec.wait(Duration::from_secs(10));
        assert_eq!(exec.code(), Some(143), "exec exits with its mbsync's status (SIGTERM): {exec:?}");
        w.tb.proxy.set_rate(None);
        let (ok, message) = finished(&mut fin, "alice").await;
        assert!(ok, "{message}");
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("alice");
    })
    .await;
}

#[tokio::test]
async fn takeover_of_an_exec_holder_isync14() {
    takeover_of_an_exec_holder(Isync14).await;
}

#[tokio::test]
async fn takeover_of_an_exec_holder_isync15() {
    takeover_of_an_exec_holder(Isync15).await;
}

/// Graceful handoff from `exec` to the service: no overlap, `exec` exits 0, the mail is exact.
async fn handoff_from_exec_to_the_service(version: MbsyncVersion) {
    with_timeout(async {
        let (w, sampler, exec) = exec_holder_of_alice(version).await;
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        let answer = w.svc.request_handoff("alice", 5000).await.unwrap();
        assert_eq!(get::<String>(&answer, "stopped_owner").as_deref(), Some("client"));
        assert_eq!(strings(&answer, "restarted"), ["alice"]);
        assert_eq!(
            get::<String>(&w.svc.get_progress("alice").await.unwrap(), "owner").as_deref(),
            Some("service")
        );
        let exec = exec.wait(Duration::from_secs(10));
        exec.assert_code(0, "exec after a handoff");
        w.tb.proxy.set_rate(None);
        let (ok, message) = finished(&mut fin, "alice").await;
        assert!(ok, "{message}");
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("alice");
    })
    .await;
}

#[tokio::test]
async fn handoff_from_exec_to_the_service_isync14() {
    handoff_from_exec_to_the_service(Isync14).await;
}

#[tokio::test]
async fn handoff_from_exec_to_the_service_isync15() {
    handoff_from_exec_to_the_service(Isync15).await;
}

/// `exec --no-handoff` refuses: HandoffRefused, it keeps its lock and finishes its own run.
async fn exec_no_handoff_refuses_and_finishes_its_run(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, SPEC).await;
        w.tb.proxy.set_rate(Some(400_000));
        let exec = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice", "--no-handoff"]);
        wait_external(&w, "alice", "client").await;
        let owner = name_owner(&w.conn, "org.himalaya.Sync.Lock.alice").await;
        let result = w.svc.request_handoff("alice", 2000).await;
        assert_eq!(error_name(result), "org.himalaya.Sync.Error.HandoffRefused");
        assert_eq!(
            name_owner(&w.conn, "org.himalaya.Sync.Lock.alice").await,
            owner,
            "the holder keeps its lock"
        );
        exec.wait(LONG).assert_code(0, "exec --no-handoff");
        wait_until("alice to be idle again", LONG, || async {
            state(&w.svc.get_progress("alice").await.unwrap()) == "idle"
        })
        .await;
        w.tb.assert_in_sync("alice");
    })
    .await;
}

#[tokio::test]
async fn exec_no_handoff_refuses_and_finishes_its_run_isync14() {
    exec_no_handoff_refuses_and_finishes_its_run(Isync14).await;
}

#[tokio::test]
async fn exec_no_handoff_refuses_and_finishes_its_run_isync15() {
    exec_no_handoff_refuses_and_finishes_its_run(Isync15).await;
}

/// `exec` while the service syncs the account: it says so and exits 75 without starting mbsync.
/// Without any bus it warns and runs mbsync unlocked; from cron it finds `$XDG_RUNTIME_DIR/bus`.
#[tokio::test]
async fn exec_refuses_a_busy_account_and_runs_without_a_bus() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        w.tb.proxy.set_rate(Some(100_000));
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("everyone").await.unwrap();
        let out = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["bob"]).wait(LONG);
        out.assert_code(75, "exec of a busy account");
        assert!(out.stderr.contains("the himalaya-sync service"), "{}", out.stderr);
        assert_eq!(mbsync_pids_for(&w.tb.mbsyncrc()).len(), 1, "exec started no mbsync");
        w.svc.cancel("everyone").await.unwrap();
        finished(&mut fin, "everyone").await;
        w.tb.proxy.set_rate(None);

        // No bus at all (cron without a session): a warning, mbsync runs, its status is ours.
        let mut env = w.tb.env();
        env.retain(|(k, _)| k != "XDG_RUNTIME_DIR");
        env.push(("XDG_RUNTIME_DIR".into(), w.tb.dir.path().join("nowhere").display().to_string()));
        let out = spawn_exec(None, &env, &["bob"]).wait(LONG);
        out.assert_code(0, "exec without a bus");
        assert!(out.stderr.contains("without the lock"), "{}", out.stderr);
        w.tb.assert_in_sync("bob");

        // Cron has no DBUS_SESSION_BUS_ADDRESS, but $XDG_RUNTIME_DIR/bus is the user's bus.
        let socket = w.bus.address().strip_prefix("unix:path=").unwrap().split(',').next().unwrap();
        std::os::unix::fs::symlink(socket, w.tb.runtime_dir().join("bus")).unwrap();
        w.tb.dovecot.add_messages("bob", "INBOX", 400);
        w.tb.proxy.set_rate(Some(100_000));
        let exec = spawn_exec(None, &w.tb.env(), &["bob"]);
        let record = wait_external(&w, "bob", "client").await;
        assert_eq!(get::<u32>(&record, "owner_pid"), Some(exec.pid()));
        w.tb.proxy.set_rate(None);
        let out = exec.wait(LONG);
        out.assert_code(0, "exec through $XDG_RUNTIME_DIR/bus");
        assert!(!out.stderr.contains("without the lock"), "{}", out.stderr);
    })
    .await;
}

/// Scenario 3: a bare mbsync started by cron while the daemon idles shows as external within
/// 1 s, and the account goes back to idle by itself when it ends.
async fn a_bare_mbsync_appears_within_a_second_and_goes_away(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, SPEC).await;
        // A first sync creates the boxes and state the watcher follows, as a user's would.
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("alice").await.unwrap();
        assert!(finished(&mut fin, "alice").await.0);
        // Enough new mail in one box for a quiet stretch of seconds inside it.
        w.tb.dovecot.add_messages("alice", "INBOX", 1500);
        w.tb.proxy.set_rate(Some(200_000));
        let mut bare = seen_within_a_second(&w, "alice").await;
        // No timer runs for it: inside a box (2 s of messages, no box opened or closed) the
        // daemon does not wake; a 10 Hz poll would wake it 20 times.
        let woke = wakeups_while_it_runs(&w, &mut bare).await;
        assert!(woke <= 5, "the daemon woke {woke} times in 2 s while a bare mbsync ran");
        w.tb.proxy.set_rate(None);
        bare.wait(LONG).assert_code(0, "the bare mbsync");
        wait_until("alice to be idle again", Duration::from_secs(2), || async {
            state(&w.svc.get_progress("alice").await.unwrap()) == "idle"
        })
        .await;
        w.tb.assert_in_sync("alice");
    })
    .await;
}

#[tokio::test]
async fn a_bare_mbsync_appears_within_a_second_and_goes_away_isync14() {
    a_bare_mbsync_appears_within_a_second_and_goes_away(Isync14).await;
}

#[tokio::test]
async fn a_bare_mbsync_appears_within_a_second_and_goes_away_isync15() {
    a_bare_mbsync_appears_within_a_second_and_goes_away(Isync15).await;
}

/// Races: two TakeOver calls at once, and TakeOver with Sync at once: one wins, the others get a
/// typed error; never two mbsync; the mail ends exact.
#[tokio::test]
async fn concurrent_takeovers_and_syncs_have_one_winner() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        w.tb.proxy.set_rate(Some(100_000));
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        let mut fin = w.svc.receive_sync_finished().await.unwrap();

        let bare = w.tb.spawn_mbsync(&["alice"]);
        wait_external(&w, "alice", "process").await;
        let (first, second) = tokio::join!(w.svc.take_over("alice"), w.svc.take_over("alice"));
        let oks = [first.is_ok(), second.is_ok()].iter().filter(|ok| **ok).count();
        assert_eq!(oks, 1, "exactly one TakeOver wins: {first:?} {second:?}");
        let loser = if first.is_ok() { second } else { first };
        assert_eq!(error_name(loser), "org.himalaya.Sync.Error.AlreadySyncing");
        drop(bare);
        w.svc.cancel("alice").await.unwrap();
        finished(&mut fin, "alice").await;

        let bare = w.tb.spawn_mbsync(&["alice"]);
        wait_external(&w, "alice", "process").await;
        let (took, synced) = tokio::join!(w.svc.take_over("alice"), w.svc.sync("alice"));
        match (&took, &synced) {
            (Ok(_), Err(_)) => assert_eq!(error_name(synced), "org.himalaya.Sync.Error.AlreadySyncing"),
            // Sync came first: it refuses (a bare mbsync runs), and the takeover saw it reserved.
            (Err(_), Err(_)) => {
                assert_eq!(error_name(took), "org.himalaya.Sync.Error.AlreadySyncing");
                assert_eq!(error_name(synced), "org.himalaya.Sync.Error.LockedElsewhere");
                w.svc.take_over("alice").await.unwrap();
            }
            other => panic!("both cannot win: {other:?}"),
        }
        drop(bare);
        w.tb.proxy.set_rate(None);
        let (ok, message) = finished(&mut fin, "alice").await;
        assert!(ok, "{message}");
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("alice");
    })
    .await;
}

/// Races: the external sync ends while TakeOver runs: either it was still there (stopped and
/// restarted) or it was gone (NotRunning); nothing else, and the mail ends exact.
#[tokio::test]
async fn a_sync_that_ends_during_the_takeover() {
    with_timeout(async {
        let w = World::start(&[("bob", "INBOX", 20)]).await;
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        let mut outcomes = Vec::new();
        for _ in 0..6 {
            let mut bare = w.tb.spawn_mbsync(&["bob"]);
            // Whatever moment it has reached; a small sync ends within a few ms.
            match w.svc.take_over("bob").await {
                Ok(answer) => {
                    assert_eq!(strings(&answer, "restarted"), ["bob"]);
                    let (ok, message) = finished(&mut fin, "bob").await;
                    assert!(ok, "{message}");
                    outcomes.push("taken over");
                }
                Err(err) => {
                    assert_eq!(
                        zbus::DBusError::name(&err).as_str(),
                        "org.himalaya.Sync.Error.NotRunning",
                        "{err:?}"
                    );
                    outcomes.push("not running");
                }
            }
            wait_until("the bare mbsync to end", LONG, || {
                let exited = bare.has_exited();
                async move { exited }
            })
            .await;
        }
        println!("outcomes: {outcomes:?}");
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("bob");
    })
    .await;
}

/// A lock holder that never answers Handoff: HandoffTimeout, and it keeps its lock (the service
/// left the queue).
#[tokio::test]
async fn handoff_to_a_holder_that_never_answers_times_out() {
    struct Silent;
    #[zbus::interface(name = "org.himalaya.Sync.LockHolder")]
    impl Silent {
        async fn handoff(&self, account: &str, requester: &str) {
            println!("{requester} asks for {account}; never answered");
            std::future::pending::<()>().await;
        }
    }
    with_timeout(async {
        let w = World::start(&[("bob", "INBOX", 20)]).await;
        let holder = support::daemon::connect(w.bus.address()).await;
        holder.object_server().at("/org/himalaya/Sync/LockHolder", Silent).await.unwrap();
        let flags =
            zbus::fdo::RequestNameFlags::DO_NOT_QUEUE | zbus::fdo::RequestNameFlags::ALLOW_REPLACEMENT;
        holder.request_name_with_flags("org.himalaya.Sync.Lock.bob", flags).await.unwrap();
        wait_external(&w, "bob", "client").await;
        let started = std::time::Instant::now();
        let result = w.svc.request_handoff("bob", 300).await;
        assert_eq!(error_name(result), "org.himalaya.Sync.Error.HandoffTimeout");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let dbus = zbus::fdo::DBusProxy::new(&w.conn).await.unwrap();
        let queue = dbus
            .list_queued_owners(zbus::names::WellKnownName::try_from("org.himalaya.Sync.Lock.bob").unwrap())
            .await
            .unwrap();
        assert_eq!(queue.len(), 1, "only the holder: the service left the queue: {queue:?}");
        assert_eq!(Some(queue[0].as_str()), holder.unique_name().map(|u| u.as_str()));
        // Still usable: the holder lets go, the account is the service's again. (Closed, not
        // dropped: its pending Handoff call keeps the connection alive.)
        holder.close().await.unwrap();
        wait_until("bob to be idle", LONG, || async {
            state(&w.svc.get_progress("bob").await.unwrap()) == "idle"
        })
        .await;
        w.svc.sync("bob").await.unwrap();
    })
    .await;
}

/// A holder that ignores NameLost keeps its mbsync running after TakeOver took its names: the
/// service gives it `stop_grace`, then stops that mbsync like a bare one, and only then starts
/// its own.
#[tokio::test]
async fn a_holder_that_ignores_name_lost_is_stopped_after_the_grace() {
    with_timeout(async {
        let tb = support::Testbed::new(SPEC);
        support::daemon::write_service_config(&tb, "stop_grace = 1\n");
        let w = World::around(tb).await;
        w.tb.proxy.set_rate(Some(100_000));
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        // This test process is the holder: it takes the lock, runs mbsync as its child, and
        // never looks at NameLost.
        let holder = support::daemon::connect(w.bus.address()).await;
        let flags =
            zbus::fdo::RequestNameFlags::DO_NOT_QUEUE | zbus::fdo::RequestNameFlags::ALLOW_REPLACEMENT;
        holder.request_name_with_flags("org.himalaya.Sync.Lock.alice", flags).await.unwrap();
        let child = w.tb.spawn_mbsync(&["alice"]);
        wait_external(&w, "alice", "client").await;
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        let started = std::time::Instant::now();
        let answer = w.svc.take_over("alice").await.unwrap();
        let took = started.elapsed();
        assert_eq!(get::<String>(&answer, "stopped_owner").as_deref(), Some("client"));
        assert_eq!(get::<u32>(&answer, "stopped_pid"), Some(child.pid()));
        assert!(took >= Duration::from_millis(900), "the holder got its grace period: {took:?}");
        assert_eq!(child.wait(Duration::from_secs(5)).status.code(), None, "stopped by a signal");
        w.tb.proxy.set_rate(None);
        let (ok, message) = finished(&mut fin, "alice").await;
        assert!(ok, "{message}");
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("alice");
    })
    .await;
}

/// Safety: TakeOver never signals a process that is not this user's mbsync. A holder that claims
/// a `sleep` is its mbsync gets its names taken, but the `sleep` lives on; a foreign user's
/// "mbsync" (as root only) is not even considered.
#[tokio::test]
async fn takeover_never_signals_what_is_not_our_mbsync() {
    struct Liar {
        pid: u32,
    }
    #[zbus::interface(name = "org.himalaya.Sync.LockHolder")]
    impl Liar {
        fn get_progress(&self) -> HashMap<String, OwnedVariant> {
            HashMap::from([("pid".to_owned(), OwnedVariant::from(self.pid))])
        }
    }
    with_timeout(async {
        let tb = support::Testbed::new(&[("bob", "INBOX", 20)]);
        // A holder that does not exit when it loses its lock costs a TakeOver the grace period.
        support::daemon::write_service_config(&tb, "stop_grace = 1\n");
        let w = World::around(tb).await;
        let mut sleeper = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let holder = support::daemon::connect(w.bus.address()).await;
        holder.object_server().at("/org/himalaya/Sync/LockHolder", Liar { pid: sleeper.id() }).await.unwrap();
        let flags =
            zbus::fdo::RequestNameFlags::DO_NOT_QUEUE | zbus::fdo::RequestNameFlags::ALLOW_REPLACEMENT;
        holder.request_name_with_flags("org.himalaya.Sync.Lock.bob", flags).await.unwrap();
        wait_external(&w, "bob", "client").await;
        let answer = w.svc.take_over("bob").await.unwrap();
        assert_eq!(get::<u32>(&answer, "stopped_pid"), None, "no mbsync was stopped: {answer:?}");
        assert!(sleeper.try_wait().unwrap().is_none(), "the sleep was signalled");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();

        if !support::running_as_root() {
            println!("not root: the other-user part needs root (CI runs as root)");
            return;
        }
        // A program named mbsync of another user, whose arguments name bob.
        let fake = w.tb.dir.path().join("fake/mbsync");
        std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
        std::fs::copy("/usr/bin/tail", &fake).unwrap();
        let mut other = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&fake)
            .args(["-f", "/dev/null", "bob"])
            .env("HOME", w.tb.home())
            .spawn()
            .unwrap();
        wait_until("the foreign process to run", LONG, || async {
            std::fs::read_to_string(format!("/proc/{}/status", other.id()))
                .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.contains("65534")))
        })
        .await;
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        // Whatever TakeOver says (the service's own run of bob may still be going), it never
        // touches the foreign process.
        let _ = w.svc.take_over("bob").await;
        let _ = finished_within(&mut fin, Duration::from_millis(200)).await;
        assert!(other.try_wait().unwrap().is_none(), "another user's process was signalled");
        other.kill().unwrap();
        other.wait().unwrap();
    })
    .await;
}

async fn finished_within(
    stream: &mut himalaya_sync::bus::service::SyncFinishedStream,
    timeout: Duration,
) -> Option<bool> {
    tokio::time::timeout(timeout, stream.next()).await.ok().flatten().map(|s| s.args().unwrap().ok)
}

/// The client commands: `status` shows an external sync, `takeover` and `handoff` say what they
/// stopped and follow the restarted sync to its end (exit 0); nothing running → exit 1 with the
/// error's name.
#[tokio::test]
async fn cli_status_takeover_and_handoff() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        w.tb.proxy.set_rate(Some(200_000));
        let cli = |args: &'static [&'static str]| {
            let (bus, env) = (w.bus.address().to_owned(), w.tb.env());
            async move { tokio::task::spawn_blocking(move || run_cli(&bus, &env, args)).await.unwrap() }
        };
        let text = |out: &std::process::Output| {
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        };

        let bare = w.tb.spawn_mbsync(&["alice"]);
        wait_external(&w, "alice", "process").await;
        let status = cli(&["status", "alice"]).await;
        let row = text(&status).lines().find(|l| l.starts_with("alice ")).map(str::to_owned);
        assert!(row.is_some_and(|r| r.contains("external (mbsync)")), "{}", text(&status));
        let out = cli(&["takeover", "alice"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let said = text(&out);
        assert!(said.contains(&format!("stopped mbsync PID {} (a bare mbsync", bare.pid())), "{said}");
        assert!(said.contains("now syncing alice") && said.contains("alice: sync finished"), "{said}");
        drop(bare);

        w.tb.dovecot.add_messages("bob", "INBOX", 400);
        let exec = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["bob"]);
        wait_external(&w, "bob", "client").await;
        let out = cli(&["handoff", "bob", "--timeout", "5000"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(text(&out).contains("(a lock holder"), "{}", text(&out));
        exec.wait(LONG).assert_code(0, "exec after a handoff");

        let out = cli(&["takeover", "bob"]).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("org.himalaya.Sync.Error.NotRunning"), "{}", text(&out));
        w.tb.assert_in_sync("alice");
        w.tb.assert_in_sync("bob");
    })
    .await;
}

/// A channel added to the mbsync config after the daemon started is watched too, once the
/// config is read again: a bare mbsync on it shows as external.
#[tokio::test]
async fn a_bare_mbsync_on_a_channel_added_later_is_seen() {
    with_timeout(async {
        let tb = support::Testbed::new(&[("alice", "INBOX", 20), ("bob", "INBOX", 600)]);
        let full = std::fs::read_to_string(tb.mbsyncrc()).unwrap();
        let without_bob: Vec<&str> = full.split("\n\n").filter(|block| !block.contains("bob")).collect();
        std::fs::write(tb.mbsyncrc(), without_bob.join("\n\n")).unwrap();
        let w = World::around(tb).await;
        assert_eq!(w.svc.list_accounts().await.unwrap(), ["alice"]);
        std::fs::write(w.tb.mbsyncrc(), &full).unwrap();
        // Any client call reads the config again.
        assert_eq!(w.svc.list_accounts().await.unwrap().len(), 3);
        w.tb.proxy.set_rate(Some(100_000));
        let mut changes = w.svc.receive_progress_changed().await.unwrap();
        let started = std::time::Instant::now();
        let bare = w.tb.spawn_mbsync(&["bob"]);
        loop {
            let s = tokio::time::timeout(Duration::from_secs(2), changes.next())
                .await
                .expect("a bare mbsync on the new channel was not seen within 2 s")
                .unwrap();
            let args = s.args().unwrap();
            if args.account == "bob" && state(&args.progress) == "external" {
                break;
            }
        }
        println!("seen {:?} after it started", started.elapsed());
        drop(bare);
    })
    .await;
}

/// Wait (at most 1 s) until a bare mbsync of `account`, started now, shows as external.
async fn seen_within_a_second(w: &World, account: &str) -> support::Spawned {
    let mut changes = w.svc.receive_progress_changed().await.unwrap();
    let started = std::time::Instant::now();
    let bare = w.tb.spawn_mbsync(&[account]);
    loop {
        let s =
            tokio::time::timeout(Duration::from_secs(1).saturating_sub(started.elapsed()), changes.next())
                .await
                .unwrap_or_else(|_| panic!("a bare mbsync of {account} was not seen within 1 s"))
                .unwrap();
        let args = s.args().unwrap();
        if args.account == account && state(&args.progress) == "external" {
            println!("seen {:?} after it started", started.elapsed());
            return bare;
        }
    }
}

/// How often the daemon wakes in 2 s of the bare mbsync `bare`'s run, which must outlast them.
async fn wakeups_while_it_runs(w: &World, bare: &mut support::Spawned) -> u64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let woke = wakeups(w.daemon.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let woke = wakeups(w.daemon.pid()) - woke;
    println!("the daemon woke {woke} times in 2 s of an external sync");
    assert!(!bare.has_exited(), "the bare sync was over too soon to tell");
    woke
}

/// The Maildir root (a place of mbsync's lock files) does not exist when the service starts, and
/// later is removed and made again: each time, once it is there, a bare mbsync in it is seen
/// within 1 s (the service watches the nearest existing directory for it; it used to watch
/// nothing until a restart).
#[tokio::test]
async fn a_bare_mbsync_is_seen_in_a_maildir_made_after_the_service_started() {
    with_timeout(async {
        let tb = support::Testbed::new(&[("alice", "INBOX", 600)]);
        let root = tb.maildir("alice");
        std::fs::remove_dir_all(&root).unwrap();
        let w = World::around(tb).await;
        w.tb.proxy.set_rate(Some(100_000));
        for round in ["made after the start", "removed and made again"] {
            println!("{round}");
            if root.exists() {
                std::fs::remove_dir_all(&root).unwrap();
            }
            std::fs::create_dir_all(&root).unwrap();
            // The user's first sync (by the service) makes the boxes, as in the tests above.
            let mut fin = w.svc.receive_sync_finished().await.unwrap();
            w.tb.proxy.set_rate(None);
            w.svc.sync("alice").await.unwrap();
            assert!(finished(&mut fin, "alice").await.0, "{round}: the first sync");
            w.tb.dovecot.add_messages("alice", "INBOX", 600);
            w.tb.proxy.set_rate(Some(100_000));
            let bare = seen_within_a_second(&w, "alice").await;
            drop(bare);
            wait_until("alice to be idle again", LONG, || async {
                matches!(state(&w.svc.get_progress("alice").await.unwrap()).as_str(), "idle" | "failed")
            })
            .await;
        }
    })
    .await;
}

/// A service started after the first sync (every start but the very first) watches the Inbox,
/// which is a lock place and a box at once, but not its `cur`, `new` and `tmp`: a bare mbsync
/// inside a box does not wake it per message file (it woke ~600 times in 2 s).
#[tokio::test]
async fn a_service_started_after_the_first_sync_does_not_wake_per_message() {
    with_timeout(async {
        let tb = support::Testbed::new(&[("alice", "INBOX", 20)]);
        tb.run_mbsync(&["alice"], LONG).assert_code(0, "the first sync, before the service");
        let w = World::around(tb).await;
        w.tb.dovecot.add_messages("alice", "INBOX", 1500);
        w.tb.proxy.set_rate(Some(200_000));
        let mut bare = seen_within_a_second(&w, "alice").await;
        let woke = wakeups_while_it_runs(&w, &mut bare).await;
        // ~700 messages arrive in those 2 s: a wakeup per message file would be hundreds. A
        // few remain for the files mbsync opens in the box itself (its state, `.uidvalidity`).
        assert!(woke <= 50, "the daemon woke {woke} times in 2 s while a bare mbsync ran");
        w.tb.proxy.set_rate(None);
        bare.wait(LONG).assert_code(0, "the bare mbsync");
    })
    .await;
}
