//! The agent as users run it: the DaemonSet of `daemonset/` on a real kubelet (containerd, runc),
//! in the image built from the Dockerfile, authenticated by its own ServiceAccount token. The
//! cluster is the one `tests/cluster/try-it` brings up for a newcomer, and the test starts with
//! exactly that command, then goes on against the cluster it left, and ends with
//! `tests/cluster/try-it down`. Needs root; tests/run prepares the machine.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

// The README's commands this test runs, read from the pages (docs/testing.md).
#[path = "e2e/support/docs.rs"]
mod docs;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put the release binaries: CARGO_TARGET_DIR (the test command builds in the cache)
/// or the checkout's target/.
fn release_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    root().join(target).join("release")
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// A value from tests/cluster/lib.sh, so the test and the scripts agree.
fn cluster_setting(expr: &str) -> String {
    let out = run(Command::new("bash").arg("-c").arg(format!(
        "source {}/tests/cluster/lib.sh && {expr}",
        root().display()
    )));
    assert!(out.status.success(), "lib.sh: {expr}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The release tests/harness/kubernetes pins (`require k8s.io/kubernetes vX.Y.Z`).
fn pinned_release() -> String {
    let go_mod = std::fs::read_to_string(root().join("tests/harness/kubernetes/go.mod"))
        .expect("tests/harness/kubernetes/go.mod");
    go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("require k8s.io/kubernetes "))
        .map(|v| v.trim().to_string())
        .expect("the build module pins k8s.io/kubernetes")
}

struct Cluster {
    kubectl: String,
    kubeconfig: String,
    node: String,
    down: bool,
}

impl Cluster {
    /// `kubectl tracejob` on this cluster, the release build's plugin first on PATH.
    fn plugin(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig).env(
            "PATH",
            format!(
                "{}:{}",
                release_dir().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        cmd.arg("tracejob");
        cmd
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        run(Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args))
    }

    /// Runs a page's block as a reader with the try-it `export` would: the cluster's kubectl
    /// first on PATH, its kubeconfig, from the checkout. Its stdout; panics unless it succeeds.
    fn sh(&self, script: &str) -> String {
        let kubectl_dir = PathBuf::from(&self.kubectl)
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let path = format!(
            "{kubectl_dir}:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        let out = run(docs::bash(script)
            .current_dir(root())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", path));
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl and returns its stdout; panics with its stderr unless it succeeds.
    fn k(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, yaml: &str) {
        let out = self.apply_in("default", yaml);
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl apply -n NS -f -` of `yaml`, whatever it answers.
    fn apply_in(&self, ns: &str, yaml: &str) -> Output {
        let mut child = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["apply", "-n", ns, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write");
        child.wait_with_output().expect("kubectl")
    }

    fn trace(&self, name: &str, program: &str) {
        self.apply(&self.trace_yaml(name, program));
    }

    /// A TraceJob of this cluster's node.
    fn trace_yaml(&self, name: &str, program: &str) -> String {
        format!(
            "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata:\n  name: {name}\nspec:\n  nodeName: {}\n  deadlineGracePeriod: 300\n  program: '{program}'\n",
            self.node
        )
    }

    fn wait_condition(&self, name: &str, condition: &str, seconds: u32) {
        self.k(&[
            "wait",
            &format!("--for=condition={condition}"),
            &format!("tracejob/{name}"),
            &format!("--timeout={seconds}s"),
        ]);
    }

    fn field(&self, name: &str, path: &str) -> String {
        self.k(&[
            "get",
            "tracejob",
            name,
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
    }

    fn output(&self, name: &str) -> String {
        let cm = self.field(name, ".status.outputRef.name");
        self.k(&["get", "configmap", &cm, "-o", "jsonpath={.data.output}"])
    }

    fn stop(&self, name: &str) {
        self.k(&[
            "patch",
            "tracejob",
            name,
            "--type=merge",
            "-p",
            r#"{"spec":{"stop":true}}"#,
        ]);
    }

    /// The agent's pods; none while kubectl cannot answer (callers wait or are cleaning up).
    fn agent_pods(&self) -> Vec<String> {
        let out = self.kubectl(&[
            "-n",
            "tracejob-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=tracejob-agent",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// Waits for one agent pod, other than `not`, to be Ready; returns its name.
    fn ready_agent(&self, not: Option<&str>) -> String {
        wait_for(Duration::from_secs(180), "a Ready agent pod", || {
            let pods = self.agent_pods();
            let pod = pods.iter().find(|p| Some(p.as_str()) != not)?;
            let ready = self.kubectl(&[
                "-n",
                "tracejob-system",
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            (ready.stdout == b"True").then(|| pod.clone())
        })
    }

    /// The agent container's log, read where the kubelet writes it (`kubectl logs` needs a
    /// node address this loopback-only cluster does not have).
    fn agent_log(&self, pod: &str) -> String {
        let mut text = String::new();
        if let Ok(dirs) = std::fs::read_dir("/var/log/pods") {
            for dir in dirs.flatten() {
                let name = dir.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("tracejob-system_{pod}_")) {
                    for log in std::fs::read_dir(dir.path().join("agent"))
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        text += &std::fs::read_to_string(log.path()).unwrap_or_default();
                    }
                }
            }
        }
        text
    }

    /// (resource[/subresource] name, user) of each write in the API server's audit log.
    fn audited_writers(&self) -> Vec<(String, String)> {
        let path = PathBuf::from(cluster_setting("echo $cluster_dir")).join("logs/audit.log");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|e| {
                let o = &e["objectRef"];
                let resource = match o["subresource"].as_str() {
                    Some(sub) => format!("{}/{sub}", o["resource"].as_str().unwrap_or_default()),
                    None => o["resource"].as_str().unwrap_or_default().to_string(),
                };
                (
                    format!("{resource} {}", o["name"].as_str().unwrap_or_default()),
                    e["user"]["username"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    /// `script`: the README's `try-it down` block.
    fn down(&mut self, script: &str) {
        self.down = true;
        let out = run(docs::bash(script).current_dir(root()));
        assert!(
            out.status.success(),
            "try-it down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        for pod in self.agent_pods() {
            eprintln!("--- agent log of {pod} ---\n{}", self.agent_log(&pod));
        }
        let _ = run(Command::new(root().join("tests/cluster/try-it")).arg("down"));
    }
}

fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// bpftrace processes on the host that have not exited (a zombie has: only its parent has not
/// reaped it yet).
fn bpftrace_pids() -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .map(|p| p.file_name().to_string_lossy().into_owned())
        .filter(|pid| {
            pid.bytes().all(|b| b.is_ascii_digit())
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "bpftrace")
                && alive(pid)
        })
        .collect()
}

fn alive(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

const COUNT_SYSCALLS: &str = "tracepoint:raw_syscalls:sys_enter { @calls[comm] = count(); }";

/// The workload pod (tests/cluster/workload.c: getppid() 100 times a second), running.
fn workload(cluster: &Cluster, name: &str) -> String {
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: work\n    image: {}\n    imagePullPolicy: Never\n",
        cluster_setting("echo $workload_image")
    ));
    cluster.k(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{name}"),
        "--timeout=120s",
    ]);
    let id = cluster.k(&[
        "get",
        "pod",
        name,
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    id.rsplit('/').next().unwrap_or_default().to_string()
}

/// The host PID of the workload container's main process (`id`: its container ID).
fn workload_pid(id: &str) -> String {
    let procs = std::fs::read_dir("/proc").expect("/proc");
    procs
        .flatten()
        .map(|p| p.file_name().to_string_lossy().into_owned())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "workload")
                && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.contains(id))
        })
        .unwrap_or_else(|| panic!("no workload process of container {id}"))
}

/// A TraceJob targeting `pod`, with no spec.nodeName: the pod's node takes it.
fn targeted(cluster: &Cluster, name: &str, pod: &str, program: &str) {
    let program: String = program.lines().map(|l| format!("    {l}\n")).collect();
    cluster.apply(&format!(
        "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata:\n  name: {name}\nspec:\n  target:\n    pod: {pod}\n  deadlineGracePeriod: 300\n  program: |\n{program}"
    ));
}

/// The keys of a `@name[key]: count` map in bpftrace's output.
fn map_keys(output: &str, map: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{map}[")))
        .filter_map(|l| l.rsplit_once("]: ").map(|(k, _)| k.to_string()))
        .collect()
}

fn pod_targets(cluster: &Cluster) {
    step("a TraceJob naming a pod: its node takes it, and the filter keeps to its container");
    let id = workload(cluster, "workload");
    let pid = workload_pid(&id);
    let by_comm = "tracepoint:raw_syscalls:sys_enter /cgroup == $container_cgroup/ { @calls[comm] = count(); }";
    targeted(cluster, "in-pod", "workload", by_comm);
    targeted(
        cluster,
        "everything",
        "workload",
        "tracepoint:raw_syscalls:sys_enter { @calls[comm] = count(); }",
    );
    targeted(
        cluster,
        "its-pid",
        "workload",
        "BEGIN { printf(\"pid %d\\n\", $container_pid); exit(); }",
    );
    let sample = std::fs::read_to_string(root().join("bpf-samples/podsyscount.yaml"))
        .expect("the sample")
        .replace("pod: my-pod", "pod: workload")
        .replace("deadline: 600", "deadline: 600\n  deadlineGracePeriod: 300");
    cluster.apply(&sample);
    for name in ["in-pod", "everything", "podsyscount"] {
        cluster.wait_condition(name, "Running", 120);
    }
    let running = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    for name in ["in-pod", "everything", "podsyscount"] {
        cluster.stop(name);
    }
    for name in ["in-pod", "everything", "podsyscount", "its-pid"] {
        cluster.wait_condition(name, "Completed", 180);
        assert_eq!(
            cluster.field(name, ".status.nodeName"),
            cluster.node,
            "{name}: status does not name the pod's node"
        );
    }
    let traced = running.elapsed().as_secs_f64();
    let inside = map_keys(&cluster.output("in-pod"), "@calls");
    assert_eq!(
        inside,
        ["workload"],
        "the filter let other processes through"
    );
    let outside = map_keys(&cluster.output("everything"), "@calls");
    assert!(
        outside.len() > 3 && outside.iter().any(|k| k != "workload"),
        "without the filter the host's processes show: {outside:?}"
    );
    assert_eq!(
        cluster
            .output("its-pid")
            .lines()
            .find(|l| l.starts_with("pid ")),
        Some(format!("pid {pid}").as_str()),
        "$container_pid is not the workload's host PID"
    );
    // The sample counts the workload's system calls by name: getppid 100 times a second.
    let counts = cluster.output("podsyscount");
    let getppid: f64 = counts
        .lines()
        .find_map(|l| l.strip_prefix("@[tracepoint:syscalls:sys_enter_getppid]: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no getppid count:\n{counts}"));
    assert!(
        getppid >= 100.0 * 2.0 && getppid <= 100.0 * (traced + 5.0),
        "{getppid} getppid calls in about {traced:.1} s of tracing"
    );
    // The program that ran, variables filled in, is beside the output.
    let cm = cluster.field("in-pod", ".status.outputRef.name");
    let ran = cluster.k(&["get", "configmap", &cm, "-o", "jsonpath={.data.program}"]);
    assert!(
        ran.contains("/cgroup == ") && !ran.contains("$container_cgroup"),
        "{ran}"
    );

    step("kubectl tracejob run pod/NAME: the pod's node traces its container");
    let out = run(cluster.plugin().args([
        "run",
        "pod/workload",
        "-e",
        by_comm,
        "--deadline",
        "3s",
        "--grace",
        "5m",
    ]));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl tracejob run pod/workload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(map_keys(&printed, "@calls"), ["workload"], "{printed}");

    step("the target container restarts: the trace stops and its output is collected");
    targeted(cluster, "restarted", "workload", by_comm);
    cluster.wait_condition("restarted", "Running", 120);
    let _ = Command::new("kill").arg(&pid).status();
    cluster.wait_condition("restarted", "Completed", 180);
    let message = cluster.field("restarted", ".status.message");
    assert_eq!(
        cluster.field(
            "restarted",
            ".status.conditions[?(@.type==\"Completed\")].reason"
        ),
        "TargetRestarted",
        "{message}"
    );
    assert!(message.contains("restart"), "{message}");
    assert!(cluster.output("restarted").contains("@calls[workload]"));

    step("the target pod is deleted: the trace stops and its output is collected");
    cluster.k(&[
        "wait",
        "--for=condition=Ready",
        "pod/workload",
        "--timeout=120s",
    ]);
    targeted(cluster, "deleted", "workload", by_comm);
    cluster.wait_condition("deleted", "Running", 120);
    cluster.k(&["delete", "pod", "workload", "--wait=false"]);
    cluster.wait_condition("deleted", "Completed", 180);
    let message = cluster.field("deleted", ".status.message");
    assert!(
        message.contains("deleted") || message.contains("stopped"),
        "{message}"
    );
}

/// The log of container `container` of pod `pod` (namespace default), where the kubelet writes it.
fn pod_log(pod: &str, container: &str) -> String {
    let mut text = String::new();
    for dir in std::fs::read_dir("/var/log/pods")
        .into_iter()
        .flatten()
        .flatten()
    {
        if dir
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("default_{pod}_"))
        {
            for log in std::fs::read_dir(dir.path().join(container))
                .into_iter()
                .flatten()
                .flatten()
            {
                text += &std::fs::read_to_string(log.path()).unwrap_or_default();
            }
        }
    }
    text
}

/// Uprobe, uretprobe, USDT probes and user stacks in a pod's container, through
/// `kubectl tracejob run pod/...` and `$container_root` (tests/userspace/app.c in the workload
/// image; tests/e2e/userspace.rs has the details on each bpftrace release).
fn user_space(cluster: &Cluster) {
    step("kubectl tracejob run pod/NAME -e 'uprobe:$container_root/app:work ...': the container's own binary");
    // The image is FROM scratch: the app's FIFO goes in its root (there is no /tmp).
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: userspace\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {}\n    imagePullPolicy: Never\n    command: [/app, /cmd]\n",
        cluster_setting("echo $workload_image")
    ));
    cluster.k(&[
        "wait",
        "--for=condition=Ready",
        "pod/userspace",
        "--timeout=120s",
    ]);
    let id = cluster.k(&[
        "get",
        "pod",
        "userspace",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    let id = id.rsplit('/').next().unwrap_or_default().to_string();
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .map(|p| p.file_name().to_string_lossy().into_owned())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "app")
                && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.contains(&id))
        })
        .unwrap_or_else(|| panic!("no app process of container {id}"));
    let program = "uprobe:$container_root/app:work { @calls = count(); @[ustack] = count(); @start[tid] = nsecs; } \
        uretprobe:$container_root/app:work /@start[tid]/ { @usecs = hist((nsecs - @start[tid]) / 1000); delete(@start[tid]); } \
        usdt:$container_root/app:tracejob:work { @arg[arg0] = count(); } \
        END { clear(@start); }";
    let mut child = cluster
        .plugin()
        .args([
            "run",
            "pod/userspace",
            "--name",
            "userspace",
            "--grace",
            "5m",
            "-e",
            program,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl tracejob");
    // The plugin creates the TraceJob: wait for it to exist before waiting on its condition.
    let created = Instant::now() + Duration::from_secs(60);
    while !cluster
        .kubectl(&["get", "tracejob", "userspace"])
        .status
        .success()
    {
        assert!(
            Instant::now() < created && child.try_wait().ok().flatten().is_none(),
            "kubectl tracejob run pod/userspace did not create its TraceJob"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.wait_condition("userspace", "Running", 120);
    std::fs::write(format!("/proc/{pid}/root/cmd"), "5\n").expect("write to the app's FIFO");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pod_log("userspace", "app").contains("done 5") {
        assert!(
            Instant::now() < deadline,
            "the app did not make its calls: {}",
            pod_log("userspace", "app")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let mut printed = String::new();
    let mut err = String::new();
    use std::io::Read;
    let _ = child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut printed);
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(child.wait().expect("kubectl tracejob").success(), "{err}");
    assert!(printed.contains("@calls: 5"), "{printed}");
    assert!(
        printed.contains("work+0") && printed.contains("main+"),
        "no named stack:\n{printed}"
    );
    for n in 1..=5 {
        assert!(
            printed.contains(&format!("@arg[{n}]: 1")),
            "USDT argument {n}:\n{printed}"
        );
    }
    assert!(
        printed.lines().any(|l| l.starts_with("[16K, 32K)")),
        "work() sleeps 18 ms:\n{printed}"
    );
    cluster.k(&["delete", "pod", "userspace", "--wait=false"]);
}

/// The default install denies by default: a namespace without the annotation traces nothing
/// (admission rejects its TraceJob at `kubectl apply`), one scoped to other nodes is refused by
/// this node's agent, and the annotated one (try-it's `default`) ran.
fn namespace_scopes(cluster: &Cluster) {
    step("deny by default: an unannotated namespace is refused, an annotated one runs");
    let scope = cluster.k(&[
        "get",
        "namespace",
        "default",
        "-o",
        "jsonpath={.metadata.annotations.observe\\.tracejob\\.dev/node-selector}",
    ]);
    assert_eq!(
        scope, "!observe.tracejob.dev/untraceable",
        "try-it's annotation"
    );
    assert_eq!(cluster.field("biolatency", ".status.phase"), "Completed");
    cluster.k(&["create", "namespace", "unannotated"]);
    let out = cluster.apply_in(
        "unannotated",
        &cluster.trace_yaml("refused", COUNT_SYSCALLS),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("tracejob-annotated-namespaces")
            && stderr.contains("observe.tracejob.dev/node-selector"),
        "a TraceJob of an unannotated namespace: {stderr}"
    );
    cluster.k(&["create", "namespace", "elsewhere"]);
    cluster.k(&[
        "annotate",
        "namespace",
        "elsewhere",
        "observe.tracejob.dev/node-selector=pool=elsewhere",
    ]);
    let out = cluster.apply_in("elsewhere", &cluster.trace_yaml("away", COUNT_SYSCALLS));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.k(&[
        "wait",
        "-n",
        "elsewhere",
        "--for=condition=Failed",
        "tracejob/away",
        "--timeout=120s",
    ]);
    let reason = cluster.k(&[
        "get",
        "-n",
        "elsewhere",
        "tracejob",
        "away",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason} {.status.id}",
    ]);
    assert_eq!(
        reason.trim(),
        "NodeNotAllowed",
        "refused before anything ran"
    );
}

/// The trigger receiver as its Deployment's pod (tests/cluster/trigger), called as Alertmanager's
/// webhook would call it: a firing alert makes a TraceJob Running on the node, its resolution
/// stops it with its maps collected.
fn triggered_trace(cluster: &Cluster, blocks: &mut docs::Blocks) {
    step("the trigger receiver's pod: a firing alert traces the node, its resolution stops it");
    // The README's trigger quick start: its token, the receiver installed and rolled out.
    cluster.sh(&blocks.take("README.md", "kubectl apply -k tests/cluster/trigger"));
    let token = cluster.sh(
        "kubectl -n tracejob-system get secret tracejob-trigger-token -o jsonpath='{.data.token}' | base64 -d",
    );
    assert!(!token.is_empty(), "the token the README's block made");
    let trigger = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceTrigger",
        "metadata": {"name": "cluster-alert", "namespace": "default"},
        "spec": {
            "matchers": ["alertname=\"ClusterTestAlert\""],
            "target": {"kind": "Node"},
            "trace": {"program": COUNT_SYSCALLS, "deadline": 300, "deadlineGracePeriod": 300}
        }
    });
    cluster.apply(&trigger.to_string());
    let alert = |status: &str| {
        let body = serde_json::json!({
            "version": "4", "status": status,
            "alerts": [{
                "status": status,
                "labels": {"alertname": "ClusterTestAlert", "node": cluster.node},
                "startsAt": "2026-01-01T00:00:00Z",
                "fingerprint": "c1a2b3c4d5e6f708"
            }]
        });
        wait_for(
            Duration::from_secs(60),
            &format!("the receiver to take the {status} alert"),
            || {
                let out = run(Command::new("curl")
                    .args(["-sf", "-m", "10", "-H"])
                    .arg(format!("Authorization: Bearer {token}"))
                    .args(["-H", "Content-Type: application/json", "-d"])
                    .arg(body.to_string())
                    .arg("http://127.0.0.1:9471/alerts"));
                out.status.success().then_some(())
            },
        );
    };
    // Without the token: 401.
    let out = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-d",
        "{}",
        "http://127.0.0.1:9471/alerts",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "no token");
    alert("firing");
    let name = wait_for(Duration::from_secs(60), "the triggered TraceJob", || {
        let names = cluster.k(&[
            "get",
            "tracejob",
            "-l",
            "observe.tracejob.dev/trigger=cluster-alert",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        names.split_whitespace().next().map(str::to_string)
    });
    cluster.wait_condition(&name, "Running", 120);
    assert_eq!(cluster.field(&name, ".spec.nodeName"), cluster.node);
    let pid = cluster.field(&name, ".status.pid");
    assert!(alive(&pid), "bpftrace {pid} of {name} is not running");
    alert("resolved");
    cluster.wait_condition(&name, "Completed", 180);
    assert_eq!(cluster.field(&name, ".spec.stop"), "true");
    let output = cluster.output(&name);
    assert!(output.contains("@calls["), "output: {output}");
    // The trigger's status is written by the receiver's worker after the TraceJob: waited for.
    wait_for(
        Duration::from_secs(60),
        "the trigger's status to count one trace",
        || {
            (cluster.k(&[
                "get",
                "tt",
                "cluster-alert",
                "-o",
                "jsonpath={.status.tracesCreated}",
            ]) == "1")
                .then_some(())
        },
    );
    // Only the receiver's pod goes; the rest of the component leaves with the cluster.
    cluster.k(&[
        "-n",
        "tracejob-system",
        "delete",
        "deploy/tracejob-trigger-receiver",
        "--wait=true",
    ]);
}

fn step(what: &str) {
    eprintln!("cluster test: {what}");
}

#[test]
fn the_daemonset_runs_traces_on_a_real_kubelet() {
    // Only this test's traces count (an earlier test's bpftrace may still be printing its maps).
    let before = bpftrace_pids();
    let mut blocks = docs::blocks("the_daemonset_runs_traces_on_a_real_kubelet");
    step("tests/cluster/try-it, as the README's \"Try it on one machine\" shows it");
    let started = Instant::now();
    let out = run(
        docs::bash(&blocks.take("README.md", "a local cluster, the agent installed"))
            .current_dir(root()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut cluster = Cluster {
        kubectl: cluster_setting("kubectl_bin"),
        kubeconfig: cluster_setting("echo $kubeconfig"),
        node: cluster_setting("echo $node"),
        down: false,
    };
    assert!(out.status.success(), "try-it failed:\n{stdout}\n{stderr}");
    eprintln!("try-it took {:?}:", started.elapsed());
    // Its steps' times, for the log of a slow run.
    for line in stderr.lines().filter(|l| l.contains("... done in")) {
        eprintln!("  {line}");
    }
    // The histogram of the biolatency sample, from its ConfigMap, over the disk I/O try-it made.
    assert!(stdout.contains("@usecs:"), "no histogram:\n{stdout}");
    let buckets: u64 = stdout
        .lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
        .sum();
    assert!(buckets > 0, "an empty histogram:\n{stdout}");
    assert!(stderr.contains(&format!("export KUBECONFIG={}", cluster.kubeconfig)));
    assert!(stderr.contains("try-it down"));

    step("the cluster runs the release the build module pins: server, kubelet and kubectl");
    let pinned = pinned_release();
    let version = cluster.k(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&version).expect("kubectl version -o json");
    for side in ["serverVersion", "clientVersion"] {
        assert_eq!(
            v[side]["gitVersion"].as_str(),
            Some(pinned.as_str()),
            "{side}: {version}"
        );
    }
    let kubelet = cluster.k(&[
        "get",
        "node",
        &cluster.node,
        "-o",
        "jsonpath={.status.nodeInfo.kubeletVersion}",
    ]);
    assert_eq!(kubelet, pinned, "the kubelet");

    step("the agent is the DaemonSet's pod, with its own ServiceAccount and no other credential");
    let pod = cluster.ready_agent(None);
    let spec = cluster.k(&[
        "-n",
        "tracejob-system",
        "get",
        "pod",
        &pod,
        "-o",
        "jsonpath={.spec.serviceAccountName} {.spec.nodeName} {.metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(
        spec,
        format!("tracejob-agent {} DaemonSet", cluster.node),
        "agent pod"
    );
    let log = cluster.agent_log(&pod);
    assert!(log.contains("tracejob-agent starting"), "agent log: {log}");
    // Every status and ConfigMap write of the biolatency run came from the agent's
    // ServiceAccount (the API server's audit log names the user).
    let writers = cluster.audited_writers();
    for expected in [
        "tracejobs/status biolatency",
        "configmaps biolatency-output-",
    ] {
        assert!(
            writers.iter().any(|(what, _)| what.starts_with(expected)),
            "no audited write of {expected}: {writers:?}"
        );
    }
    for (what, user) in &writers {
        if what.ends_with(" biolatency") || what.starts_with("configmaps biolatency-output-") {
            assert_eq!(
                user, "system:serviceaccount:tracejob-system:tracejob-agent",
                "{what}"
            );
        }
    }

    step("a failing program fails with bpftrace's error");
    cluster.trace(
        "broken",
        "tracepoint:no_such_group:no_such_event { @x = count(); }",
    );
    cluster.wait_condition("broken", "Failed", 120);
    let message = cluster.field("broken", ".status.message");
    assert!(message.contains("no_such_group"), "message: {message}");

    namespace_scopes(&cluster);

    pod_targets(&cluster);
    user_space(&cluster);

    step("deleting the agent's pod mid-trace: the DaemonSet's next pod takes the trace over");
    cluster.trace("survivor", COUNT_SYSCALLS);
    cluster.wait_condition("survivor", "Running", 120);
    let pid = cluster.field("survivor", ".status.pid");
    assert!(alive(&pid), "bpftrace {pid} is not running");
    cluster.k(&[
        "-n",
        "tracejob-system",
        "delete",
        "pod",
        &pod,
        "--wait=true",
    ]);
    assert!(
        alive(&pid),
        "bpftrace {pid} ended with the agent's container"
    );
    let next = cluster.ready_agent(Some(&pod));
    wait_for(
        Duration::from_secs(60),
        "the new agent to take the trace over",
        || {
            cluster
                .agent_log(&next)
                .contains("taking over a trace started by an earlier agent")
                .then_some(())
        },
    );
    assert!(alive(&pid), "bpftrace {pid} did not survive the takeover");
    cluster.stop("survivor");
    cluster.wait_condition("survivor", "Completed", 180);
    assert!(!alive(&pid));
    let output = cluster.output("survivor");
    assert!(output.contains("@calls["), "output: {output}");

    step("deleting the DaemonSet: no agent will come back, so the agent stops and collects");
    cluster.trace("orphan", COUNT_SYSCALLS);
    cluster.wait_condition("orphan", "Running", 120);
    let pid = cluster.field("orphan", ".status.pid");
    cluster.k(&[
        "-n",
        "tracejob-system",
        "delete",
        "daemonset",
        "tracejob-agent",
    ]);
    cluster.wait_condition("orphan", "Completed", 180);
    let message = cluster.field("orphan", ".status.message");
    assert!(
        message.contains("the agent was removed from the node"),
        "message: {message}"
    );
    assert!(cluster.output("orphan").contains("@calls["));
    wait_for(Duration::from_secs(60), "bpftrace to end", || {
        (!alive(&pid)).then_some(())
    });
    cluster.k(&["apply", "-k", "tests/cluster/overlay"]);
    cluster.ready_agent(None);

    triggered_trace(&cluster, &mut blocks);

    step("kubectl delete -k removes everything and leaves no bpftrace");
    cluster.trace("last", COUNT_SYSCALLS);
    cluster.wait_condition("last", "Running", 120);
    let pid = cluster.field("last", ".status.pid");
    assert!(alive(&pid));
    cluster.k(&["delete", "-k", "tests/cluster/overlay"]);
    wait_for(Duration::from_secs(120), "no bpftrace left", || {
        bpftrace_pids()
            .iter()
            .all(|p| before.contains(p))
            .then_some(())
    });
    for gone in [
        vec!["get", "namespace", "tracejob-system"],
        vec!["get", "crd", "tracejobs.observe.tracejob.dev"],
        vec!["get", "clusterrole", "tracejob-agent"],
        vec!["get", "clusterrole", "tracejob-admin"],
        vec!["get", "clusterrole", "tracejob-viewer"],
        vec!["get", "clusterrolebinding", "tracejob-agent"],
    ] {
        wait_for(Duration::from_secs(120), &gone.join(" "), || {
            let out = cluster.kubectl(&gone);
            (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"))
                .then_some(())
        });
    }

    step("tests/cluster/try-it down");
    cluster.down(&blocks.take("README.md", "try-it down"));
    assert!(!PathBuf::from(cluster.kubeconfig.as_str()).exists());
    let left = run(Command::new("pgrep").args(["-f", "tracejob-cluster"]));
    assert!(
        left.stdout.is_empty(),
        "processes of the cluster remain: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
