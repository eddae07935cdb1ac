//! Scenario 4: bad input gets a typed error, starts nothing and loses nothing. The mbsync
//! failures run with isync 1.4 and 1.5 (`..._isync14`, `..._isync15`).

mod support;

use futures_util::StreamExt;
use support::{
    MbsyncVersion::{self, Isync14, Isync15},
    PrivateBus, Testbed,
    daemon::{
        World, assert_progress_is_honest, error_name, get, mbsync_pids_for, read_until_final, with_timeout,
        write_service_config,
    },
};

const SPEC: &[(&str, &str, usize)] = &[("alice", "INBOX", 300), ("bob", "INBOX", 20)];

const HOSTILE: &[&str] = &[
    "",
    "-a",
    "--help",
    ";rm -rf ~",
    "../x",
    "alice\n",
    "a\nb",
    " alice",
    "alice ",
    "日本語",
    "alice:INBOX",
    "nosuch",
    "$(touch /tmp/pwned)",
];

#[tokio::test]
async fn hostile_account_names_get_typed_errors_on_every_method() {
    with_timeout(async {
        let World { svc, conn: _conn, daemon, bus: _bus, tb } = World::start(SPEC).await;
        let long = "x".repeat(300);
        let names: Vec<&str> = HOSTILE.iter().copied().chain([long.as_str()]).collect();
        let allowed = ["org.himalaya.Sync.Error.UnknownAccount", "org.himalaya.Sync.Error.InvalidAccount"];
        for name in &names {
            for (method, result) in [
                ("Sync", svc.sync(name).await.map(|()| String::new())),
                ("Cancel", svc.cancel(name).await.map(|()| String::new())),
                ("GetProgress", svc.get_progress(name).await.map(|d| format!("{d:?}"))),
                ("TakeOver", svc.take_over(name).await.map(|d| format!("{d:?}"))),
                ("RequestHandoff", svc.request_handoff(name, 100).await.map(|d| format!("{d:?}"))),
            ] {
                let err = result.expect_err(&format!("{method}({name:?}) must fail"));
                let err_name = zbus::DBusError::name(&err).to_string();
                assert!(allowed.contains(&err_name.as_str()), "{method}({name:?}) gave {err_name}");
                let text = zbus::DBusError::description(&err).unwrap_or_default();
                assert!(text.len() > 20, "{method}({name:?}): message too thin: {text:?}");
            }
        }
        assert_eq!(error_name(svc.sync("-a").await), "org.himalaya.Sync.Error.InvalidAccount");
        // Nothing runs anywhere: nothing to take over or hand over.
        assert_eq!(error_name(svc.take_over("alice").await), "org.himalaya.Sync.Error.NotRunning");
        assert_eq!(error_name(svc.request_handoff("alice", 100).await), "org.himalaya.Sync.Error.NotRunning");
        let unknown = svc.sync("nosuch").await.unwrap_err();
        let text = zbus::DBusError::description(&unknown).unwrap_or_default();
        assert!(text.contains("\"alice\"") && text.contains("\"bob\""), "lists the known accounts: {text}");
        // Still up, nothing started, the real accounts untouched.
        let mut accounts = svc.list_accounts().await.unwrap();
        accounts.sort();
        assert_eq!(accounts, ["alice", "bob", "everyone"]);
        assert!(mbsync_pids_for(&tb.mbsyncrc()).is_empty());
        assert!(!std::path::Path::new("/tmp/pwned").exists());
        assert_eq!(
            get::<String>(&svc.get_progress("alice").await.unwrap(), "state").as_deref(),
            Some("idle")
        );
        drop(daemon);
    })
    .await;
}

