//! Other processes: who they are (/proc, through `procfs`) and how to stop one safely (a pidfd,
//! through `rustix`).
//!
//! A PID is only a name that the kernel may give to another process once the first one is reaped.
//! So a process is identified by PID *and* start time, checked again after a pidfd is opened:
//! from then on the pidfd refers to that one process, and a signal sent through it can never
//! reach a newcomer that reused the PID.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::io::unix::AsyncFd;

/// What /proc says about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// The executable (`/proc/PID/exe`); `None` for a zombie or a process we may not inspect.
    pub exe: Option<PathBuf>,
    pub argv: Vec<String>,
    /// Start time in clock ticks after boot: with the PID, a process's identity.
    pub start_ticks: u64,
    /// The working directory (relative `-c` paths are relative to it).
    pub cwd: Option<PathBuf>,
}

impl ProcInfo {
    /// Read process `pid`; `None` if it is gone or unreadable.
    #[must_use]
    pub fn read(pid: u32) -> Option<Self> {
        let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
        let stat = process.stat().ok()?;
        let status = process.status().ok()?;
        let argv = process.cmdline().ok()?.into_iter().filter(|a| !a.is_empty()).collect::<Vec<_>>();
        Some(Self {
            pid,
            ppid: u32::try_from(stat.ppid).unwrap_or(0),
            uid: status.ruid,
            exe: process.exe().ok(),
            argv,
            start_ticks: stat.starttime,
            cwd: process.cwd().ok(),
        })
    }

    /// Whether this is an mbsync of user `uid` (its executable, not just its name, is mbsync).
    #[must_use]
    pub fn is_mbsync_of(&self, uid: u32) -> bool {
        self.uid == uid && self.exe.as_deref().and_then(Path::file_name).is_some_and(|n| n == "mbsync")
    }

    /// Seconds since the process started.
    #[must_use]
    pub fn runtime_s(&self) -> u64 {
        let ticks = procfs::ticks_per_second().max(1);
        let uptime = <procfs::Uptime as procfs::Current>::current().map_or(0.0, |u| u.uptime);
        let started = self.start_ticks as f64 / ticks as f64;
        (uptime - started).max(0.0) as u64
    }
}

/// Why a process may not be stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopError {
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    #[error("process {pid} is not an mbsync of this user ({what}); nothing was signalled")]
    NotOurs { pid: u32, what: String },
    #[error("cannot watch process {pid}: {reason}")]
    Io { pid: u32, reason: String },
}

/// A process held by a pidfd: signals reach exactly it, and its end is awaited without polling.
#[derive(Debug)]
pub struct Held {
    pub info: ProcInfo,
    fd: AsyncFd<OwnedFd>,
}

impl Held {
    /// Open a pidfd on `expected.pid`, then check that it still is `expected` (same start time,
    /// same uid, an mbsync of `uid`).
    ///
    /// # Errors
    /// Gone, not our mbsync, or the pidfd cannot be opened.
    pub fn open_mbsync(expected: &ProcInfo, uid: u32) -> Result<Self, StopError> {
        let pid = expected.pid;
        let raw = Pid::from_raw(i32::try_from(pid).unwrap_or(-1)).ok_or(StopError::Gone { pid })?;
        let fd = match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Err(StopError::Gone { pid }),
            Err(err) => return Err(StopError::Io { pid, reason: err.to_string() }),
        };
        // Checked *after* the pidfd exists: if the PID was reused in between, the start time
        // differs and the newcomer is left alone.
        let now = ProcInfo::read(pid).ok_or(StopError::Gone { pid })?;
        if now.start_ticks != expected.start_ticks {
            return Err(StopError::NotOurs { pid, what: "the PID now names another process".into() });
        }
        // The kernel drops /proc/PID/exe when a process releases its memory on the way out:
        // the mbsync we saw (same start time, same uid) is exiting, not someone else's.
        if now.exe.is_none() && now.uid == uid && expected.is_mbsync_of(uid) {
            return Err(StopError::Gone { pid });
        }
        if !now.is_mbsync_of(uid) {
            let what = match &now.exe {
                _ if now.uid != uid => format!("it belongs to uid {}", now.uid),
                Some(exe) => format!("its executable is {}", exe.display()),
                None => "its executable cannot be read".into(),
            };
            return Err(StopError::NotOurs { pid, what });
        }
        let fd = register(fd).map_err(|e| StopError::Io { pid, reason: e.to_string() })?;
        Ok(Self { info: now, fd })
    }

    /// Send `signal` through the pidfd (a no-op once the process has exited).
    pub fn signal(&self, signal: Signal) {
        if let Err(err) = pidfd_send_signal(self.fd.get_ref().as_fd(), signal) {
            tracing::debug!(pid = self.info.pid, %err, "pidfd_send_signal failed (already gone?)");
        }
    }

    /// Wait until the process has exited (its pidfd turns readable), at most `timeout`; whether it
    /// did.
    pub async fn exited_within(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.exited()).await.is_ok()
    }

    /// Resolves when the process has exited.
    pub async fn exited(&self) {
        // A pidfd stays readable once its process is gone: no need to clear it.
        if let Err(err) = self.fd.readable().await {
            tracing::warn!(pid = self.info.pid, %err, "cannot wait on a pidfd");
        }
    }

    /// Stop it safely: SIGTERM (mbsync's journal makes that safe), SIGKILL after `grace`; returns
    /// once it is gone.
    pub async fn stop(&self, grace: Duration) {
        self.signal(Signal::TERM);
        if !self.exited_within(grace).await {
            tracing::warn!(pid = self.info.pid, "mbsync ignored SIGTERM; killing it");
            self.signal(Signal::KILL);
            self.exited().await;
        }
    }
}

