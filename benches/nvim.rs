//! The Neovim client's budget (`cargo bench --bench nvim`), real parts only (release daemon,
//! Dovecot, mbsync, dbus-daemon, headless Neovim 0.11 with the plugin):
//! 1. latency from a `ProgressChanged` to the client's model, so to `statusline()` (≤ 50 ms p99):
//!    the bench's own bus client stamps each signal as it arrives (`CLOCK_REALTIME`), the plugin
//!    stamps it when its `User HimalayaSyncProgress` autocmd runs; the pair is matched by record;
//! 2. idle: the wakeups of an idle Neovim with the plugin loaded, of its watch job, and of a plain
//!    Neovim (the baseline) over the same 5 s.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use support::{
    Testbed,
    bus::PrivateBus,
    daemon::{Daemon, connect, get, service, wakeups},
    nvim::{Run, marked_pids},
    procstat::percentile,
};

const SPEC: &[(&str, &str, usize)] = &[("alice", "INBOX", 2000)];
const IDLE: Duration = Duration::from_secs(5);

fn now_us() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e6
}

/// Wakeups of `pid` (and, for the plugin, its watch job) over [`IDLE`], once it idles.
fn idle_wakeups(run: &mut Run) -> (u64, Option<u64>) {
    run.wait_step("idle", Duration::from_secs(200));
    std::thread::sleep(Duration::from_millis(500));
    let pid = run.pid();
    let watch = marked_pids(run.dir.path())
        .into_iter()
        .find(|(_, cmd)| cmd.contains(" watch --json"))
        .map(|(p, _)| p);
    let (n0, w0) = (wakeups(pid), watch.map(wakeups));
    std::thread::sleep(IDLE);
    (wakeups(pid) - n0, watch.map(|w| wakeups(w) - w0.unwrap_or(0)))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run());
}

async fn run() {
    println!(
        "himalaya-sync Neovim client budget (release daemon, real Dovecot/mbsync/dbus-daemon, Neovim {})",
        support::nvim::program().display()
    );
    let tb = Testbed::new(SPEC);
    // Slow enough that the sync lasts a while and the throttle sends its ~10 records a second.
    tb.proxy.set_rate(Some(150_000));
    let bus = PrivateBus::start(None);
    let _daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon.log")).await;
    let conn = connect(bus.address()).await;
    let svc = service(&conn).await;
    let mut progress = svc.receive_progress_changed().await.unwrap();

    let mut run = Run::start("bench_nvim.lua", &["plugin"], bus.address(), &tb);
    run.wait_step("ready", Duration::from_secs(30));
    svc.sync("alice").await.unwrap();
    run.reply("go");
    // (done, state) -> arrival times at the bench's client, in order.
    let mut arrived: HashMap<(u64, String), VecDeque<f64>> = HashMap::new();
    loop {
        let signal = progress.next().await.unwrap();
        let t = now_us();
        let args = signal.args().unwrap();
        if args.account != "alice" {
            continue;
        }
        let state = get::<String>(&args.progress, "state").unwrap_or_default();
        if let Some(done) = get::<u32>(&args.progress, "messages_done") {
            arrived.entry((u64::from(done), state.clone())).or_default().push_back(t);
        }
        if state == "idle" {
            break;
        }
    }
    let (plugin_idle, watch_idle) = idle_wakeups(&mut run);
    // Read before the run ends: its temp dir goes with it.
    let seen: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(run.dir.path().join("latency.json")).unwrap()).unwrap();
    let done = run.wait(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}\n{}", done.stdout, done.stderr);
    let mut latency = Vec::new();
    for s in &seen {
        let key = (s["done"].as_u64().unwrap(), s["state"].as_str().unwrap().to_owned());
        if let Some(t) = arrived.get_mut(&key).and_then(VecDeque::pop_front) {
            latency.push((s["t"].as_f64().unwrap() - t) / 1000.0);
        }
    }
    assert!(latency.len() > 10, "too few matched records: {} of {}", latency.len(), seen.len());
    println!(
        "ProgressChanged -> statusline() ({} of {} records matched): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms   budget p99 <= 50 ms",
        latency.len(),
        seen.len(),
        percentile(&latency, 0.5),
        percentile(&latency, 0.99),
        percentile(&latency, 1.0)
    );

    let mut base = Run::start("bench_nvim.lua", &["baseline"], bus.address(), &tb);
    let (baseline_idle, _) = idle_wakeups(&mut base);
    base.wait(Duration::from_secs(30));
    println!(
        "idle over {IDLE:?}: Neovim with the plugin {plugin_idle} wakeups, its watch job {}, plain Neovim (baseline) {baseline_idle}   budget: the plugin adds no more than the watch job",
        watch_idle.map_or_else(|| "not found".to_owned(), |w| w.to_string())
    );
}
