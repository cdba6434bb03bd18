//! What the bench asks of Linux: memory from /proc, CPU affinity through `taskset`, and child
//! processes with a raised open-files limit. No libc: std and a couple of commands.

use std::process::{Command, Stdio};

/// One field of /proc/self/status in KiB ("VmRSS", "VmHWM").
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The CPUs this process may run on, as a list `taskset -c` understands ("0-1").
pub fn allowed_cpus() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(|list| list.trim().to_owned())
        .unwrap_or_else(|| "0".to_owned())
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Sets the CPU affinity of every thread of process `pid` (`taskset -a -p -c CPUS PID`).
/// Threads started later inherit it from the thread that starts them.
pub fn set_affinity(pid: u32, cpus: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status();
    if !status.is_ok_and(|status| status.success()) {
        eprintln!("warning: taskset -a -p -c {cpus} {pid} failed");
    }
}

/// The soft RLIMIT_NOFILE of this process, from /proc/self/limits.
pub fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// This executable re-run with `args`, through `sh` so that the child's open-files limit is
/// raised to the hard limit first (10 000 sockets need more than the usual 1 024); std has no
/// setrlimit.
pub fn command_with_nofile(args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("the path of this executable");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"ulimit -n "$(ulimit -H -n)" 2>/dev/null || ulimit -n 65536 2>/dev/null; exec "$0" "$@""#)
        .arg(exe)
        .args(args);
    command
}

/// The CPU time of this process so far, in nanoseconds: the sum over its live threads of the
/// first field of `/proc/self/task/*/schedstat` (time on a CPU). `None` where there is no
/// schedstat. Threads that have exited no longer count, so take both readings while the
/// threads that matter are alive.
pub fn cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
        {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}
