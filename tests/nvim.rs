//! The Neovim client (`lua/`) in real headless Neovim 0.11 against the real daemon on the test's
//! private bus, real mbsync and Dovecot: the plan's test scenarios (basic takeover, stuck sync,
//! progress sharing, rapid switching, cleanup), a service restart, bad options, the commands.
//! The Lua side of each test is `tests/lua/<name>.lua` (see tests/support/nvim.rs).

mod support;

use std::time::Duration;

use support::{
    MbsyncVersion, Testbed,
    bus::PrivateBus,
    daemon::{Daemon, World, get, spawn_exec, wait_until, with_timeout, write_service_config},
    nvim::Run,
    sampler::Sampler,
};

const SPEC: &[(&str, &str, usize)] = &[("alice", "INBOX", 600), ("bob", "INBOX", 20)];
const LUA_TIMEOUT: Duration = Duration::from_secs(90);

/// The pure parts: the model on watch events, status texts, the seed's shapes, bad options,
/// the prompt's keys. No bus needed, but the same harness.
#[tokio::test]
async fn model_options_and_prompt() {
    let tb = Testbed::new(&[("bob", "INBOX", 1)]);
    let bus = PrivateBus::start(None);
    Run::start("test_model.lua", &[], bus.address(), &tb).assert_passes(LUA_TIMEOUT);
}

async fn wait_external(w: &World, account: &str) {
    wait_until("the service to see the external sync", Duration::from_secs(10), || async {
        get::<String>(&w.svc.get_progress(account).await.unwrap(), "state").as_deref() == Some("external")
    })
    .await;
}

/// Scenario 1, basic takeover: a sync started outside (a bare mbsync, then an `exec` lock
/// holder); Neovim sees it at setup, the prompt shows, `Y` makes the service take over (a
/// handoff for the holder), and the status line counts up to the total. Never two mbsync.
async fn basic_takeover(version: MbsyncVersion) {
    with_timeout(async {
        let w = World::start_with(version, SPEC).await;
        for holder in ["bare", "exec"] {
            w.tb.proxy.set_rate(Some(60_000));
            let sampler = Sampler::start(&w.tb.mbsyncrc());
            let outside = match holder {
                "bare" => w.tb.spawn_mbsync(&["alice"]),
                _ => spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice"]),
            };
            wait_external(&w, "alice").await;
            let mut run = Run::start("test_takeover.lua", &[holder], w.bus.address(), &w.tb);
            // Full speed once the service runs it, so the test does not wait on the proxy.
            run.wait_step("answered", LUA_TIMEOUT);
            w.tb.proxy.set_rate(None);
            run.reply("go");
            run.assert_passes(LUA_TIMEOUT);
            let done = outside.wait(Duration::from_secs(10));
            match holder {
                // A bare mbsync is stopped by SIGTERM (the journal makes that safe).
                "bare" => assert_ne!(done.code(), Some(0), "the bare mbsync was stopped"),
                // A holder hands over gracefully and exits 0.
                _ => {
                    done.assert_code(0, "the exec holder after its handoff");
                }
            }
            sampler.finish().assert_no_overlap();
            w.tb.assert_in_sync("alice");
            // The next round starts from an empty local store again.
            std::fs::remove_dir_all(w.tb.maildir("alice")).unwrap();
            std::fs::create_dir_all(w.tb.maildir("alice")).unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn basic_takeover_isync14() {
    basic_takeover(MbsyncVersion::Isync14).await;
}

#[tokio::test]
async fn basic_takeover_isync15() {
    basic_takeover(MbsyncVersion::Isync15).await;
}

/// Scenario 2, stuck sync, with `[A]uto` and the toggle seen by a second instance (the Lua side
/// says what happens; a bare mbsync counts as stuck once it runs past `auto_takeover_timeout`).
#[tokio::test]
async fn stuck_sync_auto_takeover_and_the_toggle() {
    with_timeout(async {
        let tb = Testbed::new(SPEC);
        write_service_config(&tb, "auto_takeover_timeout = 2\n");
        let w = World::around(tb).await;
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        w.tb.proxy.set_rate(Some(20_000));
        let mut first = w.tb.spawn_mbsync(&["alice"]);
        wait_external(&w, "alice").await;
        let mut run = Run::start("test_stuck.lua", &[], w.bus.address(), &w.tb);
        run.wait_step("again", LUA_TIMEOUT);
        assert!(first.has_exited(), "the first bare mbsync was taken over");
        // A second one, with new mail to fetch; the service takes it over by itself once it is
        // overdue.
        w.tb.dovecot.add_messages("alice", "INBOX", 300);
        w.tb.proxy.set_rate(Some(20_000));
        let mut second = w.tb.spawn_mbsync(&["alice"]);
        wait_external(&w, "alice").await;
        run.reply("started");
        // Let the service's own run go at full speed once it has it.
        wait_until("the service to take the second over", Duration::from_secs(20), || async {
            get::<String>(&w.svc.get_progress("alice").await.unwrap(), "owner").as_deref() == Some("service")
        })
        .await;
        w.tb.proxy.set_rate(None);
        run.assert_passes(LUA_TIMEOUT);
        assert!(second.has_exited(), "the second bare mbsync was taken over");
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("alice");
        // AutoTakeover was set through the bus by the client: kept by the service.
        assert!(!w.svc.auto_takeover().await.unwrap(), "toggled off at the end");
    })
    .await;
}

/// Scenario 3, progress sharing: two instances, one sync, the same status lines.
#[tokio::test]
async fn two_instances_show_the_same_progress() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        w.tb.proxy.set_rate(Some(150_000));
        Run::start("test_sharing.lua", &[], w.bus.address(), &w.tb).assert_passes(LUA_TIMEOUT);
        assert!(w.svc.auto_takeover().await.unwrap(), "setup() wrote AutoTakeover");
        w.tb.assert_in_sync("alice");
    })
    .await;
}

/// Scenario 4 and 5, rapid switching and cleanup: instances start and quit quickly (some at
/// once, some before they saw anything) while a sync runs; none leaves a process behind, the
/// sync is unharmed and exact, and never two mbsync.
#[tokio::test]
async fn rapid_switching_leaves_nothing_and_the_sync_unharmed() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        w.tb.proxy.set_rate(Some(60_000));
        let mut finished = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("alice").await.unwrap();
        for round in 0..4 {
            let stays = [0, 50 * round + 10, 200];
            let runs: Vec<Run> = stays
                .iter()
                .map(|ms| Run::start("test_quick.lua", &[&ms.to_string()], w.bus.address(), &w.tb))
                .collect();
            for run in runs {
                run.assert_passes(LUA_TIMEOUT);
            }
        }
        assert_eq!(
            get::<String>(&w.svc.get_progress("alice").await.unwrap(), "state").as_deref(),
            Some("syncing"),
            "the sync runs on"
        );
        w.tb.proxy.set_rate(None);
        let end = tokio::time::timeout(Duration::from_secs(60), futures_util::StreamExt::next(&mut finished))
            .await
            .unwrap()
            .unwrap();
        assert!(end.args().unwrap().ok, "{}", end.args().unwrap().message);
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("alice");
    })
    .await;
}

