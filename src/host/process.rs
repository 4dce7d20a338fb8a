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

    /// Resolves once this process has exited (at once if it already has, or if the PID names
    /// another process now). Woken by the kernel through a pidfd, not by polling; where pidfds are
    /// missing (kernels before 5.3) it looks every 100 ms.
    pub async fn exited(self) {
        if let Some(fd) = self.pidfd() {
            // The pidfd refers to whatever process held the PID when it was opened: only if that
            // is still this one is waiting on it waiting for this one.
            if !self.is_alive() {
                return;
            }
            // SAFETY: the descriptor is owned by the AsyncFd and closed only when it is dropped.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            if let Ok(fd) = registered {
                // Readable once the process has exited.
                let _ = fd.readable().await;
                return;
            }
        }
        while self.is_alive() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    fn pidfd(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, self.pid, 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: a descriptor the kernel just gave this process, owned by nobody else.
        Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    /// Sends `signal` if the PID still names this process.
    pub fn signal(&self, signal: Signal) -> bool {
        self.is_alive() && kill(Pid::from_raw(self.pid), signal).is_ok()
    }
}

/// The system calls bpftrace's event loop blocks in, waiting for events, by this architecture's
/// numbers (what /proc/PID/syscall shows): libbpf's perf and ring buffer polls are epoll_wait,
/// older loops poll. aarch64 (the kernel's asm-generic table) has neither epoll_wait nor poll:
/// its C library makes them epoll_pwait and ppoll.
#[cfg(target_arch = "x86_64")]
const WAITS: [nix::libc::c_long; 5] = {
    use nix::libc::{SYS_epoll_pwait, SYS_epoll_pwait2, SYS_epoll_wait, SYS_poll, SYS_ppoll};
    // 7, 271, 232, 281, 441
    [
        SYS_poll,
        SYS_ppoll,
        SYS_epoll_wait,
        SYS_epoll_pwait,
        SYS_epoll_pwait2,
    ]
};
#[cfg(target_arch = "aarch64")]
const WAITS: [nix::libc::c_long; 3] = {
    use nix::libc::{SYS_epoll_pwait, SYS_epoll_pwait2, SYS_ppoll};
    // 73, 22, 441
    [SYS_ppoll, SYS_epoll_pwait, SYS_epoll_pwait2]
};
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("host::process::WAITS lists the event-loop system calls of x86_64 and aarch64 only: add this architecture's");

/// True when the process is blocked polling for events: bpftrace enters that loop only after
/// every probe is attached, so this is what makes "Attaching N probes..." mean tracing.
pub fn is_polling(pid: i32) -> bool {
    // procfs has no reader for /proc/PID/syscall.
    std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|s| is_waiting(&s))
}

/// Whether a /proc/PID/syscall line ("NR ARGS... SP PC", "running" or "-1 SP PC") shows one of
/// the waits.
fn is_waiting(syscall: &str) -> bool {
    syscall
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<nix::libc::c_long>().ok())
        .is_some_and(|n| WAITS.contains(&n))
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

    #[tokio::test]
    async fn exited_wakes_when_the_process_ends() {
        // Not waited for through the child handle: a shim taken over after a restart is not the
        // new agent's child.
        let mut child = std::process::Command::new("sleep")
            .arg("0.5")
            .spawn()
            .expect("sleep runs");
        let sleep = Identity::of(child.id() as i32).expect("sleep's stat");
        let since = std::time::Instant::now();
        tokio::time::timeout(std::time::Duration::from_secs(5), sleep.exited())
            .await
            .expect("exited() resolves once the process ends");
        assert!(since.elapsed() >= std::time::Duration::from_millis(300));
        assert!(!sleep.is_alive());
        // One that has already ended resolves at once.
        tokio::time::timeout(std::time::Duration::from_millis(50), sleep.exited())
            .await
            .expect("an ended process resolves at once");
        let _ = child.wait();
    }

    #[test]
    fn the_event_loops_waits_are_this_architectures() {
        #[cfg(target_arch = "x86_64")]
        let (epoll_wait, ppoll) = ("232", "271");
        #[cfg(target_arch = "aarch64")]
        let (epoll_wait, ppoll) = ("22", "73"); // epoll_pwait: aarch64 has no epoll_wait
        assert!(is_waiting(&format!(
            "{epoll_wait} 0x3 0x7ffd 0x10 0xffffffff 0x0 0x8 0x7ffc 0x7f01"
        )));
        assert!(is_waiting(&format!(
            "{ppoll} 0x7ffd 0x1 0x0 0x0 0x8 0x0 0x7ffc 0x7f01"
        )));
        assert!(is_waiting("441 0x3 0x7ffd 0x10 0x0 0x0 0x8 0x7ffc 0x7f01"));
        // read and nanosleep on x86_64 (0, 35) and aarch64 (63, 101), a process running or not
        // in a system call.
        for other in [
            "0 0x3 0x0 0x0",
            "35 0x0 0x0",
            "63 0x3 0x0 0x0",
            "101 0x0 0x0",
            "running",
            "-1 0x7ffc 0x7f01",
            "",
        ] {
            assert!(!is_waiting(other), "{other:?}");
        }
    }

    /// A thread of this process blocked in poll(2) is seen waiting, through the kernel's
    /// /proc/PID/syscall. Not under qemu-user (how tests/run runs the aarch64 unit tests): there
    /// the kernel shows the emulator's own host system call (x86_64's number), not the emulated
    /// one, so the check is of no use there and cannot pass.
    #[test]
    fn a_thread_blocked_in_poll_is_seen_waiting() {
        if under_qemu_user() {
            eprintln!("skipped under qemu-user: /proc/PID/syscall shows the host's system call");
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(nix::unistd::gettid().as_raw());
            // SAFETY: poll of no descriptors, a plain sleep of 10 s.
            unsafe { nix::libc::poll(std::ptr::null_mut(), 0, 10_000) };
        });
        let tid = rx.recv().expect("the thread's id");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !is_polling(tid) {
            assert!(std::time::Instant::now() < deadline, "never seen in poll");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            !is_polling(nix::unistd::gettid().as_raw()),
            "this thread is running"
        );
    }

    /// qemu-user runs as the process the kernel sees: its command name is the emulator's.
    fn under_qemu_user() -> bool {
        std::fs::read_to_string("/proc/self/comm").is_ok_and(|c| c.starts_with("qemu-"))
    }
}
