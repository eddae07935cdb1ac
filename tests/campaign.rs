//! A campaign of random takeovers, handoffs, cancels and syncs between the daemon and `exec`
//! holders, on real mbsync and Dovecot behind a throttled proxy, while a sampler reads /proc every
//! few ms. The invariant: never two mbsync on one channel, every call answers with success or a
//! typed error that fits the moment, and at the end the mail equals the server's.
//!
//! `CAMPAIGN_OPS` (default 200) and `CAMPAIGN_SECONDS` (default 120, the CI cap) size it;
//! `CAMPAIGN_SEED` repeats a run.

// D-Bus member and error names read better in prose without backticks.
#![allow(clippy::doc_markdown)]

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use support::{
    MbsyncVersion::{self, Isync14, Isync15},
    Spawned,
    daemon::{World, spawn_exec, wait_until},
    sampler::Sampler,
};

const SPEC: &[(&str, &str, usize)] =
    &[("alice", "INBOX", 1500), ("alice", "Archive", 300), ("bob", "INBOX", 300)];
const ACCOUNTS: [&str; 3] = ["alice", "bob", "everyone"];

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
async fn random_takeovers_handoffs_cancels_and_syncs_never_overlap_isync14() {
    campaign(Isync14).await;
}

#[tokio::test]
async fn random_takeovers_handoffs_cancels_and_syncs_never_overlap_isync15() {
    campaign(Isync15).await;
}

async fn campaign(version: MbsyncVersion) {
    // Its own bound: the campaign's cap plus time to wind down.
    let bound = Duration::from_secs(env_u64("CAMPAIGN_SECONDS", 120) + 120);
    let run = async {
        let ops_wanted = env_u64("CAMPAIGN_OPS", 200);
        let cap = Duration::from_secs(env_u64("CAMPAIGN_SECONDS", 120));
        let seed = env_u64("CAMPAIGN_SEED", 0x5eed_1234_abcd_0001);
        println!("campaign ({version:?}): {ops_wanted} ops, cap {cap:?}, seed {seed:#x}");
        let w = World::start_with(version, SPEC).await;
        w.tb.proxy.set_rate(Some(300_000));
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        let mut finished = w.svc.receive_sync_finished().await.unwrap();
        let mut dice = Dice(seed);
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut execs: Vec<Spawned> = Vec::new();
        let mut exec_codes: BTreeMap<i32, u64> = BTreeMap::new();
        let started = Instant::now();
        let mut ops = 0;
        while ops < ops_wanted && started.elapsed() < cap {
            let account = ACCOUNTS[dice.below(3) as usize];
            let (what, result) = match dice.below(6) {
                0 => ("Sync", w.svc.sync(account).await),
                1 => ("Cancel", w.svc.cancel(account).await),
                2 => ("TakeOver", w.svc.take_over(account).await.map(|_| ())),
                3 => ("RequestHandoff", w.svc.request_handoff(account, 1500).await.map(|_| ())),
                _ => {
                    let mut args = vec![account];
                    if dice.below(4) == 0 {
                        args.push("--no-handoff");
                    }
                    execs.push(spawn_exec(Some(w.bus.address()), &w.tb.env(), &args));
                    ("exec", Ok(()))
                }
            };
            let outcome = match result {
                Ok(()) => "ok".to_owned(),
                Err(err) => {
                    let name = zbus::DBusError::name(&err).to_string();
                    assert!(EXPECTED.contains(&name.as_str()), "{what}({account}) answered {err:?}");
                    name.rsplit('.').next().unwrap_or_default().to_owned()
                }
            };
            *counts.entry(format!("{what} {outcome}")).or_default() += 1;
            ops += 1;
            // Every run that ended so far ended well (or was stopped on purpose).
            while let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(1), finished.next()).await {
                let args = s.args().unwrap();
                let fine = args.ok
                    || args.message == "sync cancelled"
                    || args.message.starts_with("sync interrupted");
                assert!(fine, "a run of {} failed: {}", args.account, args.message);
            }
            reap(&mut execs, &mut exec_codes, false);
            tokio::time::sleep(Duration::from_millis(dice.below(250))).await;
        }
        let elapsed = started.elapsed();
        println!("campaign: {ops} ops in {elapsed:?}: {counts:#?}");
        assert!(ops >= ops_wanted, "only {ops} of {ops_wanted} ops within {cap:?}");

        // Wind down: stop the service's runs, let the holders finish, then one exact sync.
        w.tb.proxy.set_rate(None);
        for account in ACCOUNTS {
            let _ = w.svc.cancel(account).await;
        }
        reap(&mut execs, &mut exec_codes, true);
        println!("campaign: exec exit codes {exec_codes:?}");
        for code in exec_codes.keys() {
            assert!([0, 75, 143].contains(code), "an exec exited {code}: {exec_codes:?}");
        }
        wait_until("every account to be idle", Duration::from_secs(30), || async {
            let all = w.svc.get_all_progress().await.unwrap();
            all.values().all(support::daemon::is_final)
        })
        .await;
        let report = sampler.finish();
        println!("campaign: {} samples, max mbsync per channel {:?}", report.samples, report.max_per_channel);
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

/// Collect the exit codes of finished holders (all of them with `all`, waiting).
fn reap(execs: &mut Vec<Spawned>, codes: &mut BTreeMap<i32, u64>, all: bool) {
    let mut i = 0;
    while i < execs.len() {
        if all || execs[i].has_exited() {
            let done = execs.swap_remove(i).wait(Duration::from_secs(60));
            *codes.entry(done.code().unwrap_or(-1)).or_default() += 1;
        } else {
            i += 1;
        }
    }
}
