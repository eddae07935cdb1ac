//! Takeover budgets, measured in one run (`cargo bench --bench takeover`), real parts only:
//! 1. `TakeOver` of a bare mbsync → the supervised mbsync running (≤ 100 ms; the seed promised
//!    < 3 s);
//! 2. `RequestHandoff` from an `exec` holder → the service's mbsync running (≤ 150 ms);
//! 3. detection: `GetProgress` of an account a bare mbsync syncs (≤ 1 ms) against the seed's
//!    `ps aux | grep mbsync`, timed in the same run.
//!
//! `TakeOver` and `RequestHandoff` return once the service's mbsync has been started, so the
//! call's round trip is the figure. The proxy is slowed so the stopped sync is always mid-way.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use himalaya_sync::bus::service::{ServiceProxy, SyncFinishedStream};
use support::{
    Testbed,
    bus::PrivateBus,
    daemon::{Daemon, connect, get, service, spawn_exec, wait_until},
    procstat::percentile,
};

const SPEC: &[(&str, &str, usize)] = &[("alice", "INBOX", 2000), ("bob", "INBOX", 20)];
const RUNS: usize = 30;

fn summary(what: &str, ms: &[f64], budget: &str) {
    println!(
        "{what} ({} runs): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms   budget {budget}",
        ms.len(),
        percentile(ms, 0.5),
        percentile(ms, 0.99),
        percentile(ms, 1.0)
    );
}

async fn wait_state(svc: &ServiceProxy<'static>, account: &str, want: &str, owner: Option<&str>) {
    wait_until(&format!("{account} to be {want}"), Duration::from_secs(30), || async {
        let r = svc.get_progress(account).await.unwrap();
        get::<String>(&r, "state").as_deref() == Some(want)
            && owner.is_none_or(|o| get::<String>(&r, "owner").as_deref() == Some(o))
    })
    .await;
}

/// Cancel the service's run of `account` and wait until it ended.
async fn stop_service_run(svc: &ServiceProxy<'static>, finished: &mut SyncFinishedStream, account: &str) {
    svc.cancel(account).await.unwrap();
    while let Some(s) = finished.next().await {
        if s.args().unwrap().account == account {
            return;
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tb = Testbed::new(SPEC);
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(tb));
}

async fn run(tb: Testbed) {
    println!("himalaya-sync takeover budgets (release daemon, real Dovecot/mbsync/dbus-daemon)");
    tb.proxy.set_rate(Some(50_000));
    let bus = PrivateBus::start(None);
    let daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon.log")).await;
    let conn = connect(bus.address()).await;
    let svc = service(&conn).await;
    let mut finished = svc.receive_sync_finished().await.unwrap();

    // 3 first, while nothing else runs: detection against the seed's ps | grep.
    let bare = tb.spawn_mbsync(&["alice"]);
    wait_state(&svc, "alice", "external", Some("process")).await;
    let mut ours = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let r = svc.get_progress("alice").await.unwrap();
        ours.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(get::<u32>(&r, "pid"), Some(bare.pid()));
    }
    let mut seed = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let out = Command::new("ps").arg("aux").output().unwrap();
        let found =
            String::from_utf8_lossy(&out.stdout).lines().any(|l| l.contains("mbsync") && !l.contains("grep"));
        seed.push(start.elapsed().as_secs_f64() * 1000.0);
        assert!(found);
    }
    summary("detection: GetProgress of an external sync", &ours, "<= 1 ms");
    summary("baseline: the seed's ps aux | grep mbsync", &seed, "(none)");
    println!(
        "detection speed-up over ps aux | grep, p50: {:.0}x",
        percentile(&seed, 0.5) / percentile(&ours, 0.5)
    );

    // 1: TakeOver of a bare mbsync.
    let mut takeover = Vec::new();
    let mut bare = Some(bare);
    for _ in 0..RUNS {
        let b = bare.take().unwrap_or_else(|| tb.spawn_mbsync(&["alice"]));
        wait_state(&svc, "alice", "external", Some("process")).await;
        let start = Instant::now();
        let answer = svc.take_over("alice").await.unwrap();
        takeover.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(get::<u32>(&answer, "stopped_pid"), Some(b.pid()));
        drop(b);
        stop_service_run(&svc, &mut finished, "alice").await;
    }
    summary("TakeOver of a bare mbsync -> supervised mbsync running", &takeover, "<= 100 ms (seed: < 3 s)");

    // 2: RequestHandoff from an exec holder.
    let mut handoff = Vec::new();
    for _ in 0..RUNS {
        let exec = spawn_exec(Some(bus.address()), &tb.env(), &["alice"]);
        wait_state(&svc, "alice", "external", Some("client")).await;
        let start = Instant::now();
        svc.request_handoff("alice", 5000).await.unwrap();
        handoff.push(start.elapsed().as_secs_f64() * 1000.0);
        exec.wait(Duration::from_secs(10)).assert_code(0, "exec after a handoff");
        stop_service_run(&svc, &mut finished, "alice").await;
    }
    summary("RequestHandoff from exec -> service's mbsync running", &handoff, "<= 150 ms");
    drop(daemon);
}
