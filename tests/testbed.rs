//! Self-test of the integration-test bed in tests/support: real dbus-daemon, Dovecot and mbsync.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{MbsyncVersion, PrivateBus, Proxy, Spawned, Testbed, process, wait_for, wait_for_or_log};

/// The mailboxes of the end-to-end tests: alice 2550 messages (~1.8 MB on the wire), bob 20.
const SPEC: &[(&str, &str, usize)] =
    &[("alice", "INBOX", 2000), ("alice", "Archive", 500), ("alice", "Sent", 50), ("bob", "INBOX", 20)];

/// Generous bound for one sync (they take 1–3 s unthrottled, ~9 s at 200 KB/s).
const SYNC_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn private_bus_answers_list_names() {
    let bus = PrivateBus::start(None);
    assert!(bus.address().starts_with("unix:"), "address: {}", bus.address());
    let out = process::run(
        "dbus-send ListNames",
        Command::new("dbus-send").arg(format!("--bus={}", bus.address())).args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ListNames",
        ]),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success() && out.stdout.contains("org.freedesktop.DBus"),
        "dbus-send failed: {out:?}\nbus log:\n{}",
        bus.log()
    );
}

/// D-Bus activation through the bus's servicedir: the activated process gets the bus address
/// and the environment given to `start_with_env`.
#[test]
fn private_bus_activates_from_service_dir() {
    let services = tempfile::tempdir().expect("temp dir");
    let env_file = services.path().join("env.txt");
    std::fs::write(
        services.path().join("org.example.Probe.service"),
        format!(
            "[D-BUS Service]\nName=org.example.Probe\nExec=/bin/sh -c \"env > {}.tmp && mv {0}.tmp {0}\"\n",
            env_file.display()
        ),
    )
    .expect("write service file");
    let bus = PrivateBus::start_with_env(Some(services.path()), &[("TESTBED_PROBE".into(), "42".into())]);
    // The probe never takes its name, so no reply comes: keep dbus-send running meanwhile
    // (without --print-reply it disconnects at once and the bus activates nothing).
    let _request = Spawned::spawn(
        "dbus-send StartServiceByName",
        Command::new("dbus-send").arg(format!("--bus={}", bus.address())).args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.StartServiceByName",
            "string:org.example.Probe",
            "uint32:0",
        ]),
    );
    wait_for_or_log("the activated service", Duration::from_secs(10), || env_file.exists(), || bus.log());
    let env = std::fs::read_to_string(&env_file).expect("read env.txt");
    assert!(
        env.contains("TESTBED_PROBE=42")
            && env.contains(&format!("DBUS_STARTER_ADDRESS={}", bus.address()))
            && env.contains(&format!("DBUS_SESSION_BUS_ADDRESS={}", bus.address())),
        "activated service env:\n{env}\nbus log:\n{}",
        bus.log()
    );
}

#[test]
fn mbsync_syncs_everyone_and_new_mail() {
    let bed = Testbed::new(SPEC);
    bed.run_mbsync(&["everyone"], SYNC_TIMEOUT).assert_code(0, "initial sync of everyone");
    bed.assert_in_sync("alice");
    bed.assert_in_sync("bob");
    assert_eq!(bed.local_message_ids("alice", "INBOX").len(), 2000);
    assert_eq!(bed.local_message_ids("alice", "Archive").len(), 500);
    assert_eq!(bed.local_message_ids("alice", "Sent").len(), 50);
    assert_eq!(bed.local_message_ids("bob", "INBOX").len(), 20);

    // New mail arrives on the server: ids continue after the existing ones.
    bed.dovecot.add_messages("alice", "INBOX", 5);
    let ids = bed.dovecot.message_ids("alice", "INBOX");
    assert_eq!(ids.len(), 2005);
    assert!(ids.contains("<inbox-02005@testbed.invalid>"), "ids: {ids:?}");
    assert!(bed.sync_differences("alice").is_some(), "the 5 new messages should not be local yet");
    bed.run_mbsync(&["alice"], SYNC_TIMEOUT).assert_code(0, "re-sync of alice");
    bed.assert_in_sync("alice");
    assert_eq!(bed.local_message_ids("alice", "INBOX").len(), 2005);
}

