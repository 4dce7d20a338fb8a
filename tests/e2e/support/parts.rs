//! A fan-out's TraceJobNode parts, written as an agent writes them.

use crate::support::Kubectl;

/// `kubectl apply --server-side --subresource=status --force-conflicts` of `status` onto
/// `resource`/`name`, as `who` with field manager `manager` (as the agent and the summarizer
/// write status).
pub fn apply_status(
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
pub fn part_yaml(
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

/// The names of the TraceJobNodes in `ns`, sorted.
pub fn part_names(k: &Kubectl, ns: &str) -> Vec<String> {
    let names = k.ok(&[
        "get",
        "tjn",
        "-n",
        ns,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut names: Vec<String> = names.split_whitespace().map(String::from).collect();
    names.sort();
    names
}
