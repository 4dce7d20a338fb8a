//! The trigger receiver's token creates only triggered TraceJobs.

use std::time::Duration;

use super::{curl, trigger_yaml, LABEL_TRIGGER, PROGRAM};
use crate::support::tokens::{bound_token_in, install_kustomization};
use crate::support::tracejobs::tracejob_yaml;
use crate::support::{must, repo_root, wait_for, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![Test {
        name: "trigger_receiver_token_is_fenced_to_triggered_tracejobs",
        run: receiver_token_fenced,
    }]
}

const RECEIVER_SA: &str = "system:serviceaccount:tracejob-system:tracejob-trigger-receiver";

/// A TraceJob as the receiver makes one: `labels` and `owners` as given (the receiver's own are
/// the trigger label and one controller reference to the TraceTrigger).
fn receiver_tracejob(
    name: &str,
    ns: &str,
    labels: serde_json::Value,
    owners: serde_json::Value,
) -> String {
    serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owners},
        "spec": {"nodeName": "fenced-node", "program": PROGRAM, "deadline": 60,
                 "deadlineGracePeriod": 30}
    })
    .to_string()
}

fn owner(kind: &str, name: &str, uid: &str, controller: bool) -> serde_json::Value {
    serde_json::json!([{
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": kind,
        "name": name, "uid": uid, "controller": controller
    }])
}

fn refused(r: &crate::support::kubectl::Run, what: &str, why: &str) {
    assert!(!r.ok, "{what} was allowed");
    assert!(
        r.stderr.contains(why),
        "{what}: refused, but not for {why:?}: {}",
        r.stderr
    );
}

