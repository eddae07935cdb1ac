//! The budgets, measured against a baseline in the same run (`cargo bench`):
//! 1. wall time of a supervised sync / a bare mbsync on a pty, same mailbox (≤ 1.03);
//! 2. daemon CPU / mbsync CPU during a sync (≤ 0.03);
//! 3. latency from an mbsync progress record to a client's `ProgressChanged` (p99 ≤ 20 ms),
//!    for isolated records: this binary replays records at known times as a stand-in mbsync;
//! 4. the idle daemon's RSS (≤ 10 MiB).
//!
//! Real parts: private dbus-daemon, private Dovecot, real mbsync, the release daemon binary.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::Write,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use himalaya_sync::runner::{Mbsync, Output};
use support::{
    Testbed,
    bus::PrivateBus,
    daemon::{Daemon, connect, get, service, write_service_config},
};

const SPEC: &[(&str, &str, usize)] =
    &[("alice", "INBOX", 2000), ("alice", "Archive", 500), ("alice", "Sent", 50)];
const ROUNDS: usize = 9;
/// Replay mode: this binary stands in for mbsync and writes send times here.
const REPLAY_ENV: &str = "HIMALAYA_SYNC_BENCH_REPLAY";
const RECORDS: u32 = 80;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// CPU seconds from /proc/PID/stat: (the daemon's own utime+stime, which counts threads that
/// have exited too, like a run's pty reader; its reaped children's cutime+cstime). Clock ticks
/// are 10 ms, so the budget is judged on the sum over all rounds.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<u64> =
        stat.rsplit_once(") ").unwrap().1.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // After the state field (index 0): utime=11, stime=12, cutime=13, cstime=14.
    ((fields[11] + fields[12]) as f64 / 100.0, (fields[13] + fields[14]) as f64 / 100.0)
}

