//! The core promises of issue #24, shown end to end: a failed save of a run's record ends that run
//! with a reason that says so while the agent and its other runs go on; no run's directory
//! outlives its TraceJob, not even one deleted while its output is being stored; and every wait
//! for a fact about the cluster is visible in status, and ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::api::tracejob_yaml;
use crate::lifecycle::{assert_no_bpftrace, output, stop, wait_phase, SYSCOUNT};
use crate::support::{bpftrace_double, must, register_node, wait_for, Agent, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "core_a_failed_record_save_fails_that_job_only_and_the_agent_stays_healthy",
            run: failed_save_fails_that_job_only,
        },
        Test {
            name: "core_a_tracejob_deleted_while_its_output_is_retried_leaves_no_run_directory",
            run: deleted_mid_store_leaves_no_run_directory,
        },
        Test {
            name: "core_a_wait_for_the_agents_node_is_shown_then_given_up_or_ended_by_the_node",
            run: wait_for_the_node_is_visible,
        },
        Test {
            name: "core_a_wait_for_a_namespace_the_agent_cannot_see_is_shown_then_given_up",
            run: wait_for_the_namespace_is_visible,
        },
    ]
}

/// The series of the counter registered as `record_save_failures`.
const SAVE_FAILURES: &str = "tracejob_record_save_failures_total";

fn field(k: &Kubectl, ns: &str, name: &str, path: &str) -> String {
    k.jsonpath(ns, &format!("tj/{name}"), path)
}

/// A field of the condition of type `kind` (empty when there is none).
fn condition(k: &Kubectl, ns: &str, name: &str, kind: &str, what: &str) -> String {
    field(
        k,
        ns,
        name,
        &format!(".status.conditions[?(@.type==\"{kind}\")].{what}"),
    )
}

/// Whether the agent process still runs.
fn alive(agent: &mut Agent) -> bool {
    agent
        .proc
        .as_mut()
        .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
}

