//! Who may trace where, and what a node's agent may write: the install (`kubectl apply -k
//! daemonset/`) with its RBAC and admission fences as the API server enforces them, with real
//! tokens bound to pods on nodes; namespaces scoped to nodes; the spec fixed at creation.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crate::api::tracejob_yaml;
use crate::lifecycle::{output, stop, wait_phase, SYSCOUNT};
use crate::support::{
    must, register_node, repo_root, wait_for, Agent, ControlPlane, Env, Kubectl, Test,
};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "security_install_creates_what_the_readme_lists",
            run: install_creates_everything,
        },
        Test {
            name: "security_can_i_lists_match_the_readme",
            run: can_i_lists_match_the_readme,
        },
        Test {
            name: "security_agent_token_is_fenced_to_its_own_node",
            run: agent_token_fenced,
        },
        Test {
            name: "security_agent_token_cannot_write_another_nodes_tracejobnode",
            run: agent_token_cannot_write_another_nodes_tracejobnode,
        },
        Test {
            name: "security_summarizer_token_writes_only_summaries_and_merged_outputs",
            run: summarizer_token_fenced,
        },
        Test {
            name: "security_fan_out_runs_with_every_writer_fenced",
            run: fan_out_runs_with_every_writer_fenced,
        },
        Test {
            name: "security_namespace_selector_scopes_nodes",
            run: namespace_selector_scopes_nodes,
        },
        Test {
            name: "security_control_plane_nodes_need_a_selector_naming_them",
            run: control_plane_nodes,
        },
        Test {
            name: "security_deny_by_default_traces_nothing_from_unannotated_namespaces",
            run: deny_by_default,
        },
        Test {
            name: "security_spec_cannot_change_after_creation",
            run: spec_is_immutable,
        },
    ]
}

const AGENT_SA: &str = "system:serviceaccount:tracejob-system:tracejob-agent";
const SUMMARIZER_SA: &str = "system:serviceaccount:tracejob-system:tracejob-summarizer";
const ANNOTATION: &str = "observe.tracejob.dev/node-selector";

/// `kubectl apply -k daemonset/`, once per control plane, as a user installs it.
fn install(env: &Env) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| install_kustomization(env, &repo_root().join("daemonset")));
}

fn install_kustomization(env: &Env, dir: &Path) {
    env.kubectl.ok(&["apply", "-k", &dir.to_string_lossy()]);
    env.kubectl.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/tracejobnodes.observe.tracejob.dev",
    ]);
    // Admission policies take effect once the API server has loaded them.
    wait_for(
        Duration::from_secs(30),
        "the admission policies to be enforced",
        || {
            let r = env.kubectl.run_with_stdin(
                &["apply", "--dry-run=server", "-n", "kube-system", "-f", "-"],
                &tracejob_yaml("probe", "nowhere", SYSCOUNT, ""),
            );
            (!r.ok && r.stderr.contains("ValidatingAdmissionPolicy")).then_some(())
        },
    );
}

fn install_creates_everything(env: &Env) {
    install(env);
    let k = &env.kubectl;
    for object in [
        "namespace/tracejob-system",
        "crd/tracejobs.observe.tracejob.dev",
        "crd/tracejobnodes.observe.tracejob.dev",
        "clusterrole/tracejob-agent",
        "clusterrolebinding/tracejob-agent",
        "clusterrole/tracejob-summarizer",
        "clusterrolebinding/tracejob-summarizer",
        "clusterrole/tracejob-admin",
        "clusterrole/tracejob-viewer",
        "validatingadmissionpolicy/tracejob-agent-status",
        "validatingadmissionpolicy/tracejob-agent-configmaps",
        "validatingadmissionpolicy/tracejob-agent-events",
        "validatingadmissionpolicy/tracejob-agent-tracejobnodes",
        "validatingadmissionpolicy/tracejob-namespaces",
        "validatingadmissionpolicy/tracejob-summarizer-status",
        "validatingadmissionpolicy/tracejob-summarizer-configmaps",
        "validatingadmissionpolicy/tracejob-summarizer-events",
    ] {
        k.ok(&["get", object]);
    }
    k.ok(&[
        "get",
        "-n",
        "tracejob-system",
        "serviceaccount/tracejob-agent",
        "daemonset/tracejob-agent",
        "role/tracejob-agent",
        "serviceaccount/tracejob-summarizer",
        "deployment/tracejob-summarizer",
        "role/tracejob-summarizer",
        "rolebinding/tracejob-summarizer",
    ]);
}

/// `kubectl auth can-i --list` as `who` in `namespace`: "resource [verbs]" lines (verbs sorted;
/// "resource [names] [verbs]" for a rule narrowed to resource names), without what `baseline`
/// (the same kind of user, bound to nothing) may do too.
fn can_i_list(k: &Kubectl, who: &str, baseline: &str, namespace: &str) -> Vec<String> {
    let rows = |user: &str| -> Vec<String> {
        let table = k.ok(&["auth", "can-i", "--list", "-n", namespace, "--as", user]);
        table
            .lines()
            .skip(1)
            // Non-resource URLs have no first column.
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| {
                let resource = l.split_whitespace().next()?;
                // [non-resource URLs] [resource names] [verbs]
                let groups: Vec<&str> = l
                    .split('[')
                    .skip(1)
                    .filter_map(|g| g.split(']').next())
                    .collect();
                let mut verbs: Vec<&str> = groups.last()?.split_whitespace().collect();
                verbs.sort();
                let names = groups.len().checked_sub(2).map_or("", |i| groups[i]);
                Some(if names.trim().is_empty() {
                    format!("{resource} [{}]", verbs.join(" "))
                } else {
                    format!("{resource} [{}] [{}]", names.trim(), verbs.join(" "))
                })
            })
            .collect()
    };
    let base = rows(baseline);
    let mut lines: Vec<String> = rows(who)
        .into_iter()
        .filter(|r| !base.contains(r))
        .collect();
    lines.sort();
    lines
}

