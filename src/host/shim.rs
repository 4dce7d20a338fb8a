//! The shim: a small supervisor between the agent and bpftrace, like containerd's shim between
//! containerd and a container. It is the agent binary run as `tracejob-agent shim`, one per run.
//!
//! - It outlives the agent: it joins the host's `tracejob-traces` cgroup before it starts
//!   bpftrace, and nothing it needs comes from the agent once started.
//! - It keeps bpftrace's output within bounds however fast bpftrace prints: stdout and stderr
//!   come through pipes into files, each with a head that is kept whole and a ring file that keeps
//!   the newest bytes after it. When stdout's head is full the shim sends bpftrace SIGINT (the soft
//!   limit); what bpftrace prints after that, its maps among it, lands in the ring. On disk a run's
//!   stdout never exceeds `--max-output-bytes`, nor its stderr `STDERR_BYTES`.
//! - It is bpftrace's parent, so it reads its exit status and records it durably (fsynced)
//!   before it exits: whichever agent watches, or none, the status is not lost.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::host::cgroup;
use crate::host::dump::Demux;
use crate::host::process::Identity;
use crate::host::rundir::{self, RunFiles};

/// Bytes of bpftrace's stderr kept per run: its head and, after it, the newest bytes.
pub const STDERR_BYTES: u64 = 1024 * 1024;
/// The largest part of `--max-output-bytes` kept for what bpftrace prints after the soft limit.
const MAX_RING: u64 = 8 * 1024 * 1024;

/// How `limit` bytes of one output are split into a head (kept whole) and a ring (the newest
/// bytes after the head): the ring is a quarter, at most 8 MiB.
pub fn split(limit: u64) -> (u64, u64) {
    let ring = (limit / 4).min(MAX_RING);
    (limit - ring, ring)
}

/// Recorded by the shim once bpftrace runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Started {
    pub bpftrace: Identity,
    /// Why the shim could not join the host's trace cgroup, if it could not: the trace then ends
    /// with the agent's container.
    #[serde(default)]
    pub cgroup_error: Option<String>,
}

/// Recorded by the shim once bpftrace has ended (or could not start).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Ended {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// bpftrace could not be started.
    #[serde(default)]
    pub error: Option<String>,
    /// The shim sent SIGINT because stdout reached its soft limit.
    #[serde(default)]
    pub limit_reached: bool,
    pub stdout: Kept,
    pub stderr: Kept,
}

/// What became of one output.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct Kept {
    /// Bytes bpftrace printed.
    pub printed: u64,
    /// Bytes of those not kept: over the limit, between the head and the newest bytes.
    pub dropped: u64,
}

#[derive(clap::Args, Debug)]
pub struct ShimArgs {
    /// The run's directory (program.bt inside; output and records are written there).
    #[arg(long)]
    pub run_dir: PathBuf,
    /// The bpftrace command.
    #[arg(long)]
    pub bpftrace: PathBuf,
    /// Bytes of stdout kept on disk, at most.
    #[arg(long)]
    pub max_output_bytes: u64,
    /// The host's /sys/fs/cgroup: the shim joins `tracejob-traces` there before starting bpftrace.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// spec.metrics: seconds between reads of the maps (by `getpgid(--metrics-magic)`, which
    /// the program's added probe answers by printing them between markers).
    #[arg(long, requires = "metrics_magic")]
    pub metrics_interval: Option<u64>,
    /// The PID the added probe's filter matches.
    #[arg(long)]
    pub metrics_magic: Option<i32>,
    /// The program's positional parameters.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// How the shim reads a running trace's maps for spec.metrics.
#[derive(Debug, Clone, Copy)]
pub struct MetricsReads {
    pub interval: std::time::Duration,
    pub magic: i32,
}

/// Starts the shim for a run: `EXE shim ... -- ARGS`, in its own process group (a terminal's
/// Ctrl-C or the runtime's SIGTERM to the agent does not reach it), with its own diagnostics in
/// `shim.log`.
// One argument per flag of the shim's command line.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    exe: &Path,
    files: &RunFiles,
    log: File,
    bpftrace: &Path,
    args: &[String],
    max_output_bytes: u64,
    cgroup_root: Option<&Path>,
    metrics: Option<MetricsReads>,
) -> io::Result<tokio::process::Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("shim")
        .arg("--run-dir")
        .arg(&files.dir)
        .arg("--bpftrace")
        .arg(bpftrace)
        .arg("--max-output-bytes")
        .arg(max_output_bytes.to_string());
    if let Some(root) = cgroup_root {
        cmd.arg("--cgroup-root").arg(root);
    }
    if let Some(m) = metrics {
        cmd.arg("--metrics-interval")
            .arg(m.interval.as_secs().max(1).to_string())
            .arg("--metrics-magic")
            .arg(m.magic.to_string());
    }
    cmd.arg("--")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    tokio::process::Command::from(cmd)
        .kill_on_drop(false)
        .spawn()
}

