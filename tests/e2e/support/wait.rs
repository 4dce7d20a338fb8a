//! Waiting for a TraceJob's phase, with what the agent's processes show when it does not come.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::support::Kubectl;

/// Waits by watching the TraceJob, as `kubectl get -w` does: one kubectl for the whole wait,
/// told of each change. (A kubectl every 100 ms, 2,000 of them a run, cost the machine more CPU
/// than the agents under test.) A watch that ends (the API server restarted) is started again.
pub fn wait_phase(k: &Kubectl, ns: &str, name: &str, phase: &str, timeout: Duration) {
    let what = format!("tj/{name} to reach {phase}");
    // Ending a trace includes the kernel detaching its probes (see api::TEST_GRACE).
    let timeout = if phase == "Completed" || phase == "Failed" {
        timeout.max(Duration::from_secs(120))
    } else {
        timeout
    };
    let deadline = Instant::now() + timeout;
    let object = format!("tj/{name}");
    let mut now = String::new();
    while Instant::now() < deadline {
        let watch = k.watch(ns, &object, ".status.phase");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match watch.lines.recv_timeout(left) {
                Ok(line) => now = line,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
            if now == phase {
                return;
            }
            let terminal = now == "Completed" || now == "Failed";
            assert!(
                !terminal,
                "tj/{name} ended {now}, not {phase}: {}",
                k.jsonpath(ns, &object, ".status.message")
            );
        }
    }
    // What bpftrace is doing, in the kernel too, for a trace that does not end.
    let pid = k
        .run(&["get", "-n", ns, &object, "-o", "jsonpath={.status.pid}"])
        .stdout;
    panic!(
        "timed out after {timeout:?} waiting for {what} (phase {now:?}); {}",
        process_report(&pid)
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
