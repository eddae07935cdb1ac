//! The service's budgets, each measured against a baseline in the same run (`cargo bench --bench
//! budgets`):
//! 1. wall time of a supervised sync / a bare mbsync on a pty, same mailbox (≤ 1.01), and
//! 2. daemon CPU / mbsync CPU during a sync (≤ 0.01), with isync 1.4.4 and 1.5.1, over rounds;
//! 3. latency from an mbsync progress record to a client's `ProgressChanged`, isolated records
//!    (p50 ≤ 0.3 ms, p99 ≤ 1 ms), beside the bus's own floor (a bare zbus signal from another
//!    process through the same dbus-daemon, same size and cadence); in a burst, how long a record
//!    waits before a client sees a state at least as new (≤ 105 ms). This binary replays records
//!    at known times as a stand-in mbsync;
//! 4. the idle daemon after a sync: wakeups over `BENCH_IDLE_SECONDS` (default 60; budget 0) and
//!    its RSS (≤ 10 MiB).
//!
//! Real parts: private dbus-daemon, private Dovecot, real mbsync, the release daemon binary.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    io::Write,
    num::NonZeroUsize,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use himalaya_sync::{
    bus::record::Dict,
    runner::{Mbsync, Output},
};
use support::{
    MbsyncVersion::{self, Isync14, Isync15},
    Testbed,
    bus::PrivateBus,
    daemon::{Daemon, connect, get, service, write_service_config},
    procstat::{cpu_seconds, percentile, run_time_ns, status_field},
};
use zbus::{MatchRule, MessageStream, OwnedVariant, message::Type};

const SPEC: &[(&str, &str, usize)] =
    &[("alice", "INBOX", 2000), ("alice", "Archive", 500), ("alice", "Sent", 50)];
const ROUNDS: usize = 9;
/// Replay mode: this binary stands in for mbsync and writes send times to this file.
const REPLAY_ENV: &str = "HIMALAYA_SYNC_BENCH_REPLAY";
/// Replay mode's pattern: `isolated` (a record every 120 ms) or `burst` (one every 2 ms).
const REPLAY_PATTERN_ENV: &str = "HIMALAYA_SYNC_BENCH_PATTERN";
/// Floor mode: this binary emits bare signals on the bus and writes send times to this file.
const FLOOR_ENV: &str = "HIMALAYA_SYNC_BENCH_FLOOR";
const ISOLATED: u32 = 80;
const ISOLATED_GAP: Duration = Duration::from_millis(120);
const BURST: u32 = 2000;
const BURST_GAP: Duration = Duration::from_millis(2);

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// `min / median / max` of a series, for the spread over rounds.
fn spread(v: &[f64], digits: usize) -> String {
    format!(
        "min {:.digits$} / median {:.digits$} / max {:.digits$}",
        percentile(v, 0.0),
        percentile(v, 0.5),
        percentile(v, 1.0)
    )
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
    let mut mbsync = Mbsync::spawn(tb.mbsync_program(), &args).unwrap();
    loop {
        if let Output::Exited(exit) = mbsync.next().await {
            assert!(exit.success(), "bare mbsync failed: {}", exit.reason());
            return start.elapsed();
        }
    }
}

/// Stand in for mbsync: write progress records at known times, logging when each was written.
fn replay_main(log: &str) {
    // The daemon's config check (`mbsync -c FILE PROBE`): answer as mbsync does, at once.
    if std::env::args().any(|a| a == himalaya_sync::mbsync_check::PROBE) {
        eprintln!("No channel or group named '{}' defined.", himalaya_sync::mbsync_check::PROBE);
        std::process::exit(1);
    }
    let burst = std::env::var(REPLAY_PATTERN_ENV).is_ok_and(|p| p == "burst");
    let (records, gap) = if burst { (BURST, BURST_GAP) } else { (ISOLATED, ISOLATED_GAP) };
    let mut out = std::io::stdout().lock();
    let mut log = std::io::BufWriter::new(std::fs::File::create(log).unwrap());
    for i in 1..=records {
        std::thread::sleep(gap);
        let sent = now_us();
        write!(out, "\rC: 0/1  B: 0/1  F: +0/0 *0/0 #0/0  N: +{i}/{records} *0/0 #0/0").unwrap();
        out.flush().unwrap();
        writeln!(log, "{i} {sent}").unwrap();
    }
    writeln!(out).unwrap();
}

