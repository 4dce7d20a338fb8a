//! TraceJobs with a target pod, as far as the API server alone shows them: the pod's node takes an
//! unassigned TraceJob, and each way a target can be wrong ends Failed with a message that says
//! which. (Pods here are objects no kubelet runs; the cluster test traces a running container.)

use std::time::Duration;

use crate::support::pods::{report_running, FakeContainer};
use crate::support::wait::wait_phase;
use crate::support::{register_node, wait_for, Agent, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "target_pod_not_found",
            run: pod_not_found,
        },
        Test {
            name: "target_pod_not_running_yet_fails_after_the_bound",
            run: pod_not_running,
        },
        Test {
            name: "target_unknown_container_lists_the_pods_containers",
            run: unknown_container,
        },
        Test {
            name: "target_node_name_disagreeing_with_the_pod_fails",
            run: node_disagrees,
        },
        Test {
            name: "target_without_node_name_is_taken_by_the_pods_node_only",
            run: taken_by_the_pods_node,
        },
        Test {
            name: "target_without_node_name_costs_other_nodes_no_request",
            run: other_nodes_ask_nothing,
        },
    ]
}

const PROGRAM: &str =
    "tracepoint:raw_syscalls:sys_enter /cgroup == $container_cgroup/ { @[comm] = count(); }";

/// A TraceJob targeting `pod` (and `container`), on `node` if given.
fn targeted(name: &str, node: Option<&str>, pod: &str, container: Option<&str>) -> String {
    let mut spec = serde_json::json!({
        "program": PROGRAM,
        "deadlineGracePeriod": 300,
        "target": {"pod": pod},
    });
    if let Some(n) = node {
        spec["nodeName"] = n.into();
    }
    if let Some(c) = container {
        spec["target"]["container"] = c.into();
    }
    serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": name}, "spec": spec
    })
    .to_string()
}

/// A pod object on `node` (or unscheduled) with `containers`: no kubelet runs it.
fn pod(k: &Kubectl, ns: &str, name: &str, node: Option<&str>, containers: &[&str]) {
    let mut spec = serde_json::json!({
        "containers": containers.iter().map(|c| serde_json::json!({"name": c, "image": "localhost/none:1"})).collect::<Vec<_>>(),
    });
    if let Some(n) = node {
        spec["nodeName"] = n.into();
    }
    let yaml = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    });
    k.apply(ns, &yaml.to_string());
}

fn failed_with(k: &Kubectl, ns: &str, name: &str, reason: &str, says: &[&str]) -> String {
    wait_phase(k, ns, name, "Failed", Duration::from_secs(60));
    let got = k.jsonpath(
        ns,
        &format!("tj/{name}"),
        ".status.conditions[?(@.type==\"Failed\")].reason",
    );
    let message = k.jsonpath(ns, &format!("tj/{name}"), ".status.message");
    assert_eq!(got, reason, "{message}");
    for s in says {
        assert!(message.contains(s), "{message:?} does not say {s:?}");
    }
    message
}

/// The agent's requests to the API server, watches apart, as its /metrics counts them.
fn requests(agent: &Agent) -> (f64, String) {
    let (_, body) = agent.get("/metrics");
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("tracejob_api_requests_total{") && !l.contains("WATCH"))
        .collect();
    let sum = lines
        .iter()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    (sum, lines.join("\n"))
}

fn pod_not_found(env: &Env) {
    let ns = env.namespace("target-missing");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &targeted("t", Some(&agent.node), "nowhere", None));
    failed_with(k, &ns, "t", "TargetNotFound", &["pod nowhere not found"]);
    assert!(agent.bpftraces().is_empty());
}

fn pod_not_running(env: &Env) {
    let ns = env.namespace("target-pending");
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--target-timeout", "4"],
        &[],
    );
    let k = &env.kubectl;
    pod(k, &ns, "web", Some(&agent.node), &["app"]);
    k.apply(&ns, &targeted("t", Some(&agent.node), "web", None));
    // Meanwhile it says what it waits for.
    crate::support::wait_for(Duration::from_secs(20), "the wait to be shown", || {
        k.jsonpath(&ns, "tj/t", ".status.message")
            .contains("waiting for the target")
            .then_some(())
    });
    failed_with(
        k,
        &ns,
        "t",
        "TargetNotRunning",
        &["pod web is not running yet", "waited 4s"],
    );
}

fn unknown_container(env: &Env) {
    let ns = env.namespace("target-container");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    pod(k, &ns, "web", Some(&agent.node), &["app", "sidecar"]);
    k.apply(
        &ns,
        &targeted("named", Some(&agent.node), "web", Some("db")),
    );
    k.apply(&ns, &targeted("unnamed", Some(&agent.node), "web", None));
    failed_with(
        k,
        &ns,
        "named",
        "TargetInvalid",
        &["no container db", "app, sidecar"],
    );
    failed_with(
        k,
        &ns,
        "unnamed",
        "TargetInvalid",
        &["several containers", "spec.target.container"],
    );
}

fn node_disagrees(env: &Env) {
    let ns = env.namespace("target-elsewhere");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let other = format!("{ns}-other");
    register_node(env, &other, &[]);
    let k = &env.kubectl;
    pod(k, &ns, "web", Some(&other), &["app"]);
    k.apply(&ns, &targeted("t", Some(&agent.node), "web", None));
    failed_with(
        k,
        &ns,
        "t",
        "TargetElsewhere",
        &[
            &format!("spec.nodeName is {}", agent.node),
            &format!("runs on node {other}"),
        ],
    );
}

