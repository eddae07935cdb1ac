//! Bare mbsync runs: syncs that hold no lock name (cron, a shell, an old plugin).
//!
//! Bus names only bind cooperating peers, so before it starts mbsync the service also looks in
//! /proc for an mbsync of the same user whose arguments name one of the channels (DESIGN.md,
//! "The lock"). Reading /proc once per Sync call costs no polling. Which channels an mbsync
//! command line syncs is pure logic ([`synced_channels`], in [`crate::mbsync_args`]).

use std::path::Path;

pub use crate::mbsync_args::{Synced, config_arg, synced_channels};
use crate::mbsyncrc::MbsyncConfig;

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
    let ours = canonical(search.config_path);
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Some(argv) = mbsync_argv(pid, search.uid, search.own_pid) else { continue };
        let theirs = match config_arg(&argv[1..]) {
            // A relative path is relative to that process's working directory.
            Some(path) => canonical(&Path::new("/proc").join(pid.to_string()).join("cwd").join(path)),
            None => canonical(search.default_config_path),
        };
        if theirs != ours {
            continue;
        }
        let (channels, config) = (search.channels, search.config);
        let hit = match synced_channels(&argv[1..], config) {
            Synced::All => channels.first(),
            Synced::Channels(set) => channels.iter().find(|c| set.contains(*c)),
            Synced::Nothing => None,
        };
        if let Some(channel) = hit {
            return Some(Found { pid, channel: channel.clone(), command: argv });
        }
    }
    None
}

fn canonical(path: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// The argv of process `pid` if it is an mbsync of user `uid` that `own_pid` did not start.
fn mbsync_argv(pid: u32, uid: u32, own_pid: u32) -> Option<Vec<String>> {
    let proc = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(proc.join("status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next())
    };
    // Real uid: the user's own processes only.
    if field("Uid:")?.parse::<u32>().ok()? != uid || field("PPid:")?.parse::<u32>().ok()? == own_pid {
        return None;
    }
    // A zombie has no exe; it is finished anyway.
    let exe = std::fs::read_link(proc.join("exe")).ok()?;
    if exe.file_name()? != "mbsync" {
        return None;
    }
    let cmdline = std::fs::read(proc.join("cmdline")).ok()?;
    let argv: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!argv.is_empty()).then_some(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_an_mbsync() {
        let me = std::process::id();
        assert_eq!(mbsync_argv(me, nix::unistd::getuid().as_raw(), 1), None);
    }
}
