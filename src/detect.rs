//! Finds bare mbsync runs (cron, a shell, an old plugin) the moment they start, without polling.
//!
//! mbsync takes an fcntl lock on `<state>.lock` for every box it opens: `.mbsyncstate.lock` in
//! the near Maildir box with `SyncState *`, else `<SyncState dir>/<stores and boxes>.lock`. One
//! inotify instance watches those directories for opens; the kernel names the holder of an opened
//! `*.lock` (`F_GETLK` on that file), and /proc then confirms it is this user's mbsync with this
//! config and says which channels its arguments sync (the service's own runs are known at once).
//! A lock still free at its open is asked again 2 ms later: the wakeup often runs the daemon
//! before mbsync has taken it.
//! The core holds it by a pidfd from then on, so its end is seen at once too. Idle, nothing here
//! wakes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use crate::{
    alarm::Alarm,
    core::{Core, Locks},
    foreign,
    mbsyncrc::{MbsyncConfig, StoreKind},
};

/// The directories where mbsync creates its lock files for `config`'s channels. `home` and
/// `state_home` expand `~` and mbsync's defaults.
#[must_use]
pub fn lock_places(config: &MbsyncConfig, home: &Path, state_home: &Path) -> Vec<PathBuf> {
    let expand = |p: &str| match p.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None if p == "~" => home.to_owned(),
        None => PathBuf::from(p),
    };
    let mut places: Vec<PathBuf> = Vec::new();
    let mut add = |dir: PathBuf| {
        if !places.contains(&dir) {
            places.push(dir);
        }
    };
    for channel in &config.channels {
        match channel.sync_state.as_deref().or(config.sync_state.as_deref()) {
            Some("*") => {
                // In the near Maildir box itself: the store's root holds the boxes.
                let store = channel.near.as_deref().and_then(|n| config.store(n));
                if let Some(store) = store.filter(|s| s.kind == StoreKind::Maildir) {
                    store
                        .path
                        .as_deref()
                        .into_iter()
                        .chain(store.inbox.as_deref())
                        .for_each(|p| add(expand(p)));
                }
            }
            Some(prefix) => {
                // A path prefix: the locks are files in its directory.
                let path = expand(prefix);
                add(if prefix.ends_with('/') {
                    path
                } else {
                    path.parent().map(Path::to_owned).unwrap_or(path)
                });
            }
            None => {
                // mbsync's default: ~/.mbsync/ (1.5 prefers $XDG_STATE_HOME/isync/ when it exists).
                add(home.join(".mbsync"));
                add(state_home.join("isync"));
            }
        }
    }
    places
}

/// What the kernel says of the lock on one of mbsync's `*.lock` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockProbe {
    /// The file could not be opened (gone, or not a regular file): nothing was asked.
    NotOpened,
    /// Nobody holds it (yet: mbsync locks right after its open).
    Free,
    /// This process holds it.
    Held(u32),
}

/// Open one of mbsync's `*.lock` files to ask about it: never a FIFO or a device someone named
/// `*.lock`, never through a symlink.
fn open_lock(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file()) {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    file.metadata().is_ok_and(|m| m.file_type().is_file()).then_some(file)
}

/// Ask the kernel who holds mbsync's POSIX lock on `file` (`F_GETLK` on that one file). Not the
/// system's lock table (/proc/locks): each of its reads waits for an RCU grace period, 10–23 ms
/// measured, with the daemon's only thread blocked and mbsync's pty unread.
fn lock_holder(file: &std::fs::File) -> LockProbe {
    // A write lock conflicts with any lock mbsync holds; the kernel describes the holder.
    let mut lock = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    match nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_GETLK(&mut lock)) {
        Ok(_) if i32::from(lock.l_type) != nix::libc::F_UNLCK => {
            // An open file description lock has no owner PID (-1), nor has a holder in a PID
            // namespace this process cannot see (0): /proc is scanned instead.
            u32::try_from(lock.l_pid).ok().filter(|&pid| pid > 0).map_or(LockProbe::Free, LockProbe::Held)
        }
        Ok(_) | Err(_) => LockProbe::Free,
    }
}

/// An `Inotify` for tokio's `AsyncFd`, which wants `AsRawFd`.
struct Ino(Inotify);

