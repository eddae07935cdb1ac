//! One mbsync per account, whoever started it: external syncs are seen, TakeOver stops them and
//! restarts their scope under the service, RequestHandoff asks an `exec` holder to hand over.
//! Real mbsync, Dovecot behind the throttling proxy, a private bus, the real daemon and `exec`;
//! a sampler reads /proc every few ms and fails the test if two mbsync ever sync one channel.

mod support;

use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt;
use support::{
    daemon::{World, error_name, get, mbsync_pids_for, name_owner, spawn_exec, wait_until, with_timeout},
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

/// Wait for the service's own run of `account` to end; whether it succeeded, and its message.
async fn finished(stream: &mut himalaya_sync::bus::service::SyncFinishedStream, account: &str) -> (bool, String) {
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
#[tokio::test]
async fn takeover_of_a_bare_mbsync() {
    with_timeout(async {
        let w = World::start(SPEC).await;
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

/// A bare `mbsync -a` is restarted with every channel it covered (here: the group holding both).
#[tokio::test]
async fn takeover_of_a_bare_mbsync_all_restarts_every_channel() {
    with_timeout(async {
        let w = World::start(SPEC).await;
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

/// An `exec` holder: its progress is relayed (owner client), TakeOver replaces its names, it
/// stops its mbsync at once and exits; the service finishes the sync.
#[tokio::test]
async fn takeover_of_an_exec_holder() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        w.tb.proxy.set_rate(Some(100_000));
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        let exec = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice"]);
        wait_external(&w, "alice", "client").await;
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

/// Graceful handoff from `exec` to the service: no overlap, `exec` exits 0, the mail is exact.
#[tokio::test]
async fn handoff_from_exec_to_the_service() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        w.tb.proxy.set_rate(Some(100_000));
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        let exec = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice"]);
        wait_external(&w, "alice", "client").await;
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        let answer = w.svc.request_handoff("alice", 5000).await.unwrap();
        assert_eq!(get::<String>(&answer, "stopped_owner").as_deref(), Some("client"));
        assert_eq!(strings(&answer, "restarted"), ["alice"]);
        assert_eq!(get::<String>(&w.svc.get_progress("alice").await.unwrap(), "owner").as_deref(), Some("service"));
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

/// `exec --no-handoff` refuses: HandoffRefused, it keeps its lock and finishes its own run.
#[tokio::test]
async fn exec_no_handoff_refuses_and_finishes_its_run() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        w.tb.proxy.set_rate(Some(400_000));
        let exec = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice", "--no-handoff"]);
        wait_external(&w, "alice", "client").await;
        let owner = name_owner(&w.conn, "org.himalaya.Sync.Lock.alice").await;
        let result = w.svc.request_handoff("alice", 2000).await;
        assert_eq!(error_name(result), "org.himalaya.Sync.Error.HandoffRefused");
        assert_eq!(name_owner(&w.conn, "org.himalaya.Sync.Lock.alice").await, owner, "the holder keeps its lock");
        exec.wait(LONG).assert_code(0, "exec --no-handoff");
        wait_until("alice to be idle again", LONG, || async {
            state(&w.svc.get_progress("alice").await.unwrap()) == "idle"
        })
        .await;
        w.tb.assert_in_sync("alice");
    })
    .await;
}

/// `exec` while the service syncs the account: it says so and exits 75 without starting mbsync.
/// Without any bus it warns and runs mbsync unlocked.
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
    })
    .await;
}

/// Scenario 3: a bare mbsync started by cron while the daemon idles shows as external within
/// 1 s, and the account goes back to idle by itself when it ends.
#[tokio::test]
async fn a_bare_mbsync_appears_within_a_second_and_goes_away() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        // A first sync creates the boxes and state the watcher follows, as a user's would.
        let mut fin = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("alice").await.unwrap();
        assert!(finished(&mut fin, "alice").await.0);
        w.tb.dovecot.add_messages("alice", "INBOX", 300);
        w.tb.proxy.set_rate(Some(100_000));
        let mut changes = w.svc.receive_progress_changed().await.unwrap();
        let started = std::time::Instant::now();
        let bare = w.tb.spawn_mbsync(&["alice"]);
        let seen = loop {
            let s = changes.next().await.unwrap();
            let args = s.args().unwrap();
            if args.account == "alice" && state(&args.progress) == "external" {
                break started.elapsed();
            }
        };
        println!("a bare mbsync was seen {seen:?} after it started");
        assert!(seen < Duration::from_secs(1), "seen only after {seen:?}");
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