#[test]
fn throttled_proxy_slows_sync_and_cut_breaks_it() {
    const RATE: u64 = 200_000;
    let bed = Testbed::new(SPEC);

    // Unthrottled initial sync (measured 1.1–1.5 s).
    let fast = bed.run_mbsync(&["alice"], SYNC_TIMEOUT);
    fast.assert_code(0, "unthrottled sync");
    bed.assert_in_sync("alice");

    // The same initial sync at 200 KB/s (measured 8.9 s for ~1.78 MB from the server).
    wipe_local(&bed, "alice");
    bed.proxy.set_rate(Some(RATE));
    let before = bed.proxy.bytes_from_server();
    let slow = bed.run_mbsync(&["alice"], SYNC_TIMEOUT);
    slow.assert_code(0, "throttled sync");
    bed.assert_in_sync("alice");
    let bytes = bed.proxy.bytes_from_server() - before;
    eprintln!(
        "alice initial sync: unthrottled {:?}, at {RATE} B/s {:?} ({bytes} bytes from server)",
        fast.elapsed, slow.elapsed
    );
    // The token bucket makes this a lower bound, whatever the machine's load.
    let floor = Duration::from_secs_f64(0.9 * bytes as f64 / RATE as f64);
    assert!(
        slow.elapsed >= floor,
        "throttled sync took {:?} for {bytes} bytes at {RATE} B/s, expected >= {floor:?}",
        slow.elapsed
    );
    assert!(
        slow.elapsed > fast.elapsed + Duration::from_secs(1),
        "throttled sync {:?} is not noticeably slower than unthrottled {:?}",
        slow.elapsed,
        fast.elapsed
    );

    // Cut the connection mid-sync: mbsync fails with a socket-level error.
    wipe_local(&bed, "alice");
    let before = bed.proxy.bytes_from_server();
    let mut run = bed.spawn_mbsync(&["alice"]);
    wait_for("300 KB through the proxy", Duration::from_secs(20), || {
        bed.proxy.bytes_from_server() - before > 300_000 || run.has_exited()
    });
    assert!(!run.has_exited(), "mbsync ended before the cut: {}", run.stderr_so_far());
    bed.proxy.cut();
    let cut_at = Instant::now();
    let out = run.wait(Duration::from_secs(30));
    out.assert_code(1, "sync cut mid-way");
    eprintln!("cut: mbsync exited {:?} after the cut; stderr: {}", cut_at.elapsed(), out.stderr.trim());
    assert!(
        ["unexpected EOF", "Broken pipe", "Socket error"].iter().any(|s| out.stderr.contains(s)),
        "unexpected stderr after cut: {}",
        out.stderr
    );
    assert!(
        cut_at.elapsed() < Duration::from_secs(5),
        "mbsync took {:?} to notice the cut",
        cut_at.elapsed()
    );

    // The next (unthrottled) run repairs the interrupted state.
    bed.proxy.set_rate(None);
    bed.run_mbsync(&["alice"], SYNC_TIMEOUT).assert_code(0, "sync after the cut");
    bed.assert_in_sync("alice");
}

/// isync 1.5 takes the test bed's mbsyncrc: `SSLType None` only earns a deprecation notice on
/// stderr, and the exit code alone says it worked.
#[test]
fn isync_15_syncs_with_the_test_beds_config() {
    let bed =
        Testbed::with_mbsync(MbsyncVersion::Isync15, &[("alice", "INBOX", 30), ("alice", "Archive", 5)]);
    let out = bed.run_mbsync(&["-V", "alice"], SYNC_TIMEOUT);
    out.assert_code(0, "isync 1.5 sync of alice");
    assert!(out.stderr.contains("SSLType is deprecated"), "stderr: {}", out.stderr);
    // Its summary (stdout is no tty here, so there are no counter records).
    assert!(
        out.stdout.contains("Channels: 1    Boxes: 2    Far: +0 *0 #0 -0    Near: +35 *0 #0 -0"),
        "{}",
        out.stdout
    );
    bed.assert_in_sync("alice");
}

#[test]
fn wrong_password_fails_authentication() {
    let bed = Testbed::new(&[("alice", "INBOX", 10)]);
    bed.set_password("alice", "wrong");
    let out = bed.run_mbsync(&["alice"], SYNC_TIMEOUT);
    out.assert_code(1, "sync with a wrong password");
    eprintln!("wrong password: mbsync failed after {:?}", out.elapsed);
    assert!(out.stderr.contains("AUTHENTICATIONFAILED"), "stderr: {}\n{}", out.stderr, bed.dovecot.log());
    // The right password works again at once (no auth penalty).
    bed.set_password("alice", "alicepw");
    let ok = bed.run_mbsync(&["alice"], SYNC_TIMEOUT);
    ok.assert_code(0, "sync with the right password");
    assert!(ok.elapsed < Duration::from_secs(5), "login after a failed one took {:?}", ok.elapsed);
    bed.assert_in_sync("alice");
}