/// A file made immutable (`chattr +i`) for as long as this lives: it can be neither replaced by
/// a rename nor removed. Made mutable again when dropped, so its temporary directory can go.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let st = must(
            Command::new("chattr").arg("+i").arg(path).status(),
            "run chattr (apt-get install e2fsprogs)",
        );
        assert!(st.success(), "chattr +i {} failed", path.display());
        Immutable(path.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// Issue #24: every save of a run's record is awaited, and one that fails ends that run
/// (SIGINT) as Failed with the reason RecordNotSaved, its maps still stored; the agent answers
/// /healthz all along and its other run goes on to complete.
///
/// How a save is made to fail for one run only: its `record.json` is made immutable (chattr +i,
/// on this ext4). Every save writes `record.json.tmp` and renames it over `record.json`, and a
/// rename cannot replace an immutable file (EPERM), while everything else of that run (bpftrace's
/// open stdout, the shim's `ended.json`, reading the output) works as before.
fn failed_save_fails_that_job_only(env: &Env) {
    let ns = env.namespace("core-unsaved");
    let k = &env.kubectl;
    // No live copies: the output ConfigMap is the final store's.
    let mut agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--live-interval", "0"],
        &[],
    );
    for name in ["a", "b"] {
        k.apply(&ns, &tracejob_yaml(name, &agent.node, SYSCOUNT, ""));
    }
    for name in ["a", "b"] {
        wait_phase(k, &ns, name, "Running", Duration::from_secs(60));
    }
    let id = field(k, &ns, "a", ".status.id");
    assert!(!id.is_empty(), "tj/a is Running without a status.id");
    let record = agent.state_dir.join("jobs").join(&id).join("record.json");
    assert!(
        record.is_file(),
        "the run of tj/a has no record at {}",
        record.display()
    );
    assert_eq!(agent.metric(SAVE_FAILURES), 0.0, "a save failed already");
    let b_pid = field(k, &ns, "b", ".status.pid");

    let probe = agent.probe_healthz();
    let _immutable = Immutable::set(&record);
    stop(k, &ns, "a");
    // Its save of "stopped" fails: it ends at once, not completed.
    wait_for(Duration::from_secs(60), "tj/a to end", || {
        let phase = field(k, &ns, "a", ".status.phase");
        (phase == "Completed" || phase == "Failed").then_some(())
    });
    let (phase, message) = (
        field(k, &ns, "a", ".status.phase"),
        field(k, &ns, "a", ".status.message"),
    );
    assert_eq!(phase, "Failed", "tj/a: {message}");
    assert_eq!(
        condition(k, &ns, "a", "Failed", "reason"),
        "RecordNotSaved",
        "tj/a: {message}"
    );
    assert!(
        message.contains("could not save the run's record"),
        "{message}"
    );
    // The OS error, as the rename met it.
    assert!(
        message.contains("Operation not permitted (os error 1)"),
        "{message}"
    );
    assert!(
        agent.metric(SAVE_FAILURES) >= 1.0,
        "the failed save is not counted"
    );
    assert_eq!(
        agent.metric_if_present(r#"tracejob_traces_failed_total{reason="RecordNotSaved"}"#),
        Some(1.0),
        "tj/a is not counted as failed for RecordNotSaved"
    );
    // Its maps were collected and stored all the same.
    let a_out = output(k, &ns, "a", "output");
    assert!(a_out.contains("@syscalls["), "tj/a's output: {a_out}");

    // The agent, and tj/b, went on.
    assert!(alive(&mut agent), "the agent exited");
    assert_eq!(field(k, &ns, "b", ".status.phase"), "Running");
    assert_eq!(
        agent.bpftraces(),
        vec![b_pid.parse::<i32>().unwrap_or(-1)],
        "tj/b's bpftrace, and only it, runs"
    );
    stop(k, &ns, "b");
    wait_phase(k, &ns, "b", "Completed", Duration::from_secs(60));
    let b_out = output(k, &ns, "b", "output");
    assert!(b_out.contains("@syscalls["), "tj/b's output: {b_out}");
    let slowest = probe.finish();
    assert!(
        slowest < Duration::from_secs(2),
        "/healthz took {slowest:?} (10 s: it did not answer 200) while a save failed"
    );
    assert!(alive(&mut agent), "the agent exited");
    assert_no_bpftrace(&agent);
}

/// A validating webhook on ConfigMap writes in one namespace that nobody serves: the API server
/// answers every such write with 500 "failed calling webhook" (a transient error, retried).
/// Removed when dropped (the API server is shared by the tests).
struct FailingConfigMapWebhook {
    k: Kubectl,
    name: String,
}

impl FailingConfigMapWebhook {
    fn install(env: &Env, ns: &str) -> FailingConfigMapWebhook {
        let ca = must(std::fs::read(env.cp.ca_file()), "read the API server's CA");
        let name = format!("{ns}-configmaps-fail");
        let webhook = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "configmaps-fail.tracejob.test",
                "clientConfig": {
                    "url": "https://127.0.0.1:1/x",
                    // Any CA: nothing answers there. (A ByteString serializes as base64.)
                    "caBundle": k8s_openapi::ByteString(ca),
                },
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"],
                }],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 2,
            }]
        });
        let k = env.kubectl.clone();
        let r = k.run_with_stdin(&["create", "-f", "-"], &webhook.to_string());
        assert!(r.ok, "creating the webhook configuration: {}", r.stderr);
        let guard = FailingConfigMapWebhook { k, name };
        // In force once a ConfigMap of the namespace is refused as the agent's would be.
        wait_for(
            Duration::from_secs(30),
            "the webhook to refuse ConfigMap writes",
            || {
                let r = guard
                    .k
                    .run(&["create", "configmap", "-n", ns, "webhook-probe"]);
                if r.ok {
                    guard
                        .k
                        .ok(&["delete", "configmap", "-n", ns, "webhook-probe"]);
                    return None;
                }
                assert!(
                    r.stderr.contains("failed calling webhook"),
                    "the probe ConfigMap was refused otherwise: {}",
                    r.stderr
                );
                Some(())
            },
        );
        guard
    }
}

impl Drop for FailingConfigMapWebhook {
    fn drop(&mut self) {
        let _ = self.k.run(&[
            "delete",
            "validatingwebhookconfiguration",
            &self.name,
            "--ignore-not-found",
        ]);
    }
}

/// Issue #24: a run's directory goes with its TraceJob on every path, also when the
/// TraceJob is deleted while the agent retries storing its output (which used to return from the
/// run's end without removing anything).
fn deleted_mid_store_leaves_no_run_directory(env: &Env) {
    let ns = env.namespace("core-midstore");
    let k = &env.kubectl;
    let _webhook = FailingConfigMapWebhook::install(env, &ns);
    let double = bpftrace_double().to_string_lossy().into_owned();
    // No live copies: the first ConfigMap write is the final store's.
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--bpftrace", &double, "--live-interval", "0"],
        &[],
    );
    k.apply(&ns, &tracejob_yaml("s", &agent.node, "BEGIN {}", ""));
    wait_phase(k, &ns, "s", "Running", Duration::from_secs(30));
    let id = field(k, &ns, "s", ".status.id");
    assert!(!id.is_empty(), "tj/s is Running without a status.id");
    let dir = agent.state_dir.join("jobs").join(&id);
    assert!(dir.is_dir(), "no run directory {}", dir.display());
    stop(k, &ns, "s");
    // The agent stores the output, and is refused for now: it retries.
    let line = wait_for(
        Duration::from_secs(30),
        "the agent to retry writing the output ConfigMap",
        || {
            agent
                .logs()
                .lines()
                .find(|l| l.contains("writing the output ConfigMap failed"))
                .map(str::to_string)
        },
    );
    assert!(line.contains("failed calling webhook"), "{line}");
    assert!(dir.is_dir(), "the run's directory went before its end");
    k.ok(&["delete", "-n", &ns, "tj", "s"]);
    wait_for(
        Duration::from_secs(10),
        "the deleted TraceJob's run directory to be removed",
        || (!dir.exists()).then_some(()),
    );
    assert_no_bpftrace(&agent);
}