/// Wait until process `pid` has exited, at most `timeout` (never signals it); whether it did.
pub async fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let Some(raw) = Pid::from_raw(i32::try_from(pid).unwrap_or(-1)) else { return true };
    let fd = match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return true,
        Err(err) => {
            tracing::debug!(pid, %err, "cannot open a pidfd to wait on");
            return false;
        }
    };
    match register(fd) {
        Ok(fd) => tokio::time::timeout(timeout, fd.readable()).await.is_ok(),
        Err(_) => false,
    }
}

/// Register a descriptor-owning value with the runtime, for readability.
pub fn register<T: std::os::fd::AsRawFd>(owner: T) -> io::Result<AsyncFd<T>> {
    try_register(owner).map_err(io::Error::from)
}

/// [`register`], giving `owner` back if the runtime refuses it.
#[allow(unsafe_code)]
pub fn try_register<T: std::os::fd::AsRawFd>(
    owner: T,
) -> Result<AsyncFd<T>, tokio::io::unix::AsyncFdRegisterError<T>> {
    // SAFETY: `owner` owns its descriptor (an `OwnedFd`, an `Inotify`) and `AsyncFd` owns `owner`
    // from here on: nothing else can close or replace the descriptor while it is registered.
    unsafe { AsyncFd::register_with_interest(owner, tokio::io::Interest::READABLE) }
}

/// Whether process `pid` runs an executable named `mbsync`: a cheap first test (one
/// `readlink`, which fails for other users' processes) before [`ProcInfo::read`].
#[must_use]
pub fn exe_is_mbsync(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "mbsync"))
}

/// Every PID in /proc.
pub fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// The real uid of this process.
#[must_use]
pub fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// `io::Error` for a `StopError`, for callers that speak io.
impl From<StopError> for io::Error {
    fn from(err: StopError) -> Self {
        io::Error::other(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_and_is_no_mbsync() {
        let me = ProcInfo::read(std::process::id()).expect("read /proc/self");
        assert_eq!(me.uid, my_uid());
        assert!(!me.argv.is_empty());
        assert!(!me.is_mbsync_of(my_uid()));
        assert!(!exe_is_mbsync(std::process::id()));
    }

    #[tokio::test]
    async fn a_pidfd_refuses_a_process_that_is_not_mbsync() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let info = ProcInfo::read(child.id()).unwrap();
        let err = Held::open_mbsync(&info, my_uid()).unwrap_err();
        assert!(matches!(err, StopError::NotOurs { .. }), "{err}");
        // A stale identity (another start time) is refused before anything is signalled.
        let stale = ProcInfo { start_ticks: info.start_ticks + 1, ..info };
        assert!(matches!(Held::open_mbsync(&stale, my_uid()), Err(StopError::NotOurs { .. })));
        assert!(child.try_wait().unwrap().is_none(), "nothing was signalled");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn an_mbsync_on_its_way_out_is_gone_not_foreign() {
        // A zombie keeps its PID and start time but no longer has an executable to read: the
        // state an mbsync is in when it ends just as a TakeOver checks it.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let info = ProcInfo::read(child.id()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ProcInfo::read(child.id()).is_some_and(|p| p.exe.is_some()) {
            assert!(std::time::Instant::now() < deadline, "the child never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen_as_mbsync = ProcInfo { exe: Some("/usr/bin/mbsync".into()), ..info.clone() };
        let err = Held::open_mbsync(&seen_as_mbsync, my_uid()).unwrap_err();
        assert!(matches!(err, StopError::Gone { .. }), "{err}");
        // What was never seen as an mbsync stays refused, not gone.
        let err = Held::open_mbsync(&info, my_uid()).unwrap_err();
        assert!(matches!(err, StopError::NotOurs { .. }), "{err}");
        child.wait().unwrap();
    }
}
