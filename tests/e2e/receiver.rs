//! The trigger receiver as an attacker meets it: run as the install runs it (cluster-wide, no
//! --namespace) and held to its manifest's memory limit (a cgroup v1 memory controller with the
//! limit read from daemonset/components/trigger/receiver.yaml), it must stay up under stalled
//! uploads without a token and under a tenant's large TraceJobs carrying the trigger label, and
//! answer a real alert (a real Alertmanager's webhook call) afterwards. A trigger answers only
//! alerts of its own namespace unless a cluster admin widens that with the Namespace's
//! observe.tracejob.dev/alert-namespaces annotation, which the install guards.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::control_plane::free_port;
use crate::support::{must, repo_root, wait_for, Env, Proc, Test};
use crate::trigger::{binaries, curl, http_get, made, status, trigger_yaml};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "security_receiver_outlives_70_stalled_uploads_without_a_token",
            run: stalled_uploads,
        },
        Test {
            name: "security_receiver_outlives_300_large_tracejobs_labelled_by_a_tenant",
            run: large_labelled_tracejobs,
        },
        Test {
            name: "trigger_receiver_two_triggers_sharing_a_long_prefix_each_trace_and_a_huge_regex_is_refused",
            run: long_prefixes_and_huge_regexes,
        },
        Test {
            name: "trigger_receiver_starts_nothing_for_another_namespaces_alert_unless_widened",
            run: other_namespace,
        },
    ]
}

/// The receiver's memory limit in its manifest (`memory: 128Mi` under `limits:`), in bytes.
fn manifest_memory_limit() -> u64 {
    let manifest = must(
        std::fs::read_to_string(repo_root().join("daemonset/components/trigger/receiver.yaml")),
        "read receiver.yaml",
    );
    let limits = manifest
        .split("limits:")
        .nth(1)
        .expect("the receiver's manifest sets limits");
    let value = limits
        .lines()
        .find_map(|l| l.trim().strip_prefix("memory:"))
        .expect("a memory limit")
        .trim();
    let mib: u64 = must(
        value.trim_end_matches("Mi").parse(),
        "the memory limit in Mi",
    );
    mib * 1024 * 1024
}

/// `tracejob-agent trigger-receiver`, cluster-wide, with its own token, optionally in a memory
/// cgroup of its own.
struct Receiver {
    proc: Option<Proc>,
    port: u16,
    token: String,
    dir: tempfile::TempDir,
    cgroup: Option<PathBuf>,
}

impl Receiver {
    fn start(env: &Env, name: &str, memory_limit: Option<u64>) -> Receiver {
        let dir = must(
            tempfile::Builder::new().prefix("tracejob-rx-").tempdir(),
            "tempdir",
        );
        let token = format!("token-{name}-{}", std::process::id());
        must(
            std::fs::write(dir.path().join("token"), &token),
            "token file",
        );
        let cgroup = memory_limit.map(|limit| {
            let cg = PathBuf::from(format!(
                "/sys/fs/cgroup/memory/tracejob-e2e-{name}-{}",
                std::process::id()
            ));
            must(std::fs::create_dir_all(&cg), "create the memory cgroup");
            must(
                std::fs::write(cg.join("memory.limit_in_bytes"), limit.to_string()),
                "set the memory limit",
            );
            // No swap either (absent without swap accounting).
            let _ = std::fs::write(cg.join("memory.memsw.limit_in_bytes"), limit.to_string());
            cg
        });
        let mut rx = Receiver {
            proc: None,
            port: 0,
            token,
            dir,
            cgroup,
        };
        rx.spawn(env, name);
        rx
    }