/// Makes the file the shim's own stderr goes to (`spawn`'s `log`); blocking.
pub fn log_file(files: &RunFiles) -> impl FnOnce() -> io::Result<File> {
    let path = files.dir.join("shim.log");
    move || File::create(path)
}

/// The shim's main: runs bpftrace to its end. Exits non-zero only if it could not record how
/// bpftrace ended.
pub fn run(args: ShimArgs) -> ExitCode {
    let files = RunFiles::in_dir(&args.run_dir);
    match supervise(&args, &files) {
        Ok(ended) => match rundir::write_json(&files.ended, &ended) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tracejob-agent shim: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("tracejob-agent shim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn supervise(args: &ShimArgs, files: &RunFiles) -> Result<Ended, rundir::Error> {
    let cgroup_error = args.cgroup_root.as_ref().and_then(|root| {
        cgroup::move_to_traces(root, std::process::id() as i32)
            .err()
            .map(|e| e.to_string())
    });
    let mut cmd = Command::new(&args.bpftrace);
    cmd.arg("--")
        .arg(&files.program)
        .args(&args.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // bpftrace must end on the agent's SIGINT even when the agent was started with SIGINT
    // ignored (a shell's background job, nohup): an ignored signal stays ignored across exec,
    // and a program that only traps it (as a shell does) then never sees it.
    // SAFETY: between fork and exec only sigaction, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            for s in [
                Signal::SIGINT,
                Signal::SIGQUIT,
                Signal::SIGTERM,
                Signal::SIGHUP,
            ] {
                nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl)
                    .map_err(io::Error::from)?;
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Ok(Ended {
                error: Some(format!("cannot start {}: {e}", args.bpftrace.display())),
                ..Ended::default()
            })
        }
    };
    // The process exists until reaped by us, so its start time is readable here.
    let bpftrace = Identity::of(child.id() as i32).unwrap_or(Identity {
        pid: child.id() as i32,
        start_ticks: 0,
    });
    rundir::write_json(
        &files.started,
        &Started {
            bpftrace,
            cgroup_error,
        },
    )?;
    let (head, ring) = split(args.max_output_bytes);
    let limit_reached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stdout = child.stdout.take().map(|pipe| {
        let path = files.stdout.clone();
        let reached = limit_reached.clone();
        let dumps = args
            .metrics_magic
            .map(|magic| (Demux::new(magic), files.metrics.clone()));
        // The soft limit: stdout's head is full, so bpftrace is asked to stop and print its maps.
        let stop = move || {
            reached.store(true, std::sync::atomic::Ordering::SeqCst);
            bpftrace.signal(Signal::SIGINT);
        };
        std::thread::spawn(move || copy(pipe, &path, head, ring, stop, dumps))
    });
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let (Some(secs), Some(magic)) = (args.metrics_interval, args.metrics_magic) {
        let ended = ended.clone();
        std::thread::spawn(move || read_maps(secs, magic, &ended));
    }
    let stderr = child.stderr.take().map(|pipe| {
        let path = files.stderr.clone();
        let (head, ring) = (STDERR_BYTES / 2, STDERR_BYTES / 2);
        std::thread::spawn(move || copy(pipe, &path, head, ring, || {}, None))
    });
    let status = child.wait();
    ended.store(true, std::sync::atomic::Ordering::SeqCst);
    let kept = |copier: Option<std::thread::JoinHandle<io::Result<Kept>>>| {
        copier
            .and_then(|c| c.join().ok())
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let (stdout, stderr) = (kept(stdout), kept(stderr));
    let (code, signal) = match status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    Ok(Ended {
        code,
        signal,
        error: None,
        limit_reached: limit_reached.load(std::sync::atomic::Ordering::SeqCst),
        stdout,
        stderr,
    })
}

/// Has bpftrace print its maps every `secs` seconds until it has ended: the added probe fires
/// on `getpgid(magic)` (which fails: no process has that PID).
fn read_maps(secs: u64, magic: i32, ended: &std::sync::atomic::AtomicBool) {
    let interval = std::time::Duration::from_secs(secs.max(1));
    loop {
        std::thread::sleep(interval);
        if ended.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let _ = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(magic)));
    }
}

