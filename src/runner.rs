//! Runs one mbsync process the way its progress can be read, and stops it safely.
//!
//! 1. stdout goes to a pty: mbsync prints its progress counters only when `isatty(1)`.
//!    `COLUMNS` is set wide, because mbsync cuts its counters to `$COLUMNS` with `~`.
//! 2. stderr goes to a pipe: warnings and the reason of a failure.
//! 3. stdin is /dev/null, `GPG_TTY` is unset: a `PassCmd` must never wait for input no one sees.
//! 4. The child leads its own process group (a stop reaches its `PassCmd` helpers too) and gets
//!    `PR_SET_PDEATHSIG`, so it dies with the daemon even on `kill -9`. The death signal follows
//!    the *thread* that forked; the daemon runs a current-thread runtime, so that thread is the
//!    main thread and lives as long as the process.
//! 5. argv is a vector: no shell, no string-built command line.

use std::{
    io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::process::ExitStatusExt,
    },
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, FdFlag, OFlag, fcntl},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::AsyncReadExt,
    process::{ChildStderr, Command},
    sync::{mpsc, oneshot},
};

/// Width given to mbsync's progress line (as DESIGN.md says): far wider than needed, so no
/// counter is ever cut with `~` (250 would do; checked with isync 1.4.4 that 1000 is fine).
const COLUMNS: &str = "1000";
/// The most stderr kept (the reason of a failure is in the last lines).
const STDERR_LIMIT: usize = 64 * 1024;
/// How long output is still read after mbsync exited.
const DRAIN: std::time::Duration = std::time::Duration::from_millis(500);
/// The longest failure reason passed on (the end of mbsync's error output).
const REASON_LIMIT: usize = 600;

/// A running mbsync.
#[derive(Debug)]
pub struct Mbsync {
    /// The exit status, from a task that owns the child and waits for it. Polling a fresh
    /// `Child::wait` on every read would cost a `waitpid` per progress record.
    exit: oneshot::Receiver<io::Result<std::process::ExitStatus>>,
    pid: u32,
    /// Chunks read from the pty master by its reader thread; `None` once it closed.
    pty: Option<mpsc::Receiver<Vec<u8>>>,
    /// Set by the wait task the moment mbsync is reaped: from then on its PID may be reused, so
    /// no signal may be sent to it.
    reaped: Arc<AtomicBool>,
    /// Until when the reader thread keeps what it reads (see [`Mbsync::hold_until`]): µs on
    /// [`clock`], 0 for not at all.
    hold: Arc<AtomicU64>,
    /// The write end of a pipe the reader thread polls beside the pty: dropped, it wakes the
    /// thread to stop (the run is over), so the thread needs no polling timeout.
    stop: Option<OwnedFd>,
    stderr: Option<ChildStderr>,
    stderr_buf: Vec<u8>,
    err_buf: Box<[u8]>,
    /// Set once mbsync has exited: its streams are drained until EOF or this deadline, whichever
    /// comes first (a helper it started may hold the pty or stderr open for good).
    status: Option<std::process::ExitStatus>,
    drain_until: Option<tokio::time::Instant>,
}

/// What [`Mbsync::next`] saw.
#[derive(Debug)]
pub enum Output {
    /// Bytes mbsync wrote to its stdout.
    Stdout(Vec<u8>),
    /// The process ended and both streams are drained.
    Exited(Exit),
}

/// How an mbsync run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or `None` if a signal ended it.
    pub code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// What it wrote on stderr (the last 64 KiB), lossily decoded.
    pub stderr: String,
}

/// How the lines mbsync prints through its `error()` begin. isync 1.4.4 and 1.5.1 exit 0 after
/// some of these: a message it cannot store (a full disk: `Maildir error: cannot write ...: No
/// space left on device`) cancels the box, leaves the rest unsynced, and is never counted as a
/// failure (`msg_copied`'s `COPY_FAIL`).
const ERROR_PREFIXES: [&str; 5] = ["Maildir error:", "IMAP error:", "Socket error", "Error:", "Fatal:"];