impl std::os::fd::AsRawFd for Ino {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsFd::as_fd(&self.0).as_raw_fd()
    }
}

/// Whether a directory below a lock place may be a box. Not a hidden one, and not a Maildir's
/// own `cur`, `new` and `tmp` (the Inbox is a place and a box at once): a watch there would wake
/// the service for every message file mbsync opens.
fn may_be_a_box(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    !name.starts_with('.') && !matches!(name.as_ref(), "cur" | "new" | "tmp")
}

/// A lock file the service asked about. While an mbsync holds its lock the file is kept open, and
/// every later question is `F_GETLK` on it, which opens nothing; each open of the service's own
/// is an `IN_OPEN` it skips once (`own`). So every open the watch does not skip is news: a bare
/// mbsync that starts right after one of the service's own runs opened the same lock is seen at
/// once (an earlier version took opens within 50 ms of its own for echoes of a second daemon and
/// missed such a run until it opened its next box; the takeover bench found it), and a second
/// daemon of this user watching the same boxes answers each of the other's opens at most once,
/// with no loop. The file is let go when nobody holds the lock any more (the core says when an
/// mbsync ended): an open file pins its directories (a removed directory that is still pinned
/// never tells its watch it is gone) and their mount, no longer than the mbsync holding the lock
/// pins them itself. (Letting go at `IN_DELETE` instead woke the daemon for every file mbsync
/// removes in a box: one wakeup too many in tests/takeover.rs's quiet-box test.)
struct Kept {
    /// Open while the lock is held.
    file: Option<std::fs::File>,
    /// Device and inode: a lock file removed and made anew is opened anew.
    id: (u64, u64),
    /// Own opens whose events are still to come.
    own: u32,
}

/// At most this many lock files are remembered (one per box; a systemd user unit gets 1,024
/// descriptors). Beyond it one is forgotten for each new one: its next question opens it again.
const KEPT_MAX: usize = 256;

/// The running watch.
struct Watch {
    fd: AsyncFd<Ino>,
    /// Watched directory per descriptor, and whether its subdirectories are boxes to watch too.
    dirs: HashMap<WatchDescriptor, (PathBuf, bool)>,
    /// Places that do not exist yet (mbsync creates `~/.mbsync` at its first run; a user makes
    /// the Maildir root, or removes and makes it again): their nearest existing ancestor is
    /// watched for the next directory on the way, and its creation places the watch anew.
    awaited: HashMap<WatchDescriptor, Vec<std::ffi::OsString>>,
    /// Lock files kept open to ask who holds them (see [`Kept`]).
    kept: HashMap<PathBuf, Kept>,
    /// Events were lost: scan /proc once the watches are placed anew.
    rescan: bool,
    /// Lock files found opened but free, and when to ask again ([`RECHECK`] after) before /proc
    /// is scanned. Kept across a new placing of the watches: dropping them could miss a run.
    recheck: Vec<(PathBuf, tokio::time::Instant)>,
    recheck_alarm: Alarm,
}

/// How long after an open that found its lock free the lock is asked again. mbsync locks right
/// after its open, but the inotify wakeup often runs this daemon on mbsync's CPU in between:
/// syscall traces showed one to three such opens per sync of the service's own runs, each
/// answered by a /proc scan (~85 readlinks); a second question 2 ms on finds the holder instead.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(2);

impl Watch {
    fn new(fd: AsyncFd<Ino>) -> Self {
        Self {
            fd,
            dirs: HashMap::new(),
            awaited: HashMap::new(),
            kept: HashMap::new(),
            rescan: false,
            recheck: Vec::new(),
            recheck_alarm: Alarm::new(),
        }
    }

    /// Ask about a lock file whose open was news: the answer, or `None` if the lock is free for
    /// now and is to be asked again at [`RECHECK`] (see [`Watch::due_rechecks`]). An answer
    /// replaces a question still pending for the same file.
    fn ask(&mut self, path: PathBuf) -> Option<LockProbe> {
        let probe = self.probe(&path);
        self.recheck.retain(|(p, _)| *p != path);
        let answer = if matches!(probe, LockProbe::Free) {
            self.recheck.push((path, tokio::time::Instant::now() + RECHECK));
            None
        } else {
            Some(probe)
        };
        self.arm_recheck();
        answer
    }

