//! Who may trace where, and what a node's agent may write: the install (`kubectl apply -k
//! daemonset/`) with its RBAC and admission fences as the API server enforces them, with real
//! tokens bound to pods on nodes; namespaces scoped to nodes; the spec fixed at creation.

mod agent_fence;
mod fence;
mod install;
mod scope;
mod summarizer_fence;

use std::sync::OnceLock;
use std::time::Duration;

use crate::support::tokens::install_kustomization;
use crate::support::wait::wait_phase;
use crate::support::{repo_root, Agent, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    let mut tests = install::tests();
    tests.extend(agent_fence::tests());
    tests.extend(summarizer_fence::tests());
    tests.extend(scope::tests());
    tests.extend(fence::tests());
    tests
}

const AGENT_SA: &str = "system:serviceaccount:tracejob-system:tracejob-agent";

const SUMMARIZER_SA: &str = "system:serviceaccount:tracejob-system:tracejob-summarizer";

const ANNOTATION: &str = "observe.tracejob.dev/node-selector";

/// `kubectl apply -k daemonset/`, once per control plane, as a user installs it.
fn install(env: &Env) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| install_kustomization(env, &repo_root().join("daemonset")));
}

/// The short run id of the outputs these tests forge (the agent names an output
/// `TRACEJOB-output-RUNID8` or `TRACEJOB-output-RUNID`).
const RUN: &str = "0b6c1f1e";

/// A ConfigMap labelled for `node` and owned by TraceJob `owner` (uid `uid`): with `name`
/// `OWNER-output-RUN`, an output as the agent of `node` writes it.
fn configmap(name: &str, ns: &str, node: &str, owner: &str, uid: &str) -> String {
    node_output(name, ns, node, owner, uid, "forged")
}

/// `configmap` holding `text` as its output.
fn node_output(name: &str, ns: &str, node: &str, owner: &str, uid: &str, text: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {"observe.tracejob.dev/node": node, "observe.tracejob.dev/tracejob": owner},
            "ownerReferences": [{
                "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
                "name": owner, "uid": uid, "controller": true
            }]
        },
        "data": {"output": text}
    })
    .to_string()
}

fn denied(r: &crate::support::kubectl::Run, what: &str) {
    assert!(!r.ok, "{what} was allowed");
    assert!(
        r.stderr.contains("denied") || r.stderr.contains("forbidden"),
        "{what}: {}",
        r.stderr
    );
}

/// A TraceJob on every node labelled pool=nowhere (there are none: nothing runs it).
fn fan_out_yaml(name: &str) -> String {
    serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": name},
        "spec": {"nodeSelector": {"matchLabels": {"pool": "nowhere"}}, "program": "BEGIN {}"}
    })
    .to_string()
}

/// A merged output ConfigMap of TraceJob `owner` (uid `uid`), as the summarizer writes it.
fn merged_configmap(name: &str, ns: &str, owner: &str, uid: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {"observe.tracejob.dev/tracejob": owner, "observe.tracejob.dev/merged": "true"},
            "ownerReferences": [{
                "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
                "name": owner, "uid": uid, "controller": true
            }]
        },
        "data": {"output": "@merged: 2\n"}
    })
}

fn annotate(k: &Kubectl, ns: &str, selector: &str) {
    k.ok(&[
        "annotate",
        "namespace",
        ns,
        &format!("{ANNOTATION}={selector}"),
        "--overwrite",
    ]);
}

fn assert_refused(k: &Kubectl, ns: &str, name: &str, agent: &Agent) {
    wait_phase(k, ns, name, "Failed", Duration::from_secs(30));
    assert_eq!(
        k.jsonpath(
            ns,
            &format!("tj/{name}"),
            ".status.conditions[?(@.type==\"Failed\")].reason"
        ),
        "NodeNotAllowed"
    );
    let message = k.jsonpath(ns, &format!("tj/{name}"), ".status.message");
    assert!(message.contains(ANNOTATION), "{message}");
    assert_eq!(k.jsonpath(ns, &format!("tj/{name}"), ".status.id"), "");
    let logs = agent.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains(&format!("name={name}")) && l.contains("trace started")),
        "a bpftrace started for {name}"
    );
}

/// Cluster roles, by YAML: `kubectl create clusterrole` refuses a resource the server does not
/// serve, and namespacescopes is a virtual one.
fn cluster_role(k: &Kubectl, name: &str, rules: serde_json::Value) {
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name}, "rules": rules
    });
    let r = k.run_with_stdin(&["apply", "-f", "-"], &role.to_string());
    assert!(r.ok, "{}", r.stderr);
}