/// Copies `from` into `path` until end of file, within `head + ring` bytes; `on_full` runs once,
/// when the head is full. With `dumps`, the maps printed for spec.metrics go to their file
/// instead (replaced whole on each dump), and count against no limit of the output.
fn copy(
    mut from: impl Read,
    path: &Path,
    head: u64,
    ring: u64,
    mut on_full: impl FnMut(),
    mut dumps: Option<(Demux, PathBuf)>,
) -> io::Result<Kept> {
    let mut out = Bounded::create(path, head, ring)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut output = Vec::new();
    let mut full = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match dumps.as_mut() {
            None => out.write(&buf[..n])?,
            Some((demux, file)) => {
                output.clear();
                for dump in demux.feed(&buf[..n], &mut output) {
                    // A dump that cannot be stored is skipped: the trace goes on.
                    if let Err(e) = replace(file, &dump) {
                        eprintln!("tracejob-agent shim: writing the maps for metrics: {e}");
                    }
                }
                out.write(&output)?;
            }
        }
        if !full && out.printed >= head {
            full = true;
            on_full();
        }
    }
    if let Some((demux, _)) = dumps.as_mut() {
        output.clear();
        demux.finish(&mut output);
        out.write(&output)?;
    }
    out.finish()
}

/// Replaces `path` whole with `bytes` (readers see the old file or the new, never a part).
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    private(&tmp)?.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

/// A file that keeps its first `head` bytes and then the newest `ring` bytes, in a ring file
/// beside it that `finish` appends.
pub struct Bounded {
    file: File,
    ring_path: PathBuf,
    ring: Option<File>,
    head: u64,
    ring_size: u64,
    /// Bytes given to `write`.
    printed: u64,
}

impl Bounded {
    pub fn create(path: &Path, head: u64, ring_size: u64) -> io::Result<Bounded> {
        Ok(Bounded {
            file: private(path)?,
            ring_path: RunFiles::ring(path),
            ring: None,
            head,
            ring_size,
            printed: 0,
        })
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let room = self.head.saturating_sub(self.printed);
        let to_head = (room.min(bytes.len() as u64)) as usize;
        self.file.write_all(&bytes[..to_head])?;
        let past_head = self.printed.saturating_sub(self.head);
        self.printed += bytes.len() as u64;
        bytes = &bytes[to_head..];
        if bytes.is_empty() || self.ring_size == 0 {
            return Ok(());
        }
        if self.ring.is_none() {
            self.ring = Some(private(&self.ring_path)?);
        }
        let Some(ring) = self.ring.as_ref() else {
            return Ok(());
        };
        // Only the last `ring_size` bytes of this write can survive it.
        let skip = bytes.len().saturating_sub(self.ring_size as usize);
        let mut at = past_head + skip as u64;
        for chunk in bytes[skip..].chunks(self.ring_size as usize) {
            let offset = at % self.ring_size;
            let first = chunk.len().min((self.ring_size - offset) as usize);
            ring.write_all_at(&chunk[..first], offset)?;
            ring.write_all_at(&chunk[first..], 0)?;
            at += chunk.len() as u64;
        }
        Ok(())
    }

