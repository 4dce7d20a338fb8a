//! A container on this node, found by its runtime's ID: its processes (from each process's
//! /proc/PID/cgroup, whatever the runtime, cgroup driver and cgroup version name the container's
//! cgroup), its main process, and its cgroup v2 id (what bpftrace's `cgroup` builtin returns).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no process of container {0} runs on this node")]
    NotFound(String),
    #[error("reading /proc: {0}")]
    Proc(#[from] procfs::ProcError),
}

/// A container's processes on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Its main process (the one whose parent is outside the container), as a host PID.
    pub main: i32,
    pub pids: Vec<i32>,
    /// Its cgroup v2 id; None where the node has no cgroup v2 hierarchy.
    pub cgroup: Option<u64>,
    /// Its cgroup's path in the v2 hierarchy.
    pub cgroup_path: Option<String>,
}

/// Finds the processes of container `id` among this node's (`/proc`, the host's: the agent runs
/// with hostPID). `cgroup_root` is the host's /sys/fs/cgroup.
pub fn find(id: &str, cgroup_root: &Path) -> Result<Container, Error> {
    let mut members = Vec::new();
    for process in procfs::process::all_processes()?.flatten() {
        let pid = process.pid();
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if !belongs(&text, id) {
            continue;
        }
        if let Ok(stat) = process.stat() {
            members.push((pid, stat.ppid, stat.starttime, text));
        }
    }
    let pids: Vec<i32> = members.iter().map(|m| m.0).collect();
    // The container's init: its parent is not in the container (the runtime's shim is not).
    let main = members
        .iter()
        .filter(|m| !pids.contains(&m.1))
        .min_by_key(|m| m.2)
        .ok_or_else(|| Error::NotFound(id.to_string()))?;
    let cgroup_path = v2_path(&main.3).map(String::from);
    let cgroup = match (&cgroup_path, v2_root(cgroup_root)) {
        (Some(path), Some(root)) => cgroup_id(&root, path).ok(),
        _ => None,
    };
    Ok(Container {
        main: main.0,
        pids,
        cgroup,
        cgroup_path,
    })
}

/// Whether a process with this /proc/PID/cgroup is in container `id`: a cgroup path names the ID
/// (`/k8s.io/ID`, `/kubepods/.../ID`, `cri-containerd-ID.scope`, `crio-ID.scope`, `crio-ID`, ...),
/// as a whole, not as part of a longer hex string.
pub fn belongs(cgroup: &str, id: &str) -> bool {
    if id.len() < 12 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return false;
    }
    cgroup.lines().any(|line| {
        let path = line.splitn(3, ':').nth(2).unwrap_or_default();
        path.match_indices(id).any(|(at, _)| {
            let before = path[..at].chars().next_back();
            let after = path[at + id.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_hexdigit())
                && !after.is_some_and(|c| c.is_ascii_hexdigit())
        })
    })
}

/// The process's cgroup in the v2 hierarchy (the `0::PATH` line), if the node has one.
pub fn v2_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Where the cgroup v2 hierarchy is mounted under `root` (the host's /sys/fs/cgroup): `root`
/// itself on a v2 node, `root/unified` on a hybrid one, none on a v1-only node.
pub fn v2_root(root: &Path) -> Option<PathBuf> {
    [root.to_path_buf(), root.join("unified")]
        .into_iter()
        .find(|d| d.join("cgroup.controllers").exists())
}

/// The id of the cgroup at `path` in the v2 hierarchy at `root`: its directory's inode number,
/// which is what the kernel (and bpftrace's `cgroup`) calls the cgroup id.
pub fn cgroup_id(root: &Path, path: &str) -> io::Result<u64> {
    Ok(std::fs::metadata(root.join(path.trim_start_matches('/')))?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "d2593419895530de003cf5a20705f65722de0d55175cd0058faec7c16960c37d";

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/cgroups/{name}.cgroup",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn every_layout_is_recognised_and_its_v2_cgroup_found() {
        for (layout, v2) in [
            ("containerd-cgroupfs-hybrid", Some(format!("/k8s.io/{ID}"))),
            ("containerd-cgroupfs-v1", None),
            ("containerd-cgroupfs-v2", Some(format!("/kubepods/besteffort/pod6a1f5b3e-2c4d-4e8f-9a0b-1c2d3e4f5a6b/{ID}"))),
            ("containerd-systemd-v2", Some(format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6a1f5b3e_2c4d_4e8f_9a0b_1c2d3e4f5a6b.slice/cri-containerd-{ID}.scope"))),
            ("containerd-systemd-hybrid", Some(format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6a1f5b3e_2c4d_4e8f_9a0b_1c2d3e4f5a6b.slice/cri-containerd-{ID}.scope"))),
            ("crio-systemd-v2", Some(format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6a1f5b3e_2c4d_4e8f_9a0b_1c2d3e4f5a6b.slice/crio-{ID}.scope"))),
            ("crio-cgroupfs-v1", None),
        ] {
            let text = fixture(layout);
            assert!(belongs(&text, ID), "{layout}: not recognised");
            assert_eq!(v2_path(&text).map(String::from), v2, "{layout}");
            // Another container's ID, or a prefix of this one, is not this container.
            assert!(!belongs(&text, &ID.replace('d', "e")), "{layout}");
            assert!(!belongs(&text, &ID[..40]), "{layout}: a prefix matched");
        }
        assert!(!belongs(&fixture("host-process"), ID));
        assert!(!belongs(&fixture("containerd-cgroupfs-hybrid"), "k8s.io"));
    }

    #[test]
    fn the_v2_hierarchy_is_found_on_v2_hybrid_and_not_v1_nodes() {
        let v2 = tempfile::tempdir().expect("tempdir");
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory\n").expect("write");
        assert_eq!(v2_root(v2.path()), Some(v2.path().to_path_buf()));
        let hybrid = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(hybrid.path().join("unified")).expect("mkdir");
        std::fs::create_dir(hybrid.path().join("memory")).expect("mkdir");
        std::fs::write(hybrid.path().join("unified/cgroup.controllers"), "").expect("write");
        assert_eq!(v2_root(hybrid.path()), Some(hybrid.path().join("unified")));
        let v1 = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(v1.path().join("memory")).expect("mkdir");
        assert_eq!(v2_root(v1.path()), None);
        // The id is the cgroup directory's inode.
        std::fs::create_dir_all(v2.path().join("k8s.io/abc")).expect("mkdir");
        let ino = std::fs::metadata(v2.path().join("k8s.io/abc"))
            .expect("stat")
            .ino();
        assert_eq!(cgroup_id(v2.path(), "/k8s.io/abc").expect("id"), ino);
    }

    #[test]
    fn a_container_that_does_not_run_here_is_not_found() {
        assert!(matches!(
            find(&"f".repeat(64), Path::new("/sys/fs/cgroup")),
            Err(Error::NotFound(_))
        ));
    }
}