/// The service restarts mid-sync: the client's status line recovers by itself.
#[tokio::test]
async fn the_status_line_recovers_when_the_service_restarts() {
    with_timeout(async {
        let World { svc: _svc, conn: _conn, mut daemon, bus, tb } = World::start(SPEC).await;
        tb.proxy.set_rate(Some(60_000));
        let mut run = Run::start("test_restart.lua", &[], bus.address(), &tb);
        run.wait_step("syncing", LUA_TIMEOUT);
        assert_eq!(daemon.stop("TERM", Duration::from_secs(15)).code(), Some(0));
        tb.proxy.set_rate(None);
        let _daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon2.log")).await;
        run.reply("restarted");
        run.assert_passes(LUA_TIMEOUT);
        tb.assert_in_sync("alice");
    })
    .await;
}

/// No binary, then no service: one message each, and recovery when the service appears.
#[tokio::test]
async fn no_binary_and_no_service_are_one_message_each() {
    with_timeout(async {
        let tb = Testbed::new(&[("bob", "INBOX", 20)]);
        let bus = PrivateBus::start(None);
        let mut run = Run::start("test_down.lua", &[], bus.address(), &tb);
        run.wait_step("waiting", LUA_TIMEOUT);
        let _daemon = Daemon::start(bus.address(), &tb.env(), &tb.dir.path().join("daemon.log")).await;
        run.reply("started");
        run.assert_passes(LUA_TIMEOUT);
        tb.assert_in_sync("bob");
    })
    .await;
}

/// The commands: completion, external info, handoff, `AlreadySyncing`, cancel, takeover of a bare
/// mbsync, and a failure's reason.
#[tokio::test]
async fn the_commands() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        let sampler = Sampler::start(&w.tb.mbsyncrc());
        w.tb.proxy.set_rate(Some(30_000));
        let holder = spawn_exec(Some(w.bus.address()), &w.tb.env(), &["alice"]);
        wait_external(&w, "alice").await;
        let mut run = Run::start("test_commands.lua", &[], w.bus.address(), &w.tb);
        run.wait_step("bare", LUA_TIMEOUT);
        holder.wait(Duration::from_secs(10)).assert_code(0, "the holder after its handoff");
        let _bare = w.tb.spawn_mbsync(&["alice"]);
        wait_external(&w, "alice").await;
        run.reply("started");
        run.wait_step("break", LUA_TIMEOUT);
        w.tb.proxy.set_rate(None);
        w.tb.set_password("bob", "wrong");
        run.reply("broken");
        run.assert_passes(LUA_TIMEOUT);
        sampler.finish().assert_no_overlap();
        w.tb.assert_in_sync("alice");
    })
    .await;
}

/// fidget.nvim (a recording stand-in on the runtimepath) gets the progress.
#[tokio::test]
async fn progress_goes_to_fidget() {
    with_timeout(async {
        let w = World::start(SPEC).await;
        w.tb.proxy.set_rate(Some(150_000));
        Run::start("test_fidget.lua", &[], w.bus.address(), &w.tb).assert_passes(LUA_TIMEOUT);
    })
    .await;
}