    /// Appends the ring, in order, to the head. When bytes were dropped between the two, the
    /// head's last partial line and the ring's first one go too, so every line kept is whole.
    pub fn finish(mut self) -> io::Result<Kept> {
        let in_ring = self.printed.saturating_sub(self.head);
        let Some(mut ring) = self.ring.take() else {
            self.file.sync_all()?;
            return Ok(Kept {
                printed: self.printed,
                dropped: 0,
            });
        };
        let wrapped = in_ring > self.ring_size;
        let mut newest = vec![0u8; in_ring.min(self.ring_size) as usize];
        let start = if wrapped { in_ring % self.ring_size } else { 0 };
        let first = (self.ring_size - start).min(newest.len() as u64) as usize;
        ring.seek(SeekFrom::Start(start))?;
        ring.read_exact(&mut newest[..first])?;
        ring.seek(SeekFrom::Start(0))?;
        ring.read_exact(&mut newest[first..])?;
        drop(ring);
        // Its bytes are in memory now: gone from disk before they are appended, so the run's
        // files never hold more than head + ring, not even for a moment. (bpftrace has ended:
        // only a crash of this shim right here would lose them.)
        std::fs::remove_file(&self.ring_path)?;
        let mut tail: &[u8] = &newest;
        if wrapped {
            trim_partial_last_line(&mut self.file, self.head)?;
            tail = match tail.iter().position(|b| *b == b'\n') {
                Some(i) => &tail[i + 1..],
                None => &[],
            };
        }
        self.file.seek(SeekFrom::End(0))?;
        self.file.write_all(tail)?;
        self.file.sync_all()?;
        let kept = self.file.metadata()?.len();
        Ok(Kept {
            printed: self.printed,
            dropped: self.printed.saturating_sub(kept),
        })
    }
}

/// Cuts `file` (of `len` bytes) after its last newline, looking back at most 64 KiB.
fn trim_partial_last_line(file: &mut File, len: u64) -> io::Result<()> {
    let back = len.min(64 * 1024);
    let mut end = vec![0u8; back as usize];
    file.read_exact_at(&mut end, len - back)?;
    if let Some(i) = end.iter().rposition(|b| *b == b'\n') {
        file.set_len(len - back + i as u64 + 1)?;
    }
    Ok(())
}

fn private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded(head: u64, ring: u64, writes: &[&[u8]]) -> (Vec<u8>, Kept) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        let mut b = Bounded::create(&path, head, ring).expect("create");
        for w in writes {
            b.write(w).expect("write");
        }
        let kept = b.finish().expect("finish");
        assert!(!RunFiles::ring(&path).exists(), "the ring file is removed");
        (std::fs::read(&path).expect("read"), kept)
    }

    #[test]
    fn output_within_the_head_is_kept_whole() {
        let (out, kept) = bounded(100, 20, &[b"abc\n", b"def\n"]);
        assert_eq!(out, b"abc\ndef\n");
        assert_eq!(
            kept,
            Kept {
                printed: 8,
                dropped: 0
            }
        );
    }

    #[test]
    fn output_that_fits_head_and_ring_is_kept_whole() {
        let (out, kept) = bounded(6, 12, &[b"line1\nline2\nli", b"ne3\n"]);
        assert_eq!(out, b"line1\nline2\nline3\n");
        assert_eq!(kept.dropped, 0);
    }

    #[test]
    fn past_head_and_ring_the_middle_goes_and_whole_lines_stay() {
        let text: Vec<u8> = (0..1000)
            .flat_map(|i| format!("p{i}\n").into_bytes())
            .collect();
        let maps = b"@m: 42\n";
        let mut all = text.clone();
        all.extend_from_slice(maps);
        // Written in uneven pieces, some larger than the ring.
        let pieces: Vec<&[u8]> = all.chunks(37).collect();
        let (out, kept) = bounded(100, 64, &pieces);
        assert!(out.len() as u64 <= 100 + 64, "{} bytes on disk", out.len());
        assert!(out.ends_with(maps), "the newest bytes are kept");
        assert!(out.starts_with(b"p0\np1\n"));
        let text = String::from_utf8(out.clone()).expect("whole lines, valid text");
        assert!(
            text.lines()
                .all(|l| l == "@m: 42" || (l.starts_with('p') && l[1..].parse::<u32>().is_ok())),
            "{text}"
        );
        assert_eq!(kept.printed, all.len() as u64);
        assert_eq!(kept.dropped, all.len() as u64 - out.len() as u64);
    }

    #[test]
    fn a_write_larger_than_the_ring_keeps_its_end() {
        let big: Vec<u8> = (0..50)
            .flat_map(|i| format!("{i:04}\n").into_bytes())
            .collect();
        let (out, kept) = bounded(0, 20, &[&big]);
        assert_eq!(out, b"0047\n0048\n0049\n");
        assert_eq!(kept.dropped, big.len() as u64 - 15);
    }

    #[test]
    fn the_limit_is_split_into_head_and_ring() {
        assert_eq!(split(32 << 20), (24 << 20, 8 << 20));
        assert_eq!(split(100 << 20), (92 << 20, 8 << 20));
        assert_eq!(split(1000), (750, 250));
        assert_eq!(split(0), (0, 0));
    }
}
