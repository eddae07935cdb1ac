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
        atomic::{AtomicBool, Ordering},
    },
};

use crate::pace::Plan;
use nix::{
    errno::Errno,
    fcntl::{FcntlArg, FdFlag, OFlag, fcntl},
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::{AsyncReadExt, unix::AsyncFd},
    process::{ChildStderr, Command},
    sync::oneshot,
    time::Instant,
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
    /// The pty master; `None` once it closed (EOF, or EIO: every holder of the slave end closed
    /// it).
    pty: Option<Pty>,
    /// Set by the wait task the moment mbsync is reaped: from then on its PID may be reused, so
    /// no signal may be sent to it.
    reaped: Arc<AtomicBool>,
    /// Output read but not handed to the run yet.
    pending: Vec<u8>,
    /// Until when output is held (see [`Mbsync::hold_until`]); `None` for not at all.
    due: Option<Instant>,
    /// Whether output was held at the last look: a hold that ended takes what piled up.
    held: bool,
    /// How fast mbsync writes, to pace the reads while holding.
    pace: crate::pace::Pace,
    /// When the pace's next read is due (a timerfd: see [`crate::alarm`]).
    alarm: crate::alarm::Alarm,
    read_buf: Box<[u8]>,
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
            pty: Some(Pty::Quiet(pty.master)),
            reaped,
            pending: Vec::new(),
            due: None,
            held: false,
            pace: crate::pace::Pace::default(),
            alarm: crate::alarm::Alarm::new(),
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
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

    /// Hold the output until `until` (a throttled publish is due then): the pty is still read,
    /// so mbsync never blocks on it, but on a timer paced to mbsync's rate instead of at each
    /// write, and what was read is handed to the run in one piece at `until` (or taken by the
    /// publish due then, with [`Mbsync::take_held`]). A burst then wakes the daemon a few times
    /// per publish, not once per record; with `None` every read goes out at once, so an isolated
    /// change keeps its latency.
    pub fn hold_until(&mut self, until: Option<Instant>) {
        self.due = until;
    }

    /// What was read and held so far, and what the pty has now, at once (a throttled publish is
    /// due: it carries the newest state). `None` if there is nothing.
    pub fn take_held(&mut self) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.read_now(now);
        if self.pending.is_empty() {
            return None;
        }
        self.pace.handed_over(now.into_std());
        Some(std::mem::take(&mut self.pending))
    }

    /// Hand back a buffer [`Mbsync::next`] or [`Mbsync::take_held`] gave out, once read: it
    /// holds the next output, so reading allocates nothing while the run goes on.
    pub fn recycle(&mut self, mut bytes: Vec<u8>) {
        if self.pending.is_empty() && bytes.capacity() > self.pending.capacity() {
            bytes.clear();
            self.pending = bytes;
        }
    }

    /// The next piece of output, or the end of the run. Cancel-safe: what was read is kept in
    /// `self` before any await.
    pub async fn next(&mut self) -> Output {
        loop {
            let now = Instant::now();
            // Checked here, not only as a select branch: a helper that keeps writing would keep
            // the earlier branches ready and starve the deadline.
            if self.drain_until.is_some_and(|d| now >= d) {
                self.pty = None;
                self.stderr = None;
            }
            // Nothing is held once mbsync has exited, or past the due time, or beyond a bound.
            let holding = self.pty.is_some()
                && self.status.is_none()
                && self.due.is_some_and(|d| now < d)
                && self.pending.len() < HOLD_MAX;
            if !holding && self.held {
                // A hold ended: take what piled up during it before handing over.
                self.read_now(now);
            }
            self.held = holding;
            if !self.pending.is_empty() && !holding {
                self.pace.handed_over(now.into_std());
                return Output::Stdout(std::mem::take(&mut self.pending));
            }
            if self.pty.is_none() && self.stderr.is_none() {
                return Output::Exited(self.reap().await);
            }
            // Holding, the pty is read when the pace says, and watched only while mbsync is
            // quiet; else it is watched, so the first write is seen at once.
            let plan = holding.then(|| self.pace.plan(now.into_std(), self.due.unwrap_or(now).into_std()));
            let watch = matches!(plan, None | Some(Plan::Watch));
            if let Some(pty) = self.pty.take() {
                self.pty = Some(if watch { pty.watched() } else { pty.quiet() });
            }
            let watched = matches!(self.pty, Some(Pty::Watched(_)));
            let read_at = match plan {
                Some(Plan::ReadAt(at)) => Some(Instant::from_std(at)),
                // Watching through a hold: what was read still goes out at its end.
                Some(Plan::Watch) if !self.pending.is_empty() => self.due,
                _ => None,
            };
            // The reactor refused the pty: read it on a short timer instead, slower but whole.
            let read_at = if watch && !watched && self.pty.is_some() {
                read_at.into_iter().chain([now + UNWATCHED_GAP]).min()
            } else {
                read_at
            };
            self.alarm.set(read_at);
            let stderr_open = self.stderr.is_some();
            let running = self.status.is_none();
            let drain_until = self.drain_until;
            tokio::select! {
                biased;
                read = read_watched(self.pty.as_ref(), &mut self.read_buf, &mut self.pending), if watched => match read {
                    Some(bytes) if holding => {
                        let line = has_line(&self.pending, bytes);
                        self.pace.read(Instant::now().into_std(), bytes, true, line);
                    }
                    Some(_) => {}
                    None => self.pty = None,
                },
                () = self.alarm.wait(), if read_at.is_some() => {
                    self.read_now(Instant::now());
                }
                read = read_stream(self.stderr.as_mut(), &mut self.err_buf), if stderr_open => match read {
                    Ok(n) if n > 0 => {
                        keep_tail(&mut self.stderr_buf, &self.err_buf[..n], STDERR_LIMIT);
                    }
                    Ok(_) | Err(_) => self.stderr = None,
                },
                status = &mut self.exit, if running => {
                    let status = status.map_err(io::Error::other).and_then(|s| s);
                    self.status = Some(status.unwrap_or_else(|_| std::process::ExitStatus::from_raw(1 << 8)));
                    self.drain_until = Some(Instant::now() + DRAIN);
                }
                () = tokio::time::sleep_until(drain_until.unwrap_or(now)), if drain_until.is_some() => {
                    tracing::debug!(pid = self.pid, "a helper of mbsync holds its output open; not waiting for it");
                    self.pty = None;
                    self.stderr = None;
                }
            }
        }
    }

    /// Read what the pty has now, without waiting.
    fn read_now(&mut self, now: Instant) {
        // Nothing is read beyond the bound, so nothing is learnt of the rate either.
        let Some(pty) = self.pty.as_ref().filter(|_| self.pending.len() < HOLD_MAX) else { return };
        let (bytes, drained) = read_available(pty.fd(), &mut self.read_buf, &mut self.pending, false);
        self.pace.read(now.into_std(), bytes, false, has_line(&self.pending, bytes));
        if drained == Drained::Closed {
            self.pty = None;
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

/// Whether the last `bytes` of `pending` hold a line end: mbsync printed a step (`-V`), not only
/// progress records.
fn has_line(pending: &[u8], bytes: usize) -> bool {
    pending[pending.len().saturating_sub(bytes)..].contains(&b'\n')
}

/// Append `bytes` to `buf`, keeping only its last `limit` bytes.
fn keep_tail(buf: &mut Vec<u8>, bytes: &[u8], limit: usize) {
    buf.extend_from_slice(bytes);
    if buf.len() > limit {
        let cut = buf.len() - limit;
        buf.drain(..cut);
    }
}

impl Drop for Mbsync {
    fn drop(&mut self) {
        // Dropped before its end (a panic in the run task): no mbsync without a supervisor.
        self.signal(Signal::SIGKILL);
    }
}

/// Held output goes out anyway once this large (bounded memory, bounded staleness).
const HOLD_MAX: usize = 256 * 1024;
/// How often the pty is read when the reactor refuses it (it takes ~18 KB; isync 1.4 writes
/// ~120 KB/s while it downloads).
const UNWATCHED_GAP: std::time::Duration = std::time::Duration::from_millis(20);
/// The most read from the pty in one call (the tty layer hands out at most 4 KiB per read).
const READ_CHUNK: usize = 16 * 1024;
/// A read of fewer bytes found the tty's 4 KiB line buffer not full, so the kernel had moved all
/// it held into it: whatever is left, mbsync wrote since. A timed read stops there. Reading on to
/// EAGAIN costs more than it finds: a read of an empty tty waits for the kernel worker that moves
/// mbsync's newest writes (`n_tty_read` → `flush_work`), a context switch each time mbsync is
/// busy (a fifth of the daemon's switches through a sync, measured with `perf record -e
/// sched:sched_switch -g`).
const SHORT_READ: usize = 4095;

/// The pty master, read on the runtime. Watched, its reactor wakes the run at the first write;
/// quiet (deregistered), mbsync's writes wake nothing and it is read on a timer: an edge-triggered
/// registration would wake the runtime for each of the two records per message isync 1.4 writes,
/// even while nobody waits for them.
#[derive(Debug)]
enum Pty {
    Watched(AsyncFd<OwnedFd>),
    Quiet(OwnedFd),
}

impl Pty {
    fn fd(&self) -> &OwnedFd {
        match self {
            Self::Watched(fd) => fd.get_ref(),
            Self::Quiet(fd) => fd,
        }
    }

    fn quiet(self) -> Self {
        match self {
            Self::Watched(fd) => Self::Quiet(fd.into_inner()),
            quiet @ Self::Quiet(_) => quiet,
        }
    }

    fn watched(self) -> Self {
        match self {
            Self::Quiet(fd) => match crate::process::try_register(fd) {
                Ok(fd) => Self::Watched(fd),
                Err(err) => {
                    // Read every `UNWATCHED_GAP` instead (see `Mbsync::next`): slower, nothing
                    // lost.
                    let (fd, err) = err.into_parts();
                    tracing::debug!(%err, "cannot watch mbsync's pty; reading it on a timer");
                    Self::Quiet(fd)
                }
            },
            watched @ Self::Watched(_) => watched,
        }
    }
}

/// Read what the pty has once the reactor says it is readable: how many bytes, `None` at EOF.
async fn read_watched(pty: Option<&Pty>, buf: &mut [u8], pending: &mut Vec<u8>) -> Option<usize> {
    let Some(Pty::Watched(fd)) = pty else { return std::future::pending().await };
    loop {
        let mut guard = match fd.readable().await {
            Ok(guard) => guard,
            Err(err) => {
                tracing::warn!(%err, "cannot watch mbsync's pty; its progress is lost");
                return None;
            }
        };
        match guard.try_io(|fd| read_once(fd.get_ref(), buf)) {
            Ok(Ok(0)) => return None,
            Ok(Ok(n)) => {
                pending.extend_from_slice(&buf[..n]);
                // The rest of a burst, without waiting.
                let (more, drained) = read_available(fd.get_ref(), buf, pending, true);
                if drained == Drained::Empty {
                    // Read to EAGAIN: the next wait needs a new write, not one more empty read.
                    guard.clear_ready();
                }
                return (drained != Drained::Closed).then_some(n + more);
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot read mbsync's pty; its progress is lost");
                return None;
            }
            // Not readable after all: the readiness was cleared; wait again.
            Err(_would_block) => {}
        }
    }
}

/// How a read of what the pty has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Nothing more to read now.
    Empty,
    /// A read found less than the tty's buffer holds: what is left came after it (not read, as
    /// a read of an empty tty waits for the kernel's flush of mbsync's newest writes).
    Short,
    /// [`HOLD_MAX`] is held: the rest waits.
    Capped,
    /// EOF (or an error): the pty is done.
    Closed,
}

/// Read what the pty has now, without waiting (up to [`HOLD_MAX`] held): how many bytes, and
/// how it ended. `to_the_end` reads until the pty says it is empty; else reading stops after a
/// read that found the tty's 4 KiB buffer not full (see [`SHORT_READ`]).
fn read_available(fd: &OwnedFd, buf: &mut [u8], pending: &mut Vec<u8>, to_the_end: bool) -> (usize, Drained) {
    let mut bytes = 0;
    while pending.len() < HOLD_MAX {
        match read_once(fd, buf) {
            Ok(0) => return (bytes, Drained::Closed),
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                bytes += n;
                if !to_the_end && n < SHORT_READ {
                    return (bytes, Drained::Short);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return (bytes, Drained::Empty),
            Err(err) => {
                tracing::warn!(%err, "cannot read mbsync's pty; its progress is lost");
                return (bytes, Drained::Closed);
            }
        }
    }
    (bytes, Drained::Capped)
}

/// One read of the (non-blocking) pty master. EIO, which a pty master returns once every holder
/// of the slave end closed it, is EOF.
fn read_once(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd.as_fd(), buf) {
            Ok(n) => return Ok(n),
            Err(Errno::EIO) => return Ok(0),
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
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
