//! Waiting for a TraceJob's phase, with what the agent's processes show when it does not come.

use std::time::Duration;

use crate::support::Kubectl;

pub fn wait_phase(k: &Kubectl, ns: &str, name: &str, phase: &str, timeout: Duration) {
    let what = format!("tj/{name} to reach {phase}");
    // Ending a trace includes the kernel detaching its probes (see api::TEST_GRACE).
    let timeout = if phase == "Completed" || phase == "Failed" {
        timeout.max(Duration::from_secs(120))
    } else {
        timeout
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = k.jsonpath(ns, &format!("tj/{name}"), ".status.phase");
        if now == phase {
            return;
        }
        let terminal = now == "Completed" || now == "Failed";
        assert!(
            !terminal,
            "tj/{name} ended {now}, not {phase}: {}",
            k.jsonpath(ns, &format!("tj/{name}"), ".status.message")
        );
        if std::time::Instant::now() >= deadline {
            // What bpftrace is doing, in the kernel too, for a trace that does not end.
            let pid = k.jsonpath(ns, &format!("tj/{name}"), ".status.pid");
            panic!(
                "timed out after {timeout:?} waiting for {what} (phase {now:?}); {}",
                process_report(&pid)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