/// Issue #24: an agent that cannot decide on a TraceJob because it has not seen its own
/// Node says so in status (Pending, Waiting NodeUnknown) from 2 s after the TraceJob's creation,
/// and fails it with NodeUnknown after --wait-timeout; a wait the Node's arrival ends goes on to
/// run.
fn wait_for_the_node_is_visible(env: &Env) {
    let ns = env.namespace("core-nodewait");
    let k = &env.kubectl;
    let node = format!("{ns}-node");
    let absent = k.run(&["get", "node", &node]);
    assert!(
        !absent.ok && absent.stderr.contains("NotFound"),
        "node {node} exists: {}",
        absent.stderr
    );
    let double = bpftrace_double().to_string_lossy().into_owned();
    let mut agent = Agent::start_registered(
        &node,
        &env.cp.kubeconfig,
        &["--bpftrace", &double, "--wait-timeout", "5"],
        &[],
    );
    let waiting = |name: &str| {
        wait_for(
            Duration::from_secs(10),
            &format!("tj/{name} to show it waits for the Node"),
            || {
                let shown = field(
                    k,
                    &ns,
                    name,
                    ".status.phase} {.status.conditions[?(@.type==\"Waiting\")].status} {.status.conditions[?(@.type==\"Waiting\")].reason",
                );
                (shown == "Pending True NodeUnknown").then_some(())
            },
        );
        condition(k, &ns, name, "Waiting", "message")
    };

    let created = Instant::now();
    k.apply(&ns, &tracejob_yaml("lost", &node, "BEGIN {}", ""));
    let message = waiting("lost");
    assert!(message.contains(&format!("NODE_NAME={node}")), "{message}");
    let phase = wait_for(Duration::from_secs(20), "tj/lost to end", || {
        let phase = field(k, &ns, "lost", ".status.phase");
        (phase != "Pending" && !phase.is_empty()).then_some(phase)
    });
    let waited = created.elapsed();
    let message = field(k, &ns, "lost", ".status.message");
    assert_eq!(phase, "Failed", "tj/lost: {message}");
    assert_eq!(condition(k, &ns, "lost", "Failed", "reason"), "NodeUnknown");
    assert!(message.starts_with("gave up after 5s: "), "{message}");
    assert!(message.contains(&format!("NODE_NAME={node}")), "{message}");
    // Counted from its creation (whole seconds): not before 4 s.
    assert!(
        waited > Duration::from_secs(4),
        "it gave up after {waited:?}"
    );
    // It never ran.
    assert_eq!(field(k, &ns, "lost", ".status.id"), "");
    assert!(agent.bpftraces().is_empty());
    let runs = std::fs::read_dir(agent.state_dir.join("jobs")).map_or(0, |d| d.count());
    assert_eq!(runs, 0, "a run directory was made");
    assert_eq!(agent.metric("tracejob_traces_started_total"), 0.0);
    assert!(alive(&mut agent), "the agent exited");

    // The Node arrives while the next one waits: it runs.
    k.apply(&ns, &tracejob_yaml("late", &node, "BEGIN {}", ""));
    waiting("late");
    register_node(env, &node, &[]);
    wait_phase(k, &ns, "late", "Running", Duration::from_secs(30));
    assert_eq!(
        agent.bpftraces(),
        vec![field(k, &ns, "late", ".status.pid")
            .parse::<i32>()
            .unwrap_or(-1)],
        "status.pid is the running bpftrace"
    );
    stop(k, &ns, "late");
    wait_phase(k, &ns, "late", "Completed", Duration::from_secs(30));
    let out = output(k, &ns, "late", "output");
    assert!(out.contains("@x: 1"), "tj/late's output: {out}");
    assert_no_bpftrace(&agent);
}