/// The lines of a README code block that follow `heading` (a line ending with ':') up to the
/// next heading or the block's end.
fn readme_rights(heading: &str) -> Vec<String> {
    let readme = must(
        std::fs::read_to_string(repo_root().join("README.md")),
        "README.md",
    );
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("the README has no {heading:?}"));
    let mut lines: Vec<String> = readme[start + heading.len() + 2..]
        .lines()
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    lines.sort();
    lines
}

fn can_i_lists_match_the_readme(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("cani");
    k.ok(&[
        "create",
        "rolebinding",
        "-n",
        &ns,
        "viewer",
        "--clusterrole=tracejob-viewer",
        "--user=alice",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "-n",
        &ns,
        "admin",
        "--clusterrole=tracejob-admin",
        "--user=bob",
    ]);
    let sa_baseline = "system:serviceaccount:tracejob-system:bound-to-nothing";
    for (heading, who, baseline, namespace) in [
        (
            "tracejob-agent, in every namespace:",
            AGENT_SA,
            sa_baseline,
            ns.as_str(),
        ),
        (
            "tracejob-agent, in tracejob-system:",
            AGENT_SA,
            sa_baseline,
            "tracejob-system",
        ),
        (
            "tracejob-summarizer, in every namespace:",
            SUMMARIZER_SA,
            sa_baseline,
            ns.as_str(),
        ),
        (
            "tracejob-summarizer, in tracejob-system:",
            SUMMARIZER_SA,
            sa_baseline,
            "tracejob-system",
        ),
        (
            "tracejob-admin, where it is bound:",
            "bob",
            "nobody",
            ns.as_str(),
        ),
        (
            "tracejob-viewer, where it is bound:",
            "alice",
            "nobody",
            ns.as_str(),
        ),
    ] {
        let granted = wait_for(
            Duration::from_secs(30),
            "the bindings to take effect",
            || {
                let g = can_i_list(k, who, baseline, namespace);
                (!g.is_empty()).then_some(g)
            },
        );
        assert_eq!(
            granted,
            readme_rights(heading),
            "kubectl auth can-i --list --as {who} -n {namespace} differs from the README's {heading:?}"
        );
    }
    // Viewer rights come with `view`; creating TraceJobs does not come with `edit` or `admin`.
    wait_for(
        Duration::from_secs(30),
        "tracejob-viewer aggregated into view",
        || {
            k.ok(&["get", "clusterrole", "view", "-o", "yaml"])
                .contains("tracejobs")
                .then_some(())
        },
    );
    for role in ["edit", "admin"] {
        let yaml = k.ok(&["get", "clusterrole", role, "-o", "yaml"]);
        let rules: serde_json::Value = must(
            serde_json::from_str(&k.ok(&["get", "clusterrole", role, "-o", "json"])),
            "clusterrole json",
        );
        let creates_tracejobs = rules["rules"].as_array().is_some_and(|rules| {
            rules.iter().any(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|res| res.iter().any(|x| x == "tracejobs"))
                    && r["verbs"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x == "create"))
            })
        });
        assert!(!creates_tracejobs, "{role} may create TraceJobs:\n{yaml}");
    }
}

/// A token of the agent's ServiceAccount bound to a pod on `node` (as the kubelet gets one for
/// the DaemonSet's pod), and a kubeconfig using it.
fn bound_token(env: &Env, node: &str, dir: &Path) -> (String, std::path::PathBuf) {
    bound_token_of(env, "tracejob-agent", node, dir)
}

/// A token of ServiceAccount `sa` (in tracejob-system) bound to a pod of it on `node`, as the
/// kubelet gets one for that pod, and a kubeconfig using it.
fn bound_token_of(env: &Env, sa: &str, node: &str, dir: &Path) -> (String, std::path::PathBuf) {
    let k = &env.kubectl;
    register_node(env, node, &[]);
    let pod = format!("{sa}-on-{node}");
    let yaml = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "tracejob-system"},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "containers": [{"name": "agent", "image": "localhost/tracejob-agent:dev"}]
        }
    });
    k.run_with_stdin(&["apply", "-f", "-"], &yaml.to_string());
    let token = k
        .ok(&[
            "create",
            "token",
            sa,
            "-n",
            "tracejob-system",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            &pod,
            "--duration",
            "1h",
        ])
        .trim()
        .to_string();
    let kubeconfig = dir.join(format!("{sa}-{node}.kubeconfig"));
    env.cp.write_kubeconfig(&kubeconfig, &token);
    (token, kubeconfig)
}

