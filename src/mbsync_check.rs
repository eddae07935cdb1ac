//! Asking the installed mbsync whether it accepts the config file.
//!
//! Which keywords exist differs between isync versions (`TLSType` is 1.5 only, `RequireSSL` and
//! `UseIMAPS` are gone in 1.5), so only the mbsync that will run the syncs can judge a file.
//! `mbsync -c FILE NAME`, with a NAME no config can define, reads the whole file and exits
//! without connecting anywhere (isync 1.4.4 `main.c`: `load_config`, then the name lookup, then
//! "No channel specified" before any store is opened; checked with strace: no `connect`). It
//! runs once per change of the file ([`Cache`], keyed by [`FileId`]), never per call.
//!
//! [`verdict`] is the pure part: mbsync's stderr and exit status to accepted or refused.

use std::{
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The channel name asked for: a config token cannot contain a newline (`get_arg` ends a word
/// at white space unless quoted, and a quote left open at the end of a line is an error), so no
/// config defines it and mbsync always ends with "No channel or group named" once the file is read.
pub const PROBE: &str = "himalaya-sync\nprobe";

/// How long mbsync may take to read a config. It takes milliseconds; this only keeps a broken
/// binary from hanging the daemon.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Lines mbsync prints only after `load_config` succeeded: the file is accepted. The second one
/// is a file without any Channel (nothing to sync, but nothing wrong in it either).
const ACCEPTED: [&str; 2] = ["No channel or group named '", "No channels defined."];

/// At most this many of mbsync's lines go into the message.
const MAX_LINES: usize = 8;

/// mbsync's judgement of a config file from the probe run: `Ok` if it read the file, else its
/// own error lines (`FILE:LINE: message`, joined with "; ").
///
/// `exit` is the exit status, `None` if a signal ended it. Notices and warnings (a deprecated
/// keyword) are left out of the message unless nothing else was said.
pub fn verdict(exit: Option<i32>, stderr: &str) -> Result<(), String> {
    let lines: Vec<&str> = stderr.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    if exit == Some(0) || lines.iter().any(|l| ACCEPTED.iter().any(|a| l.starts_with(a))) {
        return Ok(());
    }
    // 1.4.4 writes "Notice: ...", 1.5.1 "FILE: notice: ...".
    let is_notice = |l: &&str| {
        let l = l.to_ascii_lowercase();
        l.contains("notice:") || l.starts_with("warning:")
    };
    let errors: Vec<&str> = lines.iter().copied().filter(|l| !is_notice(l)).collect();
    let said = if errors.is_empty() { lines } else { errors };
    if said.is_empty() {
        return Err(match exit {
            Some(code) => format!("mbsync exited with status {code} without saying why"),
            None => "mbsync was killed by a signal while reading it".to_owned(),
        });
    }
    let message = said.iter().take(MAX_LINES).copied().collect::<Vec<_>>().join("; ");
    match said.len().checked_sub(MAX_LINES) {
        Some(more) if more > 0 => Err(format!("{message}; and {more} more")),
        _ => Err(message),
    }
}

/// Why mbsync could not be asked. The file is not to blame: the check is skipped.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("{program} did not finish reading the config within {timeout:?}; killed it")]
    TimedOut { program: PathBuf, timeout: Duration },
}

/// Run `program -c config PROBE` (argv vector, no shell, stdin and stdout null) and judge it.
///
/// # Errors
/// mbsync could not be started or did not exit within `timeout` (then it is killed).
pub fn ask(program: &Path, config: &Path, timeout: Duration) -> Result<Result<(), String>, AskError> {
    let mut child = Command::new(program)
        .arg("-c")
        .arg(config)
        .arg(PROBE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| AskError::Spawn { program: program.to_owned(), source })?;
    // Read stderr on a thread, so a flood of error lines cannot block mbsync on a full pipe.
    let (tx, rx) = mpsc::channel();
    if let Some(mut stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stderr.by_ref().take(1 << 20).read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            // Timed out, or waiting failed (then killing and reaping is all that is left).
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(AskError::TimedOut { program: program.to_owned(), timeout });
            }
        }
    };
    // mbsync has exited; stderr ends with it unless it left a child holding the pipe.
    let stderr = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_default();
    Ok(verdict(status.code(), &String::from_utf8_lossy(&stderr)))
}

/// A file's identity: a change of any of these means the file may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    /// The identity of the file at `path` (following symlinks, as mbsync's `fopen` does).
    ///
    /// # Errors
    /// The file cannot be stat'ed.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() })
    }
}

