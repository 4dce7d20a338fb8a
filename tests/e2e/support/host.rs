//! Facts about this machine's processes: a disk workload, stray bpftrace, peak memory.

use std::process::Command;
use std::time::Duration;

use crate::support::{must, wait_for, Agent};

/// Writes and syncs a file with direct I/O so the block layer sees requests.
pub fn disk_io() {
    let dir = must(
        tempfile::Builder::new()
            .prefix("tracejob-io-")
            .tempdir_in("/var/tmp"),
        "tempdir",
    );
    let out = must(
        Command::new("dd")
            .args(["if=/dev/zero", "bs=64k", "count=200", "oflag=direct,sync"])
            .arg(format!("of={}", dir.path().join("io").display()))
            .output(),
        "run dd",
    );
    assert!(
        out.status.success(),
        "dd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn assert_no_bpftrace(agent: &Agent) {
    wait_for(Duration::from_secs(30), "no bpftrace process left", || {
        agent.bpftraces().is_empty().then_some(())
    });
}

/// Peak resident memory of a process, in bytes (VmHWM).
pub fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no VmHWM for {pid}"))
}

/// Whether the agent process still runs.
pub fn alive(agent: &mut Agent) -> bool {
    agent
        .proc
        .as_mut()
        .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
}
