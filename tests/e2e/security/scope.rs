//! Which nodes a namespace may trace: the namespace's node selector, protected nodes, deny by
//! default, and the permission that sets a scope.

use std::time::Duration;

use super::{annotate, assert_refused, cluster_role, denied, install, ANNOTATION};
use crate::support::tokens::install_kustomization;
use crate::support::tracejobs::{stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{
    register_node, repo_root, wait_for, Agent, ControlPlane, Env, Test, EVERY_NODE_BUT_PROTECTED,
};

pub fn tests() -> Vec<Test> {
    vec![
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
    ]
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
