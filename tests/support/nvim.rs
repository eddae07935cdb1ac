//! Headless Neovim for the Lua client's tests: `nvim --headless --clean -l tests/lua/FILE.lua`
//! against the test's private bus and test bed, never the system's nvim (Debian 12's is 0.7).
//!
//! Every process such a run starts inherits `HIMALAYA_SYNC_TEST_MARK`, so [`marked_pids`] finds
//! whatever Neovim left behind (watch jobs, client commands, child instances), wherever it was
//! reparented. Steps that only the Rust side can take (restart the daemon, pause the proxy) are
//! handshakes through files in the run's directory: Lua's `T.handshake(step, reply)` creates
//! `step` and waits for `reply`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use super::{Finished, Spawned, Testbed, daemon::BIN};

/// The Neovim under test: `$HIMALAYA_SYNC_TEST_NVIM`, default `/opt/neovim-0.11/nvim` (installed by
/// `.ci/install-neovim`). Fails the test with what to do when it is missing or older than 0.10.
pub fn program() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let path = std::env::var_os("HIMALAYA_SYNC_TEST_NVIM")
                .map_or_else(|| PathBuf::from("/opt/neovim-0.11/nvim"), PathBuf::from);
            let out = Command::new(&path).arg("--version").output().map_err(|e| {
                format!("cannot run {} ({e}): install Neovim 0.11 with .ci/install-neovim", path.display())
            })?;
            let first = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned();
            let minor = first
                .strip_prefix("NVIM v0.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|m| m.parse::<u32>().ok());
            match minor {
                Some(m) if m >= 10 => Ok(path),
                _ => Err(format!(
                    "{} says {first:?}: the Lua client needs Neovim 0.10 or newer; run .ci/install-neovim",
                    path.display()
                )),
            }
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One headless Neovim run of a Lua test script.
pub struct Run {
    pub dir: tempfile::TempDir,
    spawned: Option<Spawned>,
}

impl Run {
    /// Start `tests/lua/<script>` with `args` on `bus` in the test bed's environment.
    pub fn start(script: &str, args: &[&str], bus: &str, tb: &Testbed) -> Run {
        let mut dir = tempfile::Builder::new().prefix("hs-nvim").tempdir().unwrap();
        super::maybe_keep(&mut dir, "the Neovim run's directory");
        let repo = env!("CARGO_MANIFEST_DIR");
        let mut cmd = Command::new(program());
        cmd.args(["--headless", "--clean", "-l"])
            .arg(Path::new(repo).join("tests/lua").join(script))
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DBUS_SESSION_BUS_ADDRESS", bus)
            .envs(tb.env())
            .env("HIMALAYA_SYNC_REPO", repo)
            .env("HIMALAYA_SYNC_BIN", BIN)
            .env("HIMALAYA_SYNC_TEST_NVIM", program())
            .env("HIMALAYA_SYNC_TEST_DIR", dir.path())
            .env("HIMALAYA_SYNC_TEST_MARK", dir.path())
            .env("MBSYNC", tb.mbsync_program());
        let spawned = Spawned::spawn(&format!("nvim -l {script}"), &mut cmd);
        Run { dir, spawned: Some(spawned) }
    }

    fn spawned(&mut self) -> &mut Spawned {
        self.spawned.as_mut().expect("Neovim still runs")
    }

    /// Neovim's pid.
    pub fn pid(&mut self) -> u32 {
        self.spawned().pid()
    }

    /// Wait for Neovim's end, whatever its cases said.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        self.spawned.take().expect("Neovim still runs").wait(timeout)
    }

    /// Whether Lua reached `step` (see the module doc).
    pub fn reached(&self, step: &str) -> bool {
        self.dir.path().join(step).exists()
    }

    /// Wait until Lua reached `step`, at most `timeout`.
    pub fn wait_step(&mut self, step: &str, timeout: Duration) {
        let start = std::time::Instant::now();
        while !self.reached(step) {
            assert!(!self.spawned().has_exited(), "Neovim exited before {step}");
            assert!(start.elapsed() < timeout, "Neovim did not reach {step} in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Answer a handshake.
    pub fn reply(&self, reply: &str) {
        std::fs::write(self.dir.path().join(reply), b"").unwrap();
    }

    /// Wait for the end, assert every case passed (printing the output either way), and that
    /// Neovim left no process behind.
    pub fn assert_passes(self, timeout: Duration) -> Finished {
        let mark = self.dir.path().to_owned();
        let done = self.wait(timeout);
        println!("{}", done.stdout);
        eprintln!("{}", done.stderr);
        assert_eq!(done.code(), Some(0), "the Lua cases failed:\n{}\n{}", done.stdout, done.stderr);
        assert!(done.stdout.contains(" passed, 0 failed"), "no case ran:\n{}", done.stdout);
        assert_no_leftovers(&mark);
        done
    }
}

impl Drop for Run {
    /// A test that panics while Neovim runs shows what the Lua side had said so far.
    fn drop(&mut self) {
        if let Some(spawned) = self.spawned.as_ref().filter(|_| std::thread::panicking()) {
            eprintln!(
                "--- Neovim (tests/lua) so far ---\n{}\n{}",
                spawned.stdout_so_far(),
                spawned.stderr_so_far()
            );
        }
    }
}

/// The processes that carry `mark` in their environment (see the module doc).
pub fn marked_pids(mark: &Path) -> Vec<(u32, String)> {
    let needle = format!("HIMALAYA_SYNC_TEST_MARK={}", mark.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // A zombie has been left by nobody: its parent reaps it.
            if state.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) {
                continue;
            }
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// No process of this Neovim run is left (bounded wait: a killed job needs a moment to exit).
pub fn assert_no_leftovers(mark: &Path) {
    let start = std::time::Instant::now();
    loop {
        let left = marked_pids(mark);
        if left.is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "Neovim left processes behind: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
