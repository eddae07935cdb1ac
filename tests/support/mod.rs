//! Integration-test bed: a private D-Bus daemon, a private Dovecot IMAP server with generated
//! mailboxes, a throttling TCP proxy and an mbsync setup (HOME, XDG dirs, mbsyncrc) around them.
//! See README.md in this directory.
//!
//! Every integration test file does `mod support;` and uses only part of this, hence the
//! allows (the re-exports below count as unused imports in such a file).
#![allow(dead_code, unused_imports)]

pub mod bus;
/// The daemon under test and async bus helpers (daemon.rs, maintained with the service tests).
pub mod daemon;
pub mod dovecot;
pub mod jobview;
pub mod mail;
pub mod mbsync;
pub mod notifications;
pub mod nvim;
pub mod process;
pub mod procstat;
pub mod proxy;
pub mod sampler;
pub mod testbed;

use std::time::{Duration, Instant};

pub use bus::PrivateBus;
pub use dovecot::Dovecot;
pub use mbsync::MbsyncVersion;
pub use process::{Finished, Spawned};
pub use proxy::Proxy;
pub use testbed::Testbed;

/// Poll `cond` every 20 ms until it is true or `timeout` passes; on timeout panic with `what`.
/// Tests use this instead of bare sleeps, so every wait is bounded and says what it waited for.
pub fn wait_for(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    wait_for_or_log(what, timeout, cond, String::new);
}

/// Like [`wait_for`], and the panic message also gets `log()` (e.g. `|| bus.log()`).
pub fn wait_for_or_log(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    log: impl FnOnce() -> String,
) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() >= timeout {
            let log = log();
            let sep = if log.is_empty() { "" } else { "\n" };
            panic!("timed out after {timeout:?} waiting for {what}{sep}{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when the test process runs as root (uid 0), read from /proc/self/status
/// (no libc crate in the dev-dependencies).
pub fn running_as_root() -> bool {
    current_ids().0 == 0
}

/// Real uid and gid of the test process, from /proc/self/status.
pub fn current_ids() -> (u32, u32) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} line in /proc/self/status"))
    };
    (field("Uid:"), field("Gid:"))
}

/// Set `TESTBED_KEEP=1` to keep the temporary directories of a test (logs, maildirs) for
/// debugging; their paths are printed when they are created.
pub(crate) fn keep_dirs() -> bool {
    std::env::var_os("TESTBED_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Apply the `TESTBED_KEEP` setting to a new temp dir.
pub(crate) fn maybe_keep(dir: &mut tempfile::TempDir, what: &str) {
    if keep_dirs() {
        dir.disable_cleanup(true);
        eprintln!("TESTBED_KEEP: kept {what} at {}", dir.path().display());
    }
}
