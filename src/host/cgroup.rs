//! Moves a trace (its shim, before it starts bpftrace) out of the agent's container cgroup into
//! one of its own on the host.
//!
//! When a container stops (crash, restart, pod deletion), the runtime kills every process in the
//! container's cgroup, host PID namespace or not. A trace must outlive the agent's container so
//! the next agent can take it over, so each shim joins `tracejob-traces` at the root of every
//! cgroup hierarchy the host has mounted (cgroup v1 controllers, and the v2 unified hierarchy).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The cgroup, at the root of each hierarchy, that holds every trace.
pub const TRACES: &str = "tracejob-traces";

#[derive(Debug, thiserror::Error)]
#[error("cannot move the trace into {path}: {source}")]
pub struct Error {
    path: PathBuf,
    source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error {
        path: path.to_path_buf(),
        source,
    }
}

/// The hierarchies under `root`, the host's /sys/fs/cgroup: `root` itself when it is the v2
/// unified hierarchy, otherwise each mounted v1 controller (and a hybrid `unified`) below it.
/// Symbolic links (`cpu,cpuacct` aliases) are skipped: their target is listed already.
pub fn hierarchies(root: &Path) -> io::Result<Vec<PathBuf>> {
    if root.join("cgroup.procs").exists() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && entry.path().join("cgroup.procs").exists() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Moves `pid` into `tracejob-traces` in every hierarchy under `root`. Returns how many.
pub fn move_to_traces(root: &Path, pid: i32) -> Result<usize, Error> {
    let hierarchies = hierarchies(root).map_err(at(root))?;
    for hierarchy in &hierarchies {
        let dir = hierarchy.join(TRACES);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(at(&dir)(e)),
            _ => {}
        }
        // A new v1 cpuset cgroup has no CPUs or memory nodes, and takes no process until given
        // some: the parent's.
        for knob in ["cpuset.cpus", "cpuset.mems"] {
            let path = dir.join(knob);
            let empty = fs::read_to_string(&path).is_ok_and(|v| v.trim().is_empty());
            if empty {
                let parent = fs::read_to_string(hierarchy.join(knob)).map_err(at(hierarchy))?;
                fs::write(&path, parent.trim()).map_err(at(&path))?;
            }
        }
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(at(&procs))?;
    }
    Ok(hierarchies.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_hierarchies_and_skips_aliases_and_files() {
        let root = tempfile::tempdir().expect("tempdir");
        for h in ["cpu", "memory", "unified"] {
            fs::create_dir(root.path().join(h)).expect("mkdir");
            fs::write(root.path().join(h).join("cgroup.procs"), "").expect("write");
        }
        fs::create_dir(root.path().join("not-mounted")).expect("mkdir");
        std::os::unix::fs::symlink(root.path().join("cpu"), root.path().join("cpu,cpuacct"))
            .expect("symlink");
        let names: Vec<_> = hierarchies(root.path())
            .expect("list")
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, ["cpu", "memory", "unified"]);
    }

    #[test]
    fn a_v2_root_is_one_hierarchy() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::write(root.path().join("cgroup.procs"), "").expect("write");
        assert_eq!(
            hierarchies(root.path()).expect("list"),
            [root.path().to_path_buf()]
        );
    }
}
