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
    EVERY_NODE_BUT_PROTECTED,
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
            name: "security_protected_nodes_need_a_selector_naming_their_label",
            run: protected_nodes,
        },
        Test {
            name: "security_deny_by_default_traces_nothing_from_unannotated_namespaces",
            run: deny_by_default,
        },
        Test {
            name: "security_allow_unannotated_option_traces_every_unprotected_node",
            run: allow_unannotated,
        },
        Test {
            name: "security_namespace_scope_is_set_only_with_its_own_permission",
            run: scope_needs_its_own_permission,
        },
        Test {
            name: "security_agent_token_writes_only_its_own_outputs_and_events",
            run: agent_token_writes_only_its_outputs,
        },
        Test {
            name: "security_fences_follow_a_renamed_install",
            run: renamed_install,
        },
        Test {
            name: "security_spec_cannot_change_after_creation",
            run: spec_is_immutable,
        },
    ]
}

const AGENT_SA: &str = "system:serviceaccount:tracejob-system:tracejob-agent";
const SUMMARIZER_SA: &str = "system:serviceaccount:tracejob-system:tracejob-summarizer";
pub(crate) const ANNOTATION: &str = "observe.tracejob.dev/node-selector";

/// `kubectl apply -k daemonset/`, once per control plane, as a user installs it.
pub(crate) fn install(env: &Env) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| install_kustomization(env, &repo_root().join("daemonset")));
}

pub(crate) fn install_kustomization(env: &Env, dir: &Path) {
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
        "validatingadmissionpolicy/tracejob-annotated-namespaces",
        "validatingadmissionpolicy/tracejob-namespace-scopes",
        "clusterrole/tracejob-scope-admin",
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
    // TraceJobs never come from the system namespaces, annotated or not.
    let scope = format!("{ANNOTATION}={EVERY_NODE_BUT_PROTECTED}");
    k.ok(&[
        "annotate",
        "--overwrite",
        "namespace",
        "kube-node-lease",
        &scope,
    ]);
    let r = k.run_with_stdin(
        &[
            "apply",
            "--dry-run=server",
            "-n",
            "kube-node-lease",
            "-f",
            "-",
        ],
        &tracejob_yaml("probe", "nowhere", SYSCOUNT, ""),
    );
    k.ok(&[
        "annotate",
        "namespace",
        "kube-node-lease",
        &format!("{ANNOTATION}-"),
    ]);
    assert!(
        !r.ok && r.stderr.contains("tracejob-namespaces"),
        "a TraceJob in kube-node-lease: {}",
        r.stderr
    );
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
    let scoper = format!("{ns}-scoper");
    k.ok(&[
        "create",
        "clusterrolebinding",
        &scoper,
        "--clusterrole=tracejob-scope-admin",
        &format!("--user={scoper}"),
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
        (
            "tracejob-scope-admin, bound cluster-wide:",
            scoper.as_str(),
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
        assert!(
            !yaml.contains("namespacescopes"),
            "{role} may scope namespaces:\n{yaml}"
        );
    }
}

/// A token of the agent's ServiceAccount bound to a pod on `node` (as the kubelet gets one for
/// the DaemonSet's pod), and a kubeconfig using it.
pub(crate) fn bound_token(env: &Env, node: &str, dir: &Path) -> (String, std::path::PathBuf) {
    bound_token_of(env, "tracejob-agent", node, dir)
}

/// A token of ServiceAccount `sa` (in tracejob-system) bound to a pod of it on `node`, as the
/// kubelet gets one for that pod, and a kubeconfig using it.
fn bound_token_of(env: &Env, sa: &str, node: &str, dir: &Path) -> (String, std::path::PathBuf) {
    bound_token_in(env, "tracejob-system", sa, node, dir)
}

/// A token of ServiceAccount `sa` of namespace `home` (where the install put it) bound to a pod
/// of it on `node`, and a kubeconfig using it.
pub(crate) fn bound_token_in(
    env: &Env,
    home: &str,
    sa: &str,
    node: &str,
    dir: &Path,
) -> (String, std::path::PathBuf) {
    let k = &env.kubectl;
    register_node(env, node, &[]);
    let pod = format!("{sa}-on-{node}");
    let yaml = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": home},
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
            home,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            &pod,
            "--duration",
            "1h",
        ])
        .trim()
        .to_string();
    let kubeconfig = dir.join(format!("{home}-{sa}-{node}.kubeconfig"));
    env.cp.write_kubeconfig(&kubeconfig, &token);
    (token, kubeconfig)
}

