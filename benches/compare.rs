//! Two builds of the daemon side by side, for a change to the daemon's cost:
//! `BENCH_BASELINE=/path/to/old/himalaya-sync cargo bench --bench compare`.
//!
//! The daemon's CPU per sync moves ±20 % between runs on a shared VM, more than most changes
//! move it, so comparing two `budgets` runs says little. Here each round syncs the same fresh
//! 2,550-message maildir once under each build, in alternating order, each in a daemon started
//! for that sync alone, and the two are compared round by round. As in `budgets`, a sync's window
//! runs from the `Sync` call to the client's `SyncFinished`; the daemon's run time comes from the
//! scheduler (ns), mbsync's CPU from its 10 ms clock ticks. `BENCH_ISYNC=15` uses isync 1.5.1
//! (default 1.4.4), `BENCH_ROUNDS` sets the rounds (default 12, at least 1).
//!
//! Real parts: private dbus-daemon, private Dovecot, real mbsync, two daemon binaries.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use support::{
    MbsyncVersion::{Isync14, Isync15},
    Testbed,
    bus::PrivateBus,
    daemon::{BIN, Daemon, connect, service, wakeups},
    procstat::{cpu_seconds, percentile, run_time_ns},
};

const SPEC: &[(&str, &str, usize)] =
    &[("alice", "INBOX", 2000), ("alice", "Archive", 500), ("alice", "Sent", 50)];

/// One supervised sync under one build.
struct Sample {
    /// The daemon's run time, ms.
    daemon_ms: f64,
    /// mbsync's CPU, s (10 ms ticks).
    mbsync_s: f64,
    wall_s: f64,
    /// The daemon's context switches, voluntary (wakeups) and not.
    switches: u64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(baseline) = std::env::var_os("BENCH_BASELINE").map(PathBuf::from) else {
        println!("compare: set BENCH_BASELINE to another build of himalaya-sync to compare with");
        return;
    };
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(&baseline));
}

async fn run(baseline: &Path) {
    let version = if std::env::var("BENCH_ISYNC").is_ok_and(|v| v == "15") { Isync15 } else { Isync14 };
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(12).max(1);
    let tb = Testbed::with_mbsync(version, SPEC);
    let bus = PrivateBus::start(None);
    let builds = [("baseline", baseline.to_owned()), ("this build", PathBuf::from(BIN))];
    println!("{version:?}: {} against {}", BIN, baseline.display());
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    // Round 0 warms Dovecot's indexes and the page cache and is not counted.
    for round in 0..=rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for b in order {
            let sample = sync_once(&tb, &bus, &builds[b].1).await;
            if round > 0 {
                samples[b].push(sample);
            }
        }
    }
    for (b, (name, _)) in builds.iter().enumerate() {
        let s = &samples[b];
        let ms: Vec<f64> = s.iter().map(|x| x.daemon_ms).collect();
        let ratio: f64 = ms.iter().sum::<f64>() / 1e3 / s.iter().map(|x| x.mbsync_s).sum::<f64>();
        let switches: Vec<f64> = s.iter().map(|x| x.switches as f64).collect();
        let wall: Vec<f64> = s.iter().map(|x| x.wall_s).collect();
        println!(
            "  {name:>10}: daemon {:.1} ms per sync (median; min {:.1}, max {:.1}), {ratio:.4} of mbsync's CPU; {:.0} context switches; wall {:.3} s",
            percentile(&ms, 0.5),
            percentile(&ms, 0.0),
            percentile(&ms, 1.0),
            percentile(&switches, 0.5),
            percentile(&wall, 0.5),
        );
    }
    let paired: Vec<f64> =
        samples[1].iter().zip(&samples[0]).map(|(new, old)| new.daemon_ms / old.daemon_ms).collect();
    let below = paired.iter().filter(|r| **r < 1.0).count();
    let wall: Vec<f64> =
        samples[1].iter().zip(&samples[0]).map(|(new, old)| new.wall_s / old.wall_s).collect();
    println!(
        "  this build / baseline, wall time per round: min {:.3} / median {:.3} / max {:.3}",
        percentile(&wall, 0.0),
        percentile(&wall, 0.5),
        percentile(&wall, 1.0)
    );
    println!(
        "  this build / baseline, daemon run time per round: min {:.3} / median {:.3} / max {:.3}; lower in {below} of {} rounds",
        percentile(&paired, 0.0),
        percentile(&paired, 0.5),
        percentile(&paired, 1.0),
        paired.len()
    );
    tb.assert_in_sync("alice");
}

async fn sync_once(tb: &Testbed, bus: &PrivateBus, program: &Path) -> Sample {
    let dir = tb.maildir("alice");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let log = tb.dir.path().join("daemon.log");
    let mut daemon = Daemon::start_program(program, bus.address(), &tb.env(), &log).await;
    let conn = connect(bus.address()).await;
    let svc = service(&conn).await;
    let mut finished = svc.receive_sync_finished().await.unwrap();
    let (_, kids0) = cpu_seconds(daemon.pid());
    let run0 = run_time_ns(daemon.pid());
    let woke0 = wakeups(daemon.pid());
    let start = std::time::Instant::now();
    svc.sync("alice").await.unwrap();
    let s = finished.next().await.unwrap();
    let wall_s = start.elapsed().as_secs_f64();
    assert!(s.args().unwrap().ok, "{}", s.args().unwrap().message);
    let sample = Sample {
        daemon_ms: (run_time_ns(daemon.pid()) - run0) as f64 / 1e6,
        mbsync_s: cpu_seconds(daemon.pid()).1 - kids0,
        wall_s,
        switches: wakeups(daemon.pid()) - woke0,
    };
    daemon.stop("TERM", std::time::Duration::from_secs(10));
    sample
}
