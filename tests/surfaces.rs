//! Progress wherever a person looks, on real parts (private bus, Dovecot, mbsync, the daemon):
//! the terminal bar under a real pty, KDE Plasma's job view (a recording `JobViewServer`, the
//! permitted stand-in), a GNOME Shell extension's view (real gjs through Gio.DBusProxy), shell
//! completion from a live service (real bash), and the man pages.

mod support;

use std::{
    io::Read,
    os::fd::OwnedFd,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use support::{
    Testbed,
    daemon::{BIN, Dict, World, get, mbsync_pids_for, read_until_final, run_cli, state_of, with_timeout},
    jobview::{Call, JobViewRecorder},
};

/// The CLI running with stdin, stdout and stderr on a new pty, as in a terminal.
struct OnAPty {
    child: std::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl OnAPty {
    fn spawn(bus: &str, env: &[(String, String)], extra_env: &[(&str, &str)], args: &[&str]) -> OnAPty {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let tty = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let child = Command::new(BIN)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DBUS_SESSION_BUS_ADDRESS", bus)
            .env("TERM", "xterm-256color")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().copied())
            .stdin(tty(&pty.slave))
            .stdout(tty(&pty.slave))
            .stderr(tty(&pty.slave))
            .spawn()
            .expect("start the CLI on a pty");
        drop(pty.slave);
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut master = std::fs::File::from(pty.master);
        let sink = Arc::clone(&out);
        // Read until the last writer is gone (EIO on Linux).
        let reader = std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        OnAPty { child, out, reader }
    }

    fn so_far(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Wait for the exit: everything written, and the exit code (-1 for a signal).
    fn wait(self) -> (String, i32) {
        let OnAPty { mut child, out, reader } = self;
        let status = child.wait().unwrap();
        reader.join().unwrap();
        let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
        (text, status.code().unwrap_or(-1))
    }
}

fn run_on_a_pty(
    bus: &str,
    env: &[(String, String)],
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> (String, i32) {
    OnAPty::spawn(bus, env, extra_env, args).wait()
}

/// The text without terminal escape sequences (`ESC [ ... letter`).
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `sync` on a terminal draws one bar redrawn in place (many frames, two lines in all: the final
/// word and the result), never 100 % before the end, in colour unless `NO_COLOR`; piped, it prints
/// plain lines.
#[tokio::test]
async fn a_terminal_gets_one_bar_redrawn_in_place() {
    with_timeout(async {
        let w = World::start(&[("bob", "INBOX", 400)]).await;
        w.tb.proxy.set_rate(Some(60_000));
        let (bus, env) = (w.bus.address().to_owned(), w.tb.env());
        let (out, code) =
            tokio::task::spawn_blocking(move || run_on_a_pty(&bus, &env, &[], &["sync", "bob"]))
                .await
                .unwrap();
        assert_eq!(code, 0, "{out}");
        let text = plain(&out);
        let frames: Vec<&str> =
            text.split(['\r', '\n']).map(str::trim_end).filter(|f| !f.is_empty()).collect();
        let bars: Vec<&&str> =
            frames.iter().filter(|f| f.starts_with("bob [") && f.contains("/400")).collect();
        assert!(bars.len() >= 5, "a bar redrawn as messages arrive: {frames:#?}");
        assert_eq!(out.matches('\n').count(), 2, "one line per run's end, none per update: {text:?}");
        let lines: Vec<&str> = text.lines().map(|l| l.rsplit('\r').next().unwrap().trim_end()).collect();
        assert_eq!(lines, ["bob: idle, 400/400 messages, last sync ok", "bob: sync finished"], "{text:?}");
        assert!(!bars.iter().any(|f| f.contains("100%")), "100 % before the end: {bars:#?}");
        assert!(out.contains("\x1b[36m"), "colours on a colour terminal: {out:?}");
        w.tb.assert_in_sync("bob");

        // NO_COLOR: the same bar without colours.
        w.tb.dovecot.add_messages("bob", "INBOX", 200);
        let (bus, env) = (w.bus.address().to_owned(), w.tb.env());
        let (out, code) = tokio::task::spawn_blocking(move || {
            run_on_a_pty(&bus, &env, &[("NO_COLOR", "1")], &["sync", "bob"])
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{out}");
        assert!(plain(&out).contains("bob ["), "{out:?}");
        assert!(!out.contains("\x1b[3") && !out.contains("\x1b[1m"), "no colours with NO_COLOR: {out:?}");

        // Piped: plain lines, one per change, no escapes, no carriage returns.
        w.tb.dovecot.add_messages("bob", "INBOX", 200);
        let out = run_cli(w.bus.address(), &w.tb.env(), &["sync", "bob"]);
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
        assert!(err.lines().count() >= 2 && err.lines().all(|l| l.starts_with("bob: ")), "{err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "bob: sync finished\n");

        // `watch` on a terminal: a bar per account too, and a run's end as a line above them.
        let watch = OnAPty::spawn(w.bus.address(), &w.tb.env(), &[], &["watch"]);
        support::wait_for("watch to draw the accounts", Duration::from_secs(20), || {
            plain(&watch.so_far()).contains("everyone")
        });
        w.tb.dovecot.add_messages("bob", "INBOX", 300);
        let out = run_cli(w.bus.address(), &w.tb.env(), &["sync", "bob"]);
        assert!(out.status.success(), "{out:?}");
        support::wait_for("watch to see the end", Duration::from_secs(20), || {
            plain(&watch.so_far()).contains("bob: sync finished")
        });
        // A run cancelled on purpose is told as such, not as a failure.
        w.tb.dovecot.add_messages("bob", "INBOX", 300);
        w.svc.sync("bob").await.unwrap();
        w.svc.cancel("bob").await.unwrap();
        support::wait_for("watch to see the cancel", Duration::from_secs(20), || {
            plain(&watch.so_far()).contains("bob: sync cancelled")
        });
        assert!(!plain(&watch.so_far()).contains("failed"), "{:?}", plain(&watch.so_far()));
        support::daemon::send_signal(watch.child.id(), "TERM");
        let (out, _) = tokio::task::spawn_blocking(move || watch.wait()).await.unwrap();
        let text = plain(&out);
        assert!(text.split(['\r', '\n']).any(|f| f.contains("bob [") && f.contains("/300")), "{text:?}");
    })
    .await;
}

/// KDE Plasma: a service sync is a job (requestView, the amounts in items growing to the total,
/// the account and mailbox, percent 100 only at the end, terminate); Cancel in the popup cancels
/// the sync; a sync that runs elsewhere is no job of ours.
#[tokio::test]
async fn plasma_shows_a_service_sync_as_a_job_and_its_cancel_cancels() {
    with_timeout(async {
        let w = World::start(&[("bob", "INBOX", 400)]).await;
        let plasma = JobViewRecorder::start(w.bus.address()).await;
        w.tb.proxy.set_rate(Some(60_000));
        let mut progress = w.svc.receive_progress_changed().await.unwrap();
        w.svc.sync("bob").await.unwrap();
        let mut records: Vec<Dict> = Vec::new();
        read_until_final(&mut progress, "bob", &mut records).await;
        let calls = plasma.wait_terminated(1, Duration::from_secs(10)).await;
        assert_eq!(plasma.requests(), [("himalaya-sync".to_owned(), "mail-send-receive".to_owned(), 1)]);
        let of = |method: &str| -> Vec<Vec<String>> {
            calls.iter().filter(|c| c.method == method).map(|c| c.args.clone()).collect()
        };
        assert_eq!(of("setInfoMessage").first().map(|a| a[0].as_str()), Some("Syncing bob"), "{calls:#?}");
        assert!(
            of("setDescriptionField").contains(&vec!["0".into(), "Mailbox".into(), "INBOX".into()]),
            "{calls:#?}"
        );
        let processed: Vec<u64> = of("setProcessedAmount").iter().map(|a| a[0].parse().unwrap()).collect();
        assert!(processed.len() >= 3, "the amount grows as messages arrive: {calls:#?}");
        assert!(processed.windows(2).all(|w| w[0] <= w[1]), "{processed:?}");
        assert_eq!(processed.last(), Some(&400));
        assert!(of("setProcessedAmount").iter().all(|a| a[1] == "items"), "{calls:#?}");
        assert_eq!(of("setTotalAmount").last(), Some(&vec!["400".to_owned(), "items".to_owned()]));
        let percents: Vec<u32> = of("setPercent").iter().map(|a| a[0].parse().unwrap()).collect();
        assert_eq!(percents.last(), Some(&100), "{calls:#?}");
        assert!(percents.iter().rev().skip(1).all(|p| *p < 100), "100 only at the end: {percents:?}");
        assert_eq!(
            calls.last().unwrap(),
            &Call { view: 1, method: "terminate".into(), args: vec![String::new()] }
        );

        // Cancel from the popup.
        w.tb.dovecot.add_messages("bob", "INBOX", 600);
        w.tb.proxy.set_rate(Some(20_000));
        let mut finished = w.svc.receive_sync_finished().await.unwrap();
        w.svc.sync("bob").await.unwrap();
        plasma.wait_call(2, Duration::from_secs(20), |c| c.method == "setProcessedAmount").await;
        plasma.cancel(2).await;
        let mut records: Vec<Dict> = Vec::new();
        read_until_final(&mut progress, "bob", &mut records).await;
        let last = records.last().unwrap();
        assert_eq!(get::<String>(last, "last_result").as_deref(), Some("cancelled"), "{}", state_of(last));
        let ended = futures_util::StreamExt::next(&mut finished).await.unwrap();
        assert!(!ended.args().unwrap().ok);
        assert!(mbsync_pids_for(&w.tb.mbsyncrc()).is_empty(), "no mbsync left after Cancel");
        let calls = plasma.wait_terminated(2, Duration::from_secs(10)).await;
        assert!(!calls.iter().any(|c| c.method == "setPercent" && c.args[0] == "100"), "{calls:#?}");

        // A bare mbsync is no job of the service's.
        w.tb.proxy.set_rate(None);
        let bare = w.tb.spawn_mbsync(&["bob"]);
        bare.wait(Duration::from_secs(60)).assert_code(0, "a bare mbsync");
        w.svc.get_progress("bob").await.unwrap();
        assert_eq!(plasma.requests().len(), 2, "{:?}", plasma.requests());
    })
    .await;
}

/// Without a job view server, a sync runs as always and nothing is logged above debug.
#[tokio::test]
async fn no_job_view_server_is_no_error() {
    with_timeout(async {
        let w = World::start(&[("bob", "INBOX", 20)]).await;
        let out = run_cli(w.bus.address(), &w.tb.env(), &["sync", "bob"]);
        assert!(out.status.success(), "{out:?}");
        let log = w.daemon.log();
        assert!(!log.lines().any(|l| l.contains("WARN") || l.contains("ERROR")), "{log}");
    })
    .await;
}

/// A GNOME Shell extension binds to the account object's properties: real gjs follows a whole
/// sync through Gio.DBusProxy's cached properties and g-properties-changed alone.
#[tokio::test]
async fn gjs_follows_a_sync_through_property_changes_alone() {
    with_timeout(async {
        let w = World::start(&[("bob", "INBOX", 400)]).await;
        w.tb.proxy.set_rate(Some(60_000));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gjs/follow_account.js");
        let mut cmd = Command::new("gjs");
        cmd.args([script, "/org/himalaya/Sync/account/bob", "60"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", w.tb.home())
            .env("DBUS_SESSION_BUS_ADDRESS", w.bus.address());
        let gjs = support::Spawned::spawn("gjs follow_account.js", &mut cmd);
        support::wait_for("gjs to be ready", Duration::from_secs(20), || {
            gjs.stdout_so_far().starts_with("ready ")
        });
        let ready = gjs.stdout_so_far();
        let first: serde_json::Value =
            serde_json::from_str(ready.lines().next().unwrap().strip_prefix("ready ").unwrap()).unwrap();
        assert_eq!(first["name"], "bob", "{ready}");
        assert_eq!(first["state"], "idle", "{ready}");

        w.svc.sync("bob").await.unwrap();
        let done = tokio::task::spawn_blocking(move || gjs.wait(Duration::from_secs(90))).await.unwrap();
        done.assert_code(0, "gjs saw the sync start and end");
        let seen: Vec<serde_json::Value> =
            done.stdout.lines().skip(1).map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        let syncing: Vec<&serde_json::Value> = seen.iter().filter(|v| v["state"] == "syncing").collect();
        assert!(syncing.len() >= 3, "{seen:#?}");
        assert!(
            syncing.iter().all(|v| v["owner"] == "service" && v["pid"].as_u64().unwrap() > 0),
            "{seen:#?}"
        );
        let counts: Vec<u64> = syncing.iter().filter_map(|v| v["done"].as_u64()).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert!(syncing.iter().all(|v| v["percent"].as_f64().is_none_or(|p| p < 100.0)), "{seen:#?}");
        assert!(syncing.iter().any(|v| v["mailbox"] == "INBOX"), "{seen:#?}");
        let last = seen.last().unwrap();
        assert_eq!(
            (&last["state"], &last["done"], &last["total"]),
            (&"idle".into(), &400.into(), &400.into())
        );
        assert_eq!((last["percent"].as_f64(), &last["last_result"]), (Some(100.0), &"ok".into()), "{last}");
        // One PropertiesChanged per record: a new State always comes with its Progress.
        let changed = |v: &serde_json::Value, p: &str| v["changed"].as_array().unwrap().contains(&p.into());
        assert!(seen.iter().filter(|v| changed(v, "State")).count() >= 2, "{seen:#?}");
        assert!(seen.iter().filter(|v| changed(v, "State")).all(|v| changed(v, "Progress")), "{seen:#?}");
    })
    .await;
}

/// What bash completes for `words` (the last one being typed), through the generated script.
fn bash_complete(script: &std::path::Path, bus: &str, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\ncomplete -p himalaya-sync >/dev/null || exit 9\n\
         COMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\nCOMP_TYPE=9\n\
         _clap_complete_himalaya_sync himalaya-sync '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len().saturating_sub(2)],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DBUS_SESSION_BUS_ADDRESS", bus)
        .output()
        .unwrap();
    assert!(out.status.success(), "bash: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The generated bash completion, loaded in a real bash, completes subcommands and options, and
/// account names from the running service; zsh and fish scripts come from the same definition.
#[tokio::test]
async fn bash_completes_account_names_from_the_live_service() {
    with_timeout(async {
        let w = World::start(&[("alice", "INBOX", 5), ("bob", "INBOX", 5)]).await;
        let out = run_cli(w.bus.address(), &[], &["completions", "bash"]);
        assert!(out.status.success(), "{out:?}");
        let script = w.tb.dir.path().join("himalaya-sync.bash");
        std::fs::write(&script, &out.stdout).unwrap();
        let bus = w.bus.address().to_owned();
        let complete = move |words: &'static [&'static str]| {
            let (script, bus) = (script.clone(), bus.clone());
            async move { tokio::task::spawn_blocking(move || bash_complete(&script, &bus, words)).await.unwrap() }
        };
        assert_eq!(complete(&["himalaya-sync", "sync", "al"]).await, ["alice"]);
        let all = complete(&["himalaya-sync", "takeover", ""]).await;
        for name in ["alice", "bob", "everyone"] {
            assert!(all.contains(&name.to_owned()), "{all:?}");
        }
        assert!(complete(&["himalaya-sync", "sy"]).await.contains(&"sync".to_owned()));
        let options = complete(&["himalaya-sync", "handoff", "bob", "--t"]).await;
        assert_eq!(options, ["--timeout"]);

        for shell in ["zsh", "fish"] {
            let out = run_cli(w.bus.address(), &[], &["completions", shell]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && text.contains("COMPLETE") && text.contains(BIN), "{shell}: {text}");
        }
        let out = run_cli(w.bus.address(), &[], &["completions", "tcsh"]);
        assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error: {out:?}");
    })
    .await;
}

/// With no service, completing an account offers nothing and does not hang the shell.
#[test]
fn completion_without_a_service_offers_nothing_quickly() {
    let tb = Testbed::new(&[]);
    let out = run_cli("unix:path=/nonexistent/bus", &[], &["completions", "bash"]);
    let script = tb.dir.path().join("himalaya-sync.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let start = std::time::Instant::now();
    assert!(
        bash_complete(&script, "unix:path=/nonexistent/bus", &["himalaya-sync", "sync", "al"]).is_empty()
    );
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

/// `man` prints the page from the CLI definition; `man --out-dir` writes it and one per
/// subcommand.
#[test]
fn man_pages_from_the_cli_definition() {
    let out = Command::new(BIN).arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(page.contains(".TH himalaya-sync 1"), "{page}");
    for sub in ["daemon", "sync", "takeover", "handoff", "exec", "watch", "completions"] {
        assert!(page.contains(&format!("himalaya\\-sync\\-{sub}(1)")), "{sub}: {page}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["man", "--out-dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let sync = std::fs::read_to_string(dir.path().join("himalaya-sync-sync.1")).unwrap();
    assert!(sync.contains("\\-\\-no\\-wait") && sync.contains("\\-\\-json"), "{sync}");
    assert!(dir.path().join("himalaya-sync.1").exists());
    assert!(dir.path().join("himalaya-sync-exec.1").exists());
}