/// The short run id of the outputs these tests forge (the agent names an output
/// `TRACEJOB-output-RUNID8` or `TRACEJOB-output-RUNID`).
const RUN: &str = "0b6c1f1e";

/// A ConfigMap labelled for `node` and owned by TraceJob `owner` (uid `uid`): with `name`
/// `OWNER-output-RUN`, an output as the agent of `node` writes it.
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

pub(crate) fn denied(r: &crate::support::kubectl::Run, what: &str) {
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
        &apply(&configmap(
            &format!("theirs-output-{RUN}"),
            &ns,
            &node_b,
            "theirs",
            &uid,
        )),
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
            &configmap(
                &format!("theirs-output-{RUN}"),
                &ns,
                &node_a,
                "theirs",
                &uid,
            ),
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

/// The ConfigMap and Event fence has no gaps: node A's bound token writes a ConfigMap only as one
/// of its node's outputs (exactly one owner reference, the controller reference to a TraceJob,
/// named OWNER-output-RUNID, labelled with the owner and node A), never in tracejob-system, and
/// updates only such an output of the same owner; it publishes Events only about a TraceJob or
/// TraceJobNode of the Event's namespace, reported by node A, never in tracejob-system, and
/// changes no other node's Event. Each refused write differs from an accepted one in one thing.
fn agent_token_writes_only_its_outputs(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("outputs");
    let dir = must(tempfile::tempdir(), "tempdir");
    let node_a = format!("{ns}-a");
    let node_b = format!("{ns}-b");
    let (_, config) = bound_token(env, &node_a, dir.path());
    let as_a = k.with_kubeconfig(&config);
    // Owners that no agent runs (their node has none).
    let nowhere = format!("{ns}-nowhere");
    k.apply(&ns, &tracejob_yaml("owner", &nowhere, SYSCOUNT, ""));
    k.apply(&ns, &tracejob_yaml("other", &nowhere, SYSCOUNT, ""));
    let uid = k.jsonpath(&ns, "tj/owner", ".metadata.uid");
    let other_uid = k.jsonpath(&ns, "tj/other", ".metadata.uid");
    let output = |name: &str| -> serde_json::Value {
        must(
            serde_json::from_str(&configmap(name, &ns, &node_a, "owner", &uid)),
            "json",
        )
    };
    let create =
        |cm: &serde_json::Value| as_a.run_with_stdin(&["create", "-f", "-"], &cm.to_string());
    let put = |who: &Kubectl, cm: &serde_json::Value| {
        let path = format!(
            "/api/v1/namespaces/{}/configmaps/{}",
            cm["metadata"]["namespace"].as_str().unwrap_or_default(),
            cm["metadata"]["name"].as_str().unwrap_or_default()
        );
        who.run_with_stdin(&["replace", "--raw", &path, "-f", "-"], &cm.to_string())
    };

    // Accepted: its outputs as the agent writes them, short and long run ids; replaced whole.
    let short = output(&format!("owner-output-{RUN}"));
    let r = create(&short);
    assert!(r.ok, "node A's own output was refused: {}", r.stderr);
    let r = create(&output("owner-output-0b6c1f1e-0000-4000-8000-000000000000"));
    assert!(
        r.ok,
        "an output named with the whole run id was refused: {}",
        r.stderr
    );
    let mut again = short.clone();
    again["data"]["output"] = "@x: 2\n".into();
    let r = put(&as_a, &again);
    assert!(
        r.ok,
        "replacing node A's own output was refused: {}",
        r.stderr
    );

    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut cm = output(&format!("owner-output-{}", "1".repeat(8)));
        f(&mut cm);
        cm
    };
    let second_owner = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "name": "other", "uid": other_uid
    });
    for (cm, what) in [
        (
            with(&|cm| {
                if let Some(owners) = cm["metadata"]["ownerReferences"].as_array_mut() {
                    owners.push(second_owner.clone());
                }
            }),
            "creating an output with a second owner",
        ),
        (
            with(&|cm| {
                cm["metadata"]
                    .as_object_mut()
                    .map(|m| m.remove("ownerReferences"));
            }),
            "creating an output with no owner",
        ),
        (
            with(&|cm| cm["metadata"]["ownerReferences"][0]["controller"] = false.into()),
            "creating an output whose owner is not its controller",
        ),
        (
            with(&|cm| {
                cm["metadata"]["ownerReferences"][0]["kind"] = "Pod".into();
                cm["metadata"]["ownerReferences"][0]["apiVersion"] = "v1".into();
            }),
            "creating an output owned by a Pod",
        ),
        (
            with(&|cm| cm["metadata"]["name"] = "owner-config".into()),
            "creating a ConfigMap of another name",
        ),
        (
            with(&|cm| cm["metadata"]["name"] = format!("other-output-{RUN}").into()),
            "creating an output named for another TraceJob",
        ),
        (
            with(&|cm| cm["metadata"]["name"] = "own-output-11111111".into()),
            "creating an output named for part of its owner's name",
        ),
        (
            with(&|cm| cm["metadata"]["name"] = "owner-output-forged".into()),
            "creating an output whose run id is not one",
        ),
        (
            with(&|cm| cm["metadata"]["labels"]["observe.tracejob.dev/tracejob"] = "other".into()),
            "creating an output labelled for another TraceJob",
        ),
        (
            with(&|cm| {
                cm["metadata"]["labels"]
                    .as_object_mut()
                    .map(|l| l.remove("observe.tracejob.dev/tracejob"));
            }),
            "creating an output without its TraceJob's label",
        ),
        (
            with(&|cm| {
                cm["metadata"]["labels"]["observe.tracejob.dev/node"] = node_b.clone().into()
            }),
            "creating an output for node B",
        ),
        (
            with(&|cm| cm["metadata"]["namespace"] = "tracejob-system".into()),
            "creating an output in tracejob-system",
        ),
    ] {
        denied(&create(&cm), what);
    }

    // Updates: only of its own output, and of the same owner.
    let theirs = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("owner-output-{}", "2".repeat(8)), "namespace": ns,
            "labels": {"observe.tracejob.dev/node": node_b, "observe.tracejob.dev/tracejob": "owner"},
            "ownerReferences": [{
                "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
                "name": "owner", "uid": uid, "controller": true
            }]},
        "data": {"output": "node B's"}
    });
    k.run_with_stdin(&["create", "-f", "-"], &theirs.to_string());
    let mut claimed = theirs.clone();
    claimed["metadata"]["labels"]["observe.tracejob.dev/node"] = node_a.clone().into();
    claimed["data"]["output"] = "forged".into();
    denied(&put(&as_a, &claimed), "replacing node B's output");
    let mut reowned = short.clone();
    reowned["metadata"]["ownerReferences"][0]["uid"] = other_uid.clone().into();
    denied(&put(&as_a, &reowned), "giving its output another owner");
    assert_eq!(
        k.jsonpath(
            &ns,
            &format!("configmap/owner-output-{}", "2".repeat(8)),
            ".data.output"
        ),
        "node B's"
    );

    // Events.
    let event = |kind: &str, regarding_ns: &str, instance: &str, event_ns: &str| {
        serde_json::json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"generateName": "owner-", "namespace": event_ns},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "tracejob-agent", "reportingInstance": instance,
            "action": "Started", "reason": "Started", "type": "Normal",
            "regarding": {
                "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": kind,
                "name": "owner", "namespace": regarding_ns
            }
        })
        .to_string()
    };
    for kind in ["TraceJob", "TraceJobNode"] {
        let r = as_a.run_with_stdin(&["create", "-f", "-"], &event(kind, &ns, &node_a, &ns));
        assert!(r.ok, "an Event about a {kind} was refused: {}", r.stderr);
    }
    for (yaml, what) in [
        (
            event("TraceJob", &ns, &node_b, &ns),
            "creating an Event reported by node B",
        ),
        (
            event("TraceJob", "default", &node_a, &ns),
            "creating an Event about a TraceJob of another namespace",
        ),
        (
            event("TraceJob", "tracejob-system", &node_a, "tracejob-system"),
            "creating an Event in tracejob-system",
        ),
    ] {
        denied(&as_a.run_with_stdin(&["create", "-f", "-"], &yaml), what);
    }
    // Node B's Event, changed (events.k8s.io/v1 keeps reportingInstance, the note and the rest
    // immutable; labels are what may change).
    let b_event = k
        .run_with_stdin(
            &["create", "-o", "name", "-f", "-"],
            &event("TraceJob", &ns, &node_b, &ns),
        )
        .stdout
        .trim()
        .to_string();
    assert!(!b_event.is_empty(), "node B's Event");
    let r = as_a.run(&[
        "patch",
        "-n",
        &ns,
        &b_event,
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"forged":"yes"}}}"#,
    ]);
    denied(&r, "changing node B's Event");
}

