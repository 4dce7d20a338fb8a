//! What a run's files and its bpftrace's /proc entry say right now, read in one go on a blocking
//! thread: the actor looks once per turn of its loop (every 25 ms while a trace starts, every
//! second while it runs), and a slow disk must stall that look, not the runtime's threads.

use crate::decide::job::AttachLine;
use crate::host::bpftrace;
use crate::host::process::{self, Identity};
use crate::host::rundir::{read_json, RunFiles};
use crate::host::shim::Started;

/// One look at a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// What the shim recorded once it started bpftrace (not yet: it is starting it).
    pub started: Option<Started>,
    /// Bytes bpftrace has printed on stdout.
    pub printed: u64,
    /// Its attach line, from stdout (up to 0.23) or stderr (0.27 prints it there).
    pub line: Option<AttachLine>,
    /// Something was printed after the attach line (a probe fired).
    pub printed_after: bool,
    /// bpftrace waits for events (its event loop), so every probe is attached.
    pub polling: bool,
    /// Where the output proper starts on stdout: after the attach line when it is there.
    pub output_from: u64,
}

/// What a look reads beyond the output's size: a running trace needs only that, once a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    /// The attach line (while it starts).
    pub attach: bool,
    /// Whether bpftrace waits for events (while it starts, and once interrupted).
    pub polling: bool,
}

/// Looks at the run's files, and at `/proc` for `bpftrace` when its PID is known (from the
/// record, or from the shim's `started.json`, read while it is not). Blocking: call it with
/// `spawn_blocking`.
pub fn look(files: &RunFiles, bpftrace: Option<Identity>, want: Want) -> Progress {
    let started = match bpftrace {
        None => read_json::<Started>(&files.started),
        Some(_) => None,
    };
    let printed = std::fs::metadata(&files.stdout).map_or(0, |m| m.len());
    let pid = bpftrace
        .or(started.as_ref().map(|s| s.bpftrace))
        .map(|p| p.pid);
    let polling = want.polling && pid.is_some_and(process::is_polling);
    if !want.attach {
        return Progress {
            started,
            printed,
            polling,
            ..Progress::default()
        };
    }
    let on_stdout = bpftrace::attach_line(&bpftrace::head(&files.stdout, 4096));
    let output_from = on_stdout.map_or(0, |l| l.end as u64);
    let (line, printed_after) = match on_stdout {
        Some(line) => (Some(line), printed > line.end as u64),
        None => (
            bpftrace::attach_line(&bpftrace::head(&files.stderr, 16384)),
            printed > 0,
        ),
    };
    Progress {
        polling,
        started,
        printed,
        line,
        printed_after,
        output_from,
    }
}

/// `look` on a blocking thread (a failed thread looks like nothing was seen yet).
pub async fn look_async(files: &RunFiles, bpftrace: Option<Identity>, want: Want) -> Progress {
    let files = files.clone();
    tokio::task::spawn_blocking(move || look(&files, bpftrace, want))
        .await
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_attach_line_from_stdout_or_stderr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = RunFiles::in_dir(dir.path());
        let all = Want {
            attach: true,
            polling: true,
        };
        assert_eq!(look(&files, None, all), Progress::default());

        std::fs::write(&files.stderr, "Attached 2 probes\n").expect("write");
        let p = look(&files, None, all);
        assert_eq!(p.line.map(|l| (l.probes, l.done)), Some((2, true)));
        assert!(!p.printed_after);

        std::fs::write(&files.stdout, "Attaching 3 probes...\n@x: 1\n").expect("write");
        let p = look(&files, None, all);
        assert_eq!(p.line.map(|l| (l.probes, l.done)), Some((3, false)));
        assert!(p.printed_after);
        assert_eq!(p.output_from, 22);
        assert_eq!(p.printed, 28);
        // A running trace's look: its size alone.
        let p = look(&files, None, Want::default());
        assert_eq!((p.printed, p.line), (28, None));
    }
}