/// Cluster-wide objects of one test, deleted when dropped (the API server is shared).
struct ClusterObjects {
    k: Kubectl,
    names: Vec<String>,
}

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.k.run(&["delete", name, "--ignore-not-found"]);
        }
    }
}

/// The same for the TraceJob's namespace (NamespaceUnknown): here the agent's watch of Namespaces
/// never lists, because its user may do what the agent's ClusterRole allows but read namespaces.
fn wait_for_the_namespace_is_visible(env: &Env) {
    let ns = env.namespace("core-nswait");
    let k = &env.kubectl;
    let node = format!("{ns}-node");
    let user = format!("{ns}-agent");
    // daemonset/rbac-agent.yaml's rules, without namespaces.
    let rbac = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": user},
                "rules": [
                    {"apiGroups": ["observe.tracejob.dev"], "resources": ["tracejobs"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": ["observe.tracejob.dev"], "resources": ["tracejobs/status"], "verbs": ["patch"]},
                    {"apiGroups": ["observe.tracejob.dev"], "resources": ["tracejobnodes"], "verbs": ["get", "list", "watch", "create", "patch"]},
                    {"apiGroups": ["observe.tracejob.dev"], "resources": ["tracejobnodes/status"], "verbs": ["patch"]},
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "update"]},
                    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
                    {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]},
                ]
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": user},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
            }
        ]
    });
    let r = k.run_with_stdin(&["create", "-f", "-"], &rbac.to_string());
    assert!(r.ok, "creating the agent's RBAC: {}", r.stderr);
    let _rbac = ClusterObjects {
        k: k.clone(),
        names: vec![
            format!("clusterrolebinding/{user}"),
            format!("clusterrole/{user}"),
        ],
    };
    let can = |verb: &str, what: &str| {
        k.run(&["auth", "can-i", verb, what, "--as", &user])
            .stdout
            .trim()
            .to_string()
    };
    wait_for(Duration::from_secs(30), "the agent's RBAC in force", || {
        (can("watch", "tracejobs.observe.tracejob.dev") == "yes").then_some(())
    });
    assert_eq!(can("list", "namespaces"), "no");
    // The administrator's kubeconfig, acting as that user.
    let dir = must(tempfile::tempdir(), "tempdir");
    let kubeconfig = dir.path().join("agent.kubeconfig");
    let admin = must(
        std::fs::read_to_string(&env.cp.kubeconfig),
        "read the admin kubeconfig",
    );
    let acting = admin.replacen("  user:\n", &format!("  user:\n    as: {user}\n"), 1);
    assert_ne!(acting, admin, "no user in {admin}");
    must(std::fs::write(&kubeconfig, acting), "write the kubeconfig");
    let double = bpftrace_double().to_string_lossy().into_owned();
    let agent = Agent::start_with(
        env,
        &node,
        &kubeconfig,
        &["--bpftrace", &double, "--wait-timeout", "15"],
        &[],
    );

    let created = Instant::now();
    k.apply(&ns, &tracejob_yaml("unseen", &node, "BEGIN {}", ""));
    wait_for(
        // The agent looks at TraceJobs once its stores have listed, or after 5 s without them.
        Duration::from_secs(14),
        "tj/unseen to show it waits for its namespace",
        || {
            let shown = field(
                k,
                &ns,
                "unseen",
                ".status.phase} {.status.conditions[?(@.type==\"Waiting\")].status} {.status.conditions[?(@.type==\"Waiting\")].reason",
            );
            (shown == "Pending True NamespaceUnknown").then_some(())
        },
    );
    let message = condition(k, &ns, "unseen", "Waiting", "message");
    assert!(message.contains(&format!("namespace {ns}")), "{message}");
    let phase = wait_for(Duration::from_secs(30), "tj/unseen to end", || {
        let phase = field(k, &ns, "unseen", ".status.phase");
        (phase != "Pending" && !phase.is_empty()).then_some(phase)
    });
    let waited = created.elapsed();
    let message = field(k, &ns, "unseen", ".status.message");
    assert_eq!(phase, "Failed", "tj/unseen: {message}");
    assert_eq!(
        condition(k, &ns, "unseen", "Failed", "reason"),
        "NamespaceUnknown"
    );
    assert!(message.starts_with("gave up after 15s: "), "{message}");
    assert!(message.contains(&format!("namespace {ns}")), "{message}");
    assert!(
        waited > Duration::from_secs(14),
        "it gave up after {waited:?}"
    );
    assert_eq!(field(k, &ns, "unseen", ".status.id"), "");
    assert!(agent.bpftraces().is_empty());
    let runs = std::fs::read_dir(agent.state_dir.join("jobs")).map_or(0, |d| d.count());
    assert_eq!(runs, 0, "a run directory was made");
}
