//! TraceTriggers fired by a real loop: a small metric target (a thread serving /metrics), a real
//! Prometheus scraping it every second with an alerting rule on it, a real Alertmanager, the
//! trigger receiver (`tracejob-agent trigger-receiver`) called by Alertmanager's webhook, and the
//! agent running the TraceJob the receiver creates with real bpftrace. Prometheus and
//! Alertmanager are built from Go modules (tests/harness/build-prometheus.sh, cached).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lifecycle::{output, wait_phase};
use crate::support::control_plane::free_port;
use crate::support::{must, repo_root, wait_for, Agent, Env, Kubectl, Proc, Test};
use crate::target::{report_running, FakeContainer};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "trigger_metric_breach_traces_the_node_once_and_resolve_stops_it",
            run: breach_traces_the_node,
        },
        Test {
            name: "trigger_alert_on_a_pod_traces_that_pod",
            run: alert_on_a_pod,
        },
        Test {
            name: "trigger_in_a_namespace_scoped_away_runs_nothing",
            run: scoped_away,
        },
        Test {
            name: "trigger_limits_hold_under_a_burst_of_50_alerts",
            run: burst_limits,
        },
        Test {
            name: "trigger_receiver_token_is_fenced_to_triggered_tracejobs",
            run: receiver_token_fenced,
        },
    ]
}

const LABEL_TRIGGER: &str = "observe.tracejob.dev/trigger";
const METRIC: &str = "tracejob_test_latency_seconds";
const PROGRAM: &str = "tracepoint:raw_syscalls:sys_enter { @calls = count(); }";