impl Exit {
    /// A success is exit code 0 without an error line of mbsync's on stderr (warnings,
    /// notices and a `PassCmd`'s own chatter do not change that).
    #[must_use]
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.reported_an_error()
    }

    /// Whether mbsync printed one of its error lines (see [`ERROR_PREFIXES`]).
    fn reported_an_error(&self) -> bool {
        self.stderr.lines().map(str::trim_start).any(|l| ERROR_PREFIXES.iter().any(|p| l.starts_with(p)))
    }

    /// A one-line reason for a failure, from mbsync's stderr: its error lines, or the exit
    /// status when it printed none. Warnings and config notices (isync 1.5: `...: notice:
    /// SSLType is deprecated`) are not reasons.
    #[must_use]
    pub fn reason(&self) -> String {
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with("*** IMAP Warning")
                    && !l.starts_with("Warning:")
                    && !l.contains(": notice: ")
            })
            .collect();
        if !errors.is_empty() {
            let reason = errors.join("; ");
            // Keep the end: mbsync's last error is the one that ended it.
            return match reason.char_indices().rev().nth(REASON_LIMIT - 1) {
                Some((cut, _)) => format!("...{}", &reason[cut..]),
                None => reason,
            };
        }
        match (self.code, self.signal) {
            (Some(code), _) => format!("mbsync exited with status {code}"),
            (None, Some(sig)) => format!("mbsync was killed by signal {sig}"),
            (None, None) => "mbsync ended for an unknown reason".into(),
        }
    }
}

impl Mbsync {
    /// Start `program` with `args`.
    ///
    /// # Errors
    /// The pty cannot be opened or the program cannot be started (`NotFound` when it is missing).
    pub fn spawn(program: &Path, args: &[String]) -> io::Result<Self> {
        let pty = nix::pty::openpty(None, None).map_err(io::Error::from)?;
        // glibc's openpty does not set close-on-exec: without it mbsync and every helper it
        // starts would inherit both ends, and the master would never see EOF.
        for fd in [pty.master.as_fd(), pty.slave.as_fd()] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
        }
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(pty.slave))
            .stderr(Stdio::piped())
            .env("COLUMNS", COLUMNS)
            .env_remove("GPG_TTY")
            .process_group(0)
            .kill_on_drop(true);
        set_parent_death_signal(&mut cmd);
        // `cmd` owns the slave end; it is closed when `cmd` drops at the end of this function, so
        // the master sees EOF (EIO) once mbsync and its helpers have closed theirs.
        let mut child = cmd.spawn()?;
        let pid = child.id().ok_or_else(|| io::Error::other("mbsync exited at once"))?;
        fcntl(pty.master.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
        let stderr = child.stderr.take();
        let hold = Arc::new(AtomicU64::new(0));
        let (stop_read, stop) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let pty = spawn_pty_reader(pty.master, Arc::clone(&hold), stop_read)?;
        let (tx, exit) = oneshot::channel();
        let reaped = Arc::new(AtomicBool::new(false));
        let reaped_flag = Arc::clone(&reaped);
        tokio::spawn(async move {
            let status = child.wait().await;
            // Set before anything else runs on this (single) runtime thread.
            reaped_flag.store(true, Ordering::Relaxed);
            // The receiver only goes away with the run; then nobody needs the status.
            let _ = tx.send(status);
        });
        Ok(Self {
            exit,
            pid,
            pty: Some(pty),
            reaped,
            hold,
            stop: Some(stop),
            stderr,
            stderr_buf: Vec::new(),
            err_buf: vec![0; 4096].into_boxed_slice(),
            status: None,
            drain_until: None,
        })
    }

    /// The process id (also its process group id).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Send `signal` to mbsync's whole process group. Safe against PID reuse: nothing is sent
    /// once the child has been reaped.
    pub fn signal(&self, signal: Signal) {
        if self.reaped.load(Ordering::Relaxed) {
            return;
        }
        let pgid = Pid::from_raw(self.pid.cast_signed());
        if let Err(err) = killpg(pgid, signal) {
            tracing::debug!(pid = self.pid, %signal, %err, "killpg failed (already gone?)");
        }
    }

    /// Hold the output until `until` (a throttled publish is due then): the reader thread keeps
    /// reading the pty, so mbsync never blocks on it, but hands what it read to the run only
    /// just before that moment, in one piece. A burst then costs the run one wakeup per
    /// publish, not one per record; with `None` every read goes out at once, so an isolated
    /// change keeps its latency.
    pub fn hold_until(&self, until: Option<tokio::time::Instant>) {
        let us = until.map_or(0, |t| micros_on_clock(t.into_std()).max(1));
        self.hold.store(us, Ordering::Relaxed);
    }

    /// Hold the output until exactly `at`, when the throttle allows the next publish: what comes
    /// before then arrives in one piece at `at` and goes out at once. After each publish the run
    /// holds this way, so a burst wakes it once per interval with no timer of its own (a
    /// publish, then the timer, then a trickle of reads cost it about nine wakeups each).
    pub fn release_at(&self, at: tokio::time::Instant) {
        self.hold.store(micros_on_clock(at.into_std()) + HOLD_MARGIN_US, Ordering::Relaxed);
    }

    /// The next piece of output, or the end of the run. Cancel-safe.
    pub async fn next(&mut self) -> Output {
        loop {
            // Checked here, not only as a select branch: a helper that keeps writing would keep
            // the earlier branches ready and starve the deadline.
            if self.drain_until.is_some_and(|d| tokio::time::Instant::now() >= d) {
                self.pty = None;
                self.stderr = None;
            }
            if self.pty.is_none() && self.stderr.is_none() {
                return Output::Exited(self.reap().await);
            }
            let (pty_open, stderr_open) = (self.pty.is_some(), self.stderr.is_some());
            let running = self.status.is_none();
            let drain_until = self.drain_until;
            tokio::select! {
                biased;
                chunk = recv_chunk(self.pty.as_mut()), if pty_open => match chunk {
                    Some(bytes) => return Output::Stdout(bytes),
                    // The reader saw EOF or EIO: every holder of the slave end closed it.
                    None => self.pty = None,
                },
                read = read_stream(self.stderr.as_mut(), &mut self.err_buf), if stderr_open => match read {
                    Ok(n) if n > 0 => {
                        keep_tail(&mut self.stderr_buf, &self.err_buf[..n], STDERR_LIMIT);
                    }
                    Ok(_) | Err(_) => self.stderr = None,
                },
                status = &mut self.exit, if running => {
                    let status = status.map_err(io::Error::other).and_then(|s| s);
                    self.status = Some(status.unwrap_or_else(|_| std::process::ExitStatus::from_raw(1 << 8)));
                    self.drain_until = Some(tokio::time::Instant::now() + DRAIN);
                }
                () = tokio::time::sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now)), if drain_until.is_some() => {
                    tracing::debug!(pid = self.pid, "a helper of mbsync holds its output open; not waiting for it");
                    self.pty = None;
                    self.stderr = None;
                }
            }
        }
    }

    async fn reap(&mut self) -> Exit {
        let stderr = String::from_utf8_lossy(&self.stderr_buf).into_owned();
        let status = match self.status {
            Some(status) => Ok(status),
            None => (&mut self.exit).await.map_err(io::Error::other).and_then(|s| s),
        };
        match status {
            Ok(status) => Exit { code: status.code(), signal: status.signal(), stderr },
            Err(err) => Exit { code: None, signal: None, stderr: format!("{stderr}{err}") },
        }
    }
}

