//! The summarizer (`tracejob-agent summarize`), run against the test control plane. Each test
//! that needs one starts its own, scoped to its namespace and with a Lease of its own, so tests
//! running alongside never share one.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{must, Env, Proc};

pub struct Summarizer {
    pub identity: String,
    pub lease: String,
    pub log: PathBuf,
    pub proc: Option<Proc>,
    /// Where it serves /healthz, /readyz and /metrics.
    pub port: u16,
    _tmp: tempfile::TempDir,
}

impl Summarizer {
    /// A summarizer of `namespace`'s TraceJobs, identified as `identity`, electing itself
    /// through the Lease `lease` (in the same namespace).
    pub fn start(env: &Env, namespace: &str, lease: &str, identity: &str) -> Summarizer {
        let tmp = must(
            tempfile::Builder::new()
                .prefix("tracejob-summarizer-")
                .tempdir(),
            "tempdir",
        );
        let log = tmp.path().join("summarizer.log");
        let out = must(std::fs::File::create(&log), "summarizer log");
        let err = must(out.try_clone(), "clone log");
        let port = super::control_plane::free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracejob-agent"));
        cmd.args([
            "summarize",
            "--namespace",
            namespace,
            "--lease-namespace",
            namespace,
        ])
        .args(["--lease-name", lease, "--identity", identity])
        .args(["--target-timeout", "5"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("KUBECONFIG", &env.cp.kubeconfig)
        .env("RUST_LOG", "tracejob_agent=debug,info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        let proc = Proc::spawn(&format!("summarizer-{identity}"), &mut cmd);
        Summarizer {
            identity: identity.to_string(),
            lease: lease.to_string(),
            log,
            proc: Some(proc),
            port,
            _tmp: tmp,
        }
    }

    /// The one summarizer of a test's namespace.
    pub fn of(env: &Env, namespace: &str) -> Summarizer {
        Summarizer::start(
            env,
            namespace,
            "summarizer",
            &format!("{namespace}-summarizer"),
        )
    }

    /// Pauses it (SIGSTOP): it holds its Lease without renewing it, and does nothing.
    pub fn pause(&self) {
        if let Some(p) = &self.proc {
            p.signal(nix::sys::signal::Signal::SIGSTOP);
        }
    }

    /// Kills it (SIGKILL) and waits for its end.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.signal(nix::sys::signal::Signal::SIGKILL);
            p.wait_exit(std::time::Duration::from_secs(10));
        }
        self.proc = None;
    }

    /// One sample of /metrics by its name and labels as printed; None if it is not exported.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let out = std::process::Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{}/metrics", self.port)])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Summarizer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- summarizer {} log ----\n{}",
                self.identity,
                self.logs()
            );
        }
        self.proc = None;
    }
}
