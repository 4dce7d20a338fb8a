//! An agent's token is fenced to its own node: its TraceJobs, its TraceJobNode, its outputs and
//! Events only.

use std::time::Duration;

use super::{configmap, denied, fan_out_yaml, install, AGENT_SA, RUN};
use crate::support::outputs::output;
use crate::support::parts::{apply_status, part_names, part_yaml};
use crate::support::tokens::bound_token;
use crate::support::tracejobs::{stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{must, wait_for, Agent, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "security_agent_token_is_fenced_to_its_own_node",
            run: agent_token_fenced,
        },
        Test {
            name: "security_agent_token_writes_only_its_own_outputs_and_events",
            run: agent_token_writes_only_its_outputs,
        },
        Test {
            name: "security_agent_token_cannot_write_another_nodes_tracejobnode",
            run: agent_token_cannot_write_another_nodes_tracejobnode,
        },
    ]
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
    let parts = part_names(k, &ns);
    let mut expected = vec![own.as_str(), theirs.as_str()];
    expected.sort();
    assert_eq!(parts, expected, "a forged TraceJobNode exists");
}