/// Append `bytes` to `buf`, keeping only its last `limit` bytes.
fn keep_tail(buf: &mut Vec<u8>, bytes: &[u8], limit: usize) {
    buf.extend_from_slice(bytes);
    if buf.len() > limit {
        let cut = buf.len() - limit;
        buf.drain(..cut);
    }
}

async fn recv_chunk(rx: Option<&mut mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    rx?.recv().await
}

impl Drop for Mbsync {
    fn drop(&mut self) {
        // Closing the pipe wakes the reader thread to stop.
        self.stop = None;
        // Dropped before its end (a panic in the run task): no mbsync without a supervisor.
        self.signal(Signal::SIGKILL);
    }
}

/// How long a holding reader pauses after a small read, so a burst is read in a few large
/// chunks.
const PACE: Duration = Duration::from_millis(5);
/// A read at least this large means the pty buffer (about 15 KB) is filling: no pause then, or
/// mbsync would block on its own progress output.
const PACE_MAX_READ: usize = 2048;
/// Held output goes out this long before the publish it is for, so it is there in time.
const HOLD_MARGIN_US: u64 = 2_000;
/// Held output goes out anyway once this large (bounded memory, bounded staleness).
const HOLD_MAX: usize = 256 * 1024;

/// A monotonic clock shared by the run and its reader thread: µs since its first use.
fn clock() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