/// The directory holding `prometheus` and `alertmanager`, built once.
pub fn binaries() -> PathBuf {
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
fn http_get(port: u16, path: &str) -> (u16, String) {
    curl(&[&format!("http://127.0.0.1:{port}{path}")])
}

fn curl(args: &[&str]) -> (u16, String) {
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
fn made(k: &Kubectl, ns: &str, trigger: &str) -> Vec<String> {
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

fn trigger_yaml(name: &str, matchers: &[&str], on: &str, deadline: i64, limits: &str) -> String {
    let matchers = serde_json::to_string(matchers).expect("json");
    format!(
        "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceTrigger\nmetadata:\n  name: {name}\nspec:\n  matchers: {matchers}\n  target: {{kind: {on}}}\n  trace:\n    program: '{PROGRAM}'\n    deadline: {deadline}\n    deadlineGracePeriod: 300\n  limits: {limits}\n"
    )
}

fn status(k: &Kubectl, ns: &str, trigger: &str, path: &str) -> String {
    k.jsonpath(ns, &format!("tt/{trigger}"), path)
}

fn breach_traces_the_node(env: &Env) {
    let ns = env.namespace("trigger-node");
    let k = &env.kubectl;
    let rule = "HighLatency";
    let agent = Agent::start(env, &format!("{ns}-node"));
    let node = agent.node.clone();
    let lp = Loop::start(env, &ns, rule, true, "2s");
    k.apply(
        &ns,
        &trigger_yaml(
            "io",
            &[
                &format!("alertname=\"{rule}\""),
                "severity=~\"page|critical\"",
            ],
            "Node",
            600,
            "{}",
        ),
    );
    // Unauthenticated and wrongly authenticated calls are refused and counted.
    let alert = r#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"HighLatency","severity":"page","node":"x"},"startsAt":"2025-01-01T00:00:00Z","fingerprint":"0000000000000001"}]}"#;
    let url = format!("http://127.0.0.1:{}/alerts", lp.receiver_port);
    let (code, _) = curl(&["-X", "POST", "-d", alert, &url]);
    assert_eq!(code, 401, "a call without a token was not refused");
    let (code, _) = curl(&[
        "-X",
        "POST",
        "-H",
        "Authorization: Bearer not-the-token",
        "-d",
        alert,
        &url,
    ]);
    assert_eq!(code, 401, "a call with a wrong token was not refused");
    assert_eq!(
        lp.metric(r#"tracejob_trigger_notifications_total{result="unauthorized"}"#),
        2.0
    );
    assert!(
        made(k, &ns, "io").is_empty(),
        "a refused call made a TraceJob"
    );
    assert_answered_at_once(&lp);
    // The breach: the rule fires, Alertmanager calls the receiver, the TraceJob runs on the node.
    let breach = Instant::now();
    lp.set(&[(&format!("node=\"{node}\""), 0.9)]);
    let name = wait_for(Duration::from_secs(60), "a TraceJob from the alert", || {
        made(k, &ns, "io").first().cloned()
    });
    wait_phase(k, &ns, &name, "Running", Duration::from_secs(60));
    let running = breach.elapsed();
    let call = lp
        .relay
        .calls()
        .first()
        .copied()
        .expect("a webhook call was seen");
    let from_call = call.elapsed();
    eprintln!(
        "trigger loop: breach to Running {:.2} s (breach to the webhook call {:.2} s); webhook call to Running {:.0} ms",
        running.as_secs_f64(),
        (call - breach).as_secs_f64(),
        from_call.as_secs_f64() * 1000.0
    );
    assert_eq!(
        k.jsonpath(&ns, &format!("tj/{name}"), ".spec.nodeName"),
        node
    );
    let owner = k.jsonpath(
        &ns,
        &format!("tj/{name}"),
        ".metadata.ownerReferences[0].kind",
    );
    assert_eq!(owner, "TraceTrigger");
    let labels = k.jsonpath(
        &ns,
        &format!("tj/{name}"),
        ".metadata.annotations.observe\\.tracejob\\.dev/alert-labels",
    );
    assert!(labels.contains(&format!("\"node\":\"{node}\"")), "{labels}");
    // Repeated notifications (every 2 s) make no second TraceJob.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        made(k, &ns, "io"),
        std::slice::from_ref(&name),
        "one TraceJob per alert and target"
    );
    wait_for(Duration::from_secs(10), "the trigger's status", || {
        (status(k, &ns, "io", ".status.tracesCreated") == "1").then_some(())
    });
    assert!(!status(k, &ns, "io", ".status.lastFired").is_empty());
    // The plugin shows which TraceJobs the trigger made.
    let listed = must(
        Command::new(env!("CARGO_BIN_EXE_kubectl-tracejob"))
            .args(["get", "-n", &ns, "--trigger", "io"])
            .env("KUBECONFIG", &env.cp.kubeconfig)
            .output(),
        "kubectl tracejob get --trigger",
    );
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains(&name) && listed.contains(&node), "{listed}");
    // Resolved: the trace is stopped early (its deadline is 10 minutes), its maps kept.
    let resolve = Instant::now();
    lp.set(&[(&format!("node=\"{node}\""), 0.1)]);
    wait_phase(k, &ns, &name, "Completed", Duration::from_secs(60));
    assert!(resolve.elapsed() < Duration::from_secs(120));
    assert_eq!(k.jsonpath(&ns, &format!("tj/{name}"), ".spec.stop"), "true");
    assert!(
        output(k, &ns, &name, "output").contains("@calls: "),
        "the maps were not collected"
    );
    assert!(lp.metric("tracejob_trigger_traces_stopped_total") >= 1.0);
    // It flaps: firing again within the cooldown starts nothing, and says so.
    lp.set(&[(&format!("node=\"{node}\""), 0.9)]);
    wait_for(Duration::from_secs(60), "the flap suppressed", || {
        (status(k, &ns, "io", ".status.suppressed.Cooldown") == "1").then_some(())
    });
    assert_eq!(
        made(k, &ns, "io"),
        std::slice::from_ref(&name),
        "a second TraceJob in the cooldown"
    );
    assert_eq!(
        lp.metric(r#"tracejob_trigger_traces_suppressed_total{reason="Cooldown"}"#),
        1.0
    );
    assert_eq!(lp.metric("tracejob_trigger_traces_created_total"), 1.0);
    let row = k.ok(&["get", "tt", "-n", &ns, "io", "--no-headers"]);
    assert!(row.split_whitespace().nth(1) == Some("Node"), "{row}");
    lp.set(&[(&format!("node=\"{node}\""), 0.1)]);
    assert!(agent.bpftraces().is_empty());
}

/// A pod on `node` whose container `app` runs as `container_id`, as the kubelet would report it.
fn pod_on(k: &Kubectl, ns: &str, pod: &str, node: &str, container_id: &str) {
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": ns},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "localhost/none:1"}]}
    });
    k.apply(ns, &object.to_string());
    report_running(k, ns, pod, "app", container_id);
}

fn alert_on_a_pod(env: &Env) {
    let ns = env.namespace("trigger-pod");
    let k = &env.kubectl;
    let rule = "PodSlow";
    let agent = Agent::start(env, &format!("{ns}-node"));
    let container = FakeContainer::start(&ns);
    pod_on(k, &ns, "web", &agent.node, &container.id);
    let lp = Loop::start(env, &ns, rule, true, "1h");
    k.apply(
        &ns,
        &trigger_yaml(
            "slow",
            &[&format!("alertname=\"{rule}\"")],
            "Pod",
            600,
            "{}",
        )
        .replace(
            PROGRAM,
            "tracepoint:raw_syscalls:sys_enter /pid == $container_pid/ { @calls = count(); }",
        ),
    );
    let breach = Instant::now();
    lp.set(&[(&format!("namespace=\"{ns}\",pod=\"web\""), 0.9)]);
    let name = wait_for(Duration::from_secs(60), "a TraceJob from the alert", || {
        made(k, &ns, "slow").first().cloned()
    });
    wait_phase(k, &ns, &name, "Running", Duration::from_secs(60));
    eprintln!(
        "trigger loop (pod): breach to Running {:.2} s",
        breach.elapsed().as_secs_f64()
    );
    assert_eq!(
        k.jsonpath(&ns, &format!("tj/{name}"), ".spec.target.pod"),
        "web"
    );
    assert_eq!(
        k.jsonpath(&ns, &format!("tj/{name}"), ".status.nodeName"),
        agent.node
    );
    lp.set(&[(&format!("namespace=\"{ns}\",pod=\"web\""), 0.1)]);
    wait_phase(k, &ns, &name, "Completed", Duration::from_secs(60));
    assert!(output(k, &ns, &name, "output").contains("@calls"));
    assert_eq!(made(k, &ns, "slow").len(), 1);
}

fn scoped_away(env: &Env) {
    let ns = env.namespace("trigger-scoped");
    let k = &env.kubectl;
    let rule = "Scoped";
    let agent = Agent::start(env, &format!("{ns}-node"));
    // The namespace may trace no node this test has: the trigger grants nothing more.
    k.ok(&[
        "annotate",
        "--overwrite",
        "namespace",
        &ns,
        "observe.tracejob.dev/node-selector=zone=elsewhere",
    ]);
    let lp = Loop::start(env, &ns, rule, true, "1h");
    k.apply(
        &ns,
        &trigger_yaml("t", &[&format!("alertname=\"{rule}\"")], "Node", 600, "{}"),
    );
    lp.set(&[(&format!("node=\"{}\"", agent.node), 0.9)]);
    let name = wait_for(Duration::from_secs(60), "a TraceJob from the alert", || {
        made(k, &ns, "t").first().cloned()
    });
    wait_phase(k, &ns, &name, "Failed", Duration::from_secs(60));
    let reason = k.jsonpath(
        &ns,
        &format!("tj/{name}"),
        ".status.conditions[?(@.type==\"Failed\")].reason",
    );
    assert_eq!(reason, "NodeNotAllowed");
    assert!(agent.bpftraces().is_empty(), "a bpftrace ran");
    assert!(
        !agent.logs().contains("bpftrace started"),
        "{}",
        agent.logs()
    );
}

fn burst_limits(env: &Env) {
    let ns = env.namespace("trigger-burst");
    let k = &env.kubectl;
    // Alertmanager alone: the test sends it the alerts, as Prometheus would.
    let lp = Loop::start(env, &ns, "unused", false, "1h");
    let matchers = ["alertname=\"Burst\""];
    k.apply(
        &ns,
        &trigger_yaml(
            "running",
            &matchers,
            "Node",
            600,
            "{cooldownSeconds: 0, maxRunning: 3, maxPerHour: 100}",
        ),
    );
    k.apply(
        &ns,
        &trigger_yaml(
            "hourly",
            &matchers,
            "Node",
            600,
            "{cooldownSeconds: 0, maxRunning: 100, maxPerHour: 5}",
        ),
    );
    // Each on a node of its own that no agent runs: no trace ends, so each stays running.
    let alerts: Vec<serde_json::Value> = (0..50)
        .map(
            |i| serde_json::json!({"labels": {"alertname": "Burst", "node": format!("{ns}-n{i}")}}),
        )
        .collect();
    let body = serde_json::Value::from(alerts).to_string();
    let (code, text) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &format!("http://127.0.0.1:{}/api/v2/alerts", lp.alertmanager_port),
    ]);
    assert_eq!(code, 200, "Alertmanager refused the alerts: {text}");
    wait_for(Duration::from_secs(60), "every alert decided", || {
        let r = status(k, &ns, "running", ".status.suppressed.MaxRunning");
        let h = status(k, &ns, "hourly", ".status.suppressed.MaxPerHour");
        (r == "47" && h == "45").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(made(k, &ns, "running").len(), 3);
    assert_eq!(made(k, &ns, "hourly").len(), 5);
    assert_eq!(status(k, &ns, "running", ".status.tracesCreated"), "3");
    assert_eq!(status(k, &ns, "hourly", ".status.tracesCreated"), "5");
    assert_eq!(
        status(k, &ns, "running", ".status.suppressed.MaxRunning"),
        "47"
    );
    assert_eq!(
        status(k, &ns, "hourly", ".status.suppressed.MaxPerHour"),
        "45"
    );
    assert_eq!(lp.metric("tracejob_trigger_traces_created_total"), 8.0);
    let calls = lp.relay.calls().len();
    assert!(
        calls >= 50,
        "Alertmanager made {calls} webhook calls, not one per alert"
    );
    assert_answered_at_once(&lp);
}

/// An authenticated notification is answered within 100 ms (as curl times the call).
fn assert_answered_at_once(lp: &Loop) {
    let out = must(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-m", "5"])
            .args(["-w", "%{http_code} %{time_total}", "-X", "POST", "-H"])
            .arg(format!("Authorization: Bearer {}", lp.token))
            .args(["-d", r#"{"version":"4","status":"firing","alerts":[]}"#])
            .arg(format!("http://127.0.0.1:{}/alerts", lp.receiver_port))
            .output(),
        "curl",
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, secs) = text.split_once(' ').unwrap_or(("0", "9"));
    assert_eq!(code, "200", "{text}");
    let secs: f64 = secs.trim().parse().unwrap_or(9.0);
    assert!(secs < 0.1, "a notification took {secs} s to be answered");
}

const RECEIVER_SA: &str = "system:serviceaccount:tracejob-system:tracejob-trigger-receiver";

/// A TraceJob as the receiver makes one: `labels` and `owners` as given (the receiver's own are
/// the trigger label and one controller reference to the TraceTrigger).
fn receiver_tracejob(
    name: &str,
    ns: &str,
    labels: serde_json::Value,
    owners: serde_json::Value,
) -> String {
    serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owners},
        "spec": {"nodeName": "fenced-node", "program": PROGRAM, "deadline": 60,
                 "deadlineGracePeriod": 30}
    })
    .to_string()
}

