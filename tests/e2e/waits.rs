//! Every wait for a fact about the cluster (the agent's node, a namespace it cannot see) is
//! visible in status, and ends.

use std::time::{Duration, Instant};

use crate::support::host::{alive, assert_no_bpftrace};
use crate::support::outputs::output;
use crate::support::tracejobs::{condition, field, stop, tracejob_yaml};
use crate::support::wait::wait_phase;
use crate::support::{bpftrace_double, must, register_node, wait_for, Agent, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    vec![
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
