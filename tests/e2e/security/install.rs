//! The install as the docs list it: its objects, each identity's rights (`kubectl auth can-i`),
//! the fences under another name, and a spec that cannot change after creation.

use std::time::Duration;

use super::{
    configmap, denied, install, merged_configmap, AGENT_SA, ANNOTATION, RUN, SUMMARIZER_SA,
};
use crate::support::tokens::{bound_token_in, install_kustomization};
use crate::support::tracejobs::{stop, tracejob_yaml, SYSCOUNT};
use crate::support::{
    must, repo_root, wait_for, ControlPlane, Env, Kubectl, Test, EVERY_NODE_BUT_PROTECTED,
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
            name: "security_fences_follow_a_renamed_install",
            run: renamed_install,
        },
        Test {
            name: "security_spec_cannot_change_after_creation",
            run: spec_is_immutable,
        },
    ]
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

/// The lines of a code block in docs/security.md that follow `heading` (a line ending with ':')
/// up to the next heading or the block's end.
fn readme_rights(heading: &str) -> Vec<String> {
    let readme = must(
        std::fs::read_to_string(repo_root().join("docs/security.md")),
        "docs/security.md",
    );
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("docs/security.md has no {heading:?}"));
    let mut lines: Vec<String> = readme[start + heading.len() + 2..]
        .lines()
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    lines.sort();
    lines
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
            "kubectl auth can-i --list --as {who} -n {namespace} differs from docs/security.md's {heading:?}"
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