    /// The lock files due to be asked again, taken off the list; the alarm moves to the next.
    fn due_rechecks(&mut self) -> Vec<PathBuf> {
        let now = tokio::time::Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.recheck).into_iter().partition(|(_, at)| *at <= now);
        self.recheck = later;
        self.arm_recheck();
        due.into_iter().map(|(path, _)| path).collect()
    }

    /// Set the recheck alarm to the earliest lock due to be asked again, if any.
    fn arm_recheck(&mut self) {
        self.recheck_alarm.set(self.recheck.iter().map(|(_, at)| *at).min());
    }

    fn add(&mut self, dir: &Path, boxes_below: bool) {
        let mut flags = AddWatchFlags::IN_OPEN | AddWatchFlags::IN_ONLYDIR;
        if boxes_below {
            flags |= AddWatchFlags::IN_CREATE;
        }
        match self.fd.get_ref().0.add_watch(dir, flags) {
            Ok(wd) => {
                self.dirs.insert(wd, (dir.to_owned(), boxes_below));
            }
            Err(err) => tracing::debug!(dir = %dir.display(), %err, "not watched"),
        }
    }

    /// Watch the lock places of the core's current config (and nothing else).
    fn place<L: Locks>(&mut self, core: &Core<L>) {
        self.kept.clear();
        let old: Vec<WatchDescriptor> =
            self.dirs.drain().map(|(wd, _)| wd).chain(self.awaited.drain().map(|(wd, _)| wd)).collect();
        for wd in old {
            let _ = self.fd.get_ref().0.rm_watch(wd);
        }
        let Some(config) = core.mbsync_config() else { return };
        let paths = &core.settings().paths;
        let mut missing = Vec::new();
        for dir in lock_places(&config, &paths.home, &paths.state_home) {
            if !dir.is_dir() {
                missing.push(dir);
                continue;
            }
            self.add(&dir, true);
            // Box directories one level down (a Maildir store root holds its boxes).
            for sub in std::fs::read_dir(&dir).into_iter().flatten().filter_map(Result::ok) {
                if sub.file_type().is_ok_and(|t| t.is_dir()) && may_be_a_box(&sub.file_name()) {
                    self.add(&sub.path(), false);
                }
            }
        }
        // After the places, whose watches an ancestor's may share.
        for dir in missing {
            self.await_creation(&dir);
        }
        if std::mem::take(&mut self.rescan) {
            core.scan_bare();
        }
    }

    /// Watch the nearest existing ancestor of `dir` for the directory that leads to it.
    fn await_creation(&mut self, dir: &Path) {
        let Some(ancestor) = dir.ancestors().skip(1).find(|a| a.is_dir()) else { return };
        let Some(next) = dir.strip_prefix(ancestor).ok().and_then(|rest| rest.components().next()) else {
            return;
        };
        let mut flags = AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR;
        // A second watch of one directory replaces the first one's mask: keep what a place or
        // box watch of it asked for.
        if self.dirs.values().any(|(d, _)| d == ancestor) {
            flags |= AddWatchFlags::IN_OPEN;
        }
        match self.fd.get_ref().0.add_watch(ancestor, flags) {
            Ok(wd) => {
                tracing::debug!(place = %dir.display(), watched = %ancestor.display(), "a lock place does not exist yet");
                let names = self.awaited.entry(wd).or_default();
                if !names.iter().any(|n| n.as_os_str() == next.as_os_str()) {
                    names.push(next.as_os_str().to_owned());
                }
            }
            Err(err) => tracing::debug!(dir = %ancestor.display(), %err, "not watched"),
        }
    }

    /// Who holds mbsync's lock on `path`: asked of the kept file while it is still the one at
    /// `path`, else of the file opened (and kept) now.
    fn probe(&mut self, path: &Path) -> LockProbe {
        use std::os::unix::fs::MetadataExt;
        if let Some(Kept { file: Some(file), id, .. }) = self.kept.get(path)
            && std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *id)
        {
            let probe = lock_holder(file);
            if !matches!(probe, LockProbe::Held(_)) {
                self.let_go(path);
            }
            return probe;
        }
        let Some(file) = open_lock(path) else { return LockProbe::NotOpened };
        let probe = lock_holder(&file);
        let Ok(id) = file.metadata().map(|m| (m.dev(), m.ino())) else { return probe };
        if self.kept.len() >= KEPT_MAX && !self.kept.contains_key(path) {
            // One whose own open was seen already, so forgetting it makes no open look new.
            let other = self.kept.iter().find(|(_, k)| k.own == 0).or_else(|| self.kept.iter().next());
            if let Some(other) = other.map(|(p, _)| p.clone()) {
                self.kept.remove(&other);
            }
        }
        let own = self.kept.get(path).map_or(0, |k| k.own) + 1;
        let file = matches!(probe, LockProbe::Held(_)).then_some(file);
        self.kept.insert(path.to_owned(), Kept { file, id, own });
        probe
    }

    /// Close the kept file of `path` (its lock is free); remember the service's own opens still
    /// to come.
    fn let_go(&mut self, path: &Path) {
        if let Some(kept) = self.kept.get_mut(path) {
            kept.file = None;
        }
        self.forget_if_done(path);
    }

    /// Forget `path` once there is nothing to remember of it: no file kept, no own open to come.
    fn forget_if_done(&mut self, path: &Path) {
        if self.kept.get(path).is_some_and(|k| k.own == 0 && k.file.is_none()) {
            self.kept.remove(path);
        }
    }

    /// An mbsync ended: close the kept files whose lock nobody holds any more (one killed before
    /// its clean end leaves its lock file behind).
    fn let_go_of_free(&mut self) {
        let free: Vec<PathBuf> = self
            .kept
            .iter()
            .filter(|(_, k)| k.file.as_ref().is_none_or(|f| !matches!(lock_holder(f), LockProbe::Held(_))))
            .map(|(p, _)| p.clone())
            .collect();
        for path in free {
            self.let_go(&path);
        }
    }

    /// Follow new box directories; the `*.lock` files that were opened; and whether the places
    /// must be watched anew (one was removed, or a missing one is on its way).
    fn handle(&mut self, events: Vec<nix::sys::inotify::InotifyEvent>) -> (Vec<PathBuf>, bool) {
        let mut locks = Vec::new();
        let mut replace = false;
        for event in events {
            // The kernel dropped events: what they said is unknown, so start over and scan /proc
            // for bare runs once.
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                self.rescan = true;
                replace = true;
                continue;
            }
            if let (Some(names), Some(name)) = (self.awaited.get(&event.wd), &event.name)
                && event.mask.contains(AddWatchFlags::IN_ISDIR)
                && names.contains(name)
            {
                replace = true;
            }
            let Some((dir, boxes_below)) = self.dirs.get(&event.wd).cloned() else { continue };
            // The kernel dropped the watch: the place itself was removed (our own removals
            // happen after `dirs` forgot the descriptor).
            if boxes_below && event.mask.contains(AddWatchFlags::IN_IGNORED) {
                replace = true;
                continue;
            }
            let Some(name) = event.name else { continue };
            let path = dir.join(&name);
            if event.mask.contains(AddWatchFlags::IN_CREATE) && event.mask.contains(AddWatchFlags::IN_ISDIR) {
                if boxes_below && may_be_a_box(&name) {
                    self.add(&path, false);
                }
            } else if event.mask.contains(AddWatchFlags::IN_OPEN)
                && name.to_string_lossy().ends_with(".lock")
                && !locks.contains(&path)
            {
                match self.kept.get_mut(&path) {
                    Some(kept) if kept.own > 0 => {
                        kept.own -= 1;
                        self.forget_if_done(&path);
                    }
                    _ => locks.push(path),
                }
            }
        }
        (locks, replace)
    }
}