/// A record the size of a real one, as the floor's payload.
fn sample_dict(i: u32) -> Dict {
    let v = |x: zbus::Variant<'_>| OwnedVariant::try_from(x).unwrap();
    let mut d = Dict::new();
    d.insert("state".into(), v("syncing".into()));
    d.insert("stuck".into(), v(false.into()));
    d.insert("owner".into(), v("service".into()));
    d.insert("pid".into(), v(4242u32.into()));
    d.insert("started_at".into(), v(1_765_000_000u64.into()));
    d.insert("last_update".into(), v(1_765_000_001u64.into()));
    d.insert("channel".into(), v("alice".into()));
    d.insert("operation".into(), v("new".into()));
    for key in ["channels", "boxes", "messages", "far_new", "far_flags", "near_new", "near_flags"] {
        d.insert(format!("{key}_done"), v(i.into()));
        d.insert(format!("{key}_total"), v(ISOLATED.into()));
    }
    d
}

/// Floor mode: another process emitting `ProgressChanged`-shaped signals through the bus.
fn floor_main(log: &str) {
    let log = log.to_owned();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
        let address = std::env::var("DBUS_SESSION_BUS_ADDRESS").unwrap();
        let conn = connect(&address).await;
        let mut out = std::io::BufWriter::new(std::fs::File::create(log).unwrap());
        for i in 1..=ISOLATED {
            let body = ("alice", sample_dict(i));
            tokio::time::sleep(ISOLATED_GAP).await;
            let sent = now_us();
            conn.emit_signal(None::<&str>, "/bench", "org.himalaya.Bench", "ProgressChanged", &body)
                .await
                .unwrap();
            writeln!(out, "{i} {sent}").unwrap();
        }
    });
}

fn main() {
    if let Ok(log) = std::env::var(REPLAY_ENV) {
        return replay_main(&log);
    }
    if let Ok(log) = std::env::var(FLOOR_ENV) {
        return floor_main(&log);
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run());
}

async fn run() {
    println!("himalaya-sync budgets (release daemon, real Dovecot/mbsync/dbus-daemon)");
    // `BENCH_ISYNC=14` or `15` measures one version only.
    let only = std::env::var("BENCH_ISYNC").unwrap_or_default();
    for (version, name) in [(Isync14, "14"), (Isync15, "15")] {
        if only.is_empty() || only == name {
            wall_and_cpu(version).await;
        }
    }
    latency().await;
}

