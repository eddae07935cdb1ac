//! Watches /proc every few milliseconds on a thread of its own and records the most mbsync
//! processes ever seen syncing one channel at the same moment: the invariant of takeover and
//! handoff is that this never exceeds one.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use himalaya_sync::{
    foreign::{Synced, synced_channels},
    mbsyncrc::{self, MbsyncConfig},
};

use super::daemon::mbsync_pids_for;

/// A running sampler; [`Sampler::finish`] stops it and returns what it saw.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

/// What a sampler saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Samples taken.
    pub samples: u64,
    /// The most mbsync syncing one channel at once, per channel.
    pub max_per_channel: BTreeMap<String, usize>,
    /// The first moment with two on one channel: the channel and the command lines.
    pub overlap: Option<(String, Vec<Vec<String>>)>,
}

impl Seen {
    /// Panic unless no channel ever had two mbsync at once.
    pub fn assert_no_overlap(&self) {
        assert!(self.samples > 10, "the sampler took only {} samples", self.samples);
        if let Some((channel, commands)) = &self.overlap {
            panic!(
                "two mbsync synced channel {channel} at once: {commands:?} (max per channel: {:?})",
                self.max_per_channel
            );
        }
    }
}

fn argv(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ppid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

impl Sampler {
    /// Start sampling the mbsync processes that use the mbsync config `rc`.
    pub fn start(rc: &Path) -> Sampler {
        let rc: PathBuf = rc.to_owned();
        let config: MbsyncConfig = mbsyncrc::parse(&std::fs::read_to_string(&rc).unwrap()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let thread = {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut per_channel: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
                    let pids = mbsync_pids_for(&rc);
                    for &pid in &pids {
                        // isync 1.5 forks a copy of itself to resolve the host name: part of its
                        // parent's run, not a second sync.
                        if pids.contains(&ppid(pid)) {
                            continue;
                        }
                        let argv = argv(pid);
                        let channels: Vec<String> =
                            match synced_channels(argv.get(1..).unwrap_or_default(), &config) {
                                Synced::All => config.channels.iter().map(|c| c.name.clone()).collect(),
                                // Only real channels: `exec` and the daemon probe the config with
                                // a name no config defines (`mbsync -c RC 'himalaya-sync\nprobe'`).
                                Synced::Channels(set) => {
                                    set.into_iter().filter(|c| config.channel(c).is_some()).collect()
                                }
                                Synced::Nothing => Vec::new(),
                            };
                        for channel in channels {
                            per_channel.entry(channel).or_default().push(argv.clone());
                        }
                    }
                    let mut seen = seen.lock().unwrap();
                    seen.samples += 1;
                    for (channel, commands) in per_channel {
                        let max = seen.max_per_channel.entry(channel.clone()).or_default();
                        *max = (*max).max(commands.len());
                        if commands.len() > 1 && seen.overlap.is_none() {
                            seen.overlap = Some((channel, commands));
                        }
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Sampler { stop, seen, thread: Some(thread) }
    }

    /// Stop and return what was seen.
    pub fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the sampler thread panicked");
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