/// A ConfigMap labelled for `node` and owned by TraceJob `owner` (uid `uid`).
fn configmap(name: &str, ns: &str, node: &str, owner: &str, uid: &str) -> String {
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
        "data": {"output": "forged"}
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

fn agent_token_fenced(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("fence");
    let dir = must(tempfile::tempdir(), "tempdir");
    let node_a = format!("{ns}-a");
    let node_b = format!("{ns}-b");
    let (_, as_a_config) = bound_token(env, &node_a, dir.path());
    let as_a = k.with_kubeconfig(&as_a_config);
    let who = as_a.ok(&["auth", "whoami", "-o", "json"]);
    assert!(
        who.contains(AGENT_SA) && who.contains(&node_a),
        "the token is not the agent's, bound to {node_a}: {who}"
    );
    // A TraceJob of node B, to forge.
    k.apply(&ns, &tracejob_yaml("theirs", &node_b, SYSCOUNT, ""));
    let uid = k.jsonpath(&ns, "tj/theirs", ".metadata.uid");

    let apply = |yaml: &str| as_a.run_with_stdin(&["create", "-f", "-"], yaml);
    denied(
        &apply(&configmap("squat", "kube-system", &node_a, "theirs", &uid)),
        "creating a ConfigMap in kube-system",
    );
    let r = as_a.run(&[
        "patch",
        "configmap",
        "-n",
        "kube-system",
        "kube-root-ca.crt",
        "--type=merge",
        "-p",
        r#"{"data":{"forged":"yes"}}"#,
    ]);
    denied(&r, "updating a ConfigMap in kube-system");
    denied(
        &apply(&configmap("forged", &ns, &node_b, "theirs", &uid)),
        "creating a ConfigMap labelled for node B",
    );
    let r = as_a.run(&[
        "patch",
        "-n",
        &ns,
        "tj/theirs",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Completed","message":"forged"}}"#,
    ]);
    denied(&r, "patching the status of a TraceJob of node B");
    let event = serde_json::json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "forged", "namespace": ns},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "tracejob-agent", "reportingInstance": node_a,
        "action": "Forged", "reason": "Forged", "type": "Normal",
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": "some-pod", "namespace": ns}
    });
    denied(&apply(&event.to_string()), "creating an Event about a Pod");
    // A TraceJob on several nodes: its status is the summarizer's, whatever node A claims in
    // it (each node reports in its own TraceJobNode).
    k.apply(&ns, &fan_out_yaml("wide"));
    for status in [
        serde_json::json!({"phase": "Completed", "message": "forged"}),
        serde_json::json!({"phase": "Completed", "nodeName": node_a, "progress": "1/1"}),
    ] {
        denied(
            &apply_status(&as_a, &ns, "tracejobs", "wide", "tracejob-agent", &status),
            &format!("writing the status of a TraceJob on several nodes: {status}"),
        );
    }
    assert_eq!(k.jsonpath(&ns, "tj/wide", ".status"), "");

    // A token of the agent's ServiceAccount that is not bound to a node writes nothing.
    let unbound = k
        .ok(&[
            "create",
            "token",
            "tracejob-agent",
            "-n",
            "tracejob-system",
            "--duration",
            "1h",
        ])
        .trim()
        .to_string();
    let unbound_config = dir.path().join("unbound.kubeconfig");
    env.cp.write_kubeconfig(&unbound_config, &unbound);
    denied(
        &k.with_kubeconfig(&unbound_config).run_with_stdin(
            &["create", "-f", "-"],
            &configmap("x", &ns, &node_a, "theirs", &uid),
        ),
        "writing with a token bound to no node",
    );
    // RBAC: nothing on secrets, exec, or deletes.
    for (args, what) in [
        (vec!["get", "secrets", "-n", &ns], "reading secrets"),
        (
            vec!["delete", "tj", "theirs", "-n", &ns],
            "deleting a TraceJob",
        ),
        (
            vec!["delete", "configmap", "kube-root-ca.crt", "-n", &ns],
            "deleting a ConfigMap",
        ),
    ] {
        let r = as_a.run(&args);
        assert!(
            !r.ok && r.stderr.contains("forbidden"),
            "the agent's token could do {what}: {}",
            r.stderr
        );
    }

    // The same token does a whole lifecycle on its own node, live output and Events included.
    let agent = Agent::start_with(env, &node_a, &as_a_config, &["--live-interval", "1"], &[]);
    k.apply(
        &ns,
        &tracejob_yaml(
            "ours",
            &agent.node,
            &format!("{SYSCOUNT}\ninterval:s:1 {{ printf(\"tick\\n\"); }}"),
            "",
        ),
    );
    wait_phase(k, &ns, "ours", "Running", Duration::from_secs(30));
    wait_for(Duration::from_secs(30), "live output", || {
        (!k.jsonpath(&ns, "tj/ours", ".status.outputRef.name")
            .is_empty())
        .then_some(())
    });
    stop(k, &ns, "ours");
    wait_phase(k, &ns, "ours", "Completed", Duration::from_secs(60));
    assert!(output(k, &ns, "ours", "output").contains("@syscalls["));
    let described = wait_for(Duration::from_secs(20), "the Events", || {
        let d = k.ok(&["describe", "tj", "-n", &ns, "ours"]);
        (d.contains("Started") && d.contains("Completed")).then_some(d)
    });
    assert!(described.contains("Stopping"), "{described}");
    let logs = agent.logs();
    assert!(
        !logs.contains("denied") && !logs.contains("forbidden"),
        "the agent was refused something on its own node:\n{logs}"
    );
    assert_eq!(
        k.jsonpath(&ns, "tj/theirs", ".status"),
        "",
        "node B's TraceJob was touched"
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

/// `kubectl apply --server-side --subresource=status --force-conflicts` of `status` onto
/// `resource`/`name`, as `who` with field manager `manager` (as the agent and the summarizer
/// write status).
fn apply_status(
    who: &Kubectl,
    ns: &str,
    resource: &str,
    name: &str,
    manager: &str,
    status: &serde_json::Value,
) -> crate::support::kubectl::Run {
    let (api_version, kind) = match resource {
        "tracejobs" => ("observe.tracejob.dev/v1alpha1", "TraceJob"),
        "tracejobnodes" => ("observe.tracejob.dev/v1alpha1", "TraceJobNode"),
        other => panic!("no status of {other} here"),
    };
    let object = serde_json::json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "status": status
    });
    who.run_with_stdin(
        &[
            "apply",
            "--server-side",
            "--subresource=status",
            "--force-conflicts",
            &format!("--field-manager={manager}"),
            "-f",
            "-",
        ],
        &object.to_string(),
    )
}