/// 1, 2 and 4 for one isync version.
async fn wall_and_cpu(version: MbsyncVersion) {
    let tb = Testbed::with_mbsync(version, SPEC);
    println!("{version:?} ({}):", tb.mbsync_program().display());
    let bus = PrivateBus::start(None);
    let daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon.log")).await;
    let conn = connect(bus.address()).await;
    let svc = service(&conn).await;
    let mut finished = svc.receive_sync_finished().await.unwrap();

    // Round 0 warms Dovecot's indexes and the page cache and is not counted. The order
    // alternates, and each supervised run is compared with the bare run next to it, so drift
    // of the disk's speed during the bench cancels out.
    let (mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    let (mut daemon_cpu, mut mbsync_cpu, mut daemon_run_ns) = (0.0, 0.0, 0_u64);
    for round in 0..=ROUNDS {
        let supervised_first = round % 2 == 1;
        let mut b = Duration::ZERO;
        if !supervised_first {
            reset_local(&tb);
            b = bare_sync(&tb).await;
        }
        reset_local(&tb);
        let (own0, kids0) = cpu_seconds(daemon.pid());
        let run0 = run_time_ns(daemon.pid());
        let woke0 = support::daemon::wakeups(daemon.pid());
        let start = Instant::now();
        svc.sync("alice").await.unwrap();
        let s = finished.next().await.unwrap();
        let elapsed = start.elapsed();
        assert!(s.args().unwrap().ok, "{}", s.args().unwrap().message);
        let (own1, kids1) = cpu_seconds(daemon.pid());
        let woke = support::daemon::wakeups(daemon.pid()) - woke0;
        if supervised_first {
            reset_local(&tb);
            b = bare_sync(&tb).await;
        }
        println!(
            "  round {round}{}: bare {:.3} s, supervised {:.3} s, CPU daemon {:.2} s / mbsync {:.2} s, daemon threads woke {woke} times",
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
        daemon_run_ns += run_time_ns(daemon.pid()) - run0;
        ratios.push(elapsed.as_secs_f64() / b.as_secs_f64());
        cpu_ratios.push((own1 - own0) / (kids1 - kids0));
    }
    println!(
        "  wall time supervised/bare over {ROUNDS} paired rounds: {}   budget median <= 1.01",
        spread(&ratios, 3)
    );
    println!(
        "  CPU daemon/mbsync: sum of {ROUNDS} rounds {daemon_cpu:.2} s / {mbsync_cpu:.2} s = {:.4} (per round {})   budget <= 0.01",
        daemon_cpu / mbsync_cpu,
        spread(&cpu_ratios, 4)
    );
    println!(
        "    the daemon's run time from the scheduler (ns, not 10 ms ticks): {:.1} ms per round, {:.4} of mbsync's CPU",
        daemon_run_ns as f64 / 1e6 / ROUNDS as f64,
        daemon_run_ns as f64 / 1e9 / mbsync_cpu
    );
    tb.assert_in_sync("alice");

    // 4: the idle daemon after real syncs.
    let idle = Duration::from_secs(
        std::env::var("BENCH_IDLE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let woke0 = support::daemon::wakeups(daemon.pid());
    tokio::time::sleep(idle).await;
    println!(
        "  idle after the syncs, {idle:?}: daemon threads woke {} times, RSS {:.1} MiB   budget 0 wakeups, <= 10 MiB",
        support::daemon::wakeups(daemon.pid()) - woke0,
        status_field(daemon.pid(), "VmRSS:") as f64 / 1024.0
    );
    drop(daemon);
}

/// A client's view of signals: each matching message's arrival time, taken before its body is
/// read (what the client's deserialising costs is the client's, not the service's).
async fn receiver(conn: &zbus::Connection, interface: &'static str) -> MessageStream {
    let rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .interface(interface)
        .member("ProgressChanged")
        .build()
        .unwrap();
    MessageStream::for_match_rule(rule, conn, NonZeroUsize::new(4096)).await.unwrap()
}

fn read_log(log: &Path) -> Vec<(u32, u64)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (i, t) = l.split_once(' ')?;
            Some((i.parse().ok()?, t.parse().ok()?))
        })
        .collect()
}

fn summary(what: &str, lat: &[f64], budget: &str) -> f64 {
    let p50 = percentile(lat, 0.5);
    println!(
        "{what} ({} records): p50 {p50:.3} ms, p99 {:.3} ms, max {:.3} ms   {budget}",
        lat.len(),
        percentile(lat, 0.99),
        percentile(lat, 1.0)
    );
    p50
}

/// 3: latency, with this binary replaying records as the daemon's mbsync.
async fn latency() {
    let tb = Testbed::new(SPEC);
    let bus = PrivateBus::start(None);
    let conn = connect(bus.address()).await;

    // The floor: another process's bare signals through the same dbus-daemon.
    let floor_log = tb.dir.path().join("floor.log");
    let mut floor_stream = receiver(&conn, "org.himalaya.Bench").await;
    let mut sender = std::process::Command::new(std::env::current_exe().unwrap())
        .env(FLOOR_ENV, &floor_log)
        .env("DBUS_SESSION_BUS_ADDRESS", bus.address())
        .spawn()
        .unwrap();
    let mut floor_seen = HashMap::new();
    for _ in 0..ISOLATED {
        let msg = floor_stream.next().await.unwrap().unwrap();
        let t = now_us();
        let (_, d): (String, Dict) = msg.body().deserialize().unwrap();
        floor_seen.insert(get::<u32>(&d, "messages_done").unwrap(), t);
    }
    assert!(sender.wait().unwrap().success());
    drop(floor_stream);
    let floor: Vec<f64> =
        read_log(&floor_log).iter().map(|(i, t)| floor_seen[i].saturating_sub(*t) as f64 / 1000.0).collect();
    let floor_p50 = summary(
        "latency floor: a bare zbus signal from another process through the bus",
        &floor,
        "(baseline)",
    );

    // The service: records replayed as mbsync's, isolated, then in a burst.
    let exe = std::env::current_exe().unwrap();
    write_service_config(&tb, &format!("mbsync = {:?}\n", exe.display().to_string()));
    let svc = service(&conn).await;
    for pattern in ["isolated", "burst"] {
        let log = tb.dir.path().join(format!("replay-{pattern}.log"));
        let mut env = tb.env();
        env.push((REPLAY_ENV.to_owned(), log.display().to_string()));
        env.push((REPLAY_PATTERN_ENV.to_owned(), pattern.to_owned()));
        let daemon =
            Daemon::start(bus.address(), &env, &tb.dir.path().join(format!("daemon-{pattern}.log"))).await;
        let mut stream = receiver(&conn, "org.himalaya.Sync").await;
        svc.sync("alice").await.unwrap();
        // (messages_done shown, arrival µs) in arrival order, up to the final record.
        let mut seen = Vec::new();
        loop {
            let msg = stream.next().await.unwrap().unwrap();
            let t = now_us();
            let (_, d): (String, Dict) = msg.body().deserialize().unwrap();
            if let Some(done) = get::<u32>(&d, "messages_done") {
                seen.push((done, t));
            }
            if support::daemon::is_final(&d) {
                break;
            }
        }
        drop(daemon);
        let sent = read_log(&log);
        if pattern == "isolated" {
            let first: HashMap<u32, u64> = seen.iter().rev().map(|&(d, t)| (d, t)).collect();
            let lat: Vec<f64> = sent
                .iter()
                .filter_map(|(i, t)| first.get(i).map(|r| r.saturating_sub(*t) as f64 / 1000.0))
                .collect();
            assert_eq!(lat.len(), sent.len(), "every isolated record must reach the client");
            let p50 = summary(
                "latency mbsync record -> client's ProgressChanged, isolated",
                &lat,
                "budget p50 <= 0.3 ms, p99 <= 1 ms",
            );
            println!("  service's own share at p50 (above the floor): {:.3} ms", p50 - floor_p50);
        } else {
            // For each record: how long until a client saw a state at least that new.
            let waits: Vec<f64> = sent
                .iter()
                .map(|(i, t)| {
                    let (_, r) = seen.iter().find(|(d, _)| d >= i).expect("the final record shows all");
                    r.saturating_sub(*t) as f64 / 1000.0
                })
                .collect();
            let span = (seen.last().unwrap().1 - seen.first().unwrap().1) as f64 / 1e6;
            println!(
                "burst of {} records {:?} apart: {} signals ({:.1}/s); a record waited for a client to see it: p50 {:.1} ms, max {:.1} ms   budget max <= 105 ms",
                sent.len(),
                BURST_GAP,
                seen.len(),
                seen.len() as f64 / span,
                percentile(&waits, 0.5),
                percentile(&waits, 1.0)
            );
        }
    }
}
