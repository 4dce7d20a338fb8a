//! Pods as a kubelet would show them: a container's cgroup and process, and its reported status.

use std::time::Duration;

use crate::support::{must, Kubectl, Proc};

/// A process in a cgroup named by a container ID, as a runtime would make it (`tracejob-e2e-ID`
/// in the cgroup v2 hierarchy): a container that no kubelet runs. Ends (and goes) when dropped.
pub struct FakeContainer {
    pub id: String,
    cgroup: std::path::PathBuf,
    process: Option<Proc>,
}

impl FakeContainer {
    pub fn start(seed: &str) -> FakeContainer {
        let mut id = String::new();
        for i in 0..4u64 {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (seed, std::process::id(), i).hash(&mut h);
            id.push_str(&format!("{:016x}", h.finish()));
        }
        let v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && !p.join("tasks").exists())
            .expect("a cgroup v2 hierarchy (pure or hybrid)");
        let cgroup = v2.join(format!("tracejob-e2e-{id}"));
        must(
            std::fs::create_dir_all(&cgroup),
            "mkdir the container's cgroup",
        );
        let process = Proc::spawn(
            "fake-container",
            std::process::Command::new("sleep").arg("3600"),
        );
        must(
            std::fs::write(cgroup.join("cgroup.procs"), process.pid().to_string()),
            "move the container's process into its cgroup",
        );
        FakeContainer {
            id,
            cgroup,
            process: Some(process),
        }
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        if let Some(p) = &self.process {
            p.signal(nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(mut p) = self.process.take() {
            p.wait_exit(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// Its pod's container running, as the kubelet would report it.
pub fn report_running(k: &Kubectl, ns: &str, pod: &str, container: &str, id: &str) {
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": container, "ready": true, "restartCount": 0,
            "image": "localhost/none:1", "imageID": "",
            "containerID": format!("containerd://{id}"),
            "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
        }],
    }});
    patch_status(k, ns, pod, &status);
}

/// Merges `status` (`{"status": {...}}`) into pod `pod`'s status, as the kubelet writes it.
pub fn patch_status(k: &Kubectl, ns: &str, pod: &str, status: &serde_json::Value) {
    k.ok(&[
        "patch",
        "-n",
        ns,
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
}
