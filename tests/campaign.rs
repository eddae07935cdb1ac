//! A chaos campaign: 8 clients at once, each on its own bus connection, issue random Sync, Cancel,
//! TakeOver and RequestHandoff calls, start `exec` holders and bare mbsync processes, and kill
//! them (`kill -9` sometimes, SIGTERM sometimes), on real mbsync and Dovecot behind a throttled
//! proxy, while a sampler reads /proc every few ms. The invariants: never two mbsync on one
//! channel; every call answers with success or a typed error that fits the moment; every
//! service run ends well or was stopped on purpose; an `exec` killed with `kill -9` leaves no
//! mbsync behind; at the end the mail equals the server's, by Message-ID.
//!
//! Bare mbsync: nothing can stop a person from starting mbsync by hand next to a running sync
//! (mbsync's own mailbox locks then make the second one fail), and the sampler would count that
//! moment as two on one channel; that race is no property of the service, so the campaign does
//! not stage it. What the service promises is that *it and the lock holders* never start a second
//! one: each takes the channel locks first and then looks in /proc for an mbsync already syncing
//! them. The campaign starts its bare mbsync by the same rule: it takes the channel lock names
//! (without allowing replacement, as a well-behaved starter), gives up if it cannot or if /proc
//! shows an mbsync on those channels, starts mbsync, waits until the kernel shows it as mbsync
//! (so every later check sees it), and only then lets the names go. From then on it is a true
//! bare mbsync, holding no name: the service shows it as `external` and TakeOver stops it and
//! restarts its scope. So the sampler's rule stays exact (zero moments with two), and the
//! campaign exercises TakeOver of bare mbsync under chaos without testing a race nobody can
//! prevent.
//!
//! `CAMPAIGN_OPS` (default 300; the long run is `CAMPAIGN_OPS=1000`), `CAMPAIGN_SECONDS` (the cap
//! on the chaos: default 120, or 0.3 s per op for longer runs) and `CAMPAIGN_SEED` (repeats a
//! run's dice; the interleaving of 8 clients still varies) size it. Each client pauses up to
//! 1.2 s between its ops, so the default chaos lasts some 25 s and outlives a few syncs (both
//! isync versions take about a minute on a 2-core VM).

// D-Bus member and error names read better in prose without backticks.
#![allow(clippy::doc_markdown)]

mod support;

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use himalaya_sync::{
    foreign,
    mbsyncrc::{self, MbsyncConfig},
    names,
};
use nix::{sys::signal::Signal, unistd::Pid};
use support::{
    MbsyncVersion::{self, Isync14, Isync15},
    Spawned,
    daemon::{Dict, World, connect, get, mbsync_pids_for, service, spawn_exec, wait_until},
    sampler::Sampler,
};
use zbus::{
    Connection,
    fdo::{RequestNameFlags, RequestNameReply},
};

const SPEC: &[(&str, &str, usize)] =
    &[("alice", "INBOX", 1500), ("alice", "Archive", 300), ("bob", "INBOX", 300)];
const ACCOUNTS: [&str; 3] = ["alice", "bob", "everyone"];
/// The clients, each a task with its own connection (`tokio::join!` below lists them).
const CLIENTS: u64 = 8;

/// xorshift64*: a small deterministic generator (no crate needed for a test's dice).
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The typed errors a call may meet in a race; anything else fails the campaign.
const EXPECTED: [&str; 5] = [
    "org.himalaya.Sync.Error.AlreadySyncing",
    "org.himalaya.Sync.Error.LockedElsewhere",
    "org.himalaya.Sync.Error.NotRunning",
    "org.himalaya.Sync.Error.HandoffRefused",
    "org.himalaya.Sync.Error.HandoffTimeout",
];

#[tokio::test]
async fn eight_clients_of_chaos_never_run_two_mbsync_on_a_channel_isync14() {
    campaign(Isync14).await;
}

#[tokio::test]
async fn eight_clients_of_chaos_never_run_two_mbsync_on_a_channel_isync15() {
    campaign(Isync15).await;
}

/// A process the campaign started: an `exec` holder or a bare mbsync.
struct Proc {
    kind: &'static str,
    spawned: Spawned,
    /// The signal the campaign sent it, if any.
    killed: Option<Signal>,
}