/// A TraceJob on every node labelled pool=nowhere (there are none: nothing runs it).
pub(crate) fn fan_out_yaml(name: &str) -> String {
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
pub(crate) fn apply_status(
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
pub(crate) fn part_yaml(
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
    let own = format!("wide.{node_a}");
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
    let theirs = format!("wide.{node_b}");
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
        // Refused by the fence or, a name other than TRACEJOB.NODE, by the CRD itself.
        let r = apply(&as_a, &yaml);
        assert!(!r.ok, "{what} was allowed");
        if !r.stderr.contains("is named TRACEJOB.NODE") {
            denied(&r, what);
        }
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
            &part_yaml(
                &format!("wide2.{node_a}"),
                &ns,
                &node_a,
                &node_a,
                "wide2",
                owner,
            ),
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

/// A node with a protected label (by default the control-plane, master, etcd and controlplane
/// node roles; `--protected-node-labels` sets them) runs TraceJobs only from namespaces whose
/// selector names one of its protected labels: one that matches it by accident (here "every node
/// but protected ones", the test namespaces' own) is refused.
fn protected_nodes(env: &Env) {
    let k = &env.kubectl;
    let plain = env.namespace("protected-plain");
    let mut runs = Vec::new();
    for (i, label) in [
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/master",
        "node-role.kubernetes.io/etcd",
    ]
    .into_iter()
    .enumerate()
    {
        let node = format!("{plain}-p{i}");
        register_node(env, &node, &[(label, "")]);
        let chosen = env.namespace("protected-chosen");
        annotate(k, &chosen, label);
        let agent = Agent::start(env, &node);
        k.apply(
            &plain,
            &tracejob_yaml(&format!("refused-{i}"), &node, SYSCOUNT, ""),
        );
        k.apply(&chosen, &tracejob_yaml("allowed", &node, SYSCOUNT, ""));
        runs.push((format!("refused-{i}"), label.to_string(), chosen, agent));
    }
    // A label of the cluster's own choosing.
    let node = format!("{plain}-custom");
    register_node(env, &node, &[("example.com/secure", "yes")]);
    let agent = Agent::start_with(
        env,
        &node,
        &env.cp.kubeconfig,
        &["--protected-node-labels=example.com/secure"],
        &[],
    );
    let chosen = env.namespace("protected-chosen");
    annotate(k, &chosen, "example.com/secure=yes");
    k.apply(
        &plain,
        &tracejob_yaml("refused-custom", &node, SYSCOUNT, ""),
    );
    k.apply(&chosen, &tracejob_yaml("allowed", &node, SYSCOUNT, ""));
    runs.push((
        "refused-custom".to_string(),
        "example.com/secure".to_string(),
        chosen,
        agent,
    ));
    for (refused, label, chosen, agent) in &runs {
        wait_phase(k, chosen, "allowed", "Running", Duration::from_secs(30));
        assert_refused(k, &plain, refused, agent);
        let message = k.jsonpath(&plain, &format!("tj/{refused}"), ".status.message");
        assert!(
            message.contains(label.as_str()) && message.contains("protected"),
            "{message}"
        );
    }
    for (_, _, chosen, _) in &runs {
        stop(k, chosen, "allowed");
    }
    for (_, _, chosen, _) in &runs {
        wait_phase(k, chosen, "allowed", "Completed", Duration::from_secs(60));
    }
}

/// The default install: a namespace without the annotation traces nothing. Admission rejects
/// its TraceJobs at `kubectl apply`, and an agent with its default flags refuses one created
/// before the annotation was removed; an annotated namespace runs.
fn deny_by_default(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("unannotated");
    let node = format!("{ns}-node");
    register_node(env, &node, &[]);
    // Created while annotated; the annotation goes before any agent sees it.
    k.apply(&ns, &tracejob_yaml("early", &node, SYSCOUNT, ""));
    k.ok(&["annotate", "namespace", &ns, &format!("{ANNOTATION}-")]);
    assert!(!k
        .ok(&[
            "get",
            "namespace",
            &ns,
            "-o",
            "jsonpath={.metadata.annotations}"
        ])
        .contains(ANNOTATION));
    let r = k.run_with_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        &tracejob_yaml("t", &node, SYSCOUNT, ""),
    );
    assert!(
        !r.ok,
        "kubectl apply accepted a TraceJob of an unannotated namespace"
    );
    assert!(
        r.stderr.contains(ANNOTATION) && r.stderr.contains("tracejob-annotated-namespaces"),
        "{}",
        r.stderr
    );
    let agent = Agent::start(env, &node);
    assert_refused(k, &ns, "early", &agent);
    assert!(k
        .jsonpath(&ns, "tj/early", ".status.message")
        .contains("no observe.tracejob.dev/node-selector annotation"));
    // Annotated ("every node but protected ones"), it runs.
    let annotated = env.namespace("annotated");
    k.apply(&annotated, &tracejob_yaml("t", &node, SYSCOUNT, ""));
    wait_phase(k, &annotated, "t", "Running", Duration::from_secs(30));
    stop(k, &annotated, "t");
    wait_phase(k, &annotated, "t", "Completed", Duration::from_secs(60));
}

/// Its own control plane: the allow-unannotated option removes the install's default deny for
/// every namespace. An unannotated namespace then traces an unprotected node, never a protected
/// one; its annotation still needs its permission.
fn allow_unannotated(_env: &Env) {
    let own = Env::new(ControlPlane::start());
    own.install_crd();
    let k = &own.kubectl;
    install_kustomization(&own, &repo_root().join("tests/fixtures/allow-unannotated"));
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
        args.contains("--unannotated-namespaces=allow"),
        "the option does not reach the agents: {args}"
    );
    let r = k.run(&[
        "get",
        "validatingadmissionpolicy",
        "tracejob-annotated-namespaces",
    ]);
    assert!(!r.ok && r.stderr.contains("NotFound"), "{}", r.stderr);
    k.ok(&[
        "get",
        "validatingadmissionpolicy",
        "tracejob-namespace-scopes",
    ]);
    // The agents as that DaemonSet runs them.
    register_node(
        &own,
        "allow-master",
        &[("node-role.kubernetes.io/master", "")],
    );
    let flags = ["--unannotated-namespaces=allow"];
    let worker = Agent::start_with(&own, "allow-worker", &own.cp.kubeconfig, &flags, &[]);
    let master = Agent::start_with(&own, "allow-master", &own.cp.kubeconfig, &flags, &[]);
    k.ok(&["create", "namespace", "plain"]);
    k.apply("plain", &tracejob_yaml("t", &worker.node, SYSCOUNT, ""));
    k.apply(
        "plain",
        &tracejob_yaml("master", &master.node, SYSCOUNT, ""),
    );
    wait_phase(k, "plain", "t", "Running", Duration::from_secs(30));
    assert_refused(k, "plain", "master", &master);
    assert!(k
        .jsonpath("plain", "tj/master", ".status.message")
        .contains("node-role.kubernetes.io/master"));
    stop(k, "plain", "t");
    wait_phase(k, "plain", "t", "Completed", Duration::from_secs(60));
    drop(worker);
    drop(master);
    drop(own);
}

/// Cluster roles, by YAML: `kubectl create clusterrole` refuses a resource the server does not
/// serve, and namespacescopes is a virtual one.
pub(crate) fn cluster_role(k: &Kubectl, name: &str, rules: serde_json::Value) {
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name}, "rules": rules
    });
    let r = k.run_with_stdin(&["apply", "-f", "-"], &role.to_string());
    assert!(r.ok, "{}", r.stderr);
}

