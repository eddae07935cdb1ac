//! Running a program under test with bounded waits: stdout and stderr are collected by threads
//! (so a full pipe never blocks the child), the wait has a timeout, and the child is killed on
//! drop.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running child process; killed (SIGKILL) and reaped on drop.
pub struct Spawned {
    child: Child,
    what: String,
    started: Instant,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// A finished child: exit status, its whole output and how long it ran.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// The exit code (None if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panic with both outputs unless the exit code is `code`.
    pub fn assert_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{what}: expected exit code {code}, got {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

impl Spawned {
    /// Spawn `cmd` with stdin from /dev/null and stdout/stderr collected. `what` names it in
    /// panic messages.
    pub fn spawn(what: &str, cmd: &mut Command) -> Spawned {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, Arc::clone(&stdout)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, Arc::clone(&stderr)));
        }
        Spawned { child, what: what.to_owned(), started: Instant::now(), stdout, stderr, readers }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since spawn.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the child has exited; `wait` still returns its status afterwards.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Output collected so far.
    pub fn stdout_so_far(&self) -> String {
        text(&self.stdout)
    }

    /// Error output collected so far.
    pub fn stderr_so_far(&self) -> String {
        text(&self.stderr)
    }

    /// Wait until the child exits, at most `timeout`; on timeout kill it and panic with its
    /// output so far.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if self.started.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{} did not finish within {timeout:?}; killed it\n--- stdout ---\n{}\n\
                         --- stderr ---\n{}",
                        self.what,
                        self.stdout_so_far(),
                        self.stderr_so_far()
                    );
                }
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
        };
        let elapsed = self.started.elapsed();
        // The pipes reach EOF when the child is gone, unless it left a grandchild holding them:
        // wait a little, then take what is there.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
        Finished { status, stdout: self.stdout_so_far(), stderr: self.stderr_so_far(), elapsed }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Run `cmd` to completion within `timeout` (see [`Spawned::wait`]).
pub fn run(what: &str, cmd: &mut Command, timeout: Duration) -> Finished {
    Spawned::spawn(what, cmd).wait(timeout)
}

fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(&buf[..n]),
            }
        }
    })
}

fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
}