/// What the clients share.
struct Chaos<'w> {
    w: &'w World,
    config: MbsyncConfig,
    ops_wanted: u64,
    cap: Duration,
    started: Instant,
    /// Ops begun (a client takes a number before each).
    ops: AtomicU64,
    counts: Mutex<BTreeMap<String, u64>>,
    procs: Mutex<Vec<Proc>>,
    /// How each process ended: `exec 0`, `bare signal SIGTERM`, ... (`killed` when we did it).
    ended: Mutex<BTreeMap<String, u64>>,
    /// mbsync processes that outlived the `exec` killed with `kill -9` that started them.
    orphans: Mutex<Vec<String>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Chaos<'_> {
    fn count(&self, what: &str) {
        *locked(&self.counts).entry(what.to_owned()).or_default() += 1;
    }

    fn more(&self) -> bool {
        self.started.elapsed() < self.cap && self.ops.fetch_add(1, Ordering::SeqCst) < self.ops_wanted
    }

    /// One client: its own connection, its own dice.
    async fn client(&self, i: u64, seed: u64) {
        let conn = connect(self.w.bus.address()).await;
        let svc = service(&conn).await;
        let mut dice = Dice(seed ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        while self.more() {
            let account = ACCOUNTS[dice.below(3) as usize];
            // What it did: a service call (with what it stopped, for TakeOver and RequestHandoff),
            // an exec, a bare mbsync, a kill. The dice weigh them out of 12.
            let stopped =
                |d: &Dict| format!("ok, stopped a {}", get::<String>(d, "stopped_owner").unwrap_or_default());
            let (what, result) = match dice.below(12) {
                0 => ("Sync", svc.sync(account).await.map(|()| "ok".to_owned())),
                1 | 2 => ("Cancel", svc.cancel(account).await.map(|()| "ok".to_owned())),
                3 | 4 => ("TakeOver", svc.take_over(account).await.map(|d| stopped(&d))),
                5 => {
                    let timeout = 200 + dice.below(1800) as u32;
                    ("RequestHandoff", svc.request_handoff(account, timeout).await.map(|d| stopped(&d)))
                }
                6 | 7 => {
                    let no_handoff = dice.below(4) == 0;
                    self.spawn_exec(account, no_handoff);
                    (if no_handoff { "exec --no-handoff" } else { "exec" }, Ok("started".to_owned()))
                }
                8 | 9 => ("bare mbsync", Ok(self.start_bare(&conn, account).await.to_owned())),
                n => {
                    let signal = if n == 11 { Signal::SIGTERM } else { Signal::SIGKILL };
                    (signal.as_str(), Ok(self.kill_one(&mut dice, signal).await))
                }
            };
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(err) => {
                    let name = zbus::DBusError::name(&err).to_string();
                    assert!(EXPECTED.contains(&name.as_str()), "{what}({account}) answered {err:?}");
                    name.rsplit('.').next().unwrap_or_default().to_owned()
                }
            };
            self.count(&format!("{what} {outcome}"));
            self.reap().await;
            tokio::time::sleep(Duration::from_millis(dice.below(1200))).await;
        }
    }

    fn spawn_exec(&self, account: &str, no_handoff: bool) {
        let mut args = vec![account];
        if no_handoff {
            args.push("--no-handoff");
        }
        let spawned = spawn_exec(Some(self.w.bus.address()), &self.w.tb.env(), &args);
        locked(&self.procs).push(Proc { kind: "exec", spawned, killed: None });
    }

    /// Start a bare mbsync the way a careful starter does (see the file's doc): under the
    /// channel lock names, after a look in /proc, names released once it shows as mbsync.
    async fn start_bare(&self, conn: &Connection, account: &str) -> &'static str {
        let channels = self.config.channels_of(account).expect("a test bed account");
        let locks: Vec<String> = channels.iter().map(|c| names::lock_name(c).unwrap()).collect();
        let mut held = Vec::new();
        let release = |held: Vec<String>| async move {
            for name in held {
                let _ = conn.release_name(name.as_str()).await;
            }
        };
        for name in &locks {
            let reply = conn.request_name_with_flags(name.as_str(), RequestNameFlags::DO_NOT_QUEUE).await;
            if !matches!(reply, Ok(RequestNameReply::PrimaryOwner)) {
                release(held).await;
                return "not started: locked";
            }
            held.push(name.clone());
        }
        let rc = self.w.tb.mbsyncrc();
        let search = foreign::Search {
            channels: &channels,
            config: &self.config,
            config_path: &rc,
            default_config_path: &rc,
            uid: support::current_ids().0,
            own_pid: 0,
        };
        if foreign::find(&search).is_some() {
            release(held).await;
            return "not started: one runs";
        }
        let mut spawned = self.w.tb.spawn_mbsync(&[account]);
        let pid = spawned.pid();
        let start = Instant::now();
        while !mbsync_pids_for(&rc).contains(&pid) && !spawned.has_exited() {
            assert!(start.elapsed() < Duration::from_secs(10), "mbsync {pid} did not show in /proc");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        release(held).await;
        locked(&self.procs).push(Proc { kind: "bare", spawned, killed: None });
        "started"
    }

    /// Send `signal` to one running process the campaign started. After `kill -9` of an `exec`,
    /// its mbsync must be gone within a few seconds.
    async fn kill_one(&self, dice: &mut Dice, signal: Signal) -> String {
        let (kind, pid) = {
            let mut procs = locked(&self.procs);
            let mut running: Vec<(&'static str, u32)> = procs
                .iter_mut()
                .filter_map(|p| {
                    (p.killed.is_none() && !p.spawned.has_exited()).then(|| (p.kind, p.spawned.pid()))
                })
                .collect();
            if running.is_empty() {
                return "nothing to kill".to_owned();
            }
            running.swap_remove(dice.below(running.len() as u64) as usize)
        };
        let children = if kind == "exec" { mbsync_children(pid) } else { Vec::new() };
        let _ = nix::sys::signal::kill(Pid::from_raw(pid.cast_signed()), signal);
        if let Some(p) = locked(&self.procs).iter_mut().find(|p| p.spawned.pid() == pid) {
            p.killed = Some(signal);
        }
        if signal == Signal::SIGKILL && !children.is_empty() {
            let start = Instant::now();
            while children.iter().any(|&c| alive(c)) && start.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left: Vec<u32> = children.iter().copied().filter(|&c| alive(c)).collect();
            if !left.is_empty() {
                locked(&self.orphans)
                    .push(format!("exec {pid} killed with SIGKILL: its mbsync {left:?} still ran 5 s later"));
                for c in left {
                    let _ = nix::sys::signal::kill(Pid::from_raw(c.cast_signed()), Signal::SIGKILL);
                }
            }
        }
        format!("{kind}{}", if children.is_empty() { "" } else { " with mbsync" })
    }

    /// Collect the processes that ended (all of them with `all`, waiting for them).
    async fn reap(&self) {
        let done: Vec<Proc> = {
            let mut procs = locked(&self.procs);
            let mut done = Vec::new();
            let mut i = 0;
            while i < procs.len() {
                if procs[i].spawned.has_exited() {
                    done.push(procs.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            done
        };
        if !done.is_empty() {
            self.record(done).await;
        }
    }

    /// Wait (off the runtime's thread) for `procs` and count how each ended.
    async fn record(&self, procs: Vec<Proc>) {
        let ended = tokio::task::spawn_blocking(move || {
            procs
                .into_iter()
                .map(|p| (p.kind, p.killed, p.spawned.wait(Duration::from_secs(120))))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let mut counts = locked(&self.ended);
        for (kind, killed, done) in ended {
            let how = match (done.code(), std::os::unix::process::ExitStatusExt::signal(&done.status)) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "gone".to_owned(),
            };
            let by = killed.map_or(String::new(), |s| format!(" (we sent {s})"));
            // Unless we killed it: an exec ends 0 (finished or handed over), 75 (busy) or 143
            // (taken over); a bare mbsync ends 0 or by the SIGTERM of a takeover.
            let fine = killed.is_some()
                || match kind {
                    "exec" => ["exit 0", "exit 75", "exit 143"].contains(&how.as_str()),
                    _ => ["exit 0", "signal 15"].contains(&how.as_str()),
                };
            assert!(fine, "{kind} ended with {how}:\n{}", done.stderr);
            *counts.entry(format!("{kind} {how}{by}")).or_default() += 1;
        }
    }
}

/// The live mbsync children of `pid`.
fn mbsync_children(pid: u32) -> Vec<u32> {
    support::daemon::mbsync_pids().into_iter().filter(|&c| ppid(c) == pid).collect()
}

fn ppid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Whether `pid` runs (a zombie has ended; only its reaping is missing).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

async fn campaign(version: MbsyncVersion) {
    // Its own bound: the campaign's cap plus time to wind down.
    let ops_wanted = env_u64("CAMPAIGN_OPS", 300);
    let cap = Duration::from_secs(env_u64("CAMPAIGN_SECONDS", (ops_wanted * 3 / 10).max(120)));
    // Its own bound: the campaign's cap plus time to wind down.
    let bound = cap + Duration::from_secs(180);
    let run = async {
        let seed = env_u64("CAMPAIGN_SEED", 0x5eed_1234_abcd_0001);
        println!(
            "campaign ({version:?}): {ops_wanted} ops by {CLIENTS} clients, cap {cap:?}, seed {seed:#x}"
        );
        let w = World::start_with(version, SPEC).await;
        // A full sync takes ~6 s at this rate: long enough to meet every other kind of op.
        w.tb.proxy.set_rate(Some(200_000));
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        let config = mbsyncrc::parse(&std::fs::read_to_string(w.tb.mbsyncrc()).unwrap()).unwrap();
        let chaos = Chaos {
            w: &w,
            config,
            ops_wanted,
            cap,
            started: Instant::now(),
            ops: AtomicU64::new(0),
            counts: Mutex::default(),
            procs: Mutex::default(),
            ended: Mutex::default(),
            orphans: Mutex::default(),
        };
        // Every run that ends while the clients play ends well, or was stopped on purpose.
        let mut finished = w.svc.receive_sync_finished().await.unwrap();
        let mut runs = 0u64;
        let watch = async {
            while let Some(s) = finished.next().await {
                let args = s.args().unwrap();
                let fine = args.ok
                    || args.message == "sync cancelled"
                    || args.message.starts_with("sync interrupted");
                assert!(fine, "a run of {} failed: {}\n{}", args.account, args.message, w.daemon.log());
                runs += 1;
            }
        };
        let c = |i| chaos.client(i, seed);
        let clients = Box::pin(async { tokio::join!(c(0), c(1), c(2), c(3), c(4), c(5), c(6), c(7)) });
        tokio::select! {
            _ = clients => {}
            () = watch => panic!("the SyncFinished stream ended"),
        }
        let elapsed = chaos.started.elapsed();
        let ops = chaos.ops.load(Ordering::SeqCst).min(ops_wanted);
        let counts = std::mem::take(&mut *locked(&chaos.counts));
        let total: u64 = counts.values().sum();
        println!("campaign: {total} ops in {elapsed:?}, {runs} service runs ended: {counts:#?}");
        assert!(total >= ops_wanted, "only {total} of {ops_wanted} ops within {cap:?} ({ops} begun)");

        // Wind down: stop the service's runs, let the holders and bare mbsync finish, then one
        // exact sync.
        w.tb.proxy.set_rate(None);
        for account in ACCOUNTS {
            let _ = w.svc.cancel(account).await;
        }
        let rest = std::mem::take(&mut *locked(&chaos.procs));
        chaos.record(rest).await;
        let ended = std::mem::take(&mut *locked(&chaos.ended));
        println!("campaign: processes ended {ended:#?}");
        wait_until("every account to be idle", Duration::from_secs(60), || async {
            let all = w.svc.get_all_progress().await.unwrap();
            all.values().all(support::daemon::is_final)
        })
        .await;
        let report = sampler.finish();
        println!(
            "campaign: {} samples, max mbsync per channel {:?}, ran {:?}",
            report.samples,
            report.max_per_channel,
            chaos.started.elapsed()
        );
        let orphans = std::mem::take(&mut *locked(&chaos.orphans));
        assert!(orphans.is_empty(), "mbsync outlived its exec:\n{}", orphans.join("\n"));
        report.assert_no_overlap();
        let mut end = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("everyone").await.unwrap();
        loop {
            let s = end.next().await.unwrap();
            let args = s.args().unwrap();
            if args.account == "everyone" {
                assert!(args.ok, "the final sync: {}", args.message);
                break;
            }
        }
        w.tb.assert_in_sync("alice");
        w.tb.assert_in_sync("bob");
    };
    tokio::time::timeout(bound, run).await.expect("the campaign did not end in time");
}