/// Only a user whom RBAC allows `update` of namespacescopes.observe.tracejob.dev (the ClusterRole
/// tracejob-scope-admin, cluster-wide, or a copy narrowed to some namespaces by resourceNames)
/// sets, changes or removes a namespace's annotation; `patch namespaces` alone does not, nor
/// tracejob-scope-admin bound in the namespace itself. An empty annotation is refused to all.
fn scope_needs_its_own_permission(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("scope");
    let other = env.namespace("scope-other");
    let patcher = format!("{ns}-patcher");
    let scoper = format!("{ns}-scoper");
    let narrow = format!("{ns}-narrow");
    let local = format!("{ns}-local");
    cluster_role(
        k,
        &format!("{ns}-namespaces"),
        serde_json::json!([{"apiGroups": [""], "resources": ["namespaces"],
            "verbs": ["get", "list", "create", "patch", "update"]}]),
    );
    cluster_role(
        k,
        &narrow,
        serde_json::json!([{"apiGroups": ["observe.tracejob.dev"],
            "resources": ["namespacescopes"], "resourceNames": [ns], "verbs": ["update"]}]),
    );
    for user in [&patcher, &scoper, &narrow, &local] {
        k.ok(&[
            "create",
            "clusterrolebinding",
            &format!("{user}-namespaces"),
            &format!("--clusterrole={ns}-namespaces"),
            &format!("--user={user}"),
        ]);
    }
    k.ok(&[
        "create",
        "clusterrolebinding",
        &scoper,
        "--clusterrole=tracejob-scope-admin",
        &format!("--user={scoper}"),
    ]);
    k.ok(&[
        "create",
        "clusterrolebinding",
        &narrow,
        &format!("--clusterrole={narrow}"),
        &format!("--user={narrow}"),
    ]);
    // In the namespace only: not enough, the check is cluster-scoped.
    k.ok(&[
        "create",
        "rolebinding",
        "-n",
        &ns,
        &local,
        "--clusterrole=tracejob-scope-admin",
        &format!("--user={local}"),
    ]);
    let as_user = |user: &str, args: &[&str]| {
        let mut all = vec!["--as", user];
        all.extend_from_slice(args);
        k.run(&all)
    };
    let set = |user: &str, namespace: &str, selector: &str| {
        as_user(
            user,
            &[
                "annotate",
                "--overwrite",
                "namespace",
                namespace,
                &format!("{ANNOTATION}={selector}"),
            ],
        )
    };
    let remove = |user: &str, namespace: &str| {
        as_user(
            user,
            &[
                "annotate",
                "namespace",
                namespace,
                &format!("{ANNOTATION}-"),
            ],
        )
    };
    let scope_of = |namespace: &str| {
        k.ok(&[
            "get",
            "namespace",
            namespace,
            "-o",
            &format!(
                "jsonpath={{.metadata.annotations.{}}}",
                ANNOTATION.replace('.', "\\.")
            ),
        ])
    };
    // RBAC's patch works for everything else; the bindings have taken effect.
    wait_for(
        Duration::from_secs(30),
        "the bindings to take effect",
        || {
            as_user(
                &patcher,
                &["label", "--overwrite", "namespace", &ns, "team=a"],
            )
            .ok
            .then_some(())
        },
    );
    for user in [&patcher, &local] {
        denied(
            &set(user, &ns, "pool=a"),
            &format!("{user} changing the annotation"),
        );
        denied(
            &remove(user, &ns),
            &format!("{user} removing the annotation"),
        );
    }
    assert_eq!(scope_of(&ns), EVERY_NODE_BUT_PROTECTED);
    remove(&scoper, &other);
    denied(
        &set(&patcher, &other, "pool=a"),
        "setting the annotation without the permission",
    );
    let annotated_ns = |name: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": {ANNOTATION: "pool=a"}}
        })
        .to_string()
    };
    denied(
        &k.run_with_stdin(
            &["--as", &patcher, "create", "-f", "-"],
            &annotated_ns(&format!("{ns}-new")),
        ),
        "creating an annotated namespace without the permission",
    );
    // With it: set, changed, removed, created.
    for selector in ["pool=a", "pool=b"] {
        let r = set(&scoper, &other, selector);
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(scope_of(&other), selector);
    }
    let r = remove(&scoper, &other);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(scope_of(&other), "");
    let r = k.run_with_stdin(
        &["--as", &scoper, "create", "-f", "-"],
        &annotated_ns(&format!("{ns}-new")),
    );
    assert!(r.ok, "{}", r.stderr);
    // Narrowed to one namespace by name.
    let r = set(&narrow, &ns, "pool=c");
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(scope_of(&ns), "pool=c");
    denied(
        &set(&narrow, &other, "pool=c"),
        "setting the annotation of a namespace the permission does not name",
    );
    // Empty is no selector, whoever sets it.
    for who in [scoper.as_str(), "admin"] {
        for empty in ["", " "] {
            let r = if who == "admin" {
                k.run(&[
                    "annotate",
                    "--overwrite",
                    "namespace",
                    &ns,
                    &format!("{ANNOTATION}={empty}"),
                ])
            } else {
                set(who, &ns, empty)
            };
            denied(&r, &format!("{who} setting an empty annotation"));
            assert!(r.stderr.contains("empty"), "{}", r.stderr);
        }
    }
    assert_eq!(scope_of(&ns), "pool=c");
}

