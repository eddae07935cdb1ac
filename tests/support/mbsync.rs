//! Which mbsync a test runs: the end-to-end scenarios run with isync 1.4 (Debian 12's, the
//! `mbsync` in `$PATH`) and with isync 1.5 (built by `.ci/build-isync-1.5`), which prints its
//! progress differently.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// An isync release line the tests cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MbsyncVersion {
    /// isync 1.4: `$HIMALAYA_SYNC_TEST_MBSYNC14`, default `mbsync` from `$PATH`.
    Isync14,
    /// isync 1.5: `$HIMALAYA_SYNC_TEST_MBSYNC15`, default `/opt/isync-1.5.1/bin/mbsync`.
    Isync15,
}

impl MbsyncVersion {
    /// The program to run, checked once per test process: it must start and report this
    /// version. A missing one fails the test with what to do, never skips it.
    pub fn program(self) -> PathBuf {
        static CHECKED: [OnceLock<Result<PathBuf, String>>; 2] = [OnceLock::new(), OnceLock::new()];
        let (slot, var, default, prefix, fix) = match self {
            Self::Isync14 => (
                &CHECKED[0],
                "HIMALAYA_SYNC_TEST_MBSYNC14",
                "mbsync",
                "isync 1.4.",
                "install Debian 12's isync (apt-get install isync), or set HIMALAYA_SYNC_TEST_MBSYNC14 \
                 to an isync 1.4 mbsync",
            ),
            Self::Isync15 => (
                &CHECKED[1],
                "HIMALAYA_SYNC_TEST_MBSYNC15",
                "/opt/isync-1.5.1/bin/mbsync",
                "isync 1.5.",
                "build it with .ci/build-isync-1.5 (as root or with sudo), or set \
                 HIMALAYA_SYNC_TEST_MBSYNC15 to an isync 1.5 mbsync",
            ),
        };
        let checked = slot.get_or_init(|| {
            let program =
                std::env::var_os(var).filter(|v| !v.is_empty()).map_or_else(|| default.into(), PathBuf::from);
            let out = Command::new(&program)
                .arg("--version")
                .output()
                .map_err(|err| format!("cannot run {}: {err}", program.display()))?;
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && version.starts_with(prefix) {
                Ok(program)
            } else {
                Err(format!("{} says {version:?}, not {prefix}x", program.display()))
            }
        });
        match checked {
            Ok(program) => program.clone(),
            Err(why) => panic!("this test needs {self:?} ({prefix}x): {why}; {fix}"),
        }
    }
}
