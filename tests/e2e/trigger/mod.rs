//! TraceTriggers fired by a real loop: a small metric target (a thread serving /metrics), a real
//! Prometheus scraping it every second with an alerting rule on it, a real Alertmanager, the
//! trigger receiver (`tracejob-agent trigger-receiver`) called by Alertmanager's webhook, and the
//! agent running the TraceJob the receiver creates with real bpftrace. Prometheus and
//! Alertmanager are built from Go modules (tests/harness/build-prometheus.sh, cached).

mod alerts;
mod fence;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::control_plane::free_port;
use crate::support::{must, repo_root, wait_for, Env, Kubectl, Proc, Test};

pub fn tests() -> Vec<Test> {
    let mut tests = alerts::tests();
    tests.extend(fence::tests());
    tests
}

const LABEL_TRIGGER: &str = "observe.tracejob.dev/trigger";

const METRIC: &str = "tracejob_test_latency_seconds";

const PROGRAM: &str = "tracepoint:raw_syscalls:sys_enter { @calls = count(); }";

/// The directory holding `prometheus` and `alertmanager`, built once.
pub(crate) fn binaries() -> PathBuf {
    let out = must(
        Command::new("bash")
            .arg(repo_root().join("tests/harness/build-prometheus.sh"))
            .stderr(Stdio::inherit())
            .output(),
        "run build-prometheus.sh",
    );
    assert!(
        out.status.success(),
        "building Prometheus and Alertmanager failed"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A scrape target: serves `text` as /metrics on a loopback port until dropped.
struct MetricTarget {
    port: u16,
    text: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
}

impl MetricTarget {
    fn start() -> MetricTarget {
        let listener = must(TcpListener::bind("127.0.0.1:0"), "bind the metric target");
        must(listener.set_nonblocking(true), "nonblocking");
        let port = must(listener.local_addr(), "address").port();
        let text = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (text.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let body = t.lock().map(|b| b.clone()).unwrap_or_default();
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        MetricTarget { port, text, stop }
    }

    /// Sets the series: `(labels, value)`, labels as Prometheus text (`node="n1"`).
    fn set(&self, series: &[(&str, f64)]) {
        let mut body = format!("# TYPE {METRIC} gauge\n");
        for (labels, value) in series {
            body.push_str(&format!("{METRIC}{{{labels}}} {value}\n"));
        }
        if let Ok(mut t) = self.text.lock() {
            *t = body;
        }
    }
}

impl Drop for MetricTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Times of the webhook calls Alertmanager makes, seen by a TCP relay in front of the receiver.
struct Relay {
    port: u16,
    calls: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let listener = must(TcpListener::bind("127.0.0.1:0"), "bind the relay");
        must(listener.set_nonblocking(true), "nonblocking");
        let port = must(listener.local_addr(), "address").port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (calls.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let (mut c_in, mut s_out) = (
                    must(client.try_clone(), "clone"),
                    must(server.try_clone(), "clone"),
                );
                let calls = c.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    loop {
                        match c_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if buf[..n].starts_with(b"POST ") {
                                    if let Ok(mut v) = calls.lock() {
                                        v.push(Instant::now());
                                    }
                                }
                                if s_out.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Relay { port, calls, stop }
    }

    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The receiver, Alertmanager and (unless only Alertmanager is wanted) Prometheus and its
/// scrape target, for one test's namespace.
struct Loop {
    ns: String,
    token: String,
    receiver_port: u16,
    alertmanager_port: u16,
    metrics: Option<MetricTarget>,
    relay: Relay,
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
}

impl Loop {
    /// `rule`: the alert's name; `repeat`: Alertmanager's repeat_interval.
    fn start(env: &Env, ns: &str, rule: &str, with_prometheus: bool, repeat: &str) -> Loop {
        let bin = binaries();
        let dir = must(
            tempfile::Builder::new()
                .prefix("tracejob-trigger-")
                .tempdir(),
            "tempdir",
        );
        let d = dir.path().to_path_buf();
        let token = format!("token-{ns}-{}", std::process::id());
        must(std::fs::write(d.join("token"), &token), "token file");
        let log = |name: &str| {
            let f = must(std::fs::File::create(d.join(format!("{name}.log"))), "log");
            let e = must(f.try_clone(), "log");
            (f, e)
        };
        let mut procs = Vec::new();
        // The receiver.
        let receiver_port = free_port();
        let (o, e) = log("receiver");
        procs.push(Proc::spawn(
            "trigger-receiver",
            Command::new(env!("CARGO_BIN_EXE_tracejob-agent"))
                .args(["trigger-receiver", "--namespace", ns])
                .arg("--listen")
                .arg(format!("127.0.0.1:{receiver_port}"))
                .arg("--token-file")
                .arg(d.join("token"))
                .env("KUBECONFIG", &env.cp.kubeconfig)
                .env("RUST_LOG", "tracejob_agent=debug,info")
                .stdin(Stdio::null())
                .stdout(o)
                .stderr(e),
        ));
        let relay = Relay::start(receiver_port);
        // Alertmanager: every alert its own group, sent at once, resolved too, with the token.
        let alertmanager_port = free_port();
        let config = format!(
            "route:\n  receiver: tracejob\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: {repeat}\nreceivers:\n  - name: tracejob\n    webhook_configs:\n      - url: http://127.0.0.1:{}/alerts\n        send_resolved: true\n        http_config:\n          authorization:\n            type: Bearer\n            credentials_file: {}\n",
            relay.port,
            d.join("token").display()
        );
        must(
            std::fs::write(d.join("alertmanager.yml"), config),
            "alertmanager.yml",
        );
        let (o, e) = log("alertmanager");
        procs.push(Proc::spawn(
            "alertmanager",
            Command::new(bin.join("alertmanager"))
                .arg(format!(
                    "--config.file={}",
                    d.join("alertmanager.yml").display()
                ))
                .arg(format!("--storage.path={}", d.join("am-data").display()))
                .arg(format!(
                    "--web.listen-address=127.0.0.1:{alertmanager_port}"
                ))
                // No gossip: one Alertmanager, nothing listening beyond the web port.
                .arg("--cluster.listen-address=")
                .arg("--log.level=debug")
                .stdin(Stdio::null())
                .stdout(o)
                .stderr(e),
        ));
        let metrics = with_prometheus.then(|| {
            let target = MetricTarget::start();
            target.set(&[]);
            let prometheus_port = free_port();
            let config = format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nalerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['127.0.0.1:{alertmanager_port}']}}]\nscrape_configs:\n  - job_name: target\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
                d.join("rules.yml").display(),
                target.port
            );
            let rules = format!(
                "groups:\n  - name: tracejob\n    interval: 1s\n    rules:\n      - alert: {rule}\n        expr: {METRIC} > 0.5\n        for: 0s\n        labels: {{severity: page}}\n"
            );
            must(std::fs::write(d.join("prometheus.yml"), config), "prometheus.yml");
            must(std::fs::write(d.join("rules.yml"), rules), "rules.yml");
            let (o, e) = log("prometheus");
            procs.push(Proc::spawn(
                "prometheus",
                Command::new(bin.join("prometheus"))
                    .arg(format!("--config.file={}", d.join("prometheus.yml").display()))
                    .arg(format!("--storage.tsdb.path={}", d.join("prom-data").display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
                    // Alerts sent to Alertmanager every second, not every minute.
                    .arg("--rules.alert.resend-delay=1s")
                    .stdin(Stdio::null())
                    .stdout(o)
                    .stderr(e),
            ));
            wait_for(Duration::from_secs(60), "Prometheus ready", || {
                (http_get(prometheus_port, "/-/ready").0 == 200).then_some(())
            });
            target
        });
        wait_for(Duration::from_secs(60), "Alertmanager ready", || {
            (http_get(alertmanager_port, "/-/ready").0 == 200).then_some(())
        });
        wait_for(Duration::from_secs(60), "the receiver ready", || {
            (http_get(receiver_port, "/readyz").0 == 200).then_some(())
        });
        Loop {
            ns: ns.to_string(),
            token,
            receiver_port,
            alertmanager_port,
            metrics,
            relay,
            dir,
            procs,
        }
    }

    fn set(&self, series: &[(&str, f64)]) {
        self.metrics.as_ref().expect("a metric target").set(series);
    }

    fn metric(&self, series: &str) -> f64 {
        let (_, body) = http_get(self.receiver_port, "/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("the receiver exports no {series}:\n{body}"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in ["receiver", "alertmanager", "prometheus"] {
                let log = self.log(name);
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!(
                    "---- {name} ({}) log, last lines ----\n{}",
                    self.ns,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        self.procs.clear();
    }
}

/// GET on loopback: the status (0 when unreachable) and the body.
pub(crate) fn http_get(port: u16, path: &str) -> (u16, String) {
    curl(&[&format!("http://127.0.0.1:{port}{path}")])
}

pub(crate) fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The names of the TraceJobs trigger `name` made.
pub(crate) fn made(k: &Kubectl, ns: &str, trigger: &str) -> Vec<String> {
    k.ok(&[
        "get",
        "tj",
        "-n",
        ns,
        "-l",
        &format!("{LABEL_TRIGGER}={trigger}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

pub(crate) fn trigger_yaml(
    name: &str,
    matchers: &[&str],
    on: &str,
    deadline: i64,
    limits: &str,
) -> String {
    let matchers = serde_json::to_string(matchers).expect("json");
    format!(
        "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceTrigger\nmetadata:\n  name: {name}\nspec:\n  matchers: {matchers}\n  target: {{kind: {on}}}\n  trace:\n    program: '{PROGRAM}'\n    deadline: {deadline}\n    deadlineGracePeriod: 300\n  limits: {limits}\n"
    )
}

pub(crate) fn status(k: &Kubectl, ns: &str, trigger: &str, path: &str) -> String {
    k.jsonpath(ns, &format!("tt/{trigger}"), path)
}
