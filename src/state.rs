//! The agent's state directory on the node (a hostPath in the DaemonSet): one directory per run
//! holding the program, bpftrace's stdout and stderr, and the record a restarted agent needs to
//! take the run over. A run's directory is removed once its output has landed.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bpftrace::{Files, Identity};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("status.id {0:?} is not a UUID")]
    BadRunId(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What a restarted agent needs to resume a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub run_id: String,
    /// Set once bpftrace is started.
    pub process: Option<Identity>,
    /// Set once bpftrace is tracing.
    pub probes: Option<u32>,
    /// Set once SIGINT was sent, so a restarted agent does not wait for a deadline again.
    #[serde(default)]
    pub interrupted: bool,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn open(root: &Path) -> Result<StateDir, Error> {
        let jobs = root.join("jobs");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&jobs)
            .map_err(io("create", &jobs))?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a run. The id comes from the cluster, so it must be a UUID before it
    /// becomes part of a path.
    pub fn run_dir(&self, run_id: &str) -> Result<PathBuf, Error> {
        let id = uuid::Uuid::parse_str(run_id).map_err(|_| Error::BadRunId(run_id.to_string()))?;
        Ok(self.root.join("jobs").join(id.hyphenated().to_string()))
    }

    pub fn files(&self, run_id: &str) -> Result<Files, Error> {
        Ok(Files::in_dir(&self.run_dir(run_id)?))
    }

    /// Creates the run's directory with the program in a private file (0600) and its record.
    pub fn create(&self, record: &Record, program: &str) -> Result<Files, Error> {
        let dir = self.run_dir(&record.run_id)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("create", &dir))?;
        let files = Files::in_dir(&dir);
        write_private(&files.program, program.as_bytes())?;
        self.save(record)?;
        Ok(files)
    }

    /// Writes the record atomically (temporary file, then rename).
    pub fn save(&self, record: &Record) -> Result<(), Error> {
        let dir = self.run_dir(&record.run_id)?;
        let tmp = dir.join("record.json.tmp");
        let path = dir.join("record.json");
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Io {
            what: "encode",
            path: path.clone(),
            source: e.into(),
        })?;
        write_private(&tmp, &json)?;
        fs::rename(&tmp, &path).map_err(io("rename", &path))
    }

    pub fn load(&self, run_id: &str) -> Option<Record> {
        let path = self.run_dir(run_id).ok()?.join("record.json");
        serde_json::from_slice(&fs::read(path).ok()?).ok()
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
        let dir = self.run_dir(run_id)?;
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &dir)(e)),
            _ => Ok(()),
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(bytes).map_err(io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn record(id: &str) -> Record {
        Record {
            namespace: "ns".into(),
            name: "n".into(),
            uid: "u".into(),
            run_id: id.into(),
            process: None,
            probes: None,
            interrupted: false,
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
        assert_eq!(state.records().len(), 1);
        state.remove(&id).expect("remove");
        assert_eq!(state.load(&id), None);
    }

    #[test]
    fn run_ids_that_are_not_uuids_never_become_paths() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(tmp.path()).expect("open");
        assert!(state.run_dir("../../etc").is_err());
        assert!(state.create(&record("../x"), "BEGIN {}").is_err());
    }
}
