//! Processes on this host, by PID plus start time, so a reused PID is never taken for ours.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process the agent started, identified beyond its PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub pid: i32,
    /// Clock ticks after boot at which the process started (field 22 of /proc/PID/stat).
    pub start_ticks: u64,
}

impl Identity {
    pub fn of(pid: i32) -> Option<Identity> {
        let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
        Some(Identity {
            pid,
            start_ticks: stat.starttime,
        })
    }

    /// True while the PID still names this process and it has not exited (zombies count as gone).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = procfs::process::Process::new(self.pid).and_then(|p| p.stat()) else {
            return false;
        };
        !matches!(stat.state, 'Z' | 'X' | 'x') && stat.starttime == self.start_ticks
    }

    /// Sends `signal` if the PID still names this process.
    pub fn signal(&self, signal: Signal) -> bool {
        self.is_alive() && kill(Pid::from_raw(self.pid), signal).is_ok()
    }
}

/// True when the process is blocked polling for events: bpftrace enters that loop only after
/// every probe is attached, so this is what makes "Attaching N probes..." mean tracing.
pub fn is_polling(pid: i32) -> bool {
    // x86_64 system call numbers of poll, ppoll, epoll_wait, epoll_pwait, epoll_pwait2.
    // (procfs has no reader for /proc/PID/syscall.)
    const WAITS: [&str; 5] = ["7", "271", "232", "281", "441"];
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .map(|s| {
            s.split_whitespace()
                .next()
                .is_some_and(|n| WAITS.contains(&n))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_a_dead_or_reused_pid_is_not_alive() {
        let me = Identity::of(std::process::id() as i32).expect("own stat readable");
        assert!(me.is_alive());
        assert!(!Identity {
            start_ticks: me.start_ticks + 1,
            ..me
        }
        .is_alive());
        assert!(!Identity {
            pid: i32::MAX,
            start_ticks: 1
        }
        .is_alive());
    }
}
