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

/// Limits on every trace together (their shims and bpftrace), set on `tracejob-traces`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
}

/// Sets `limits` on `tracejob-traces` (made if missing) in every hierarchy under `root` that has
/// the knob: `memory.max` and `pids.max` in cgroup v2, `memory.limit_in_bytes` and `pids.max` in
/// the v1 controllers. Returns the knobs written (as `hierarchy/tracejob-traces/knob`); a host
/// without a memory or pids controller anywhere gets none, and the caller says so.
pub fn limit_traces(root: &Path, limits: Limits) -> Result<Vec<PathBuf>, Error> {
    let mut written = Vec::new();
    for hierarchy in hierarchies(root).map_err(at(root))? {
        let dir = hierarchy.join(TRACES);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(at(&dir)(e)),
            _ => {}
        }
        let knobs = [
            ("memory.max", limits.memory_bytes),
            ("memory.limit_in_bytes", limits.memory_bytes),
            ("pids.max", limits.pids),
        ];
        for (knob, value) in knobs {
            let path = dir.join(knob);
            if path.exists() {
                fs::write(&path, value.to_string()).map_err(at(&path))?;
                written.push(path);
            }
        }
    }
    Ok(written)
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
    fn limits_go_where_each_hierarchy_has_the_knob() {
        let root = tempfile::tempdir().expect("tempdir");
        for h in ["memory", "pids", "cpu"] {
            fs::create_dir_all(root.path().join(h).join(TRACES)).expect("mkdir");
            fs::write(root.path().join(h).join("cgroup.procs"), "").expect("write");
        }
        // As the kernel makes them when the cgroup is created.
        let knob = |h: &str, k: &str| root.path().join(h).join(TRACES).join(k);
        fs::write(knob("memory", "memory.limit_in_bytes"), "max").expect("write");
        fs::write(knob("pids", "pids.max"), "max").expect("write");
        let limits = Limits {
            memory_bytes: 1 << 30,
            pids: 512,
        };
        let written = limit_traces(root.path(), limits).expect("limits");
        assert_eq!(written.len(), 2, "{written:?}");
        let read = |p: PathBuf| fs::read_to_string(p).expect("read");
        assert_eq!(read(knob("memory", "memory.limit_in_bytes")), "1073741824");
        assert_eq!(read(knob("pids", "pids.max")), "512");
        assert!(!knob("cpu", "pids.max").exists(), "no knob is made up");
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