async fn wrong_password_fails_with_mbsyncs_reason(version: MbsyncVersion) {
    with_timeout(async {
        let tb = Testbed::with_mbsync(version, SPEC);
        tb.set_password("bob", "wrong");
        let World { svc, conn: _conn, daemon, bus, tb } = World::around(tb).await;
        let mut finished = svc.receive_sync_finished().await.unwrap();
        let mut progress = svc.receive_progress_changed().await.unwrap();
        svc.sync("bob").await.unwrap();
        // Progress first: an unread stream would stall the connection (zbus queues 64 per
        // stream), and the final record always comes before SyncFinished.
        let mut records = Vec::new();
        read_until_final(&mut progress, "bob", &mut records).await;
        assert_progress_is_honest(&records, false);
        let s = finished.next().await.unwrap();
        let args = s.args().unwrap();
        assert!(!args.ok);
        assert!(args.message.contains("AUTHENTICATIONFAILED"), "{}", args.message);
        // mbsync's error, not isync 1.5's notice about the test bed's `SSLType`.
        assert!(!args.message.contains("notice"), "{}", args.message);
        let record = svc.get_progress("bob").await.unwrap();
        assert_eq!(get::<String>(&record, "state").as_deref(), Some("failed"));
        assert!(get::<String>(&record, "last_error").unwrap().contains("AUTHENTICATIONFAILED"));
        // The CLI turns it into MbsyncFailed and exit code 1.
        let out = support::daemon::run_cli(bus.address(), &tb.env(), &["sync", "bob"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("org.himalaya.Sync.Error.MbsyncFailed")
                && stderr.contains("AUTHENTICATIONFAILED"),
            "{stderr}"
        );
        drop(daemon);
    })
    .await;
}

#[tokio::test]
async fn wrong_password_fails_with_mbsyncs_reason_isync14() {
    wrong_password_fails_with_mbsyncs_reason(Isync14).await;
}

#[tokio::test]
async fn wrong_password_fails_with_mbsyncs_reason_isync15() {
    wrong_password_fails_with_mbsyncs_reason(Isync15).await;
}

async fn server_gone_mid_sync_is_a_failed_state_with_reason(version: MbsyncVersion) {
    with_timeout(async {
        let tb = Testbed::with_mbsync(version, &[("alice", "INBOX", 2000)]);
        tb.proxy.set_rate(Some(100_000));
        let World { svc, conn: _conn, daemon, bus: _bus, tb } = World::around(tb).await;
        let mut finished = svc.receive_sync_finished().await.unwrap();
        let mut progress = svc.receive_progress_changed().await.unwrap();
        svc.sync("alice").await.unwrap();
        let mut records = Vec::new();
        while let Some(s) = progress.next().await {
            let record = s.args().unwrap().progress;
            let done = get::<u32>(&record, "messages_done").unwrap_or(0);
            records.push(record);
            if done > 20 {
                break;
            }
        }
        tb.proxy.refuse(true);
        tb.proxy.cut();
        read_until_final(&mut progress, "alice", &mut records).await;
        assert_progress_is_honest(&records, false);
        let s = finished.next().await.unwrap();
        let args = s.args().unwrap();
        assert!(!args.ok);
        let reason = args.message.to_owned();
        assert!(
            reason.contains("EOF") || reason.contains("Socket error") || reason.contains("Broken pipe"),
            "{reason}"
        );
        let record = svc.get_progress("alice").await.unwrap();
        assert_eq!(get::<String>(&record, "state").as_deref(), Some("failed"));
        // The server comes back: the next sync repairs everything.
        tb.proxy.refuse(false);
        tb.proxy.set_rate(None);
        svc.sync("alice").await.unwrap();
        let mut records = Vec::new();
        read_until_final(&mut progress, "alice", &mut records).await;
        assert_progress_is_honest(&records, true);
        let s = finished.next().await.unwrap();
        assert!(s.args().unwrap().ok, "{}", s.args().unwrap().message);
        tb.assert_in_sync("alice");
        drop(daemon);
    })
    .await;
}

#[tokio::test]
async fn server_gone_mid_sync_is_a_failed_state_with_reason_isync14() {
    server_gone_mid_sync_is_a_failed_state_with_reason(Isync14).await;
}

#[tokio::test]
async fn server_gone_mid_sync_is_a_failed_state_with_reason_isync15() {
    server_gone_mid_sync_is_a_failed_state_with_reason(Isync15).await;
}

#[tokio::test]
async fn corrupt_mbsyncrc_is_a_config_error_and_recovers() {
    with_timeout(async {
        let tb = Testbed::new(SPEC);
        let good = std::fs::read_to_string(tb.mbsyncrc()).unwrap();
        let World { svc, conn: _conn, daemon, bus: _bus, tb } = World::around(tb).await;
        std::fs::write(tb.mbsyncrc(), format!("{good}\nChannel\nFar :alice-remote:\n")).unwrap();
        assert_eq!(error_name(svc.list_accounts().await), "org.himalaya.Sync.Error.ConfigError");
        assert_eq!(error_name(svc.sync("alice").await), "org.himalaya.Sync.Error.ConfigError");
        // Nothing lost meanwhile: the accounts and their records stay visible.
        let all = svc.get_all_progress().await.unwrap();
        assert!(all.contains_key("alice") && all.contains_key("bob"), "{:?}", all.keys());
        assert_eq!(
            get::<String>(&svc.get_progress("alice").await.unwrap(), "state").as_deref(),
            Some("idle")
        );
        let err = svc.list_accounts().await.unwrap_err();
        let text = zbus::DBusError::description(&err).unwrap_or_default();
        // mbsync's own words: `FILE:LINE: parameter missing` for the nameless Channel.
        let line = good.lines().count() + 2;
        let at = format!("{}:{line}: ", tb.mbsyncrc().display());
        assert!(text.contains(&at), "names the file and line ({at}): {text}");
        std::fs::write(tb.mbsyncrc(), good).unwrap();
        assert_eq!(svc.list_accounts().await.unwrap().len(), 3);
        assert!(mbsync_pids_for(&tb.mbsyncrc()).is_empty());
        drop(daemon);
    })
    .await;
}

/// A keyword the installed mbsync does not know (the service's own reader skips unknown
/// keywords, since they differ between isync versions): mbsync's verdict is the service's.
#[tokio::test]
async fn mbsyncrc_the_installed_mbsync_refuses_is_a_config_error_with_its_message() {
    with_timeout(async {
        let tb = Testbed::new(SPEC);
        let good = std::fs::read_to_string(tb.mbsyncrc()).unwrap();
        let World { svc, conn: _conn, daemon, bus: _bus, tb } = World::around(tb).await;
        // After the first account's AuthMechs line, in its IMAPAccount section.
        let (head, tail) = good.split_once("AuthMechs PLAIN\n").expect("testbed config shape");
        let bad = format!("{head}AuthMechs PLAIN\nHimalayaBogusKeyword yes\n{tail}");
        let line = head.lines().count() + 2;
        std::fs::write(tb.mbsyncrc(), bad).unwrap();
        let expected = format!(
            "{}:{line}: keyword 'HimalayaBogusKeyword' is not recognized in IMAPAccount sections",
            tb.mbsyncrc().display()
        );
        for (method, result) in
            [("ListAccounts", svc.list_accounts().await.map(|_| ())), ("Sync", svc.sync("alice").await)]
        {
            let err = result.expect_err(method);
            assert_eq!(
                zbus::DBusError::name(&err).to_string(),
                "org.himalaya.Sync.Error.ConfigError",
                "{method}"
            );
            let text = zbus::DBusError::description(&err).unwrap_or_default();
            assert!(text.contains(&expected), "{method}: mbsync's own message: {text}");
        }
        assert!(mbsync_pids_for(&tb.mbsyncrc()).is_empty(), "no sync was started");
        // Fixed: the accounts come back, and a sync runs.
        std::fs::write(tb.mbsyncrc(), &good).unwrap();
        let mut accounts = svc.list_accounts().await.unwrap();
        accounts.sort();
        assert_eq!(accounts, ["alice", "bob", "everyone"]);
        let mut finished = svc.receive_sync_finished().await.unwrap();
        svc.sync("bob").await.unwrap();
        let s = finished.next().await.unwrap();
        assert!(s.args().unwrap().ok, "{}", s.args().unwrap().message);
        drop(daemon);
    })
    .await;
}

#[tokio::test]
async fn missing_mbsync_is_mbsync_missing() {
    with_timeout(async {
        let tb = Testbed::new(&[("bob", "INBOX", 5)]);
        write_service_config(&tb, "mbsync = \"/nonexistent/bin/mbsync\"\n");
        let World { svc, conn, daemon, bus: _bus, tb: _tb } = World::around(tb).await;
        let err = svc.sync("bob").await.unwrap_err();
        assert_eq!(zbus::DBusError::name(&err).to_string(), "org.himalaya.Sync.Error.MbsyncMissing");
        assert!(zbus::DBusError::description(&err).unwrap_or_default().contains("install isync"));
        // The lock was given back: nothing holds bob's name.
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let lock = zbus::names::BusName::try_from("org.himalaya.Sync.Lock.bob").unwrap();
        assert!(!dbus.name_has_owner(lock).await.unwrap());
        drop(daemon);
    })
    .await;
}

/// No service on the bus: the CLI says so and exits 3 (scripts tell it from a failed sync).
/// `watch` waits for the service instead (lifecycle.rs), and exits 3 only without a bus at all.
#[tokio::test]
async fn cli_without_a_service_exits_3() {
    with_timeout(async {
        let tb = Testbed::new(&[("bob", "INBOX", 1)]);
        let bus = PrivateBus::start(None);
        for args in [&["status"][..], &["sync", "bob"]] {
            let out = support::daemon::run_cli(bus.address(), &tb.env(), args);
            assert_eq!(out.status.code(), Some(3), "{args:?}: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("ServiceUnknown"), "{args:?}: {stderr}");
        }
        let nowhere = format!("unix:path={}", tb.dir.path().join("no-bus").display());
        for args in [&["status"][..], &["watch", "--json"]] {
            let out = support::daemon::run_cli(&nowhere, &tb.env(), args);
            assert_eq!(out.status.code(), Some(3), "{args:?} without a bus: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("cannot connect to the session bus"), "{args:?}: {stderr}");
        }
    })
    .await;
}
