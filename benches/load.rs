//! The service under load, each figure beside a baseline from the same run (`cargo bench --bench
//! load`):
//! 1. fan-out: 100 clients watching one sync against 1 client: signals/s per client (≤ 10),
//!    daemon CPU / mbsync CPU (≤ 0.01), and dbus-daemon's CPU, which does the fanning out;
//! 2. scale: 20 accounts syncing in turn, then 5 at once: the daemon's RSS against its idle RSS,
//!    and its CPU per account against mbsync's;
//! 3. cold start by D-Bus activation to the name owned: the service against a minimal zbus
//!    service activated the same way (this binary in `HIMALAYA_SYNC_BENCH_MINIMAL` mode).
//!
//! Real parts: private dbus-daemon, private Dovecot, real mbsync 1.4.4, the release daemon.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    fmt::Write as _,
    num::NonZeroUsize,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use himalaya_sync::bus::service::ServiceProxy;
use support::{
    Testbed,
    bus::PrivateBus,
    daemon::{BIN, Daemon, connect, service, wait_until},
    procstat::{cpu_seconds, percentile, status_field},
};
use zbus::{MatchRule, MessageStream, fdo::DBusProxy, message::Type, names::BusName};

const MINIMAL_ENV: &str = "HIMALAYA_SYNC_BENCH_MINIMAL";
const MINIMAL_NAME: &str = "org.himalaya.SyncBenchMinimal";
const CLIENTS: usize = 100;
const FANOUT_ROUNDS: usize = 3;
const SCALE_ACCOUNTS: usize = 20;
const AT_ONCE: usize = 5;
const COLD_STARTS: usize = 15;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The private bus's dbus-daemon: the process whose command line names its config.
fn bus_pid(bus: &PrivateBus) -> u32 {
    let config = bus.dir().join("bus.conf").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&config))
        })
        .expect("the private dbus-daemon")
}

fn reset_local(tb: &Testbed, user: &str) {
    let dir = tb.maildir(user);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
}

/// Sync `accounts` at once and wait until each finished well.
async fn sync_all(svc: &ServiceProxy<'static>, accounts: &[String]) {
    let mut finished = svc.receive_sync_finished().await.unwrap();
    for a in accounts {
        svc.sync(a).await.unwrap();
    }
    let mut left = accounts.len();
    while left > 0 {
        let s = finished.next().await.unwrap();
        let args = s.args().unwrap();
        assert!(args.ok, "{}: {}", args.account, args.message);
        if accounts.iter().any(|a| a == args.account) {
            left -= 1;
        }
    }
}

fn minimal_main() {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let address = std::env::var("DBUS_STARTER_ADDRESS")
            .or_else(|_| std::env::var("DBUS_SESSION_BUS_ADDRESS"))
            .unwrap();
        let conn =
            zbus::connection::Builder::address(address.as_str()).name(MINIMAL_NAME).build().await.unwrap();
        conn.closed().await;
    });
}

fn main() {
    if std::env::var_os(MINIMAL_ENV).is_some() {
        return minimal_main();
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        println!("himalaya-sync under load (release daemon, real Dovecot/mbsync 1.4.4/dbus-daemon)");
        fan_out().await;
        scale().await;
        cold_start().await;
    });
}

/// When each `ProgressChanged` reached one client.
type Arrivals = Arc<std::sync::Mutex<Vec<Instant>>>;

/// A client that notes when each `ProgressChanged` reaches it, on a connection of its own.
async fn watcher(address: &str) -> (zbus::Connection, Arrivals, tokio::task::JoinHandle<()>) {
    let c = connect(address).await;
    let rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .interface("org.himalaya.Sync")
        .member("ProgressChanged")
        .build();
    let mut stream = MessageStream::for_match_rule(rule.unwrap(), &c, NonZeroUsize::new(1024)).await.unwrap();
    let arrivals = Arrivals::default();
    let noted = Arc::clone(&arrivals);
    let task = tokio::spawn(async move {
        while stream.next().await.is_some() {
            noted.lock().unwrap().push(Instant::now());
        }
    });
    (c, arrivals, task)
}