/// The last verdict and the file identity it is about.
#[derive(Debug, Default)]
pub struct Cache {
    last: Option<(FileId, Result<(), String>)>,
}

impl Cache {
    /// mbsync's verdict on `config`, asked only if the file changed since the last ask.
    ///
    /// `program` finds mbsync; it is only called when mbsync is to be asked. No mbsync, or an
    /// mbsync that cannot be asked, skips the check (`Ok`): the sync itself then reports it.
    /// A file that cannot be stat'ed is `Ok` too: reading it will say what is wrong.
    pub fn check(&mut self, config: &Path, program: impl FnOnce() -> Option<PathBuf>) -> Result<(), String> {
        self.check_with(config, program, |program, config| ask(program, config, TIMEOUT))
    }

    fn check_with(
        &mut self,
        config: &Path,
        program: impl FnOnce() -> Option<PathBuf>,
        ask: impl FnOnce(&Path, &Path) -> Result<Result<(), String>, AskError>,
    ) -> Result<(), String> {
        let Ok(id) = FileId::of(config) else { return Ok(()) };
        if let Some((last, verdict)) = &self.last
            && *last == id
        {
            return verdict.clone();
        }
        // Not remembered: once mbsync is installed, the next call asks it.
        let Some(program) = program() else { return Ok(()) };
        let verdict = ask(&program, config).unwrap_or_else(|err| {
            tracing::warn!("cannot check the mbsync config with mbsync: {err}");
            Ok(())
        });
        self.last = Some((id, verdict.clone()));
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capture from `tests/fixtures/mbsync-check/`: (exit status, stderr).
    fn fixture(name: &str) -> (Option<i32>, String) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mbsync-check");
        let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).expect(name);
        (read("exit").trim().parse().ok(), read("stderr"))
    }

    fn judge(name: &str) -> Result<(), String> {
        let (exit, stderr) = fixture(name);
        verdict(exit, &stderr)
    }

    #[test]
    fn accepted_files() {
        assert_eq!(judge("accepted"), Ok(()));
        assert_eq!(judge("accepted-master-slave-notice"), Ok(()));
        // No Channel at all: nothing to sync, but mbsync read the file without complaint.
        assert_eq!(judge("no-channels"), Ok(()));
        assert_eq!(judge("no-channels-legacy-ssl-notices"), Ok(()));
    }

    #[test]
    fn refused_files_give_mbsyncs_own_lines() {
        assert_eq!(
            judge("refused-tlstype"),
            Err("/tmp/rc-exp/fx/tlstype.rc:6: keyword 'TLSType' is not recognized in IMAPStore sections"
                .to_owned()),
            "the Master/Slave notice is left out"
        );
        assert_eq!(
            judge("refused-missing-name"),
            Err("/tmp/rc-exp/fx/noname.rc:4: parameter missing; \
                 /tmp/rc-exp/fx/noname.rc:5: 'Far' is not a recognized section-starting or global keyword"
                .to_owned())
        );
        let store = judge("refused-unknown-store").unwrap_err();
        assert!(store.starts_with("/tmp/rc-exp/fx/nostore.rc:2: unknown store 'r'"), "{store}");
        assert!(store.ends_with("channel 'x' refers to no far side store"), "{store}");
        assert_eq!(
            judge("refused-global-after-section"),
            Err("/tmp/rc-exp/fx/global-after.rc:8: global options may not follow sections".to_owned())
        );
        assert!(judge("refused-isync-0x").unwrap_err().contains(":1: 'Mailbox' is not a recognized"));
        assert!(judge("missing-file").unwrap_err().starts_with("Cannot open config file"));
    }

    /// isync 1.5.1 (built from source at /opt/isync-1.5.1), same probe.
    #[test]
    fn isync_1_5_1_outputs() {
        assert_eq!(judge("isync-1.5.1-accepted-with-notice"), Ok(()));
        assert_eq!(
            judge("isync-1.5.1-refused-with-notice"),
            Err("/tmp/rc-exp/fx/bogus-1.5.1.rc:4: keyword 'BogusKeyword' is not recognized in IMAPAccount \
                 sections"
                .to_owned()),
            "its lower-case notice is left out"
        );
    }

    #[test]
    fn odd_outputs() {
        assert_eq!(verdict(Some(0), ""), Ok(()), "success is never a refusal");
        assert_eq!(verdict(Some(1), ""), Err("mbsync exited with status 1 without saying why".into()));
        assert!(verdict(None, "").unwrap_err().contains("signal"));
        assert_eq!(verdict(Some(1), "Notice: only this\n"), Err("Notice: only this".into()));
        let many = (1..=10).map(|i| format!("rc:{i}: bad")).collect::<Vec<_>>().join("\n");
        let err = verdict(Some(1), &many).unwrap_err();
        assert!(err.starts_with("rc:1: bad; rc:2: bad") && err.ends_with("rc:8: bad; and 2 more"), "{err}");
    }

    /// `ask`, retried while the script just written is "busy": another test thread's fork may
    /// still hold its write descriptor until that child execs (a Linux race, not ours to fix).
    fn ask_script(program: &Path, timeout: Duration) -> Result<Result<(), String>, AskError> {
        let busy = nix::errno::Errno::ETXTBSY as i32;
        for _ in 0..100 {
            match ask(program, Path::new("/the/rc"), timeout) {
                Err(AskError::Spawn { source, .. }) if source.raw_os_error() == Some(busy) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
        panic!("{} stayed busy", program.display());
    }

    /// The runner against stand-ins for mbsync (shell scripts started directly, not through a
    /// shell command line); the real binary is exercised by `tests/errors.rs`.
    #[test]
    fn ask_runs_the_program_with_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        // It gets exactly `-c FILE PROBE`, with stdin closed.
        let echo = script(
            "echo-args",
            r#"[ "$1" = -c ] && [ "$2" = /the/rc ] && [ "$3" = "$(printf 'himalaya-sync\nprobe')" ] \
               && [ $# = 3 ] && ! read -r x || { echo "bad: $*" >&2; exit 1; }
               echo "No channel or group named 'x' defined." >&2; exit 1"#,
        );
        assert_eq!(ask_script(&echo, TIMEOUT).unwrap(), Ok(()));
        let refuse = script("refuse", "echo '/the/rc:3: no' >&2; exit 1");
        assert_eq!(ask_script(&refuse, TIMEOUT).unwrap(), Err("/the/rc:3: no".into()));
        let hang = script("hang", "exec sleep 30");
        let started = Instant::now();
        let err = ask_script(&hang, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, AskError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let missing = ask(Path::new("/nonexistent/mbsync"), Path::new("/the/rc"), TIMEOUT).unwrap_err();
        assert!(matches!(missing, AskError::Spawn { .. }), "{missing}");
    }

    #[test]
    fn cache_asks_once_per_file_version() {
        let dir = tempfile::tempdir().unwrap();
        let rc = dir.path().join("rc");
        let runs = std::cell::Cell::new(0);
        // A stand-in asker that refuses every file and counts its runs.
        let refuse = |_: &Path, config: &Path| {
            runs.set(runs.get() + 1);
            Ok(Err(format!("{}:1: refused", config.display())))
        };
        let program = || Some(PathBuf::from("mbsync"));
        let refused = Err(format!("{}:1: refused", rc.display()));

        let mut cache = Cache::default();
        assert_eq!(cache.check_with(&rc, program, refuse), Ok(()), "no file: nothing to ask");
        assert_eq!(runs.get(), 0);
        std::fs::write(&rc, "Channel a\n").unwrap();
        assert_eq!(cache.check_with(&rc, program, refuse), refused);
        assert_eq!(cache.check_with(&rc, program, refuse), refused, "remembered");
        assert_eq!(runs.get(), 1, "same file: asked once");
        std::fs::write(&rc, "Channel ab\n").unwrap();
        assert_eq!(cache.check_with(&rc, program, refuse), refused);
        assert_eq!(runs.get(), 2, "changed file: asked again");
        // No mbsync: skipped and not remembered, so an mbsync installed later is asked.
        std::fs::write(&rc, "Channel abc\n").unwrap();
        assert_eq!(cache.check_with(&rc, || None, refuse), Ok(()));
        assert_eq!(runs.get(), 2);
        assert_eq!(cache.check_with(&rc, program, refuse), refused);
        assert_eq!(runs.get(), 3);
        // An mbsync that cannot be asked does not block the accounts, and is not asked again.
        std::fs::write(&rc, "Channel abcd\n").unwrap();
        assert_eq!(cache.check(&rc, || Some(PathBuf::from("/nonexistent/mbsync"))), Ok(()));
        assert_eq!(cache.check_with(&rc, program, refuse), Ok(()));
        assert_eq!(runs.get(), 3);
    }
}
