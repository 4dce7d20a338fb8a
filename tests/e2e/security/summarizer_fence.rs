//! The summarizer's token writes only summaries and merged outputs; a fan-out runs with every
//! writer fenced.

use std::time::Duration;

use super::{configmap, denied, fan_out_yaml, install, merged_configmap, SUMMARIZER_SA};
use crate::support::outputs::output;
use crate::support::parts::{apply_status, part_yaml};
use crate::support::tokens::{bound_token, bound_token_of};
use crate::support::tracejobs::{stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{must, register_node, wait_for, Agent, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "security_summarizer_token_writes_only_summaries_and_merged_outputs",
            run: summarizer_token_fenced,
        },
        Test {
            name: "security_fan_out_runs_with_every_writer_fenced",
            run: fan_out_runs_with_every_writer_fenced,
        },
    ]
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
    // Reading every ConfigMap through a list is what it can do: docs/security.md says so.
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
