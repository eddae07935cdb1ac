//! Bare mbsync runs: syncs that hold no lock name (cron, a shell, an old plugin).
//!
//! Bus names only bind cooperating peers, so before it starts mbsync the service also looks in
//! /proc for an mbsync of the same user whose arguments name one of the channels (DESIGN.md,
//! "The lock"). Reading /proc once per Sync call costs no polling. Which channels an mbsync
//! command line syncs is pure logic ([`synced_channels`], in [`crate::mbsync_args`]).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

pub use crate::mbsync_args::{Synced, config_arg, synced_channels};
use crate::{mbsyncrc::MbsyncConfig, process::ProcInfo};

/// An mbsync found running outside the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    /// The channel of ours it syncs.
    pub channel: String,
    pub command: Vec<String>,
}

/// Where to look, and for what.
#[derive(Debug, Clone, Copy)]
pub struct Search<'a> {
    /// The channels about to be synced.
    pub channels: &'a [String],
    pub config: &'a MbsyncConfig,
    /// The service's mbsync config file: an mbsync run with another config syncs other
    /// accounts, even where names coincide.
    pub config_path: &'a Path,
    /// The config an mbsync without `-c` reads (mbsync's default for this user).
    pub default_config_path: &'a Path,
    pub uid: u32,
    /// This process: its own children are not foreign.
    pub own_pid: u32,
}

/// Find an mbsync of the user, run with the same config, that syncs one of the channels.
#[must_use]
pub fn find(search: &Search<'_>) -> Option<Found> {
    let (info, synced) = scan(search).into_iter().next()?;
    let channel = search.channels.iter().find(|c| synced.contains(*c))?.clone();
    Some(Found { pid: info.pid, channel, command: info.argv })
}

/// Every bare mbsync of the user with the service's config that syncs one of the channels: its
/// process and which of the channels it syncs.
#[must_use]
pub fn scan(search: &Search<'_>) -> Vec<(ProcInfo, BTreeSet<String>)> {
    crate::process::all_pids().filter_map(|pid| confirm(search, pid)).collect()
}

/// Whether process `pid` is such an mbsync (not one this process started), and the channels it
/// syncs.
#[must_use]
pub fn confirm(search: &Search<'_>, pid: u32) -> Option<(ProcInfo, BTreeSet<String>)> {
    // One readlink rules out nearly every process before the five reads of `ProcInfo::read`:
    // a scan runs for each box lock an mbsync opens, and /proc holds hundreds of processes.
    if !crate::process::exe_is_mbsync(pid) {
        return None;
    }
    let info = ProcInfo::read(pid)?;
    // A zombie has no exe: it is finished anyway.
    if !info.is_mbsync_of(search.uid) || info.ppid == search.own_pid || info.pid == search.own_pid {
        return None;
    }
    // A helper an mbsync forked (isync 1.5 resolves host names in a child with the same argv) is
    // part of its parent's run, not a sync of its own.
    if ProcInfo::read(info.ppid).is_some_and(|parent| parent.is_mbsync_of(search.uid)) {
        return None;
    }
    let args = info.argv.get(1..).unwrap_or_default();
    let theirs = match config_arg(args) {
        // A relative path is relative to that process's working directory.
        Some(path) => info.cwd.as_deref().map_or_else(|| PathBuf::from(path), |cwd| cwd.join(path)),
        None => search.default_config_path.to_owned(),
    };
    if canonical(&theirs) != canonical(search.config_path) {
        return None;
    }
    let channels: BTreeSet<String> = match synced_channels(args, search.config) {
        Synced::All => search.channels.iter().cloned().collect(),
        Synced::Channels(set) => search.channels.iter().filter(|c| set.contains(*c)).cloned().collect(),
        Synced::Nothing => BTreeSet::new(),
    };
    (!channels.is_empty()).then_some((info, channels))
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mbsyncrc;

    #[test]
    fn this_process_and_other_programs_are_no_bare_mbsync() {
        let config =
            mbsyncrc::parse("MaildirStore l\nPath /m/\n\nChannel alice\nFar :l:a\nNear :l:b\n").unwrap();
        let channels = vec!["alice".to_owned()];
        let search = Search {
            channels: &channels,
            config: &config,
            config_path: Path::new("/nonexistent/rc"),
            default_config_path: Path::new("/nonexistent/rc"),
            uid: crate::process::my_uid(),
            own_pid: 1,
        };
        assert_eq!(confirm(&search, std::process::id()), None);
        assert!(scan(&search).is_empty(), "no mbsync uses /nonexistent/rc");
    }
}
