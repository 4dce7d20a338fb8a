//! Test support: a real control plane, kubectl as a user runs it, the agent binary, and a runner.
#![allow(dead_code)]

pub mod agent;
pub mod control_plane;
pub mod docs;
pub mod double;
pub mod faults;
pub mod host;
pub mod kubectl;
pub mod outputs;
pub mod parts;
pub mod pods;
pub mod summarizer;
pub mod tokens;
pub mod tracejobs;
pub mod wait;

use std::fmt::Debug;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use agent::{pool, register_node, Agent};
pub use control_plane::ControlPlane;
pub use double::{bpftrace_double, double_agent, double_program};
pub use kubectl::Kubectl;
pub use summarizer::Summarizer;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Unwraps a result from the test's own setup with a message saying what failed.
pub fn must<T, E: Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// A child process that is ended when dropped. It also dies with the test binary's main thread
/// (PR_SET_PDEATHSIG), so a killed test run leaves no control plane behind.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = must(cmd.spawn(), &format!("spawn {name}"));
        Proc {
            name: name.to_string(),
            child,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// PIDs of live bpftrace processes whose command line mentions `needle` (an agent's state
/// directory: the program file lives there).
pub fn bpftrace_pids(needle: &Path) -> Vec<i32> {
    let needle = needle.to_string_lossy().to_string();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        // The agent's own command line names bpftrace too (--bpftrace): only its children count.
        if cmdline
            .split(|b| *b == 0)
            .next()
            .is_some_and(|argv0| argv0.ends_with(b"tracejob-agent"))
        {
            continue;
        }
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .map(|s| s.trim_start().starts_with('Z'))
            .unwrap_or(false);
        if !zombie && cmdline.contains("bpftrace") && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Makes sure bpftrace can run here: root, tracefs mounted, bpftrace installed. Under CI=true a
/// missing piece fails the run (callers get a panic); elsewhere too, since these tests are the point.
pub fn require_bpftrace_environment() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests run bpftrace and need root"
    );
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let st = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
        assert!(
            matches!(st, Ok(s) if s.success()),
            "tracefs is not mounted at /sys/kernel/tracing and mounting it failed"
        );
    }
    let v = Command::new("bpftrace").arg("--version").output();
    assert!(
        matches!(v, Ok(ref o) if o.status.success()),
        "bpftrace is not installed (apt-get install bpftrace)"
    );
}

/// One end-to-end test: a name and a function that panics on failure.
pub struct Test {
    pub name: &'static str,
    pub run: fn(&Env),
}

/// What every test gets: the shared control plane and a kubectl bound to it.
pub struct Env {
    pub cp: ControlPlane,
    pub kubectl: Kubectl,
    counter: AtomicUsize,
}

impl Env {
    pub fn new(cp: ControlPlane) -> Env {
        let kubectl = Kubectl::new(&cp.bin, &cp.kubeconfig);
        Env {
            cp,
            kubectl,
            counter: AtomicUsize::new(0),
        }
    }

    /// Applies daemonset/crd.yaml as a user would and waits until the API serves TraceJobs.
    pub fn install_crd(&self) {
        let crd = repo_root().join("daemonset/crd.yaml");
        self.kubectl.ok(&["apply", "-f", &crd.to_string_lossy()]);
        self.kubectl.ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/tracejobs.observe.tracejob.dev",
        ]);
        wait_for(Duration::from_secs(30), "tracejobs served", || {
            self.kubectl.run(&["get", "tj", "-A"]).ok.then_some(())
        });
    }

    /// A fresh namespace (and a node name of the same stem) for one test, annotated to trace
    /// every node but protected ones (see `create_namespace`).
    pub fn namespace(&self, stem: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let ns = format!("{stem}-{n}");
        self.create_namespace(&ns);
        ns
    }

    /// Creates namespace `ns` with the annotation [`EVERY_NODE_BUT_PROTECTED`], in one request:
    /// namespaces trace nothing without one (the agent's default, and the install's admission
    /// policy). A test that sets its own uses `kubectl annotate --overwrite`; one that needs an
    /// unannotated namespace removes it (`kubectl annotate ns NS observe.tracejob.dev/node-selector-`).
    pub fn create_namespace(&self, ns: &str) {
        let yaml = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "annotations": {SCOPE: EVERY_NODE_BUT_PROTECTED}}
        });
        let r = self
            .kubectl
            .run_with_stdin(&["create", "-f", "-"], &yaml.to_string());
        assert!(r.ok, "creating namespace {ns}: {}", r.stderr);
    }
}

/// The Namespace annotation that scopes its TraceJobs to nodes.
pub const SCOPE: &str = "observe.tracejob.dev/node-selector";
/// A selector of every node but protected ones: those without a label no node has, naming no
/// protected label.
pub const EVERY_NODE_BUT_PROTECTED: &str = "!observe.tracejob.dev/untraceable";

/// `kubectl tracejob ARGS` (the plugin, through kubectl) in namespace `ns`: stdout.
pub fn plugin_stdout(env: &Env, ns: &str, args: &[&str]) -> Vec<u8> {
    let dir = std::path::PathBuf::from(env!("CARGO_BIN_EXE_kubectl-tracejob"));
    let path = format!(
        "{}:{}",
        dir.parent().expect("dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = must(
        Command::new(&env.kubectl.path)
            .env("KUBECONFIG", &env.kubectl.kubeconfig)
            .env("PATH", path)
            .args(["tracejob", "-n", ns])
            .args(args)
            .output(),
        "kubectl tracejob",
    );
    assert!(
        out.status.success(),
        "kubectl tracejob {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