/// The most signals that arrived within any one second.
fn busiest_second(arrivals: &[Instant]) -> usize {
    (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|t| t.duration_since(arrivals[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// 1: one sync watched by 1 client, then by 100.
async fn fan_out() {
    let tb = Testbed::new(&[("alice", "INBOX", 2000), ("alice", "Archive", 500), ("alice", "Sent", 50)]);
    let bus = PrivateBus::start(None);
    let daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon.log")).await;
    let busd = bus_pid(&bus);
    let conn = connect(bus.address()).await;
    let svc = service(&conn).await;
    // Warm-up sync, not counted.
    reset_local(&tb, "alice");
    sync_all(&svc, &["alice".to_owned()]).await;
    for clients in [1, CLIENTS] {
        let mut watchers = Vec::new();
        for _ in 0..clients {
            watchers.push(watcher(bus.address()).await);
        }
        let (mut own, mut kids, mut busd_cpu, mut rates, mut busiest) = (0.0, 0.0, 0.0, Vec::new(), 0);
        for round in 1..=FANOUT_ROUNDS {
            for (_, arrivals, _) in &watchers {
                arrivals.lock().unwrap().clear();
            }
            reset_local(&tb, "alice");
            let (o0, k0) = cpu_seconds(daemon.pid());
            let (b0, _) = cpu_seconds(busd);
            let start = Instant::now();
            sync_all(&svc, &["alice".to_owned()]).await;
            let secs = start.elapsed().as_secs_f64();
            // The last signals reach the watchers.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (o1, k1) = cpu_seconds(daemon.pid());
            let (b1, _) = cpu_seconds(busd);
            own += o1 - o0;
            kids += k1 - k0;
            busd_cpu += b1 - b0;
            let counts: Vec<usize> = watchers.iter().map(|(_, a, _)| a.lock().unwrap().len()).collect();
            assert!(counts.iter().all(|&c| c > 0), "every watching client gets the sync's progress");
            rates.push(*counts.iter().max().unwrap() as f64 / secs);
            busiest = busiest
                .max(watchers.iter().map(|(_, a, _)| busiest_second(&a.lock().unwrap())).max().unwrap());
            println!(
                "  {clients} client(s), round {round}: sync {secs:.2} s, CPU daemon {:.2} s / mbsync {:.2} s, dbus-daemon {:.2} s",
                o1 - o0,
                k1 - k0,
                b1 - b0
            );
        }
        println!(
            "fan-out, {clients} watching client(s), {FANOUT_ROUNDS} rounds: signals per client per second of sync, highest {:.1}, most in any one second {busiest}   budget <= 10; CPU daemon/mbsync {own:.2} s / {kids:.2} s = {:.4}   budget <= 0.01; dbus-daemon CPU {busd_cpu:.2} s ({:.3} of mbsync's)",
            percentile(&rates, 1.0),
            own / kids,
            busd_cpu / kids
        );
        for (c, _, task) in watchers {
            task.abort();
            drop(c);
        }
    }
    drop(daemon);
}

/// 2: 20 accounts (one mailbox each) in turn, then 5 at once.
async fn scale() {
    let boxes: Vec<String> = (1..=SCALE_ACCOUNTS).map(|i| format!("Box{i:02}")).collect();
    let spec: Vec<(&str, &str, usize)> = boxes.iter().map(|b| ("alice", b.as_str(), 200)).collect();
    let tb = Testbed::new(&spec);
    // One channel per mailbox, each its own account with its own local store.
    let mut rc = std::fs::read_to_string(tb.mbsyncrc()).unwrap();
    let accounts: Vec<String> = (1..=SCALE_ACCOUNTS).map(|i| format!("acct{i:02}")).collect();
    for (account, mailbox) in accounts.iter().zip(&boxes) {
        let root = tb.dir.path().join("scale").join(account);
        std::fs::create_dir_all(&root).unwrap();
        let _ = write!(
            rc,
            "\nMaildirStore {account}-local\nPath {}/\nSubFolders Verbatim\n\n\
             Channel {account}\nFar :alice-remote:{mailbox}\nNear :{account}-local:{mailbox}\n\
             Create Both\nSyncState *\n",
            root.display()
        );
    }
    std::fs::write(tb.mbsyncrc(), rc).unwrap();
    let bus = PrivateBus::start(None);
    let daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon.log")).await;
    let conn = connect(bus.address()).await;
    let svc = service(&conn).await;
    assert!(svc.list_accounts().await.unwrap().contains(&accounts[SCALE_ACCOUNTS - 1]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = status_field(daemon.pid(), "VmRSS:");

    let (o0, k0) = cpu_seconds(daemon.pid());
    let mut peak = 0;
    for account in &accounts {
        sync_all(&svc, std::slice::from_ref(account)).await;
        peak = peak.max(status_field(daemon.pid(), "VmRSS:"));
    }
    let (o1, k1) = cpu_seconds(daemon.pid());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = status_field(daemon.pid(), "VmRSS:");
    println!(
        "scale, {SCALE_ACCOUNTS} accounts in turn (200 messages each): RSS idle {:.1} MiB, highest after a sync {:.1} MiB, after all {:.1} MiB (+{:.2} MiB, {:.0} KiB per account); CPU per account daemon {:.1} ms / mbsync {:.1} ms = {:.4}",
        mib(idle),
        mib(peak),
        mib(after),
        mib(after.saturating_sub(idle)),
        after.saturating_sub(idle) as f64 / SCALE_ACCOUNTS as f64,
        (o1 - o0) * 1000.0 / SCALE_ACCOUNTS as f64,
        (k1 - k0) * 1000.0 / SCALE_ACCOUNTS as f64,
        (o1 - o0) / (k1 - k0)
    );

    // The last five again, fresh, at once.
    let five = &accounts[SCALE_ACCOUNTS - AT_ONCE..];
    for account in five {
        let root = tb.dir.path().join("scale").join(account);
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::create_dir_all(&root).unwrap();
    }
    let (o0, k0) = cpu_seconds(daemon.pid());
    let start = Instant::now();
    sync_all(&svc, five).await;
    let secs = start.elapsed().as_secs_f64();
    let (o1, k1) = cpu_seconds(daemon.pid());
    println!(
        "scale, {AT_ONCE} accounts at once: {secs:.2} s, RSS now {:.1} MiB (highest ever, VmHWM, {:.1} MiB); CPU per account daemon {:.1} ms / mbsync {:.1} ms = {:.4}",
        mib(status_field(daemon.pid(), "VmRSS:")),
        mib(status_field(daemon.pid(), "VmHWM:")),
        (o1 - o0) * 1000.0 / AT_ONCE as f64,
        (k1 - k0) * 1000.0 / AT_ONCE as f64,
        (o1 - o0) / (k1 - k0)
    );
    drop(daemon);
}

/// 3: D-Bus activation to the name owned, the service against a minimal zbus service.
async fn cold_start() {
    let tb = Testbed::new(&[("bob", "INBOX", 20)]);
    let services = tb.dir.path().join("services");
    std::fs::create_dir_all(&services).unwrap();
    let template = include_str!("../systemd/org.himalaya.Sync.service.in");
    let bindir = Path::new(BIN).parent().unwrap().to_str().unwrap();
    std::fs::write(services.join("org.himalaya.Sync.service"), template.replace("@BINDIR@", bindir)).unwrap();
    // The baseline service: this binary, which owns a name and waits. The bus passes its own
    // environment on to what it activates, so the mode is set there.
    let me = std::env::current_exe().unwrap();
    std::fs::write(
        services.join(format!("{MINIMAL_NAME}.service")),
        format!("[D-BUS Service]\nName={MINIMAL_NAME}\nExec={}\n", me.display()),
    )
    .unwrap();
    let mut env = tb.env();
    env.push((MINIMAL_ENV.to_owned(), "1".to_owned()));
    let bus = PrivateBus::start_with_env(Some(&services), &env);
    let conn = connect(bus.address()).await;
    let dbus = DBusProxy::new(&conn).await.unwrap();
    let mut report = String::new();
    for name in ["org.himalaya.Sync", MINIMAL_NAME] {
        let mut times = Vec::new();
        for _ in 0..COLD_STARTS {
            let bus_name = BusName::try_from(name).unwrap();
            let start = Instant::now();
            dbus.start_service_by_name(bus_name.to_owned().try_into().unwrap(), 0).await.unwrap();
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            let pid = dbus.get_connection_unix_process_id(bus_name.clone()).await.unwrap();
            support::daemon::send_signal(pid, "TERM");
            wait_until("the activated service to let its name go", Duration::from_secs(10), || async {
                !dbus.name_has_owner(bus_name.clone()).await.unwrap_or(true)
            })
            .await;
        }
        let _ = writeln!(
            report,
            "cold start by D-Bus activation to {name} owned ({COLD_STARTS} starts): p50 {:.1} ms, max {:.1} ms{}",
            percentile(&times, 0.5),
            percentile(&times, 1.0),
            if name == MINIMAL_NAME { "   (baseline: a minimal zbus service)" } else { "" }
        );
    }
    print!("{report}");
}