/// A TraceJobNode: spec.nodeName `node`, labelled for `label_node`, the part of TraceJob
/// `tracejob` (uid `uid`) and owned by `owner` (a TraceJob's name; None: no owner).
fn part_yaml(
    name: &str,
    ns: &str,
    node: &str,
    label_node: &str,
    tracejob: &str,
    owner: Option<(&str, &str)>,
) -> String {
    let mut part = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJobNode",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {
                "observe.tracejob.dev/tracejob": tracejob,
                "observe.tracejob.dev/node": label_node
            }
        },
        "spec": {"nodeName": node, "traceJob": tracejob}
    });
    if let Some((owner, uid)) = owner {
        part["metadata"]["ownerReferences"] = serde_json::json!([{
            "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
            "name": owner, "uid": uid, "controller": true
        }]);
    }
    part.to_string()
}

/// Each node's part of a fan-out TraceJob is its own: node A's bound token creates and writes
/// its own TraceJobNode, never node B's, nor one that names or is labelled for node B.
fn agent_token_cannot_write_another_nodes_tracejobnode(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("parts");
    let dir = must(tempfile::tempdir(), "tempdir");
    let node_a = format!("{ns}-a");
    let node_b = format!("{ns}-b");
    let (_, as_a_config) = bound_token(env, &node_a, dir.path());
    let as_a = k.with_kubeconfig(&as_a_config);
    k.apply(&ns, &fan_out_yaml("wide"));
    let uid = k.jsonpath(&ns, "tj/wide", ".metadata.uid");
    let owner = Some(("wide", uid.as_str()));
    // As the agent writes it: server-side apply, a create when absent.
    let apply = |who: &Kubectl, yaml: &str| {
        who.run_with_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=tracejob-agent",
                "-f",
                "-",
            ],
            yaml,
        )
    };
    let own = format!("wide-{node_a}");
    let r = apply(
        &as_a,
        &part_yaml(&own, &ns, &node_a, &node_a, "wide", owner),
    );
    assert!(r.ok, "node A's own part was refused: {}", r.stderr);
    let running = serde_json::json!({"phase": "Running", "probes": 1, "id": "run-a"});
    let r = apply_status(
        &as_a,
        &ns,
        "tracejobnodes",
        &own,
        "tracejob-agent",
        &running,
    );
    assert!(r.ok, "node A's own status was refused: {}", r.stderr);
    // Applied again (an update): still its own.
    let r = apply(
        &as_a,
        &part_yaml(&own, &ns, &node_a, &node_a, "wide", owner),
    );
    assert!(r.ok, "updating node A's own part was refused: {}", r.stderr);
    assert_eq!(
        k.jsonpath(&ns, &format!("tjn/{own}"), ".status.phase"),
        "Running"
    );

    // Node B's part, as B's agent would have written it.
    let theirs = format!("wide-{node_b}");
    k.apply(
        &ns,
        &part_yaml(&theirs, &ns, &node_b, &node_b, "wide", owner),
    );
    let r = apply_status(
        k,
        &ns,
        "tracejobnodes",
        &theirs,
        "tracejob-agent",
        &serde_json::json!({"phase": "Running", "id": "run-b"}),
    );
    assert!(r.ok, "{}", r.stderr);

    for (yaml, what) in [
        (
            part_yaml(&format!("{theirs}-2"), &ns, &node_b, &node_b, "wide", owner),
            "creating a TraceJobNode of node B",
        ),
        (
            part_yaml(&format!("{own}-2"), &ns, &node_a, &node_b, "wide", owner),
            "creating a TraceJobNode labelled for node B",
        ),
        (
            part_yaml(&format!("{own}-3"), &ns, &node_b, &node_a, "wide", owner),
            "creating a TraceJobNode of node B labelled for node A",
        ),
        (
            part_yaml(&format!("{own}-4"), &ns, &node_a, &node_a, "wide", None),
            "creating a TraceJobNode owned by no TraceJob",
        ),
        (
            part_yaml(&format!("{own}-5"), &ns, &node_a, &node_a, "other", owner),
            "creating a TraceJobNode of another TraceJob than its owner",
        ),
        (
            part_yaml(&own, "kube-system", &node_a, &node_a, "wide", owner),
            "creating a TraceJobNode in kube-system",
        ),
        (
            part_yaml(&theirs, &ns, &node_b, &node_b, "wide", owner).replace(
                &format!("\"observe.tracejob.dev/node\":\"{node_b}\""),
                &format!("\"observe.tracejob.dev/node\":\"{node_b}\",\"forged\":\"yes\""),
            ),
            "changing node B's TraceJobNode",
        ),
    ] {
        denied(&apply(&as_a, &yaml), what);
    }
    for status in [
        serde_json::json!({"phase": "Completed", "message": "forged"}),
        serde_json::json!({"phase": "Failed", "reason": "Forged"}),
    ] {
        denied(
            &apply_status(
                &as_a,
                &ns,
                "tracejobnodes",
                &theirs,
                "tracejob-agent",
                &status,
            ),
            "writing the status of node B's TraceJobNode",
        );
    }
    // Relabelled: B's part claimed for A, A's own given to B.
    for (part, node) in [(&theirs, &node_a), (&own, &node_b)] {
        let r = as_a.run(&[
            "label",
            "-n",
            &ns,
            &format!("tjn/{part}"),
            &format!("observe.tracejob.dev/node={node}"),
            "--overwrite",
        ]);
        denied(&r, &format!("relabelling {part} for {node}"));
    }
    // A token of the agent's ServiceAccount not bound to a node writes no part at all.
    let unbound = k
        .ok(&[
            "create",
            "token",
            "tracejob-agent",
            "-n",
            "tracejob-system",
            "--duration",
            "1h",
        ])
        .trim()
        .to_string();
    let unbound_config = dir.path().join("unbound.kubeconfig");
    env.cp.write_kubeconfig(&unbound_config, &unbound);
    let unbound = k.with_kubeconfig(&unbound_config);
    denied(
        &apply(
            &unbound,
            &part_yaml(&format!("{own}-6"), &ns, &node_a, &node_a, "wide", owner),
        ),
        "creating a TraceJobNode with a token bound to no node",
    );
    denied(
        &apply_status(
            &unbound,
            &ns,
            "tracejobnodes",
            &own,
            "tracejob-agent",
            &running,
        ),
        "writing a TraceJobNode's status with a token bound to no node",
    );
    // RBAC: no deletes.
    let r = as_a.run(&["delete", "-n", &ns, &format!("tjn/{theirs}")]);
    assert!(
        !r.ok && r.stderr.contains("forbidden"),
        "the agent deleted a TraceJobNode: {}",
        r.stderr
    );
    // Node B's part is as node B left it.
    assert_eq!(
        k.jsonpath(&ns, &format!("tjn/{theirs}"), ".status.phase"),
        "Running"
    );
    assert_eq!(
        k.jsonpath(&ns, &format!("tjn/{theirs}"), ".status.id"),
        "run-b"
    );
    assert_eq!(
        k.jsonpath(
            &ns,
            &format!("tjn/{theirs}"),
            ".metadata.labels.observe\\.tracejob\\.dev/node"
        ),
        node_b
    );
    let parts = k.ok(&[
        "get",
        "tjn",
        "-n",
        &ns,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut parts: Vec<&str> = parts.split_whitespace().collect();
    parts.sort();
    let mut expected = vec![own.as_str(), theirs.as_str()];
    expected.sort();
    assert_eq!(parts, expected, "a forged TraceJobNode exists");
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

/// The summarizer's token writes the summaries of fan-out TraceJobs, Failed for unassigned pod
/// targets no node took, and merged outputs; nothing else: no single node's status, no node's
/// output, no ConfigMap elsewhere, no TraceJobNode, no TraceJob spec.
fn summarizer_token_fenced(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("summarizer-fence");
    let dir = must(tempfile::tempdir(), "tempdir");
    // Its token as the Deployment's pod gets it: bound to its pod, on some node.
    let (_, config) = bound_token_of(env, "tracejob-summarizer", &format!("{ns}-s"), dir.path());
    let as_s = k.with_kubeconfig(&config);
    let who = as_s.ok(&["auth", "whoami", "-o", "json"]);
    assert!(
        who.contains(SUMMARIZER_SA),
        "not the summarizer's token: {who}"
    );

    k.apply(&ns, &fan_out_yaml("wide"));
    let wide_uid = k.jsonpath(&ns, "tj/wide", ".metadata.uid");
    k.apply(
        &ns,
        &tracejob_yaml("single", &format!("{ns}-x"), SYSCOUNT, ""),
    );
    let target = |name: &str| {
        serde_json::json!({
            "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
            "metadata": {"name": name},
            "spec": {"target": {"pod": format!("{name}-no-such-pod")}, "program": "BEGIN {}"}
        })
        .to_string()
    };
    k.apply(&ns, &target("free"));
    k.apply(&ns, &target("taken"));
    // A node's agent took "taken" (as a bound agent token of that node may).
    let claim =
        serde_json::json!({"phase": "Pending", "nodeName": format!("{ns}-x"), "id": "run-x"});
    let r = apply_status(k, &ns, "tracejobs", "taken", "tracejob-agent", &claim);
    assert!(r.ok, "{}", r.stderr);

    let summary = serde_json::json!({
        "phase": "Running", "progress": "0/1",
        "nodeCounts": {"pending": 0, "running": 1, "stopping": 0, "completed": 0, "failed": 0}
    });
    let r = apply_status(
        &as_s,
        &ns,
        "tracejobs",
        "wide",
        "tracejob-summarizer",
        &summary,
    );
    assert!(
        r.ok,
        "a fan-out TraceJob's summary was refused: {}",
        r.stderr
    );
    assert_eq!(k.jsonpath(&ns, "tj/wide", ".status.progress"), "0/1");
    let failed =
        serde_json::json!({"phase": "Failed", "message": "pod free-no-such-pod not found"});
    let r = apply_status(
        &as_s,
        &ns,
        "tracejobs",
        "free",
        "tracejob-summarizer",
        &failed,
    );
    assert!(
        r.ok,
        "an unclaimed pod target's end was refused: {}",
        r.stderr
    );
    for (name, status, what) in [
        (
            "single",
            failed.clone(),
            "writing the status of a TraceJob on one node",
        ),
        (
            "taken",
            failed.clone(),
            "writing the status of a pod target a node took",
        ),
        (
            "free",
            serde_json::json!({"phase": "Completed", "nodeName": format!("{ns}-x")}),
            "claiming a pod target for a node",
        ),
    ] {
        denied(
            &apply_status(
                &as_s,
                &ns,
                "tracejobs",
                name,
                "tracejob-summarizer",
                &status,
            ),
            what,
        );
    }
    assert_eq!(k.jsonpath(&ns, "tj/single", ".status"), "");
    assert_eq!(k.jsonpath(&ns, "tj/taken", ".status.phase"), "Pending");

    // Merged outputs: created, then replaced, as the summarizer does (it has no get).
    let merged = merged_configmap("wide-output-merged", &ns, "wide", &wide_uid);
    let r = as_s.run_with_stdin(&["create", "-f", "-"], &merged.to_string());
    assert!(r.ok, "a merged output was refused: {}", r.stderr);
    let put = |who: &Kubectl, cm: &serde_json::Value| {
        let path = format!(
            "/api/v1/namespaces/{}/configmaps/{}",
            cm["metadata"]["namespace"].as_str().unwrap_or_default(),
            cm["metadata"]["name"].as_str().unwrap_or_default()
        );
        who.run_with_stdin(&["replace", "--raw", &path, "-f", "-"], &cm.to_string())
    };
    let mut again = merged.clone();
    again["data"]["output"] = "@merged: 3\n".into();
    let r = put(&as_s, &again);
    assert!(r.ok, "replacing a merged output was refused: {}", r.stderr);
    assert_eq!(
        k.jsonpath(&ns, "configmap/wide-output-merged", ".data.output"),
        "@merged: 3\n"
    );

    // What it may not write.
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut cm = merged_configmap("forged", &ns, "wide", &wide_uid);
        f(&mut cm);
        cm
    };
    let node_output = configmap("node-output", &ns, &format!("{ns}-x"), "wide", &wide_uid);
    k.run_with_stdin(&["create", "-f", "-"], &node_output);
    let node_output: serde_json::Value = must(serde_json::from_str(&node_output), "json");
    for (cm, what) in [
        (
            with(&|cm| cm["metadata"]["labels"]["observe.tracejob.dev/node"] = "x".into()),
            "creating a ConfigMap labelled for a node",
        ),
        (
            with(&|cm| {
                cm["metadata"]["labels"]
                    .as_object_mut()
                    .map(|l| l.remove("observe.tracejob.dev/merged"));
            }),
            "creating a ConfigMap not labelled merged",
        ),
        (
            with(&|cm| cm["metadata"]["labels"]["observe.tracejob.dev/merged"] = "false".into()),
            "creating a ConfigMap labelled merged=false",
        ),
        (
            with(&|cm| {
                cm["metadata"]
                    .as_object_mut()
                    .map(|m| m.remove("ownerReferences"));
            }),
            "creating a ConfigMap owned by nothing",
        ),
        (
            with(&|cm| cm["metadata"]["ownerReferences"][0]["controller"] = false.into()),
            "creating a ConfigMap its TraceJob does not control",
        ),
        (
            with(&|cm| {
                let extra = serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod", "name": "p",
                    "uid": "00000000-0000-0000-0000-000000000001"
                });
                if let Some(owners) = cm["metadata"]["ownerReferences"].as_array_mut() {
                    owners.push(extra);
                }
            }),
            "creating a ConfigMap with a second owner",
        ),
        (
            with(&|cm| cm["metadata"]["ownerReferences"][0]["kind"] = "Pod".into()),
            "creating a ConfigMap owned by a Pod",
        ),
        (
            with(&|cm| cm["metadata"]["labels"]["observe.tracejob.dev/tracejob"] = "other".into()),
            "creating a ConfigMap labelled for another TraceJob than its owner",
        ),
        (
            with(&|cm| cm["metadata"]["namespace"] = "kube-system".into()),
            "creating a ConfigMap in kube-system",
        ),
        (
            with(&|cm| cm["metadata"]["namespace"] = "tracejob-system".into()),
            "creating a ConfigMap in tracejob-system",
        ),
    ] {
        denied(
            &as_s.run_with_stdin(&["create", "-f", "-"], &cm.to_string()),
            what,
        );
    }
    // Updates of ConfigMaps that are not merged outputs, even made to look like one.
    let mut over_node = merged_configmap("node-output", &ns, "wide", &wide_uid);
    over_node["data"]["output"] = "forged".into();
    let mut over_ca = merged_configmap("kube-root-ca.crt", &ns, "wide", &wide_uid);
    over_ca["data"] = serde_json::json!({"ca.crt": "forged"});
    let mut over_system = merged_configmap("kube-root-ca.crt", "kube-system", "wide", &wide_uid);
    over_system["data"] = serde_json::json!({"ca.crt": "forged"});
    for (cm, what) in [
        (&over_node, "replacing a node's output ConfigMap"),
        (&over_ca, "replacing a ConfigMap it did not write"),
        (&over_system, "replacing a ConfigMap in kube-system"),
    ] {
        denied(&put(&as_s, cm), what);
    }
    let mut relabelled = node_output.clone();
    relabelled["metadata"]["labels"]["observe.tracejob.dev/node"] = "elsewhere".into();
    denied(
        &put(&as_s, &relabelled),
        "replacing a node's output ConfigMap as it is",
    );
    assert_eq!(
        k.jsonpath(&ns, "configmap/node-output", ".data.output"),
        "forged",
        "the node's output was changed"
    );
    assert!(!k
        .jsonpath(&ns, "configmap/kube-root-ca.crt", ".data.ca\\.crt")
        .contains("forged"));

    // Events only about TraceJobs.
    let event = |kind: &str, api_version: &str| {
        serde_json::json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"generateName": "summarizer-", "namespace": ns},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "tracejob-summarizer", "reportingInstance": "summarizer",
            "action": "Summarized", "reason": "Summarized", "type": "Normal",
            "regarding": {"apiVersion": api_version, "kind": kind, "name": "wide", "namespace": ns}
        })
        .to_string()
    };
    let r = as_s.run_with_stdin(
        &["create", "-f", "-"],
        &event("TraceJob", "observe.tracejob.dev/v1alpha1"),
    );
    assert!(r.ok, "an Event about a TraceJob was refused: {}", r.stderr);
    denied(
        &as_s.run_with_stdin(&["create", "-f", "-"], &event("Pod", "v1")),
        "creating an Event about a Pod",
    );

    // RBAC: it cannot start, stop or change a trace, write any node's part, read a ConfigMap
    // by name or any Secret, delete anything, or take a Lease other than its own.
    let stop = r#"{"spec":{"stop":true}}"#;
    let part = part_yaml(
        "p",
        &ns,
        &format!("{ns}-x"),
        &format!("{ns}-x"),
        "wide",
        None,
    );
    for (r, what) in [
        (
            as_s.run(&["patch", "-n", &ns, "tj/wide", "--type=merge", "-p", stop]),
            "stopping a trace",
        ),
        (
            as_s.run_with_stdin(
                &["create", "-n", &ns, "-f", "-"],
                &tracejob_yaml("new", "somewhere", SYSCOUNT, ""),
            ),
            "creating a TraceJob",
        ),
        (
            as_s.run_with_stdin(&["create", "-f", "-"], &part),
            "creating a TraceJobNode",
        ),
        (
            apply_status(
                &as_s,
                &ns,
                "tracejobnodes",
                "wide-x",
                "tracejob-summarizer",
                &serde_json::json!({"phase": "Failed"}),
            ),
            "writing a TraceJobNode's status",
        ),
        (as_s.run(&["get", "secrets", "-n", &ns]), "reading secrets"),
        (
            as_s.run(&["get", "configmap", "-n", &ns, "node-output"]),
            "getting a ConfigMap",
        ),
        (
            as_s.run(&["delete", "configmap", "-n", &ns, "wide-output-merged"]),
            "deleting a ConfigMap",
        ),
        (
            as_s.run(&["delete", "tj", "-n", &ns, "wide"]),
            "deleting a TraceJob",
        ),
        (
            as_s.run(&["get", "lease", "-n", "tracejob-system", "someone-elses"]),
            "reading another Lease",
        ),
        (
            as_s.run(&["get", "lease", "-n", "kube-system", "tracejob-summarizer"]),
            "reading a Lease elsewhere",
        ),
    ] {
        assert!(
            !r.ok && r.stderr.contains("forbidden"),
            "the summarizer's token could do {what}: {}",
            r.stderr
        );
    }
    for verb in ["get", "update"] {
        let r = as_s.run(&[
            "auth",
            "can-i",
            verb,
            "leases/tracejob-summarizer",
            "-n",
            "tracejob-system",
        ]);
        assert_eq!(r.stdout.trim(), "yes", "{verb} its Lease: {}", r.stderr);
    }
    // Reading every ConfigMap through a list is what it can do: the README says so.
    assert!(as_s
        .ok(&["get", "configmaps", "-n", &ns, "-o", "name"])
        .contains("configmap/node-output"));
}