fn taken_by_the_pods_node(env: &Env) {
    let ns = env.namespace("target-unassigned");
    let a = Agent::start_with(
        env,
        &format!("{ns}-a"),
        &env.cp.kubeconfig,
        &["--target-timeout", "5"],
        &[],
    );
    let b = Agent::start_with(
        env,
        &format!("{ns}-b"),
        &env.cp.kubeconfig,
        &["--target-timeout", "5"],
        &[],
    );
    let k = &env.kubectl;
    pod(k, &ns, "web", Some(&b.node), &["app"]);
    k.apply(&ns, &targeted("t", None, "web", None));
    // Node b's agent takes it (its container never runs here), and says so in status.nodeName.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while k.jsonpath(&ns, "tj/t", ".status.nodeName") != b.node {
        assert!(
            std::time::Instant::now() < deadline,
            "node b did not take it:\n{}",
            k.ok(&["get", "tj", "-n", &ns, "t", "-o", "yaml"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let row = k.ok(&["get", "tj", "-n", &ns, "t", "--no-headers"]);
    assert_eq!(
        row.split_whitespace().nth(1),
        Some(b.node.as_str()),
        "the Node column: {row}"
    );
    failed_with(k, &ns, "t", "TargetNotRunning", &["not running"]);
    assert!(
        !a.logs().contains("name=t "),
        "node a's agent acted on it:\n{}",
        a.logs()
    );
    // Nobody's pod: no agent claims or reports it (each waits for the pod to come to its node),
    // however long past the target timeout.
    k.apply(&ns, &targeted("lost", None, "nowhere", None));
    std::thread::sleep(Duration::from_secs(8));
    let status = k.jsonpath(&ns, "tj/lost", ".status");
    assert!(status.is_empty(), "an agent wrote its status: {status}");
    // The summarizer, which can see that the pod is nowhere, ends it.
    let _summarizer = crate::support::Summarizer::of(env, &ns);
    failed_with(k, &ns, "lost", "TargetNotFound", &["pod nowhere not found"]);
    let managers = k.jsonpath(&ns, "tj/lost", ".metadata.managedFields[*].manager");
    assert!(managers.contains("tracejob-summarizer"), "{managers}");
    // And a pod that is never scheduled: after --target-timeout (5 s here).
    pod(k, &ns, "unscheduled", None, &["app"]);
    k.apply(&ns, &targeted("waits", None, "unscheduled", None));
    failed_with(
        k,
        &ns,
        "waits",
        "TargetNotRunning",
        &["was not scheduled to a node within 5s"],
    );
}

fn other_nodes_ask_nothing(env: &Env) {
    let ns = env.namespace("target-quiet");
    let agents: Vec<Agent> = ["a", "b", "c"]
        .iter()
        .map(|n| Agent::start(env, &format!("{ns}-{n}")))
        .collect();
    let host = &agents[1];
    let k = &env.kubectl;
    let container = FakeContainer::start(&ns);
    pod(k, &ns, "web", Some(&host.node), &["app"]);
    report_running(k, &ns, "web", "app", &container.id);
    for a in &agents {
        wait_for(Duration::from_secs(30), "the agents to be ready", || {
            (a.get("/readyz").0 == 200).then_some(())
        });
    }
    let before: Vec<(f64, String)> = agents.iter().map(requests).collect();
    k.apply(
        &ns,
        &targeted("t", None, "web", None)
            .replace("/cgroup == $container_cgroup/", "/pid == $container_pid/"),
    );
    wait_phase(k, &ns, "t", "Running", Duration::from_secs(60));
    assert_eq!(k.jsonpath(&ns, "tj/t", ".status.nodeName"), host.node);
    // The others have seen it claimed and Running by now (the same watch brought them those
    // versions); a little longer, in case.
    std::thread::sleep(Duration::from_secs(3));
    // The pod's deletion reaches the running trace through the host's pod store, and ends it.
    k.ok(&["delete", "pod", "-n", &ns, "web", "--wait=false"]);
    wait_phase(k, &ns, "t", "Completed", Duration::from_secs(60));
    let message = k.jsonpath(&ns, "tj/t", ".status.message");
    assert!(message.contains("the target pod web"), "{message}");
    let after: Vec<(f64, String)> = agents.iter().map(requests).collect();
    assert!(
        after[1].0 > before[1].0,
        "the pod's node made no request while it ran the trace"
    );
    for i in [0, 2] {
        assert_eq!(
            after[i].0,
            before[i].0,
            "agent {} (not the pod's node) made requests for the TraceJob:\nbefore:\n{}\nafter:\n{}",
            agents[i].node,
            before[i].1,
            after[i].1
        );
        assert!(
            !agents[i].logs().contains("name=t "),
            "agent {} acted on it:\n{}",
            agents[i].node,
            agents[i].logs()
        );
        // What reached it came through its watches: the pods of its own node, none.
        assert_eq!(
            agents[i].metric(r#"tracejob_watch_events_total{watch="pods"}"#),
            0.0
        );
    }
    assert!(host.metric(r#"tracejob_watch_events_total{watch="pods"}"#) >= 1.0);
}