    fn spawn(&mut self, env: &Env, name: &str) {
        self.port = free_port();
        let log = must(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("receiver.log")),
            "log",
        );
        let err = must(log.try_clone(), "log");
        // Into the cgroup before exec, so every byte it takes is counted.
        let enter = match &self.cgroup {
            Some(cg) => format!("echo $$ > {}/cgroup.procs && ", cg.display()),
            None => String::new(),
        };
        self.proc = Some(Proc::spawn(
            &format!("trigger-receiver-{name}"),
            Command::new("sh")
                .arg("-c")
                .arg(format!("{enter}exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_tracejob-agent"))
                .arg("trigger-receiver")
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("--token-file")
                .arg(self.dir.path().join("token"))
                .env("KUBECONFIG", &env.cp.kubeconfig)
                .env("RUST_LOG", "tracejob_agent=debug,info")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err),
        ));
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(self.alive(), "the receiver died:\n{}", self.log_tail());
            if http_get(self.port, "/readyz").0 == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver not ready within {timeout:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn alive(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn cgroup_value(&self, file: &str) -> u64 {
        let cg = self.cgroup.as_ref().expect("a cgroup");
        let text = must(std::fs::read_to_string(cg.join(file)), file);
        must(text.trim().parse(), file)
    }

    /// How many times the kernel's OOM killer struck in the cgroup.
    fn oom_kills(&self) -> u64 {
        let cg = self.cgroup.as_ref().expect("a cgroup");
        let text = must(
            std::fs::read_to_string(cg.join("memory.oom_control")),
            "oom_control",
        );
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("receiver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// POSTs a webhook payload with the token: the status.
    fn post(&self, body: &str) -> u16 {
        let url = format!("http://127.0.0.1:{}/alerts", self.port);
        let auth = format!("Authorization: Bearer {}", self.token);
        curl(&["-X", "POST", "-H", &auth, "-d", body, &url]).0
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- receiver log, last lines ----\n{}", self.log_tail());
        }
        self.proc = None;
        if let Some(cg) = &self.cgroup {
            // Empty once the process is reaped.
            for _ in 0..50 {
                if std::fs::remove_dir(cg).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A real Alertmanager sending every alert at once to the receiver, with its token.
struct Alertmanager {
    _proc: Proc,
    port: u16,
}

impl Alertmanager {
    fn start(dir: &Path, receiver_port: u16, token_file: &Path) -> Alertmanager {
        let port = free_port();
        let config = format!(
            "route:\n  receiver: tracejob\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: tracejob\n    webhook_configs:\n      - url: http://127.0.0.1:{receiver_port}/alerts\n        send_resolved: false\n        http_config:\n          authorization:\n            type: Bearer\n            credentials_file: {}\n",
            token_file.display()
        );
        must(
            std::fs::write(dir.join("alertmanager.yml"), config),
            "alertmanager.yml",
        );
        let log = must(std::fs::File::create(dir.join("alertmanager.log")), "log");
        let err = must(log.try_clone(), "log");
        let proc = Proc::spawn(
            "alertmanager",
            Command::new(binaries().join("alertmanager"))
                .arg(format!(
                    "--config.file={}",
                    dir.join("alertmanager.yml").display()
                ))
                .arg(format!("--storage.path={}", dir.join("am-data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address=")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err),
        );
        wait_for(Duration::from_secs(60), "Alertmanager ready", || {
            (http_get(port, "/-/ready").0 == 200).then_some(())
        });
        Alertmanager { _proc: proc, port }
    }

    /// Fires an alert with `labels` (a JSON object), as Prometheus would send it.
    fn fire(&self, labels: serde_json::Value) {
        let body = serde_json::json!([{ "labels": labels }]).to_string();
        let url = format!("http://127.0.0.1:{}/api/v2/alerts", self.port);
        let (code, text) = curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &url,
        ]);
        assert_eq!(code, 200, "Alertmanager refused the alert: {text}");
    }
}

/// The receiver answers a real alert: Alertmanager's webhook call makes the trigger's TraceJob.
fn answers_a_real_alert(env: &Env, rx: &Receiver, ns: &str, trigger: &str, alertname: &str) {
    let am = Alertmanager::start(rx.dir.path(), rx.port, &rx.token_file());
    am.fire(serde_json::json!({
        "alertname": alertname, "node": format!("{ns}-node"), "namespace": ns
    }));
    wait_for(
        Duration::from_secs(90),
        "a TraceJob from Alertmanager's alert",
        || made(&env.kubectl, ns, trigger).first().cloned(),
    );
}

/// Without a token, 70 uploads of 2 MB that never finish: the receiver refuses each from its
/// headers, reads none of it, and stays within its limit.
fn stalled_uploads(env: &Env) {
    let ns = env.namespace("rx-uploads");
    let limit = manifest_memory_limit();
    let mut rx = Receiver::start(env, &ns, Some(limit));
    rx.wait_ready(Duration::from_secs(120));
    env.kubectl.apply(
        &ns,
        &trigger_yaml("probe", &["alertname=\"UploadProbe\""], "Node", 60, "{}"),
    );
    const UPLOADS: usize = 70;
    const SIZE: usize = 2_000_000;
    let started = Instant::now();
    let port = rx.port;
    let uploads: Vec<_> = (0..UPLOADS)
        .map(|_| {
            std::thread::spawn(move || {
                let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
                    return None;
                };
                let _ = c.set_write_timeout(Some(Duration::from_secs(20)));
                let head = format!(
                    "POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {SIZE}\r\n\r\n{{\"alerts\":["
                );
                let _ = c.write_all(head.as_bytes());
                // All but the last KiB, in pieces; never finished.
                let piece = vec![b' '; 64 * 1024];
                let mut sent = 0;
                while sent + piece.len() < SIZE - 1024 {
                    if c.write_all(&piece).is_err() {
                        break;
                    }
                    sent += piece.len();
                }
                Some(c)
            })
        })
        .collect();
    // Held open while the receiver is checked.
    let held: Vec<TcpStream> = uploads
        .into_iter()
        .filter_map(|t| t.join().ok().flatten())
        .collect();
    eprintln!(
        "receiver: {} stalled uploads sent in {:.1} s",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    let peak = rx.cgroup_value("memory.max_usage_in_bytes");
    eprintln!(
        "receiver: peak memory under 70 stalled uploads {:.1} MiB (limit {} MiB)",
        peak as f64 / 1048576.0,
        limit / 1048576
    );
    assert!(
        rx.alive(),
        "the receiver died under stalled uploads (OOM kills: {})",
        rx.oom_kills()
    );
    assert_eq!(
        rx.oom_kills(),
        0,
        "the OOM killer struck in the receiver's cgroup"
    );
    // A caller with the token is still answered, the uploads still open.
    let (code, _) = http_get(rx.port, "/healthz");
    assert_eq!(code, 200, "the receiver does not answer /healthz");
    answers_a_real_alert(env, &rx, &ns, "probe", "UploadProbe");
    drop(held);
    // With the token, a body over the limit (1 MiB) is refused: from its Content-Length, and
    // streamed (chunked, no length) once it passes the limit.
    let big = rx.dir.path().join("big.json");
    must(std::fs::write(&big, vec![b' '; SIZE]), "write the big body");
    let url = format!("http://127.0.0.1:{}/alerts", rx.port);
    let auth = format!("Authorization: Bearer {}", rx.token);
    let from_file = format!("@{}", big.display());
    let (code, _) = curl(&["-X", "POST", "-H", &auth, "--data-binary", &from_file, &url]);
    assert_eq!(code, 413, "a 2 MB body with a Content-Length");
    let (code, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &from_file,
        &url,
    ]);
    assert_eq!(code, 413, "a 2 MB body streamed");
    assert!(rx.alive());
}

/// Any tenant may label its own TraceJobs with the trigger label: 300 of about 500 KiB (long args,
/// a padding annotation, a node that does not exist). The receiver keeps only those a trigger
/// controls, watched as they are created and listed at a restart, within its limit.
fn large_labelled_tracejobs(env: &Env) {
    let tenant = env.namespace("rx-tenant");
    let ns = env.namespace("rx-large");
    let limit = manifest_memory_limit();
    let mut rx = Receiver::start(env, &ns, Some(limit));
    rx.wait_ready(Duration::from_secs(120));
    env.kubectl.apply(
        &ns,
        &trigger_yaml("probe", &["alertname=\"LargeProbe\""], "Node", 60, "{}"),
    );
    let arg = "a".repeat(4000);
    let padding = "p".repeat(250_000);
    let job = |i: usize| {
        serde_json::json!({
            "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
            "metadata": {
                "name": format!("large-{i}"),
                "labels": {"observe.tracejob.dev/trigger": "probe"},
                "annotations": {"padding": padding},
            },
            "spec": {
                "nodeName": "no-such-node-anywhere",
                "program": "BEGIN { exit(); }",
                "args": vec![arg.clone(); 64],
            },
        })
    };
    let size = job(0).to_string().len();
    let started = Instant::now();
    for batch in 0..15 {
        let items: Vec<_> = (batch * 20..batch * 20 + 20).map(job).collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let r = env.kubectl.run_with_stdin(
            &["create", "-n", &tenant, "-f", "-", "-o", "name"],
            &list.to_string(),
        );
        assert!(r.ok, "creating the tenant's TraceJobs: {}", r.stderr);
    }
    eprintln!(
        "receiver: 300 labelled TraceJobs of {} KiB created in {:.1} s",
        size / 1024,
        started.elapsed().as_secs_f64()
    );
    assert!(size > 500_000, "each TraceJob is about 500 KiB: {size}");
    // Watched as they came: the receiver is up, and answers.
    std::thread::sleep(Duration::from_secs(3));
    let watched = rx.cgroup_value("memory.max_usage_in_bytes");
    assert!(
        rx.alive(),
        "the receiver died watching the tenant's TraceJobs (OOM kills: {})",
        rx.oom_kills()
    );
    // Listed at a start: a receiver started now lists all 300.
    rx.stop();
    rx.spawn(env, &ns);
    rx.wait_ready(Duration::from_secs(240));
    answers_a_real_alert(env, &rx, &ns, "probe", "LargeProbe");
    let peak = rx.cgroup_value("memory.max_usage_in_bytes");
    eprintln!(
        "receiver: peak memory with 300 labelled TraceJobs of {} KiB: {:.1} MiB watching, {:.1} MiB with the restart's list (limit {} MiB)",
        size / 1024,
        watched as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        limit / 1048576
    );
    assert!(
        rx.alive(),
        "the receiver died listing the tenant's TraceJobs"
    );
    assert_eq!(
        rx.oom_kills(),
        0,
        "the OOM killer struck in the receiver's cgroup"
    );
    drop(rx);
    env.kubectl.ok(&["delete", "ns", &tenant, "--wait=false"]);
}

const WIDEN: &str = "observe.tracejob.dev/alert-namespaces";

/// An alert labelled with another namespace starts no trace in this one, for a Node trigger: not
/// until a cluster admin annotates the namespace, which a user who may patch Namespaces (and
/// their status) cannot do. What the TraceJob records of an alert is only what the trigger read.
fn other_namespace(env: &Env) {
    let k = &env.kubectl;
    let ns = env.namespace("rx-own");
    let other = env.namespace("rx-other");
    let mut rx = Receiver::start(env, &ns, None);
    rx.wait_ready(Duration::from_secs(120));
    k.apply(
        &ns,
        &trigger_yaml("io", &["alertname=\"Slow\""], "Node", 60, "{}"),
    );
    // Each alert on a node of its own: the cooldown is per node.
    let alert = |fingerprint: &str, namespace: &str| {
        let node = format!("n-{fingerprint}");
        serde_json::json!({"version": "4", "status": "firing", "alerts": [{
            "status": "firing",
            "labels": {"alertname": "Slow", "node": node, "namespace": namespace,
                       "team_secret": "the other team's"},
            "startsAt": "2026-01-01T00:00:00Z", "fingerprint": fingerprint,
        }]})
        .to_string()
    };
    // Seen by the receiver once its status says so (the trigger listed).
    wait_for(Duration::from_secs(30), "the trigger seen", || {
        (rx.post(&alert("00000000000000a1", &other)) == 200
            && status(k, &ns, "io", ".status.suppressed.OtherNamespace") == "1")
            .then_some(())
    });
    // Its own namespace's alert, afterwards, does start one: the first was decided, not missed.
    assert_eq!(rx.post(&alert("00000000000000a2", &ns)), 200);
    let name = wait_for(
        Duration::from_secs(30),
        "a TraceJob for its own alert",
        || made(k, &ns, "io").first().cloned(),
    );
    assert_eq!(
        made(k, &ns, "io").len(),
        1,
        "the other namespace's alert made one"
    );
    let recorded = k.jsonpath(
        &ns,
        &format!("tj/{name}"),
        ".metadata.annotations.observe\\.tracejob\\.dev/alert-labels",
    );
    let recorded: serde_json::Value = must(serde_json::from_str(&recorded), "alert-labels");
    assert_eq!(
        recorded,
        serde_json::json!({"alertname": "Slow", "node": "n-00000000000000a2", "namespace": ns}),
        "the TraceJob records labels the trigger did not read"
    );

    // The annotation is guarded as the node scope is.
    k.ok(&[
        "apply",
        "-f",
        &repo_root()
            .join("daemonset/components/trigger/alert-namespaces.yaml")
            .to_string_lossy(),
    ]);
    let user = format!("ns-patcher-{ns}");
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {user}\nrules:\n  - apiGroups: [\"\"]\n    resources: [namespaces, namespaces/status, namespaces/finalize]\n    verbs: [get, list, patch, update]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {user}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {user}}}\nsubjects:\n  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}\n"
    );
    let r = k.run_with_stdin(&["apply", "-f", "-"], &rbac);
    assert!(r.ok, "{}", r.stderr);
    let patch = serde_json::json!({"metadata": {"annotations": {WIDEN: "*"}}}).to_string();
    let widen = format!("{WIDEN}=*");
    let annotate = ["--as", &user, "annotate", "ns", &ns, &widen];
    wait_for(Duration::from_secs(30), "the policy enforced", || {
        let mut dry = annotate.to_vec();
        dry.push("--dry-run=server");
        let r = k.run(&dry);
        (!r.ok).then_some(())
    });
    for attempt in [
        annotate.to_vec(),
        vec![
            "--as",
            &user,
            "patch",
            "ns",
            &ns,
            "--subresource=status",
            "-p",
            &patch,
        ],
    ] {
        let r = k.run(&attempt);
        assert!(
            !r.ok && r.stderr.contains("namespacescopes"),
            "{attempt:?} was not refused by the policy: {} {}",
            r.stdout,
            r.stderr
        );
    }
    let annotations = k.ok(&["get", "ns", &ns, "-o", "jsonpath={.metadata.annotations}"]);
    assert!(!annotations.contains(WIDEN), "{annotations}");

    // A cluster admin widens it: the next alert of that namespace starts a trace.
    k.ok(&["annotate", "ns", &ns, &format!("{WIDEN}={other}")]);
    wait_for(
        Duration::from_secs(30),
        "a TraceJob for the widened namespace's alert",
        || {
            rx.post(&alert("00000000000000a3", &other));
            (made(k, &ns, "io").len() == 2).then_some(())
        },
    );
    k.ok(&["delete", "clusterrolebinding,clusterrole", &user]);
    assert!(rx.alive());
}

/// Two triggers whose names share their first 40 characters, matching one alert on one node: each
/// makes its own TraceJob (before, both named the same one: one create was lost). A third trigger's regex that compiles beyond the size limit is its error, not the receiver's
/// memory.
fn long_prefixes_and_huge_regexes(env: &Env) {
    let k = &env.kubectl;
    let ns = env.namespace("rx-prefix");
    let mut rx = Receiver::start(env, &ns, None);
    rx.wait_ready(Duration::from_secs(120));
    let prefix = "a-trigger-name-forty-characters-long-xxx";
    assert_eq!(prefix.len(), 40);
    let (one, two) = (format!("{prefix}-one"), format!("{prefix}-two"));
    for name in [&one, &two] {
        k.apply(
            &ns,
            &trigger_yaml(name, &["alertname=\"Shared\""], "Node", 600, "{}"),
        );
    }
    k.apply(
        &ns,
        &trigger_yaml("huge", &["alertname=~\"\\\\w{200}\""], "Node", 600, "{}"),
    );
    let alert = serde_json::json!({"version": "4", "status": "firing", "alerts": [{
        "status": "firing", "labels": {"alertname": "Shared", "node": "n1"},
        "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "00000000000000b1",
    }]})
    .to_string();
    let made_by_each = wait_for(
        Duration::from_secs(60),
        "a TraceJob from each trigger",
        || {
            assert_eq!(rx.post(&alert), 200);
            let (a, b) = (made(k, &ns, &one), made(k, &ns, &two));
            (a.len() == 1 && b.len() == 1).then(|| (a[0].clone(), b[0].clone()))
        },
    );
    assert_ne!(made_by_each.0, made_by_each.1);
    let error = wait_for(Duration::from_secs(30), "the huge regex's error", || {
        let e = status(k, &ns, "huge", ".status.lastError");
        (!e.is_empty()).then_some(e)
    });
    assert!(error.contains("size limit"), "{error}");
    assert!(rx.alive());
}