fn owner(kind: &str, name: &str, uid: &str, controller: bool) -> serde_json::Value {
    serde_json::json!([{
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": kind,
        "name": name, "uid": uid, "controller": controller
    }])
}

fn refused(r: &crate::support::kubectl::Run, what: &str, why: &str) {
    assert!(!r.ok, "{what} was allowed");
    assert!(
        r.stderr.contains(why),
        "{what}: refused, but not for {why:?}: {}",
        r.stderr
    );
}

/// The install with daemonset/components/trigger (tests/fixtures/trigger-install) on its own
/// API server, and a token of the receiver's ServiceAccount bound to a pod of it: it creates a
/// TraceJob as the receiver makes one (labelled with and controlled by its TraceTrigger) and
/// stops it; nothing else: no TraceJob without that label or owner, none in an unannotated
/// (system) namespace, no change but spec.stop, no stop of a TraceJob no trigger made, no
/// delete, no TraceTrigger spec, no ConfigMap, no Secret.
fn receiver_token_fenced(_env: &Env) {
    use crate::support::ControlPlane;
    let own = Env::new(ControlPlane::start());
    crate::security::install_kustomization(
        &own,
        &repo_root().join("tests/fixtures/trigger-install"),
    );
    let k = &own.kubectl;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/tracetriggers.observe.tracejob.dev",
    ]);
    for object in [
        "validatingadmissionpolicy/tracejob-trigger-receiver-fence",
        "validatingadmissionpolicybinding/tracejob-trigger-receiver-fence",
        "clusterrole/tracejob-trigger-receiver",
        "clusterrolebinding/tracejob-trigger-receiver",
    ] {
        k.ok(&["get", object]);
    }
    let ns = own.namespace("receiver-fence");
    let dir = must(tempfile::tempdir(), "tempdir");
    let (_, config) = crate::security::bound_token_in(
        &own,
        "tracejob-system",
        "tracejob-trigger-receiver",
        "receiver-node",
        dir.path(),
    );
    let rx = k.with_kubeconfig(&config);
    let who = rx.ok(&["auth", "whoami", "-o", "json"]);
    assert!(who.contains(RECEIVER_SA), "not the receiver's token: {who}");

    k.apply(
        &ns,
        &trigger_yaml("tt", &["alertname=\"X\""], "Node", 60, "{}"),
    );
    let uid = k.jsonpath(&ns, "tt/tt", ".metadata.uid");
    let label = |v: &str| serde_json::json!({ LABEL_TRIGGER: v });
    let create = |yaml: &str| rx.run_with_stdin(&["create", "-f", "-"], yaml);
    const FENCE: &str = "the trigger receiver creates only";
    // The fence is loaded once the API server refuses an unowned TraceJob from the receiver.
    wait_for(
        Duration::from_secs(30),
        "the receiver's fence enforced",
        || {
            let r = rx.run_with_stdin(
                &["create", "--dry-run=server", "-f", "-"],
                &receiver_tracejob("probe", &ns, label("tt"), serde_json::json!([])),
            );
            (!r.ok && r.stderr.contains(FENCE)).then_some(())
        },
    );

    // What the receiver makes.
    let r = create(&receiver_tracejob(
        "made",
        &ns,
        label("tt"),
        owner("TraceTrigger", "tt", &uid, true),
    ));
    assert!(
        r.ok,
        "the receiver could not create a triggered TraceJob: {}",
        r.stderr
    );

    // Not so labelled, not so owned.
    let cases = [
        ("no-owner", label("tt"), serde_json::json!([])),
        (
            "no-label",
            serde_json::json!({}),
            owner("TraceTrigger", "tt", &uid, true),
        ),
        (
            "other-label",
            label("other"),
            owner("TraceTrigger", "tt", &uid, true),
        ),
        (
            "not-controller",
            label("tt"),
            owner("TraceTrigger", "tt", &uid, false),
        ),
        (
            "owned-by-a-tracejob",
            label("tt"),
            owner("TraceJob", "tt", &uid, true),
        ),
    ];
    for (name, labels, owners) in cases {
        refused(
            &create(&receiver_tracejob(name, &ns, labels, owners)),
            name,
            FENCE,
        );
    }
    // A system namespace: unannotated, it traces nothing, and no TraceJob is admitted there.
    refused(
        &create(&receiver_tracejob(
            "squat",
            "kube-system",
            label("tt"),
            owner("TraceTrigger", "tt", &uid, true),
        )),
        "a TraceJob in kube-system",
        "ValidatingAdmissionPolicy",
    );

    // Updates: spec.stop only, of TraceJobs a trigger made. A merge PATCH as the receiver
    // sends it (kubectl patch would GET first, which the receiver may not: it lists).
    let (token, _) = crate::security::bound_token_in(
        &own,
        "tracejob-system",
        "tracejob-trigger-receiver",
        "receiver-node",
        dir.path(),
    );
    let ca = own.cp.ca_file();
    let raw_patch = |path: &str, body: &str| {
        let (code, body) = curl(&[
            "-X",
            "PATCH",
            "--cacert",
            &ca.to_string_lossy(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/merge-patch+json",
            "--data",
            body,
            &format!(
                "{}/apis/observe.tracejob.dev/v1alpha1/namespaces/{ns}/{path}",
                own.cp.server_url()
            ),
        ]);
        crate::support::kubectl::Run {
            ok: (200..300).contains(&code),
            stdout: String::new(),
            stderr: format!("{code} {body}"),
        }
    };
    let patch = |name: &str, body: &str| raw_patch(&format!("tracejobs/{name}"), body);
    const ONLY_STOP: &str = "may only stop";
    refused(
        &patch("made", r#"{"spec":{"stop":true,"deadline":3600}}"#),
        "raising the deadline while stopping",
        ONLY_STOP,
    );
    refused(
        &patch(
            "made",
            r#"{"metadata":{"labels":{"observe.tracejob.dev/trigger":"other"}}}"#,
        ),
        "relabelling a triggered TraceJob",
        "denied",
    );
    refused(
        &patch(
            "made",
            r#"{"metadata":{"labels":{"extra":"x"}},"spec":{"stop":true}}"#,
        ),
        "adding a label while stopping",
        ONLY_STOP,
    );
    refused(
        &patch("made", r#"{"metadata":{"ownerReferences":null}}"#),
        "dropping the owner",
        "denied",
    );
    refused(
        &patch("made", r#"{"spec":{"stop":false}}"#),
        "a patch that does not stop",
        ONLY_STOP,
    );
    refused(
        &patch(
            "made",
            r#"{"spec":{"stop":true,"deadlineGracePeriod":3600}}"#,
        ),
        "raising the grace period while stopping",
        ONLY_STOP,
    );
    // A second owner beside the trigger (a garbage-collection hold on something else).
    let two = serde_json::json!({"metadata": {"ownerReferences": [
        owner("TraceTrigger", "tt", &uid, true)[0],
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "0b6c1f1e-0000-0000-0000-000000000000"}
    ]}, "spec": {"stop": true}});
    refused(
        &patch("made", &two.to_string()),
        "adding an owner",
        ONLY_STOP,
    );
    // A TraceJob someone else made, unlabelled.
    k.apply(
        &ns,
        &crate::api::tracejob_yaml("theirs", "fenced-node", "BEGIN { exit(); }", ""),
    );
    refused(
        &patch("theirs", r#"{"spec":{"stop":true}}"#),
        "stopping a TraceJob no trigger made",
        FENCE,
    );
    // Labelling someone else's TraceJob as the trigger's.
    refused(
        &patch(
            "theirs",
            r#"{"metadata":{"labels":{"observe.tracejob.dev/trigger":"tt"}},"spec":{"stop":true}}"#,
        ),
        "adopting a TraceJob no trigger made",
        FENCE,
    );
    assert_eq!(k.jsonpath(&ns, "tj/theirs", ".spec.stop"), "false");
    // The receiver's stop, as it sends it.
    let r = patch("made", r#"{"spec":{"stop":true}}"#);
    assert!(
        r.ok,
        "the receiver could not stop its TraceJob: {}",
        r.stderr
    );
    assert_eq!(k.jsonpath(&ns, "tj/made", ".spec.stop"), "true");

    // RBAC: nothing beyond its rights.
    for (what, args) in [
        (
            "deleting a TraceJob",
            vec!["delete", "tj", "made", "-n", &ns],
        ),
        (
            "reading Secrets",
            vec!["get", "secrets", "-n", "tracejob-system"],
        ),
        (
            "deleting a TraceTrigger",
            vec!["delete", "tt", "tt", "-n", &ns],
        ),
        (
            "writing a TraceTrigger's spec",
            vec![
                "patch",
                "tt",
                "tt",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"trace":{"deadline":5}}}"#,
            ],
        ),
        (
            "writing a TraceJob's status",
            vec![
                "patch",
                "tj",
                "made",
                "-n",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Failed"}}"#,
            ],
        ),
        (
            "creating a ConfigMap",
            vec!["create", "configmap", "x", "-n", &ns],
        ),
        (
            "creating a TraceJobNode",
            vec!["create", "-n", &ns, "-f", "-"],
        ),
    ] {
        let r = if what == "creating a TraceJobNode" {
            rx.run_with_stdin(&args, r#"{"apiVersion":"observe.tracejob.dev/v1alpha1","kind":"TraceJobNode","metadata":{"name":"x"},"spec":{}}"#)
        } else {
            rx.run(&args)
        };
        refused(&r, what, "forbidden");
    }
    // Its own rights: the trigger's status.
    let r = raw_patch(
        "tracetriggers/tt/status",
        r#"{"status":{"tracesCreated":1}}"#,
    );
    assert!(
        r.ok,
        "the receiver could not write its trigger's status: {}",
        r.stderr
    );
    assert_eq!(k.jsonpath(&ns, "tt/tt", ".status.tracesCreated"), "1");
    drop(own);
}