/// The install with daemonset/components/trigger (tests/fixtures/trigger-install) on its own
/// API server, and a token of the receiver's ServiceAccount bound to a pod of it: it creates a
/// TraceJob as the receiver makes one (labelled with and controlled by its TraceTrigger) and
/// stops it; nothing else: no TraceJob without that label or owner, none in an unannotated
/// (system) namespace, no change but spec.stop, no stop of a TraceJob no trigger made, no
/// delete, no TraceTrigger spec, no ConfigMap, no Secret.
fn receiver_token_fenced(_env: &Env) {
    use crate::support::ControlPlane;
    let own = Env::new(ControlPlane::start());
    install_kustomization(&own, &repo_root().join("tests/fixtures/trigger-install"));
    let k = &own.kubectl;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/tracetriggers.observe.tracejob.dev",
    ]);
    for object in [
        "validatingadmissionpolicy/tracejob-trigger-receiver-fence",
        "validatingadmissionpolicybinding/tracejob-trigger-receiver-fence",
        "clusterrole/tracejob-trigger-receiver",
        "clusterrolebinding/tracejob-trigger-receiver",
    ] {
        k.ok(&["get", object]);
    }
    let ns = own.namespace("receiver-fence");
    let dir = must(tempfile::tempdir(), "tempdir");
    let (_, config) = bound_token_in(
        &own,
        "tracejob-system",
        "tracejob-trigger-receiver",
        "receiver-node",
        dir.path(),
    );
    let rx = k.with_kubeconfig(&config);
    let who = rx.ok(&["auth", "whoami", "-o", "json"]);
    assert!(who.contains(RECEIVER_SA), "not the receiver's token: {who}");
    // What its watches need: Namespaces (for their alert-namespaces annotation), cluster-wide.
    for verb in ["list", "watch"] {
        assert_eq!(rx.ok(&["auth", "can-i", verb, "namespaces"]).trim(), "yes");
    }

    k.apply(
        &ns,
        &trigger_yaml("tt", &["alertname=\"X\""], "Node", 60, "{}"),
    );
    let uid = k.jsonpath(&ns, "tt/tt", ".metadata.uid");
    let label = |v: &str| serde_json::json!({ LABEL_TRIGGER: v });
    let create = |yaml: &str| rx.run_with_stdin(&["create", "-f", "-"], yaml);
    const FENCE: &str = "the trigger receiver creates only";
    // The fence is loaded once the API server refuses an unowned TraceJob from the receiver.
    wait_for(
        Duration::from_secs(30),
        "the receiver's fence enforced",
        || {
            let r = rx.run_with_stdin(
                &["create", "--dry-run=server", "-f", "-"],
                &receiver_tracejob("probe", &ns, label("tt"), serde_json::json!([])),
            );
            (!r.ok && r.stderr.contains(FENCE)).then_some(())
        },
    );

    // What the receiver makes.
    let r = create(&receiver_tracejob(
        "made",
        &ns,
        label("tt"),
        owner("TraceTrigger", "tt", &uid, true),
    ));
    assert!(
        r.ok,
        "the receiver could not create a triggered TraceJob: {}",
        r.stderr
    );

    // Not so labelled, not so owned.
    let cases = [
        ("no-owner", label("tt"), serde_json::json!([])),
        (
            "no-label",
            serde_json::json!({}),
            owner("TraceTrigger", "tt", &uid, true),
        ),
        (
            "other-label",
            label("other"),
            owner("TraceTrigger", "tt", &uid, true),
        ),
        (
            "not-controller",
            label("tt"),
            owner("TraceTrigger", "tt", &uid, false),
        ),
        (
            "owned-by-a-tracejob",
            label("tt"),
            owner("TraceJob", "tt", &uid, true),
        ),
    ];
    for (name, labels, owners) in cases {
        refused(
            &create(&receiver_tracejob(name, &ns, labels, owners)),
            name,
            FENCE,
        );
    }
    // A system namespace: unannotated, it traces nothing, and no TraceJob is admitted there.
    refused(
        &create(&receiver_tracejob(
            "squat",
            "kube-system",
            label("tt"),
            owner("TraceTrigger", "tt", &uid, true),
        )),
        "a TraceJob in kube-system",
        "ValidatingAdmissionPolicy",
    );

    // Updates: spec.stop only, of TraceJobs a trigger made. A merge PATCH as the receiver
    // sends it (kubectl patch would GET first, which the receiver may not: it lists).
    let (token, _) = bound_token_in(
        &own,
        "tracejob-system",
        "tracejob-trigger-receiver",
        "receiver-node",
        dir.path(),
    );
    let ca = own.cp.ca_file();
    let raw_patch = |path: &str, body: &str| {
        let (code, body) = curl(&[
            "-X",
            "PATCH",
            "--cacert",
            &ca.to_string_lossy(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/merge-patch+json",
            "--data",
            body,
            &format!(
                "{}/apis/observe.tracejob.dev/v1alpha1/namespaces/{ns}/{path}",
                own.cp.server_url()
            ),
        ]);
        crate::support::kubectl::Run {
            ok: (200..300).contains(&code),
            stdout: String::new(),
            stderr: format!("{code} {body}"),
        }
    };
    let patch = |name: &str, body: &str| raw_patch(&format!("tracejobs/{name}"), body);
    const ONLY_STOP: &str = "may only stop";
    refused(
        &patch("made", r#"{"spec":{"stop":true,"deadline":3600}}"#),
        "raising the deadline while stopping",
        ONLY_STOP,
    );
    refused(
        &patch(
            "made",
            r#"{"metadata":{"labels":{"observe.tracejob.dev/trigger":"other"}}}"#,
        ),
        "relabelling a triggered TraceJob",
        "denied",
    );
    refused(
        &patch(
            "made",
            r#"{"metadata":{"labels":{"extra":"x"}},"spec":{"stop":true}}"#,
        ),
        "adding a label while stopping",
        ONLY_STOP,
    );
    refused(
        &patch("made", r#"{"metadata":{"ownerReferences":null}}"#),
        "dropping the owner",
        "denied",
    );
    refused(
        &patch("made", r#"{"spec":{"stop":false}}"#),
        "a patch that does not stop",
        ONLY_STOP,
    );
    refused(
        &patch(
            "made",
            r#"{"spec":{"stop":true,"deadlineGracePeriod":3600}}"#,
        ),
        "raising the grace period while stopping",
        ONLY_STOP,
    );
    // Nor its annotations or finalizers (a finalizer would hold the TraceJob, and its output,
    // from deletion; an annotation could rewrite what the alert recorded).
    refused(
        &patch(
            "made",
            r#"{"metadata":{"annotations":{"observe.tracejob.dev/trigger-target":"node/x"}},"spec":{"stop":true}}"#,
        ),
        "rewriting an annotation while stopping",
        ONLY_STOP,
    );
    refused(
        &patch(
            "made",
            r#"{"metadata":{"finalizers":["example.com/hold"]},"spec":{"stop":true}}"#,
        ),
        "adding a finalizer while stopping",
        ONLY_STOP,
    );
    // A second owner beside the trigger (a garbage-collection hold on something else).
    let two = serde_json::json!({"metadata": {"ownerReferences": [
        owner("TraceTrigger", "tt", &uid, true)[0],
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "0b6c1f1e-0000-0000-0000-000000000000"}
    ]}, "spec": {"stop": true}});
    refused(
        &patch("made", &two.to_string()),
        "adding an owner",
        ONLY_STOP,
    );
    // A TraceJob someone else made, unlabelled.
    k.apply(
        &ns,
        &tracejob_yaml("theirs", "fenced-node", "BEGIN { exit(); }", ""),
    );
    refused(
        &patch("theirs", r#"{"spec":{"stop":true}}"#),
        "stopping a TraceJob no trigger made",
        FENCE,
    );
    // Labelling someone else's TraceJob as the trigger's.
    refused(
        &patch(
            "theirs",
            r#"{"metadata":{"labels":{"observe.tracejob.dev/trigger":"tt"}},"spec":{"stop":true}}"#,
        ),
        "adopting a TraceJob no trigger made",
        FENCE,
    );
    assert_eq!(k.jsonpath(&ns, "tj/theirs", ".spec.stop"), "false");
    // The receiver's stop, as it sends it.
    let r = patch("made", r#"{"spec":{"stop":true}}"#);
    assert!(
        r.ok,
        "the receiver could not stop its TraceJob: {}",
        r.stderr
    );
    assert_eq!(k.jsonpath(&ns, "tj/made", ".spec.stop"), "true");

    // RBAC: nothing beyond its rights.
    for (what, args) in [
        (
            "deleting a TraceJob",
            vec!["delete", "tj", "made", "-n", &ns],
        ),
        (
            "reading Secrets",
            vec!["get", "secrets", "-n", "tracejob-system"],
        ),
        (
            "deleting a TraceTrigger",
            vec!["delete", "tt", "tt", "-n", &ns],
        ),
        (
            "writing a TraceTrigger's spec",
            vec![
                "patch",
                "tt",
                "tt",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"trace":{"deadline":5}}}"#,
            ],
        ),
        (
            "writing a TraceJob's status",
            vec![
                "patch",
                "tj",
                "made",
                "-n",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Failed"}}"#,
            ],
        ),
        (
            "creating a ConfigMap",
            vec!["create", "configmap", "x", "-n", &ns],
        ),
        (
            "creating a TraceJobNode",
            vec!["create", "-n", &ns, "-f", "-"],
        ),
    ] {
        let r = if what == "creating a TraceJobNode" {
            rx.run_with_stdin(&args, r#"{"apiVersion":"observe.tracejob.dev/v1alpha1","kind":"TraceJobNode","metadata":{"name":"x"},"spec":{}}"#)
        } else {
            rx.run(&args)
        };
        refused(&r, what, "forbidden");
    }
    // Its own rights: the trigger's status.
    let r = raw_patch(
        "tracetriggers/tt/status",
        r#"{"status":{"tracesCreated":1}}"#,
    );
    assert!(
        r.ok,
        "the receiver could not write its trigger's status: {}",
        r.stderr
    );
    assert_eq!(k.jsonpath(&ns, "tt/tt", ".status.tracesCreated"), "1");
    drop(own);
}
