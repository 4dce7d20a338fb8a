//! The bpftrace process: started directly (no shell, never --unsafe), its output written to files
//! in the job's state directory so it outlives the agent, and signalled only while the PID still
//! names the process the agent started (PID plus start time).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::lifecycle::Exit;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("cannot open {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A process the agent started, identified beyond its PID so a reused PID is never signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat: clock ticks after boot at which the process started.
    pub start_ticks: u64,
}

impl Identity {
    pub fn of(pid: i32) -> Option<Identity> {
        Some(Identity {
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    /// True while the PID still names this process and it has not exited (zombies count as gone).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let Some(after_comm) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            return false;
        };
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // After the command: state is field 3 overall, start time field 22.
        let state = fields.first().copied().unwrap_or("Z");
        let started = fields.get(19).and_then(|f| f.parse::<u64>().ok());
        state != "Z" && state != "X" && started == Some(self.start_ticks)
    }

    /// Sends `signal` if the PID still names this process.
    pub fn signal(&self, signal: Signal) -> bool {
        self.is_alive() && kill(Pid::from_raw(self.pid), signal).is_ok()
    }
}

fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Where one run's files live.
#[derive(Debug, Clone)]
pub struct Files {
    pub program: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Files {
    pub fn in_dir(dir: &Path) -> Files {
        Files {
            program: dir.join("program.bt"),
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
        }
    }
}

/// A started bpftrace: the agent's child while this agent started it.
pub struct Running {
    pub identity: Identity,
    child: Option<tokio::process::Child>,
}

/// Starts `bpftrace -- PROGRAM ARGS...` with stdout and stderr going to files. The process gets
/// its own process group, so signals meant for the agent (a terminal's Ctrl-C, the container
/// runtime's SIGTERM to the agent) do not reach it.
pub fn spawn(command: &Path, files: &Files, args: &[String]) -> Result<Running, Error> {
    let open = |path: &Path| {
        File::create(path).map_err(|source| Error::Output {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut cmd = std::process::Command::new(command);
    cmd.arg("--")
        .arg(&files.program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(open(&files.stdout)?)
        .stderr(open(&files.stderr)?)
        .process_group(0);
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.display().to_string(),
            source,
        })?;
    let pid = child.id().map(|p| p as i32).unwrap_or_default();
    // The process exists until reaped by us, so its start time is readable here.
    let identity = Identity::of(pid).unwrap_or(Identity {
        pid,
        start_ticks: 0,
    });
    Ok(Running {
        identity,
        child: Some(child),
    })
}

impl Running {
    /// Takes over a process started by an earlier agent; it is not our child, so its exit status
    /// cannot be read.
    pub fn adopt(identity: Identity) -> Running {
        Running {
            identity,
            child: None,
        }
    }

    /// Waits until the process exits.
    pub async fn wait(&mut self) -> Exit {
        match self.child.as_mut() {
            Some(child) => match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (status.code(), status.signal()) {
                        (Some(code), _) => Exit::Code(code),
                        (None, Some(sig)) => Exit::Signal(sig),
                        (None, None) => Exit::NotOurChild,
                    }
                }
                Err(_) => Exit::NotOurChild,
            },
            None => {
                while self.identity.is_alive() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Exit::NotOurChild
            }
        }
    }

    pub fn signal(&self, signal: Signal) -> bool {
        self.identity.signal(signal)
    }
}

/// bpftrace's attach line: `Attaching 3 probes...` (0.17 to 0.23, printed as attaching begins)
/// or `Attached 3 probes` (0.27 and later, printed once attached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachLine {
    pub probes: u32,
    /// The line says the probes are attached (not only that attaching began).
    pub done: bool,
    /// Byte offset just after the line: anything printed after it came from a probe that fired.
    pub end: usize,
}

pub fn attach_line(stdout: &str) -> Option<AttachLine> {
    let mut offset = 0;
    for line in stdout.split_inclusive('\n') {
        offset += line.len();
        let text = line.trim();
        let (rest, done) = if let Some(r) = text.strip_prefix("Attaching ") {
            (r, false)
        } else if let Some(r) = text.strip_prefix("Attached ") {
            (r, true)
        } else {
            continue;
        };
        if let Some(probes) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
            return Some(AttachLine {
                probes,
                done,
                end: offset,
            });
        }
    }
    None
}

/// The first `max` bytes of a file, as text.
pub fn head(path: &Path, max: u64) -> String {
    use std::io::Read;
    let mut bytes = Vec::new();
    if let Ok(f) = File::open(path) {
        let _ = f.take(max).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// True when the process is blocked polling its event buffers: bpftrace enters that loop only
/// after every probe is attached, so this is what makes "Attaching N probes..." mean tracing.
pub fn is_polling(pid: i32) -> bool {
    // x86_64 syscall numbers of poll, ppoll, epoll_wait, epoll_pwait, epoll_pwait2.
    const WAITS: [&str; 5] = ["7", "271", "232", "281", "441"];
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .map(|s| {
            s.split_whitespace()
                .next()
                .is_some_and(|n| WAITS.contains(&n))
        })
        .unwrap_or(false)
}

/// bpftrace's error text from its stderr, without the RLIMIT_MEMLOCK notice it prints on every
/// start when it lacks CAP_SYS_RESOURCE (it works regardless), and bounded in size.
pub fn error_text(stderr: &str) -> String {
    const MAX: usize = 4096;
    let text: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("couldn't set RLIMIT_MEMLOCK"))
        .collect();
    let text = text.join("\n");
    if text.len() <= MAX {
        return text;
    }
    let mut start = text.len() - MAX;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// `bpftrace --version`, e.g. "v0.17.0".
pub fn version(command: &Path) -> Option<String> {
    let out = std::process::Command::new(command)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().last().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_attach_lines_of_each_release() {
        let line = |probes, done, end| Some(AttachLine { probes, done, end });
        assert_eq!(attach_line("Attaching 2 probes...\n"), line(2, false, 22));
        assert_eq!(
            attach_line("Attaching 1 probe...\nhi\n"),
            line(1, false, 21)
        );
        assert_eq!(attach_line("Attached 3 probes\n"), line(3, true, 18));
        assert_eq!(attach_line("hello\n"), None);
    }

    #[test]
    fn error_text_drops_the_memlock_notice() {
        let stderr = "ERROR: Unknown error -1: couldn't set RLIMIT_MEMLOCK for bpftrace. If ...\nx.bt:1:1: ERROR: syntax error\n";
        assert_eq!(error_text(stderr), "x.bt:1:1: ERROR: syntax error");
        assert!(error_text(&"é".repeat(5000)).len() <= 4100);
    }

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
