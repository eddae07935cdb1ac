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

use std::{io, os::fd::AsFd, os::unix::process::ExitStatusExt, path::Path, process::Stdio};

use nix::{
    fcntl::{FcntlArg, FdFlag, OFlag, fcntl},
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::AsyncReadExt,
    net::unix::pipe,
    process::{Child, ChildStderr, Command},
};

/// Width given to mbsync's progress line: wide enough that no counter is ever cut.
const COLUMNS: &str = "250";
/// The most stderr kept (the reason of a failure is in the last lines).
const STDERR_LIMIT: usize = 64 * 1024;
/// How long output is still read after mbsync exited.
const DRAIN: std::time::Duration = std::time::Duration::from_millis(500);
/// The longest failure reason passed on (the end of mbsync's error output).
const REASON_LIMIT: usize = 600;

/// A running mbsync.
#[derive(Debug)]
pub struct Mbsync {
    child: Child,
    pid: u32,
    /// The pty master. tokio's pipe reader polls any pollable fd, a pty master included.
    pty: Option<pipe::Receiver>,
    stderr: Option<ChildStderr>,
    stderr_buf: Vec<u8>,
    read_buf: Box<[u8]>,
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

impl Exit {
    /// mbsync's only success is exit code 0 (warnings on stderr do not change that).
    #[must_use]
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A one-line reason for a failure, from mbsync's stderr: its error lines, or the exit
    /// status when it printed none.
    #[must_use]
    pub fn reason(&self) -> String {
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("*** IMAP Warning") && !l.starts_with("Warning:"))
            .collect();
        if !errors.is_empty() {
            let reason = errors.join("; ");
            // Keep the end: mbsync's last error is the one that ended it.
            return match reason.char_indices().rev().nth(REASON_LIMIT) {
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
        let pty = pipe::Receiver::from_owned_fd_unchecked(pty.master)?;
        Ok(Self {
            child,
            pid,
            pty: Some(pty),
            stderr,
            stderr_buf: Vec::new(),
            read_buf: vec![0; 16 * 1024].into_boxed_slice(),
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

    /// Send `signal` to mbsync's whole process group. Safe against PID reuse: the child is ours
    /// and not reaped until [`Mbsync::next`] returns [`Output::Exited`].
    pub fn signal(&self, signal: Signal) {
        let pgid = Pid::from_raw(self.pid.cast_signed());
        if let Err(err) = killpg(pgid, signal) {
            tracing::debug!(pid = self.pid, %signal, %err, "killpg failed (already gone?)");
        }
    }

    /// The next piece of output, or the end of the run. Cancel-safe.
    pub async fn next(&mut self) -> Output {
        loop {
            if self.pty.is_none() && self.stderr.is_none() {
                return Output::Exited(self.reap().await);
            }
            let (pty_open, stderr_open) = (self.pty.is_some(), self.stderr.is_some());
            let running = self.status.is_none();
            let drain_until = self.drain_until;
            tokio::select! {
                biased;
                read = read_stream(self.pty.as_mut(), &mut self.read_buf), if pty_open => match read {
                    Ok(n) if n > 0 => return Output::Stdout(self.read_buf[..n].to_vec()),
                    // EOF, or EIO: every holder of the slave end closed it.
                    Ok(_) | Err(_) => self.pty = None,
                },
                read = read_stream(self.stderr.as_mut(), &mut self.err_buf), if stderr_open => match read {
                    Ok(n) if n > 0 => {
                        let n = n.min(self.err_buf.len());
                        let chunk = self.err_buf[..n].to_vec();
                        self.keep_stderr(&chunk);
                    }
                    Ok(_) | Err(_) => self.stderr = None,
                },
                status = self.child.wait(), if running => {
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

    fn keep_stderr(&mut self, bytes: &[u8]) {
        self.stderr_buf.extend_from_slice(bytes);
        if self.stderr_buf.len() > STDERR_LIMIT {
            let cut = self.stderr_buf.len() - STDERR_LIMIT;
            self.stderr_buf.drain(..cut);
        }
    }

    async fn reap(&mut self) -> Exit {
        let stderr = String::from_utf8_lossy(&self.stderr_buf).into_owned();
        let status = match self.status {
            Some(status) => Ok(status),
            None => self.child.wait().await,
        };
        match status {
            Ok(status) => Exit { code: status.code(), signal: status.signal(), stderr },
            Err(err) => Exit { code: None, signal: None, stderr: format!("{stderr}{err}") },
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