/// Its own control plane: the install in another namespace (a kustomize `namespace:` overlay,
/// tests/fixtures/renamed-install). The fences find the ServiceAccounts there: node A's agent
/// token writes its own output but not node B's, nor anything in the install's namespace; the
/// summarizer's writes merged outputs only, never there.
fn renamed_install(_env: &Env) {
    let own = Env::new(ControlPlane::start());
    own.install_crd();
    let k = &own.kubectl;
    let home = "tracing-elsewhere";
    install_kustomization(&own, &repo_root().join("tests/fixtures/renamed-install"));
    assert!(!k.run(&["get", "namespace", "tracejob-system"]).ok);
    k.ok(&[
        "get",
        "-n",
        home,
        "serviceaccount/tracejob-agent",
        "serviceaccount/tracejob-summarizer",
        "daemonset/tracejob-agent",
        "deployment/tracejob-summarizer",
    ]);
    let ns = "renamed";
    own.create_namespace(ns);
    let dir = must(tempfile::tempdir(), "tempdir");
    let (_, config) = bound_token_in(&own, home, "tracejob-agent", "renamed-a", dir.path());
    let as_a = k.with_kubeconfig(&config);
    let who = as_a.ok(&["auth", "whoami", "-o", "json"]);
    assert!(
        who.contains(&format!("system:serviceaccount:{home}:tracejob-agent")),
        "{who}"
    );
    k.apply(ns, &tracejob_yaml("theirs", "renamed-b", SYSCOUNT, ""));
    let uid = k.jsonpath(ns, "tj/theirs", ".metadata.uid");
    let create = |who: &Kubectl, yaml: &str| who.run_with_stdin(&["create", "-f", "-"], yaml);
    // RBAC follows the rename: its own node's output is written.
    let r = create(
        &as_a,
        &configmap(
            &format!("theirs-output-{RUN}"),
            ns,
            "renamed-a",
            "theirs",
            &uid,
        ),
    );
    assert!(r.ok, "node A's own output was refused: {}", r.stderr);
    denied(
        &create(
            &as_a,
            &configmap("theirs-output-11111111", ns, "renamed-b", "theirs", &uid),
        ),
        "creating node B's output",
    );
    denied(
        &create(
            &as_a,
            &configmap("theirs-output-22222222", home, "renamed-a", "theirs", &uid),
        ),
        "creating an output in the install's namespace",
    );
    denied(
        &as_a.run(&[
            "patch",
            "-n",
            ns,
            "tj/theirs",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Completed","message":"forged"}}"#,
        ]),
        "patching the status of node B's TraceJob",
    );
    let (_, config) = bound_token_in(&own, home, "tracejob-summarizer", "renamed-s", dir.path());
    let as_s = k.with_kubeconfig(&config);
    let merged = merged_configmap("theirs-output-merged", ns, "theirs", &uid);
    let r = create(&as_s, &merged.to_string());
    assert!(r.ok, "a merged output was refused: {}", r.stderr);
    denied(
        &create(
            &as_s,
            &configmap("theirs-output-33333333", ns, "renamed-a", "theirs", &uid),
        ),
        "the summarizer creating a node's output",
    );
    let mut there = merged.clone();
    there["metadata"]["namespace"] = home.into();
    denied(
        &create(&as_s, &there.to_string()),
        "the summarizer creating a merged output in the install's namespace",
    );
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