/// Context switches of the live threads of `pid` (the runtime thread, between runs): how often
/// the daemon woke.
fn wakeups(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Empty alice's local maildir, so every run is the same fresh 2,550-message sync.
fn reset_local(tb: &Testbed) {
    let dir = tb.maildir("alice");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
}

/// The baseline: mbsync alone on a pty, its output drained, nothing parsed or published.
async fn bare_sync(tb: &Testbed) -> Duration {
    let args =
        vec!["-c".to_owned(), tb.mbsyncrc().display().to_string(), "-V".to_owned(), "alice".to_owned()];
    let start = Instant::now();
    let mut mbsync = Mbsync::spawn(Path::new("mbsync"), &args).unwrap();
    loop {
        if let Output::Exited(exit) = mbsync.next().await {
            assert!(exit.success(), "bare mbsync failed: {}", exit.reason());
            return start.elapsed();
        }
    }
}

fn replay_main(log: &str) {
    // The daemon's config check (`mbsync -c FILE PROBE`): answer as mbsync does, at once.
    if std::env::args().any(|a| a == himalaya_sync::mbsync_check::PROBE) {
        eprintln!("No channel or group named '{}' defined.", himalaya_sync::mbsync_check::PROBE);
        std::process::exit(1);
    }
    let mut out = std::io::stdout().lock();
    let mut log = std::fs::File::create(log).unwrap();
    for i in 1..=RECORDS {
        std::thread::sleep(Duration::from_millis(120));
        let sent = now_us();
        write!(out, "\rC: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +{i}/{RECORDS} *0/0 #0/0").unwrap();
        out.flush().unwrap();
        writeln!(log, "{i} {sent}").unwrap();
    }
    writeln!(out).unwrap();
}

fn main() {
    if let Ok(log) = std::env::var(REPLAY_ENV) {
        return replay_main(&log);
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // The bare baseline needs no environment: `-c` names the config, whose paths are absolute.
    let tb = Testbed::new(SPEC);
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(tb));
}

async fn run(tb: Testbed) {
    println!("himalaya-sync budgets (release daemon, real Dovecot/mbsync/dbus-daemon)");
    let bus = PrivateBus::start(None);
    let daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon.log")).await;
    let conn = connect(bus.address()).await;
    let svc = service(&conn).await;
    let mut finished = svc.receive_sync_finished().await.unwrap();

    // 1 + 2: alternate bare and supervised runs of the same fresh sync.
    let (mut bare, mut supervised) = (Vec::new(), Vec::new());
    let (mut daemon_cpu, mut mbsync_cpu) = (0.0, 0.0);
    // Round 0 warms Dovecot's indexes and the page cache and is not counted. The order
    // alternates, and each supervised run is compared with the bare run next to it, so drift
    // of the disk's speed during the bench cancels out.
    let mut ratios = Vec::new();
    for round in 0..=ROUNDS {
        let supervised_first = round % 2 == 1;
        let mut b = Duration::ZERO;
        if !supervised_first {
            reset_local(&tb);
            b = bare_sync(&tb).await;
        }
        reset_local(&tb);
        let (own0, kids0) = cpu_seconds(daemon.pid());
        let woke0 = wakeups(daemon.pid());
        let start = Instant::now();
        svc.sync("alice").await.unwrap();
        let s = finished.next().await.unwrap();
        let elapsed = start.elapsed();
        assert!(s.args().unwrap().ok, "{}", s.args().unwrap().message);
        let (own1, kids1) = cpu_seconds(daemon.pid());
        let woke = wakeups(daemon.pid()) - woke0;
        if supervised_first {
            reset_local(&tb);
            b = bare_sync(&tb).await;
        }
        println!(
            "  round {round}{}: bare {:.3} s, supervised {:.3} s, CPU daemon {:.2} s / mbsync {:.2} s, runtime thread woke {woke} times",
            if round == 0 { " (warm-up)" } else { "" },
            b.as_secs_f64(),
            elapsed.as_secs_f64(),
            own1 - own0,
            kids1 - kids0
        );
        if round == 0 {
            continue;
        }
        daemon_cpu += own1 - own0;
        mbsync_cpu += kids1 - kids0;
        bare.push(b.as_secs_f64());
        supervised.push(elapsed.as_secs_f64());
        ratios.push(elapsed.as_secs_f64() / b.as_secs_f64());
    }
    println!(
        "wall time supervised/bare: median of {ROUNDS} paired ratios {:.3} (ratio of medians {:.3})   budget <= 1.03",
        median(ratios),
        median(supervised.clone()) / median(bare.clone())
    );
    println!(
        "CPU daemon/mbsync (sum of {ROUNDS} rounds: {daemon_cpu:.2} s / {mbsync_cpu:.2} s): {:.4}   budget <= 0.03",
        daemon_cpu / mbsync_cpu
    );
    tb.assert_in_sync("alice");

    // 4: idle RSS after real syncs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("idle RSS: {:.1} MiB   budget <= 10 MiB", rss_kib(daemon.pid()) as f64 / 1024.0);
    drop(daemon);
    latency(&tb, &bus, &svc, &mut finished).await;
}

/// 3: latency, with this binary replaying isolated records as the daemon's mbsync.
async fn latency(
    tb: &Testbed,
    bus: &PrivateBus,
    svc: &himalaya_sync::bus::service::ServiceProxy<'static>,
    finished: &mut himalaya_sync::bus::service::SyncFinishedStream,
) {
    let log = tb.dir.path().join("replay.log");
    let exe = std::env::current_exe().unwrap();
    write_service_config(tb, &format!("mbsync = {:?}\n", exe.display().to_string()));
    let mut env = tb.env();
    env.push((REPLAY_ENV.to_owned(), log.display().to_string()));
    let daemon = Daemon::start(bus.address(), &env, &tb.dir.path().join("daemon-replay.log")).await;
    let mut progress = svc.receive_progress_changed().await.unwrap();
    svc.sync("alice").await.unwrap();
    let mut received = std::collections::HashMap::new();
    loop {
        tokio::select! {
            Some(s) = progress.next() => {
                let t = now_us();
                if let Some(done) = get::<u32>(&s.args().unwrap().progress, "messages_done") {
                    received.entry(done).or_insert(t);
                }
            }
            Some(_) = finished.next() => break,
        }
    }
    let sent: Vec<(u32, u64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (i, t) = l.split_once(' ')?;
            Some((i.parse().ok()?, t.parse().ok()?))
        })
        .collect();
    let lat: Vec<f64> = sent
        .iter()
        .filter_map(|(i, t)| received.get(i).map(|r| r.saturating_sub(*t) as f64 / 1000.0))
        .collect();
    assert_eq!(lat.len(), sent.len(), "every isolated record must reach the client");
    println!(
        "latency record -> client signal ({} isolated records): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms   budget p99 <= 20 ms",
        lat.len(),
        percentile(lat.clone(), 0.5),
        percentile(lat.clone(), 0.99),
        percentile(lat, 1.0)
    );
    drop(daemon);
}
