//! Waiting for a TraceJob's phase, with what the agent's processes show when it does not come.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::support::Kubectl;

/// Waits by watching the TraceJob, as `kubectl get -w` does: one kubectl for the whole wait,
/// told of each change. (kubectl is the tests' largest user of CPU; a kubectl every 100 ms added
/// some 440 calls a run.) A watch that ends (the API server restarted) is started again,
/// and after `QUIET` without news the phase is read as well: a wait never rests on one watch.
pub fn wait_phase(k: &Kubectl, ns: &str, name: &str, phase: &str, timeout: Duration) {
    const QUIET: Duration = Duration::from_secs(2);
    let what = format!("tj/{name} to reach {phase}");
    // Ending a trace includes the kernel detaching its probes (see api::TEST_GRACE).
    let timeout = if phase == "Completed" || phase == "Failed" {
        timeout.max(Duration::from_secs(120))
    } else {
        timeout
    };
    let deadline = Instant::now() + timeout;
    let object = format!("tj/{name}");
    let read = |path: &str| k.try_jsonpath(ns, &object, path);
    let mut watch = None;
    let mut now = String::new();
    loop {
        let lines = &watch
            .get_or_insert_with(|| k.watch(ns, &object, ".status.phase"))
            .lines;
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(QUIET)) {
            Ok(line) => now = line,
            Err(RecvTimeoutError::Timeout) => {
                let read = read(".status.phase");
                if read.ok {
                    now = read.stdout;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                watch = None;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if now == phase {
            return;
        }
        let terminal = now == "Completed" || now == "Failed";
        assert!(
            !terminal,
            "tj/{name} ended {now}, not {phase}: {}",
            read(".status.message").stdout
        );
        if Instant::now() >= deadline {
            break;
        }
    }
    // What bpftrace is doing, in the kernel too, for a trace that does not end.
    let pid = read(".status.pid");
    panic!(
        "timed out after {timeout:?} waiting for {what} (phase {now:?}) {}; {}",
        pid.stderr,
        process_report(&pid.stdout)
    );
}

/// State, wait channel, system call and kernel stack of process `pid`, from /proc.
pub fn process_report(pid: &str) -> String {
    if pid.is_empty() {
        return "no status.pid".to_string();
    }
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_else(|e| format!("({e})"))
    };
    format!(
        "process {pid}: stat {} wchan {}, syscall {}\nkernel stack:\n{}",
        read("stat").trim(),
        read("wchan"),
        read("syscall").trim(),
        read("stack")
    )
}
