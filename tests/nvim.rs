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
            let mut outside = match holder {
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
            };
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
