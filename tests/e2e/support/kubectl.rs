//! kubectl, run the way a user runs it: the one built with the test control plane (the same
//! release, inside kubectl's version-skew policy), unless TRACEJOB_KUBECTL names another.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};

use super::must;

#[derive(Clone)]
pub struct Kubectl {
    pub path: PathBuf,
    pub kubeconfig: PathBuf,
}

/// `kubectl get -w`: a jsonpath of one object, a line each time it changes (the first one now),
/// until the watch ends (the object deleted, the server gone). kubectl ends with the value.
pub struct Watch {
    child: Child,
    pub lines: Receiver<String>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    pub fn new(bin_dir: &Path, kubeconfig: &Path) -> Kubectl {
        let path = std::env::var_os("TRACEJOB_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| bin_dir.join("kubectl"));
        Kubectl {
            path,
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    pub fn with_kubeconfig(&self, kubeconfig: &Path) -> Kubectl {
        Kubectl {
            path: self.path.clone(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// kubectl with `args`, against this kubeconfig.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.args(args).env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = must(
            self.command(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn(),
            "spawn kubectl",
        );
        // Written from a thread: a large input must not wait on kubectl's output being read.
        let writer = child.stdin.take().map(|mut s| {
            let input = stdin.as_bytes().to_vec();
            std::thread::spawn(move || s.write_all(&input))
        });
        let out: Output = must(child.wait_with_output(), "wait kubectl");
        if let Some(w) = writer {
            let _ = w.join();
        }
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, "")
    }

    /// Runs kubectl and panics, with its stderr, unless it succeeds. Returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(r.ok, "kubectl {} failed: {}", args.join(" "), r.stderr);
        r.stdout
    }

    /// `kubectl apply -f -` with `yaml`; panics unless accepted.
    pub fn apply(&self, ns: &str, yaml: &str) -> String {
        let r = self.run_with_stdin(&["apply", "-n", ns, "-f", "-"], yaml);
        assert!(
            r.ok,
            "kubectl apply failed: {}\n{}",
            r.stderr,
            yaml.chars().take(400).collect::<String>()
        );
        r.stdout
    }

    /// A jsonpath of one object, empty when the field is absent.
    pub fn jsonpath(&self, ns: &str, what: &str, path: &str) -> String {
        let r = self.try_jsonpath(ns, what, path);
        assert!(
            r.ok,
            "kubectl get -n {ns} {what} -o jsonpath={{{path}}} failed: {}",
            r.stderr
        );
        r.stdout
    }

    /// The same, a failure returned (the API server restarting, say) instead of failing the test.
    pub fn try_jsonpath(&self, ns: &str, what: &str, path: &str) -> Run {
        self.run(&["get", "-n", ns, what, "-o", &format!("jsonpath={{{path}}}")])
    }

    /// Watches a jsonpath of one object (see [`Watch`]).
    pub fn watch(&self, ns: &str, what: &str, path: &str) -> Watch {
        let mut child = must(
            self.command(&["get", "-w", "-n", ns, what, "-o"])
                .arg(format!("jsonpath={{{path}}}{{\"\\n\"}}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn(),
            "spawn kubectl get -w",
        );
        let (send, lines) = channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if send.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Watch { child, lines }
    }
}