pub async fn watch<L: Locks>(core: Core<L>) {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(std::io::Error::from)
        .and_then(|i| crate::process::register(Ino(i)));
    let fd = match inotify {
        Ok(fd) => fd,
        Err(err) => {
            tracing::warn!(%err, "no inotify: bare mbsync runs are seen only when a client asks");
            return;
        }
    };
    let mut watch = Watch::new(fd);
    loop {
        watch.place(&core);
        loop {
            tokio::select! {
                ready = watch.fd.readable() => {
                    let mut guard = match ready {
                        Ok(guard) => guard,
                        Err(err) => {
                            tracing::warn!(%err, "inotify failed; bare mbsync runs are seen only when a client asks");
                            return;
                        }
                    };
                    let events = match guard.get_inner().0.read_events() {
                        Ok(events) => events,
                        Err(nix::errno::Errno::EAGAIN) => {
                            guard.clear_ready();
                            continue;
                        }
                        Err(err) => {
                            tracing::warn!(%err, "cannot read inotify events");
                            return;
                        }
                    };
                    drop(guard);
                    let (locks, replace) = watch.handle(events);
                    for path in locks {
                        if let Some(probe) = watch.ask(path) {
                            core.lock_probed(probe);
                        }
                    }
                    if replace {
                        break;
                    }
                }
                () = watch.recheck_alarm.wait() => {
                    for path in watch.due_rechecks() {
                        let probe = watch.probe(&path);
                        core.lock_probed(probe);
                    }
                }
                // An edit may add channels, stores or SyncState places.
                () = core.config_changed() => break,
                () = core.mbsync_ended() => watch.let_go_of_free(),
            }
        }
    }
}