/// The proxy alone, against a local server that streams bytes: rate, pause, cut, refuse.
#[test]
fn proxy_rate_pause_cut_refuse() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr").port();
    // Each connection gets an endless stream of bytes until the peer goes away.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let chunk = [b'x'; 4096];
                while conn.write_all(&chunk).is_ok() {}
            });
        }
    });
    let proxy = Proxy::start(target);
    proxy.set_rate(Some(100_000));

    let mut client = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    client.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let mut read_for = |d: Duration| -> (usize, bool) {
        let (start, mut total, mut buf) = (Instant::now(), 0, [0u8; 8192]);
        while start.elapsed() < d {
            match client.read(&mut buf) {
                Ok(0) => return (total, true),
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return (total, true),
            }
        }
        (total, false)
    };

    // 100 KB/s for 1 s: about 100 KB (allow for the burst and scheduling).
    let (n, _) = read_for(Duration::from_secs(1));
    assert!((70_000..=130_000).contains(&n), "read {n} bytes in 1 s at 100 KB/s");

    proxy.pause();
    std::thread::sleep(Duration::from_millis(50)); // let an in-flight chunk land
    let _ = read_for(Duration::from_millis(100));
    let (n, eof) = read_for(Duration::from_millis(300));
    assert_eq!((n, eof), (0, false), "paused proxy still forwarded");
    proxy.resume();
    let (n, _) = read_for(Duration::from_millis(300));
    assert!(n > 0, "nothing forwarded after resume");

    proxy.cut();
    let (_, eof) = read_for(Duration::from_millis(500));
    assert!(eof, "connection still open after cut");
    wait_for("the cut connection to be closed", Duration::from_secs(2), || proxy.open_connections() == 0);

    // New connections still work after a cut ...
    let mut again = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    again.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut byte = [0u8; 1];
    again.read_exact(&mut byte).expect("data after reconnect");
    drop(again);

    // ... unless refused.
    proxy.refuse(true);
    let mut refused = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    refused.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert!(matches!(refused.read(&mut byte), Ok(0) | Err(_)), "refused connection got data");
    assert!(proxy.bytes_forwarded() > 0);
}

/// `Dovecot::stop` ends the server's open connections too (its master alone would leave their
/// IMAP processes serving them), and `restart` serves again on the same port, same mail.
#[test]
fn dovecot_stop_ends_open_connections_and_restart_keeps_the_port() {
    let mut bed = Testbed::new(&[("alice", "INBOX", 10)]);
    let port = bed.dovecot.port();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to Dovecot");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).expect("greeting");
    assert!(buf[..n].starts_with(b"* OK"), "{}", String::from_utf8_lossy(&buf[..n]));
    conn.write_all(b"a LOGIN alice alicepw\r\n").expect("login");
    let n = conn.read(&mut buf).expect("login answer");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("a OK"), "{}", String::from_utf8_lossy(&buf[..n]));
    let stopping = Instant::now();
    bed.dovecot.stop();
    // The logged-in connection is closed (after a `* BYE`), not served on.
    let mut rest = Vec::new();
    let closed = loop {
        match conn.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(closed, "the connection outlived the server: {}", String::from_utf8_lossy(&rest));
    eprintln!("stop: closed after {:?}: {}", stopping.elapsed(), String::from_utf8_lossy(&rest).trim());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "a stopped server accepts");
    bed.dovecot.restart();
    assert_eq!(bed.dovecot.port(), port);
    bed.run_mbsync(&["alice"], SYNC_TIMEOUT).assert_code(0, "sync after the restart");
    bed.assert_in_sync("alice");
}

/// `PrivateBus::kill` closes every connection; `restart` listens again at the same path.
#[test]
fn private_bus_kill_and_restart_at_the_same_path() {
    let mut bus = PrivateBus::start(None);
    let path = |address: &str| address.split(',').next().unwrap_or_default().to_owned();
    let before = path(bus.address());
    let list_names = |address: &str| {
        Command::new("dbus-send")
            .arg(format!("--bus={address}"))
            .args(["--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus"])
            .arg("org.freedesktop.DBus.ListNames")
            .output()
            .expect("run dbus-send")
            .status
            .success()
    };
    assert!(list_names(bus.address()));
    bus.kill();
    assert!(!list_names(bus.address()), "a killed bus answers");
    bus.restart();
    assert_eq!(path(bus.address()), before, "the same socket path");
    assert!(list_names(bus.address()), "the restarted bus does not answer; log:\n{}", bus.log());
}

fn wipe_local(bed: &Testbed, user: &str) {
    let root = bed.maildir(user);
    std::fs::remove_dir_all(&root).expect("remove local maildir");
    std::fs::create_dir_all(&root).expect("recreate local maildir root");
}
