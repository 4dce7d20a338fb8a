//! The agent binary, run against the test control plane as one node.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{bpftrace_pids, must, Env, Proc};

pub struct Agent {
    pub node: String,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub proc: Option<Proc>,
    /// Where the agent serves /healthz, /readyz and /metrics.
    pub port: u16,
    /// Where the agent serves the traces' metrics (spec.metrics).
    pub metrics_port: u16,
    kubeconfig: PathBuf,
    envs: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent for `node`, authenticating with the administrator's kubeconfig.
    pub fn start(env: &Env, node: &str) -> Agent {
        Agent::start_with(env, node, &env.cp.kubeconfig, &[], &[])
    }

    /// An agent with extra flags and environment (which bpftrace inherits). Its node is
    /// registered first, as the kubelet would have done: the agent reads its labels.
    pub fn start_with(
        env: &Env,
        node: &str,
        kubeconfig: &std::path::Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Agent {
        register_node(env, node, &[]);
        Agent::start_registered(node, kubeconfig, extra, envs)
    }

    /// An agent for a node registered already (when the API server may be down at its start).
    pub fn start_registered(
        node: &str,
        kubeconfig: &std::path::Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Agent {
        Agent::start_in(node, kubeconfig, None, extra, envs)
    }

    /// An agent whose state directory is `state_dir` (on a file system of the test's own, say)
    /// instead of one in its temporary directory. Its node is registered first.
    pub fn start_with_state_dir(
        env: &Env,
        node: &str,
        state_dir: &std::path::Path,
        extra: &[&str],
    ) -> Agent {
        register_node(env, node, &[]);
        Agent::start_in(node, &env.cp.kubeconfig, Some(state_dir), extra, &[])
    }

    fn start_in(
        node: &str,
        kubeconfig: &std::path::Path,
        state_dir: Option<&std::path::Path>,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Agent {
        let tmp = must(
            tempfile::Builder::new().prefix("tracejob-agent-").tempdir(),
            "tempdir",
        );
        let mut agent = Agent {
            node: node.to_string(),
            state_dir: state_dir.map_or_else(|| tmp.path().join("state"), PathBuf::from),
            log: tmp.path().join("agent.log"),
            proc: None,
            port: super::control_plane::free_port(),
            metrics_port: super::control_plane::free_port(),
            kubeconfig: kubeconfig.to_path_buf(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: tmp,
        };
        agent.restart(extra);
        agent
    }

    /// Starts the agent process again on the same state directory (after a kill, say).
    pub fn restart(&mut self, extra: &[&str]) {
        let log = must(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log),
            "open agent log",
        );
        let err = must(log.try_clone(), "clone log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracejob-agent"));
        cmd.arg("run")
            .arg("--node-name")
            .arg(&self.node)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--trace-metrics-listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "tracejob_agent=debug,info")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        self.proc = Some(Proc::spawn(&format!("agent-{}", self.node), &mut cmd));
    }

    /// GET of one of the agent's endpoints: the HTTP status (0 if unreachable) and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// One sample of /metrics, by its name and labels as printed (`tracejob_traces_started_total`).
    /// A series the agent does not export fails the test: a renamed metric must not read as 0.
    pub fn metric(&self, series: &str) -> f64 {
        self.metric_if_present(series)
            .unwrap_or_else(|| panic!("the agent exports no {series}:\n{}", self.get("/metrics").1))
    }

    /// One sample of /metrics; None if the agent does not export it (yet: labelled series appear
    /// with their first value).
    pub fn metric_if_present(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
    }

    /// Asks /healthz every 50 ms in the background until the returned probe is finished, which
    /// gives the slowest answer (an answer that never came counts as 10 s).
    pub fn probe_healthz(&self) -> HealthProbe {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let port = self.port;
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let t = std::time::Instant::now();
                let ok = Command::new("curl")
                    .args(["-sf", "-m", "10", "-o", "/dev/null"])
                    .arg(format!("http://127.0.0.1:{port}/healthz"))
                    .status()
                    .is_ok_and(|s| s.success());
                slowest = slowest.max(if ok {
                    t.elapsed()
                } else {
                    Duration::from_secs(10)
                });
                std::thread::sleep(Duration::from_millis(50));
            }
            slowest
        });
        HealthProbe { stop, thread }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Live bpftrace processes started by this agent.
    pub fn bpftraces(&self) -> Vec<i32> {
        bpftrace_pids(&self.state_dir)
    }
}

/// /healthz asked in the background (`Agent::probe_healthz`).
pub struct HealthProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Duration>,
}

impl HealthProbe {
    /// The slowest answer while it ran.
    pub fn finish(self) -> Duration {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap_or(Duration::MAX)
    }
}

/// A pool of `count` nodes for a fan-out, `NS-n1` ... labelled `pool=NS`, each with its agent
/// running: the node names and the agents.
pub fn pool(env: &Env, ns: &str, count: usize) -> (Vec<String>, Vec<Agent>) {
    let names: Vec<String> = (1..=count).map(|i| format!("{ns}-n{i}")).collect();
    for n in &names {
        register_node(env, n, &[("pool", ns)]);
    }
    let agents = names.iter().map(|n| Agent::start(env, n)).collect();
    (names, agents)
}

/// Creates a Node object named `node` with `labels`, unless one exists.
pub fn register_node(env: &Env, node: &str, labels: &[(&str, &str)]) {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": labels}
    });
    let r = env
        .kubectl
        .run_with_stdin(&["create", "-f", "-"], &object.to_string());
    assert!(
        r.ok || r.stderr.contains("AlreadyExists"),
        "registering node {node}: {}",
        r.stderr
    );
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- agent {} log ----\n{}", self.node, self.logs());
        }
        // For chasing a rare failure across many runs: keep every agent's log.
        if let Some(dir) = std::env::var_os("TRACEJOB_TEST_KEEP_LOGS") {
            let dir = std::path::PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(&self.log, dir.join(format!("{}.log", self.node)));
        }
        self.proc = None;
        // An agent that exits leaves its traces running for the next agent by design; a test's
        // agent has no successor, so end what it left.
        for pid in self.bpftraces() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
