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
const ANNOTATION: &str = "observe.tracejob.dev/node-selector";

/// `kubectl apply -k daemonset/`, once per control plane, as a user installs it.
fn install(env: &Env) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| install_kustomization(env, &repo_root().join("daemonset")));
}

fn install_kustomization(env: &Env, dir: &Path) {
    env.kubectl.ok(&["apply", "-k", &dir.to_string_lossy()]);
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
        "clusterrole/tracejob-agent",
        "clusterrolebinding/tracejob-agent",
        "clusterrole/tracejob-admin",
        "clusterrole/tracejob-viewer",
        "validatingadmissionpolicy/tracejob-agent-status",
        "validatingadmissionpolicy/tracejob-agent-configmaps",
        "validatingadmissionpolicy/tracejob-agent-events",
        "validatingadmissionpolicy/tracejob-namespaces",
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
    ]);
}

/// `kubectl auth can-i --list` as `who` in `namespace`: "resource [verbs]" lines (verbs sorted),
/// without what `baseline` (the same kind of user, bound to nothing) may do too.
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
                let verbs = &l[l.rfind('[')? + 1..l.rfind(']')?];
                let mut verbs: Vec<&str> = verbs.split_whitespace().collect();
                verbs.sort();
                Some(format!("{resource} [{}]", verbs.join(" ")))
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
    let k = &env.kubectl;
    register_node(env, node, &[]);
    let pod = format!("agent-on-{node}");
    let yaml = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "tracejob-system"},
        "spec": {
            "nodeName": node,
            "serviceAccountName": "tracejob-agent",
            "containers": [{"name": "agent", "image": "localhost/tracejob-agent:dev"}]
        }
    });
    k.run_with_stdin(&["apply", "-f", "-"], &yaml.to_string());
    let token = k
        .ok(&[
            "create",
            "token",
            "tracejob-agent",
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
    let kubeconfig = dir.join(format!("{node}.kubeconfig"));
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
    // A TraceJob on several nodes: node A's token writes its own entry, never node B's.
    let fanned = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "wide"},
        "spec": {"nodeSelector": {"matchLabels": {"pool": "nowhere"}}, "program": "BEGIN {}"}
    });
    k.apply(&ns, &fanned.to_string());
    let entry = |node: &str| {
        serde_json::json!({
            "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
            "metadata": {"name": "wide", "namespace": ns},
            "status": {"nodes": [{"node": node, "phase": "Completed", "message": "forged?"}]}
        })
        .to_string()
    };
    let apply_status = |yaml: &str| {
        as_a.run_with_stdin(
            &[
                "apply",
                "--server-side",
                "--subresource=status",
                "--field-manager=test",
                "-f",
                "-",
            ],
            yaml,
        )
    };
    denied(&apply_status(&entry(&node_b)), "writing node B's entry");
    let own = apply_status(&entry(&node_a));
    assert!(own.ok, "its own entry was refused: {}", own.stderr);

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