/// A whole fan-out with every writer on its own fenced token, as installed: two agents with
/// tokens bound to their nodes write their TraceJobNodes and outputs, the summarizer with its
/// token (and its Lease in tracejob-system) the summary and the merged output; nothing is
/// refused.
fn fan_out_runs_with_every_writer_fenced(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("fenced-fanout");
    let dir = must(tempfile::tempdir(), "tempdir");
    let nodes: Vec<String> = (1..=2).map(|i| format!("{ns}-n{i}")).collect();
    let mut agents = Vec::new();
    for node in &nodes {
        register_node(env, node, &[("pool", ns.as_str())]);
        let (_, config) = bound_token(env, node, dir.path());
        agents.push(Agent::start_with(env, node, &config, &[], &[]));
    }
    let (_, config) = bound_token_of(env, "tracejob-summarizer", &format!("{ns}-s"), dir.path());
    let log = dir.path().join("summarizer.log");
    let out = must(std::fs::File::create(&log), "summarizer log");
    let err = must(out.try_clone(), "summarizer log");
    let port = crate::support::control_plane::free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tracejob-agent"));
    cmd.args(["summarize", "--namespace", &ns])
        .args(["--lease-namespace", "tracejob-system"])
        .args(["--lease-name", "tracejob-summarizer"])
        .args(["--identity", &format!("{ns}-summarizer")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", &config)
        .env("RUST_LOG", "tracejob_agent=debug,info")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    /// The summarizer's process, its log shown if the test fails.
    struct Logged(Option<crate::support::Proc>, std::path::PathBuf);
    impl Drop for Logged {
        fn drop(&mut self) {
            self.0 = None;
            if std::thread::panicking() {
                let log = std::fs::read_to_string(&self.1).unwrap_or_default();
                eprintln!("---- fenced summarizer log ----\n{log}");
            }
        }
    }
    let summarizer = Logged(
        Some(crate::support::Proc::spawn("fenced summarizer", &mut cmd)),
        log.clone(),
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    let program = "BEGIN { @n = count(); }";
    let fanned = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "wide"},
        "spec": {"nodeSelector": {"matchLabels": {"pool": ns}}, "program": program}
    });
    k.apply(&ns, &fanned.to_string());
    wait_for(Duration::from_secs(60), "the Running summary", || {
        (k.jsonpath(&ns, "tj/wide", ".status.phase} {.status.progress") == "Running 0/2")
            .then_some(())
    });
    stop(k, &ns, "wide");
    wait_phase(k, &ns, "wide", "Completed", Duration::from_secs(120));
    wait_for(Duration::from_secs(60), "the merged output", || {
        (k.jsonpath(&ns, "tj/wide", ".status.outputRef.name") == "wide-output-merged").then_some(())
    });
    assert!(
        output(k, &ns, "wide", "output").contains("@n: 2"),
        "not the two nodes' maps merged: {}",
        output(k, &ns, "wide", "output")
    );
    drop(summarizer);
    for (what, text) in agents
        .iter()
        .map(|a| (format!("agent {}", a.node), a.logs()))
        .chain([("the summarizer".to_string(), logs())])
    {
        assert!(
            !text.contains("denied") && !text.contains("forbidden"),
            "{what} was refused something:\n{text}"
        );
    }
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

fn namespace_selector_scopes_nodes(env: &Env) {
    let k = &env.kubectl;
    let ns_in = env.namespace("scoped-in");
    let ns_out = env.namespace("scoped-out");
    let node = format!("{ns_in}-node");
    register_node(env, &node, &[("pool", "tracing"), ("zone", "a")]);
    annotate(k, &ns_in, "pool=tracing,zone in (a,b)");
    annotate(k, &ns_out, "pool=web");
    let agent = Agent::start(env, &node);
    k.apply(&ns_out, &tracejob_yaml("refused", &node, SYSCOUNT, ""));
    k.apply(&ns_in, &tracejob_yaml("allowed", &node, SYSCOUNT, ""));
    wait_phase(k, &ns_in, "allowed", "Running", Duration::from_secs(30));
    assert_refused(k, &ns_out, "refused", &agent);
    stop(k, &ns_in, "allowed");
    wait_phase(k, &ns_in, "allowed", "Completed", Duration::from_secs(60));
    // A selector that is not one is refused with a message that says so.
    annotate(k, &ns_out, "pool in (web");
    k.apply(&ns_out, &tracejob_yaml("bad", &node, SYSCOUNT, ""));
    assert_refused(k, &ns_out, "bad", &agent);
    assert!(k
        .jsonpath(&ns_out, "tj/bad", ".status.message")
        .contains("not a label selector"));
}

fn control_plane_nodes(env: &Env) {
    let k = &env.kubectl;
    let plain = env.namespace("cp-plain");
    let chosen = env.namespace("cp-chosen");
    let node = format!("{plain}-cp");
    register_node(env, &node, &[("node-role.kubernetes.io/control-plane", "")]);
    annotate(k, &chosen, "node-role.kubernetes.io/control-plane");
    let agent = Agent::start(env, &node);
    k.apply(&plain, &tracejob_yaml("refused", &node, SYSCOUNT, ""));
    k.apply(&chosen, &tracejob_yaml("allowed", &node, SYSCOUNT, ""));
    wait_phase(k, &chosen, "allowed", "Running", Duration::from_secs(30));
    assert_refused(k, &plain, "refused", &agent);
    assert!(k
        .jsonpath(&plain, "tj/refused", ".status.message")
        .contains("control-plane"));
    stop(k, &chosen, "allowed");
    wait_phase(k, &chosen, "allowed", "Completed", Duration::from_secs(60));
}

/// Its own control plane: the option installs an admission policy for every namespace.
fn deny_by_default(_env: &Env) {
    let own = Env::new(ControlPlane::start());
    own.install_crd();
    let k = &own.kubectl;
    // Created before the option is installed: the agent still refuses it.
    k.ok(&["create", "namespace", "before"]);
    k.apply("before", &tracejob_yaml("early", "deny-node", SYSCOUNT, ""));
    install_kustomization(&own, &repo_root().join("tests/fixtures/deny-unannotated"));
    let args = k.ok(&[
        "get",
        "daemonset",
        "-n",
        "tracejob-system",
        "tracejob-agent",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ]);
    assert!(
        args.contains("--unannotated-namespaces=deny"),
        "the option does not reach the agents: {args}"
    );
    // The agent as that DaemonSet runs it.
    let agent = Agent::start_with(
        &own,
        "deny-node",
        &own.cp.kubeconfig,
        &["--unannotated-namespaces=deny"],
        &[],
    );
    k.ok(&["create", "namespace", "plain"]);
    let r = k.run_with_stdin(
        &["apply", "-n", "plain", "-f", "-"],
        &tracejob_yaml("t", "deny-node", SYSCOUNT, ""),
    );
    assert!(
        !r.ok,
        "kubectl apply accepted a TraceJob of an unannotated namespace"
    );
    assert!(r.stderr.contains(ANNOTATION), "{}", r.stderr);
    assert_refused(k, "before", "early", &agent);
    k.ok(&["create", "namespace", "allowed"]);
    annotate(k, "allowed", "");
    k.apply("allowed", &tracejob_yaml("t", "deny-node", SYSCOUNT, ""));
    wait_phase(k, "allowed", "t", "Running", Duration::from_secs(30));
    stop(k, "allowed", "t");
    wait_phase(k, "allowed", "t", "Completed", Duration::from_secs(60));
    drop(agent);
    drop(own);
}

fn spec_is_immutable(env: &Env) {
    let k = &env.kubectl;
    let ns = env.namespace("immutable");
    k.apply(
        &ns,
        &tracejob_yaml("fixed", "nowhere", SYSCOUNT, "  args: [\"1\"]\n"),
    );
    for (patch, field) in [
        (
            r#"{"spec":{"program":"BEGIN { exit(); }"}}"#,
            "spec.program",
        ),
        (r#"{"spec":{"nodeName":"elsewhere"}}"#, "spec.nodeName"),
        (r#"{"spec":{"args":["2"]}}"#, "spec.args"),
        (r#"{"spec":{"args":null}}"#, "spec.args"),
    ] {
        let r = k.run(&["patch", "-n", &ns, "tj/fixed", "--type=merge", "-p", patch]);
        assert!(!r.ok, "{patch} was accepted");
        assert!(
            r.stderr.contains(field) && r.stderr.contains("cannot change"),
            "{patch}: {}",
            r.stderr
        );
    }
    // What may change still does.
    stop(k, &ns, "fixed");
    k.ok(&["label", "-n", &ns, "tj/fixed", "team=sre"]);
}