impl<L: Locks> Core<L> {
    /// A `*.lock` of mbsync was opened and `probe` says who holds it now: follow the holder (or,
    /// if the lock is not taken yet, any bare mbsync on our channels).
    pub fn lock_probed(&self, probe: LockProbe) {
        // The service's own runs open their locks too.
        if let LockProbe::Held(pid) = probe
            && self.runs_mbsync(pid)
        {
            return;
        }
        let found = self.search_all(|search| match probe {
            LockProbe::Held(pid) => foreign::confirm(search, pid).into_iter().collect(),
            // Still free 2 ms after its open (asked again: see `detect::RECHECK`), or gone: a
            // run that held it briefly, or one whose lock the kernel cannot name to us (another
            // PID namespace). /proc knows it if it still runs.
            LockProbe::Free | LockProbe::NotOpened => foreign::scan(search),
        });
        for (info, channels) in found.unwrap_or_default() {
            self.process_found(&info, &channels);
        }
    }

    /// Look for bare mbsync runs once (at start: they may predate the service).
    pub fn scan_bare(&self) {
        for (info, channels) in self.search_all(foreign::scan).unwrap_or_default() {
            self.process_found(&info, &channels);
        }
    }

    /// Run `f` with a search over every channel of the config; `None` without a good config.
    fn search_all<T>(&self, f: impl FnOnce(&foreign::Search<'_>) -> T) -> Option<T> {
        let config = self.mbsync_config()?;
        let channels: Vec<String> = config.channels.iter().map(|c| c.name.clone()).collect();
        Some(self.search(&config, &channels, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mbsyncrc;

    fn places(rc: &str) -> Vec<PathBuf> {
        lock_places(&mbsyncrc::parse(rc).unwrap(), Path::new("/h"), Path::new("/h/.local/state"))
    }

    #[test]
    fn sync_state_star_means_the_near_maildir_boxes() {
        let rc = "MaildirStore l\nPath ~/mail/\nInbox ~/mail/INBOX\n\nIMAPStore r\nHost x\n\n\
                  Channel c\nFar :r:\nNear :l:\nSyncState *\n";
        assert_eq!(places(rc), [PathBuf::from("/h/mail/"), PathBuf::from("/h/mail/INBOX")]);
    }

    #[test]
    fn a_state_directory_global_or_per_channel() {
        let rc = "SyncState ~/.state/mbsync/\n\nMaildirStore l\nPath /m/\n\n\
                  Channel a\nFar :l:x\nNear :l:y\n\n\
                  Channel b\nFar :l:x\nNear :l:y\nSyncState /var/st/prefix-\n";
        assert_eq!(places(rc), [PathBuf::from("/h/.state/mbsync/"), PathBuf::from("/var/st")]);
    }

    #[test]
    fn a_lock_file_is_asked_only_if_it_is_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(".mbsyncstate.lock");
        assert!(open_lock(&lock).is_none());
        std::fs::write(&lock, "").unwrap();
        // Unlocked (this process's own locks never conflict with its question either).
        assert_eq!(lock_holder(&open_lock(&lock).unwrap()), LockProbe::Free);
        // Never a FIFO (an open would wait for a writer), nor through a symlink.
        let fifo = dir.path().join("fifo.lock");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
        assert!(open_lock(&fifo).is_none());
        let link = dir.path().join("link.lock");
        std::os::unix::fs::symlink(&lock, &link).unwrap();
        assert!(open_lock(&link).is_none());
    }

    /// A child process holding a POSIX write lock on `path`, as mbsync does, until killed.
    #[allow(unsafe_code)]
    fn hold_lock(path: &Path) -> nix::unistd::Pid {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child makes only async-signal-safe calls (fcntl, write, pause) until the
        // test kills it; it allocates nothing and takes no locks.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let lock = nix::libc::flock {
                    l_type: nix::libc::F_WRLCK as i16,
                    l_whence: nix::libc::SEEK_SET as i16,
                    l_start: 0,
                    l_len: 0,
                    l_pid: 0,
                };
                unsafe {
                    nix::libc::fcntl(file.as_raw_fd(), nix::libc::F_SETLK, &raw const lock);
                    nix::libc::write(ready_w.as_raw_fd(), b"x".as_ptr().cast(), 1);
                    loop {
                        nix::libc::pause();
                    }
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(ready_w);
                let mut byte = [0u8; 1];
                nix::unistd::read(&ready_r, &mut byte).unwrap();
                child
            }
        }
    }

    fn end(child: nix::unistd::Pid) {
        nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
        nix::sys::wait::waitpid(child, None).unwrap();
    }

    #[tokio::test]
    async fn the_probes_own_open_is_skipped_and_every_later_open_is_news() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(".mbsyncstate.lock");
        std::fs::write(&lock, "").unwrap();
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
        let fd = crate::process::register(Ino(inotify)).unwrap();
        let mut watch = Watch::new(fd);
        watch.add(dir.path(), false);
        let events = |watch: &mut Watch| match watch.fd.get_ref().0.read_events() {
            Ok(events) => watch.handle(events).0,
            Err(nix::errno::Errno::EAGAIN) => Vec::new(),
            Err(err) => panic!("{err}"),
        };
        let lock_only = std::slice::from_ref(&lock);
        // Someone opened it: a lock to look into. Nobody holds it: nothing is kept, and the
        // probe's own open is skipped.
        std::fs::File::open(&lock).unwrap();
        assert_eq!(events(&mut watch), lock_only);
        assert_eq!(watch.probe(&lock), LockProbe::Free);
        assert!(events(&mut watch).is_empty());
        assert!(watch.kept.is_empty());
        // An mbsync takes the lock: the probe's own open is skipped, the file kept.
        let holder = hold_lock(&lock);
        assert_eq!(events(&mut watch), lock_only);
        let held = LockProbe::Held(u32::try_from(holder.as_raw()).unwrap());
        assert_eq!(watch.probe(&lock), held);
        assert!(events(&mut watch).is_empty());
        // Asked again, it opens nothing: no open for another watcher to answer.
        assert_eq!(watch.probe(&lock), held);
        assert!(watch.fd.get_ref().0.read_events().is_err_and(|e| e == nix::errno::Errno::EAGAIN));
        // An open right after the service's is news (a bare mbsync starting at once).
        std::fs::File::open(&lock).unwrap();
        assert_eq!(events(&mut watch), lock_only);
        // Once an mbsync ended (killed here, its lock file left behind), the file of a lock
        // nobody holds is let go: it would pin its directories and their mount.
        assert_eq!(watch.kept.len(), 1);
        end(holder);
        watch.let_go_of_free();
        assert!(watch.kept.is_empty());
        // A lock file made anew is opened anew, once.
        std::fs::remove_file(&lock).unwrap();
        std::fs::write(&lock, "").unwrap();
        let holder = hold_lock(&lock);
        let _ = events(&mut watch);
        assert!(matches!(watch.probe(&lock), LockProbe::Held(_)));
        assert!(events(&mut watch).is_empty());
        end(holder);
    }

    #[test]
    fn mbsyncs_default_places() {
        let rc = "MaildirStore l\nPath /m/\n\nChannel a\nFar :l:x\nNear :l:y\n";
        assert_eq!(places(rc), [PathBuf::from("/h/.mbsync"), PathBuf::from("/h/.local/state/isync")]);
    }
}
