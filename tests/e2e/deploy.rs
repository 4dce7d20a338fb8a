//! Installing with `kubectl apply -k daemonset/`, least-privilege RBAC as the server enforces it,
//! and the agent running as its own ServiceAccount.

use std::time::Duration;

use crate::api::tracejob_yaml;
use crate::lifecycle::{output, stop, wait_phase, SYSCOUNT};
use crate::support::{must, repo_root, wait_for, Agent, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    vec![Test {
        name: "deploy_install_rbac_and_serviceaccount_lifecycle",
        run: install_rbac_and_lifecycle,
    }]
}

const AGENT_SA: &str = "system:serviceaccount:tracejob-system:tracejob-agent";

fn can(k: &Kubectl, who: &str, args: &[&str]) -> bool {
    let mut full = vec!["auth", "can-i", "--as", who];
    full.extend_from_slice(args);
    let r = k.run(&full);
    r.stdout.trim() == "yes"
}

/// One test, since it installs the cluster-wide objects once and checks them in order.
fn install_rbac_and_lifecycle(env: &Env) {
    let k = &env.kubectl;
    let dir = repo_root().join("daemonset");
    k.ok(&["apply", "-k", &dir.to_string_lossy()]);
    for object in [
        "namespace/tracejob-system",
        "crd/tracejobs.observe.tracejob.dev",
        "clusterrole/tracejob-agent",
        "clusterrolebinding/tracejob-agent",
        "clusterrole/tracejob-admin",
        "clusterrole/tracejob-viewer",
    ] {
        k.ok(&["get", object]);
    }
    k.ok(&[
        "get",
        "-n",
        "tracejob-system",
        "serviceaccount/tracejob-agent",
        "daemonset/tracejob-agent",
    ]);

    // The agent may do exactly what it needs.
    for yes in [
        vec!["get", "tracejobs.observe.tracejob.dev", "-A"],
        vec!["list", "tracejobs.observe.tracejob.dev", "-A"],
        vec!["watch", "tracejobs.observe.tracejob.dev", "-A"],
        vec![
            "patch",
            "tracejobs.observe.tracejob.dev",
            "--subresource=status",
            "-n",
            "default",
        ],
        vec!["create", "configmaps", "-n", "default"],
        vec!["update", "configmaps", "-n", "default"],
        vec!["get", "configmaps", "-n", "default"],
        vec!["create", "events.events.k8s.io", "-n", "default"],
        // Its own pod and DaemonSet, to tell a restart from an uninstall.
        vec!["get", "pods", "-n", "tracejob-system"],
        vec!["get", "daemonsets.apps", "-n", "tracejob-system"],
    ] {
        assert!(can(k, AGENT_SA, &yes), "the agent cannot {yes:?}");
    }
    for no in [
        vec!["get", "secrets", "-n", "default"],
        vec!["list", "secrets", "-A"],
        vec!["create", "pods", "--subresource=exec", "-n", "default"],
        vec!["delete", "tracejobs.observe.tracejob.dev", "-n", "default"],
        vec!["create", "tracejobs.observe.tracejob.dev", "-n", "default"],
        vec!["patch", "tracejobs.observe.tracejob.dev", "-n", "default"],
        vec!["get", "nodes"],
        vec!["delete", "configmaps", "-n", "default"],
        vec!["list", "configmaps", "-A"],
        vec!["get", "pods", "-n", "default"],
        vec!["list", "pods", "-n", "tracejob-system"],
        vec!["get", "daemonsets.apps", "-n", "default"],
    ] {
        assert!(!can(k, AGENT_SA, &no), "the agent may {no:?}");
    }

    // People: a viewer reads TraceJobs and their ConfigMaps; only an admin creates TraceJobs.
    let ns = env.namespace("rbac");
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
    assert!(can(
        k,
        "alice",
        &["get", "tracejobs.observe.tracejob.dev", "-n", &ns]
    ));
    assert!(can(k, "alice", &["list", "configmaps", "-n", &ns]));
    assert!(!can(
        k,
        "alice",
        &["create", "tracejobs.observe.tracejob.dev", "-n", &ns]
    ));
    assert!(!can(
        k,
        "alice",
        &["patch", "tracejobs.observe.tracejob.dev", "-n", &ns]
    ));
    assert!(can(
        k,
        "bob",
        &["create", "tracejobs.observe.tracejob.dev", "-n", &ns]
    ));
    assert!(can(
        k,
        "bob",
        &["delete", "tracejobs.observe.tracejob.dev", "-n", &ns]
    ));
    assert!(!can(k, "bob", &["get", "secrets", "-n", &ns]));
    // Viewer rights come with `view`; creating TraceJobs does not come with `edit`.
    wait_for(
        Duration::from_secs(30),
        "tracejob-viewer aggregated into view",
        || {
            k.ok(&["get", "clusterrole", "view", "-o", "yaml"])
                .contains("tracejobs")
                .then_some(())
        },
    );
    // `edit` includes `view`'s reading, but never creating a TraceJob (root on a node).
    k.ok(&[
        "create",
        "rolebinding",
        "-n",
        &ns,
        "editor",
        "--clusterrole=edit",
        "--user=carol",
    ]);
    assert!(can(
        k,
        "carol",
        &["get", "tracejobs.observe.tracejob.dev", "-n", &ns]
    ));
    assert!(!can(
        k,
        "carol",
        &["create", "tracejobs.observe.tracejob.dev", "-n", &ns]
    ));

    // The whole lifecycle with the agent authenticated as its ServiceAccount.
    let token_request = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}"#;
    let answer = wait_for(Duration::from_secs(30), "a ServiceAccount token", || {
        let r = k.run_with_stdin(
            &[
                "create",
                "--raw",
                "/api/v1/namespaces/tracejob-system/serviceaccounts/tracejob-agent/token",
                "-f",
                "-",
            ],
            token_request,
        );
        r.ok.then_some(r.stdout)
    });
    let answer: serde_json::Value = must(serde_json::from_str(&answer), "TokenRequest answer");
    let token = answer["status"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let dir = must(tempfile::tempdir(), "tempdir");
    let kubeconfig = dir.path().join("agent.kubeconfig");
    env.cp.write_kubeconfig(&kubeconfig, &token);
    let as_agent = k.with_kubeconfig(&kubeconfig);
    let secrets = as_agent.run(&["get", "secrets", "-n", "default"]);
    assert!(!secrets.ok, "the token is not the agent's");

    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &kubeconfig,
        &["--live-interval", "1"],
        &[],
    );
    k.apply(
        &ns,
        &tracejob_yaml(
            "sa",
            &agent.node,
            &format!("{SYSCOUNT}\ninterval:s:1 {{ printf(\"tick\\n\"); }}"),
            "",
        ),
    );
    wait_phase(k, &ns, "sa", "Running", Duration::from_secs(30));
    stop(k, &ns, "sa");
    wait_phase(k, &ns, "sa", "Completed", Duration::from_secs(30));
    assert!(output(k, &ns, "sa", "output").contains("@syscalls["));
    let described = k.ok(&["describe", "tj", "-n", &ns, "sa"]);
    assert!(
        described.contains("Started") && described.contains("Completed"),
        "events as the ServiceAccount: {described}"
    );
    let logs = agent.logs();
    assert!(
        !logs.contains("forbidden"),
        "the agent was refused something:\n{logs}"
    );
}
