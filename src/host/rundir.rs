//! The agent's state directory on the node (a hostPath in the DaemonSet): one directory per run
//! holding the program, bpftrace's stdout and stderr, what the shim recorded of the process, and
//! the agent's record of the run (its format: `record`), which a restarted agent needs to take it
//! over and to report what was decided before it died. A run's directory is removed once its
//! outcome is reported. Every record is written atomically and fsynced before anything it says is
//! reported.
//!
//! One agent per state directory: `StateDir::open` takes an exclusive lock (`flock`) on
//! `agent.lock` there, held as long as the agent lives, so a second agent on the same directory
//! fails at once instead of taking over the first one's runs. The lock's descriptor is
//! close-on-exec (as every file Rust opens), so the shims, which outlive the agent, never hold it,
//! and the next agent takes it while the old traces run.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

// The record's types live with its on-disk format; here for the agent's imports.
pub use super::record::{Landed, Record};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("status.id {0:?} is not a UUID")]
    BadRunId(String),
    #[error("the state directory {dir} is in use: another tracejob-agent holds its lock {lock}{holder} (one agent per state directory; give this one another --state-dir, or stop the other)")]
    Locked {
        dir: PathBuf,
        lock: PathBuf,
        /// ", PID N" when the holder wrote its PID into the lock file.
        holder: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where one run's files live.
#[derive(Debug, Clone)]
pub struct RunFiles {
    pub dir: PathBuf,
    /// The program, mode 0600.
    pub program: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// What the shim recorded once bpftrace started (`shim::Started`).
    pub started: PathBuf,
    /// What the shim recorded once bpftrace ended (`shim::Ended`).
    pub ended: PathBuf,
    /// The agent's record of the run.
    pub record: PathBuf,
    /// The newest dump of the maps for spec.metrics, replaced whole by the shim on each read.
    pub metrics: PathBuf,
}

impl RunFiles {
    pub fn in_dir(dir: &Path) -> RunFiles {
        RunFiles {
            dir: dir.to_path_buf(),
            program: dir.join("program.bt"),
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
            started: dir.join("started.json"),
            ended: dir.join("ended.json"),
            record: dir.join("record.json"),
            metrics: dir.join("metrics.txt"),
        }
    }

    /// The circular file that keeps the newest bytes of `output` once its head is full.
    pub fn ring(output: &Path) -> PathBuf {
        let mut name = output.as_os_str().to_owned();
        name.push(".ring");
        PathBuf::from(name)
    }
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// The exclusive lock on `agent.lock`, released when the last clone is dropped (or the
    /// process ends).
    _lock: Arc<Flock<File>>,
}

/// The lock file in the state directory.
pub const LOCK_FILE: &str = "agent.lock";

impl StateDir {
    /// Opens (and creates) the state directory and locks it for this agent; `Error::Locked` if
    /// another agent has it.
    pub fn open(root: &Path) -> Result<StateDir, Error> {
        let jobs = root.join("jobs");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&jobs)
            .map_err(io("create", &jobs))?;
        let path = root.join(LOCK_FILE);
        // Not truncated before the lock is ours: it holds the holder's PID.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .map(|pid| format!(", PID {pid}"))
                    .unwrap_or_default();
                return Err(Error::Locked {
                    dir: root.to_path_buf(),
                    lock: path,
                    holder,
                });
            }
            Err((_, errno)) => return Err(io("lock", &path)(errno.into())),
        };
        // Who holds it, for the next one's error message.
        lock.set_len(0)
            .and_then(|()| writeln!(&*lock, "{}", std::process::id()))
            .map_err(io("write", &path))?;
        Ok(StateDir {
            root: root.to_path_buf(),
            _lock: Arc::new(lock),
        })
    }

    /// The files of a run. The id comes from the cluster, so it must be a UUID before it becomes
    /// part of a path.
    pub fn files(&self, run_id: &str) -> Result<RunFiles, Error> {
        let id = uuid::Uuid::parse_str(run_id).map_err(|_| Error::BadRunId(run_id.to_string()))?;
        Ok(RunFiles::in_dir(
            &self.root.join("jobs").join(id.hyphenated().to_string()),
        ))
    }

    /// Creates the run's directory with the program in a private file (0600) and its record.
    pub fn create(&self, record: &Record, program: &str) -> Result<RunFiles, Error> {
        let files = self.files(&record.run_id)?;
        DirBuilder::new()
            .mode(0o700)
            .create(&files.dir)
            .map_err(io("create", &files.dir))?;
        write_private(&files.program, program.as_bytes())?;
        self.save(record)?;
        Ok(files)
    }

    pub fn save(&self, record: &Record) -> Result<(), Error> {
        let path = self.files(&record.run_id)?.record;
        let json = record
            .to_json()
            .map_err(|e| io("encode", &path)(e.into()))?;
        write_atomic(&path, &json)
    }

    /// The run's record; None when it is missing or cannot be read (a newer agent's, say): such
    /// a run is not resumed.
    pub fn load(&self, run_id: &str) -> Option<Record> {
        let path = self.files(run_id).ok()?.record;
        let json = fs::read(&path).ok()?;
        Record::from_json(&json)
            .inspect_err(|e| warn!(path = %path.display(), error = %e, "a run's record is ignored"))
            .ok()
    }

    /// Every record on disk, for resuming after a restart.
    pub fn records(&self) -> Vec<Record> {
        let Ok(entries) = fs::read_dir(self.root.join("jobs")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| self.load(&e.file_name().to_string_lossy()))
            .collect()
    }

    pub fn remove(&self, run_id: &str) -> Result<(), Error> {
        let dir = self.files(run_id)?.dir;
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &dir)(e)),
            _ => Ok(()),
        }
    }
}

