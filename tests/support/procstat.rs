//! What /proc says about a process under test, and percentiles of what was measured: the
//! tests' footprint checks and the benches share these.

/// A `/proc/PID/status` field's number (`VmRSS:` and `VmHWM:` in KiB, `Threads:`).
pub fn status_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// The numeric fields of a `stat` file after the state field (index 0): utime=11, stime=12,
/// cutime=13, cstime=14.
fn stat_fields(path: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    stat.rsplit_once(") ").unwrap().1.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect()
}

/// CPU seconds from /proc/PID/stat: (the process's own utime+stime, which counts threads that
/// have exited too; its reaped children's cutime+cstime). Clock ticks
/// are 10 ms, so a budget is judged on sums over rounds.
pub fn cpu_seconds(pid: u32) -> (f64, f64) {
    let f = stat_fields(&format!("/proc/{pid}/stat"));
    ((f[11] + f[12]) as f64 / 100.0, (f[13] + f[14]) as f64 / 100.0)
}

/// Nanoseconds the scheduler ran the live threads of `pid` (`/proc/PID/task/*/schedstat`):
/// exact where `cpu_seconds` counts 10 ms clock ticks.
pub fn run_time_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"))
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The `p` quantile (0..=1) of `v`, nearest rank.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}