fn micros_on_clock(t: std::time::Instant) -> u64 {
    t.saturating_duration_since(clock()).as_micros() as u64
}
/// Read the pty master on a thread of its own. A thread, not the async runtime: the runtime's
/// edge-triggered epoll would wake for every record mbsync writes (two per message) even while
/// the run task pauses; a sleeping thread is not woken by writes.
fn spawn_pty_reader(
    master: OwnedFd,
    hold: Arc<AtomicU64>,
    stop: OwnedFd,
) -> io::Result<mpsc::Receiver<Vec<u8>>> {
    // Bounded: if the runtime stalls, the reader (and so mbsync) waits instead of queuing
    // output without limit.
    let (tx, rx) = mpsc::channel(256);
    std::thread::Builder::new().name("mbsync-pty".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        // When held output is due: the publish it is for, less a margin; 0 = not holding.
        let due = || hold.load(Ordering::Relaxed).saturating_sub(HOLD_MARGIN_US);
        loop {
            // Nothing held: no timeout, so a silent mbsync (a stall) never wakes the daemon on
            // a clock. Something held: wake when it is due.
            let timeout = if pending.is_empty() {
                PollTimeout::NONE
            } else {
                let left_ms = due().saturating_sub(micros_on_clock(std::time::Instant::now())).div_ceil(1000);
                PollTimeout::try_from(i32::try_from(left_ms.min(1000)).unwrap_or(1000))
                    .unwrap_or(PollTimeout::ZERO)
            };
            let mut fds = [
                PollFd::new(master.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(%err, "cannot poll mbsync's pty; its progress is lost");
                    break;
                }
            }
            // The run is over (the write end was closed).
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                break;
            }
            let mut small_read = false;
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                match nix::unistd::read(master.as_fd(), &mut buf) {
                    // EOF, or EIO: every holder of the slave end closed it.
                    Ok(0) | Err(Errno::EIO) => {
                        if !pending.is_empty() && tx.blocking_send(std::mem::take(&mut pending)).is_err() {
                            tracing::debug!("the run is gone; its last output is dropped");
                        }
                        break;
                    }
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        small_read = n < PACE_MAX_READ;
                    }
                    Err(Errno::EINTR | Errno::EAGAIN) => {}
                    Err(err) => {
                        tracing::warn!(%err, "cannot read mbsync's pty; its progress is lost");
                        break;
                    }
                }
            }
            if pending.is_empty() {
                continue;
            }
            let holding = micros_on_clock(std::time::Instant::now()) < due();
            if !holding || pending.len() >= HOLD_MAX {
                if tx.blocking_send(std::mem::take(&mut pending)).is_err() {
                    break;
                }
            } else if small_read {
                // Never past the due time: output held beyond it misses the publish it was held
                // for and waits a whole interval more (a burst showed records 200 ms old).
                let left = due().saturating_sub(micros_on_clock(std::time::Instant::now()));
                std::thread::sleep(PACE.min(Duration::from_micros(left)));
            }
        }
    })?;
    Ok(rx)
}

async fn read_stream<R: tokio::io::AsyncRead + Unpin>(
    stream: Option<&mut R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match stream {
        Some(s) => s.read(buf).await,
        None => Ok(0),
    }
}

#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid); it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)?;
            // The daemon may have died between fork and prctl: then no signal will ever come.
            // Failing here makes the child exit before exec and the spawn report the error.
            if nix::unistd::getppid() != parent {
                // No allocation in the forked child: a plain errno.
                return Err(io::Error::from_raw_os_error(nix::errno::Errno::ESRCH as i32));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    fn failed(stderr: &str) -> Exit {
        Exit { code: Some(1), signal: None, stderr: stderr.to_owned() }
    }

    #[test]
    fn reason_is_the_error_lines_without_warnings_or_notices() {
        // isync 1.5.1 with a wrong password (tests/fixtures/captures-isync-1.5.1/).
        let exit = failed(
            "/home/user/.mbsyncrc: notice: SSLType is deprecated. Use TLSType instead.\n\
             *** IMAP Warning *** Password is being sent in the clear\n\
             IMAP command 'AUTHENTICATE PLAIN <authdata>' returned an error: [AUTHENTICATIONFAILED] \
             Authentication failed.\n",
        );
        assert_eq!(
            exit.reason(),
            "IMAP command 'AUTHENTICATE PLAIN <authdata>' returned an error: [AUTHENTICATIONFAILED] \
             Authentication failed."
        );
        assert_eq!(
            failed("Warning: lost track of 3 pulled message(s)\n").reason(),
            "mbsync exited with status 1"
        );
    }

    #[test]
    fn exit_0_with_an_error_line_is_a_failure() {
        let exited_0 = |stderr: &str| Exit { code: Some(0), signal: None, stderr: stderr.to_owned() };
        // isync 1.4.4 and 1.5.1 on a full disk: exit 0, a third of the mail pulled.
        let full = exited_0(
            "/home/user/.mbsyncrc: notice: SSLType is deprecated. Use TLSType instead.\n\
             Maildir error: cannot write /home/user/mail/INBOX/tmp/1796587110.22534_124.vm,U=124:2,S: \
             No space left on device\n",
        );
        assert!(!full.success());
        assert_eq!(
            full.reason(),
            "Maildir error: cannot write /home/user/mail/INBOX/tmp/1796587110.22534_124.vm,U=124:2,S: \
             No space left on device"
        );
        // Warnings, notices and a helper's output are no failure.
        let fine = exited_0(
            "/home/user/.mbsyncrc: notice: SSLType is deprecated. Use TLSType instead.\n\
             *** IMAP Warning *** Password is being sent in the clear\n\
             Warning: lost track of 3 pulled message(s)\n\
             gpg: encrypted with 3072-bit RSA key, ID 0123456789ABCDEF\n",
        );
        assert!(fine.success());
        assert!(exited_0("").success());
    }
}