/// Writes `value` as JSON to `path` atomically and durably: a private temporary file, fsynced,
/// renamed over `path`, and the directory fsynced, so after a crash `path` holds the old record
/// or the new one, whole.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| io("encode", path)(e.into()))?;
    write_atomic(path, &json)
}

/// Writes `bytes` to `path` as `write_json` does.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = create_private(&tmp)?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))?;
    }
    Ok(())
}

/// The JSON at `path`; None when it is missing or unreadable (a torn write cannot happen).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn create_private(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    create_private(path)?
        .write_all(bytes)
        .map_err(io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::job::StopReason;
    use std::os::unix::fs::PermissionsExt;

    fn record(id: &str) -> Record {
        Record {
            namespace: "ns".into(),
            name: "n".into(),
            uid: "u".into(),
            run_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn program_is_private_and_record_round_trips() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(tmp.path()).expect("open");
        let id = uuid::Uuid::new_v4().to_string();
        let files = state.create(&record(&id), "BEGIN {}").expect("create");
        let mode = fs::metadata(&files.program)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(state.load(&id), Some(record(&id)));
        let mut stopped = record(&id);
        stopped.stopped = Some(StopReason::Deadline);
        state.save(&stopped).expect("save");
        assert_eq!(state.load(&id), Some(stopped));
        assert_eq!(state.records().len(), 1);
        assert!(
            !files.dir.join("record.json.tmp").exists(),
            "the temporary file was renamed"
        );
        state.remove(&id).expect("remove");
        assert_eq!(state.load(&id), None);
    }

    #[test]
    fn a_newer_agents_record_is_not_resumed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(tmp.path()).expect("open");
        let id = uuid::Uuid::new_v4().to_string();
        let files = state.create(&record(&id), "BEGIN {}").expect("create");
        let text = fs::read_to_string(&files.record).expect("read");
        let newer = text.replace("\"version\": 1,", "\"version\": 2,");
        assert_ne!(text, newer, "{text}");
        fs::write(&files.record, newer).expect("write");
        // As an unreadable record: no run to take over.
        assert_eq!(state.load(&id), None);
        assert!(state.records().is_empty());
    }

    #[test]
    fn one_agent_per_state_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = StateDir::open(tmp.path()).expect("open");
        let again = StateDir::open(tmp.path()).expect_err("a second open must fail");
        let message = again.to_string();
        assert!(
            matches!(&again, Error::Locked { holder, .. } if *holder == format!(", PID {}", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains(&tmp.path().display().to_string())
                && message.contains(&tmp.path().join(LOCK_FILE).display().to_string()),
            "{message}"
        );
        // Held by every clone, released with the last.
        let clone = first.clone();
        drop(first);
        assert!(
            StateDir::open(tmp.path()).is_err(),
            "a clone still holds it"
        );
        drop(clone);
        StateDir::open(tmp.path()).expect("free again");
    }

    #[test]
    fn the_lock_is_not_inherited_by_child_processes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let _state = StateDir::open(tmp.path()).expect("open");
        let lock = fs::canonicalize(tmp.path().join(LOCK_FILE)).expect("lock file");
        // A child (as a shim, which outlives the agent) must not hold the lock's descriptor, or
        // the next agent could not take the lock while it runs.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        // Once it runs sleep: under qemu-user (tests/run's aarch64 unit tests) spawn returns
        // before the exec, and the fork still has every descriptor.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !fs::read_to_string(format!("/proc/{}/comm", child.id()))
            .is_ok_and(|c| c == "sleep\n")
        {
            assert!(std::time::Instant::now() < deadline, "sleep did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let fds = fs::read_dir(format!("/proc/{}/fd", child.id()))
            .expect("the child's descriptors")
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .collect::<Vec<_>>();
        let _ = child.kill();
        let _ = child.wait();
        assert!(!fds.is_empty(), "no descriptors read");
        assert!(!fds.contains(&lock), "the child holds the lock: {fds:?}");
    }

    #[test]
    fn run_ids_that_are_not_uuids_never_become_paths() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(tmp.path()).expect("open");
        assert!(state.files("../../etc").is_err());
        assert!(state.create(&record("../x"), "BEGIN {}").is_err());
    }
}
