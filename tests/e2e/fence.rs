//! The admission fences read as an attacker reads them: every path that writes a Namespace's
//! scope annotation, a node's part of a fan-out written with another node's token, and a node's
//! trace slots shared between namespaces.

use std::time::Duration;

use crate::security::{cluster_role, install, ANNOTATION};
use crate::support::{wait_for, Env, Kubectl, Test, EVERY_NODE_BUT_PROTECTED};

pub fn tests() -> Vec<Test> {
    vec![Test {
        name: "security_namespace_scope_is_guarded_on_status_and_finalize",
        run: scope_guarded_on_subresources,
    }]
}

/// Refused by the namespace-scope policy itself (not by RBAC: the users hold the verb).
fn refused_by_scope_policy(r: &crate::support::kubectl::Run, what: &str) {
    assert!(!r.ok, "{what} was allowed");
    assert!(
        r.stderr.contains("tracejob-namespace-scopes"),
        "{what} was refused, but not by the scope policy: {}",
        r.stderr
    );
}

fn scope_of(k: &Kubectl, ns: &str) -> String {
    k.ok(&[
        "get",
        "namespace",
        ns,
        "-o",
        &format!(
            "jsonpath={{.metadata.annotations.{}}}",
            ANNOTATION.replace('.', "\\.")
        ),
    ])
}

/// A user who holds only `namespaces/status` (get, patch, update), or only
/// `namespaces/finalize` (update), cannot set, change or remove the scope annotation through
/// those subresources: by merge patch, JSON patch, server-side apply or a whole update. The same
/// users change a label by the same paths (so it is the fence that refuses, not RBAC).
fn scope_guarded_on_subresources(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("fence-scope");
    let statuser = format!("{ns}-status");
    let finalizer = format!("{ns}-finalize");
    cluster_role(
        k,
        &statuser,
        serde_json::json!([{"apiGroups": [""], "resources": ["namespaces/status"],
            "verbs": ["get", "patch", "update"]}]),
    );
    cluster_role(
        k,
        &finalizer,
        serde_json::json!([{"apiGroups": [""], "resources": ["namespaces/finalize"],
            "verbs": ["update"]}]),
    );
    for user in [&statuser, &finalizer] {
        k.ok(&[
            "create",
            "clusterrolebinding",
            user,
            &format!("--clusterrole={user}"),
            &format!("--user={user}"),
        ]);
    }
    let as_user = |user: &str, args: &[&str], stdin: &str| {
        let mut all = vec!["--as", user];
        all.extend_from_slice(args);
        k.run_with_stdin(&all, stdin)
    };
    let merge = |user: &str, patch: serde_json::Value| {
        as_user(
            user,
            &[
                "patch",
                "namespace",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
            "",
        )
    };
    // The whole object as the user would send it back, with `edit` applied to its metadata.
    let whole = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut object: serde_json::Value =
            serde_json::from_str(&k.ok(&["get", "namespace", &ns, "-o", "json"]))
                .expect("namespace as JSON");
        edit(&mut object["metadata"]);
        object.to_string()
    };
    let finalize = |body: &str| {
        as_user(
            &finalizer,
            &[
                "replace",
                "--raw",
                &format!("/api/v1/namespaces/{ns}/finalize"),
                "-f",
                "-",
            ],
            body,
        )
    };
    // The bindings have taken effect: a label by the status subresource goes through.
    wait_for(
        Duration::from_secs(30),
        "the bindings to take effect",
        || {
            merge(
                &statuser,
                serde_json::json!({"metadata": {"labels": {"team": "a"}}}),
            )
            .ok
            .then_some(())
        },
    );
    let r = finalize(&whole(&|m| m["labels"]["team"] = "b".into()));
    assert!(r.ok, "a label by finalize was refused: {}", r.stderr);
    assert_eq!(
        k.ok(&[
            "get",
            "namespace",
            &ns,
            "-o",
            "jsonpath={.metadata.labels.team}"
        ]),
        "b"
    );

    refused_by_scope_policy(
        &merge(
            &statuser,
            serde_json::json!({"metadata": {"annotations": {ANNOTATION: "pool=forged"}}}),
        ),
        "changing the scope by a merge patch of namespaces/status",
    );
    refused_by_scope_policy(
        &merge(
            &statuser,
            serde_json::json!({"metadata": {"annotations": {ANNOTATION: null}}}),
        ),
        "removing the scope by a merge patch of namespaces/status",
    );
    let json_patch = serde_json::json!([{
        "op": "replace",
        "path": format!("/metadata/annotations/{}", ANNOTATION.replace('/', "~1")),
        "value": "pool=forged"
    }]);
    refused_by_scope_policy(
        &as_user(
            &statuser,
            &[
                "patch",
                "namespace",
                &ns,
                "--subresource=status",
                "--type=json",
                "-p",
                &json_patch.to_string(),
            ],
            "",
        ),
        "changing the scope by a JSON patch of namespaces/status",
    );
    let applied = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "annotations": {ANNOTATION: "pool=forged"}}
    });
    refused_by_scope_policy(
        &as_user(
            &statuser,
            &[
                "apply",
                "--server-side",
                "--subresource=status",
                "--force-conflicts",
                "--field-manager=forger",
                "-f",
                "-",
            ],
            &applied.to_string(),
        ),
        "changing the scope by a server-side apply of namespaces/status",
    );
    refused_by_scope_policy(
        &as_user(
            &statuser,
            &["replace", "--subresource=status", "-f", "-"],
            &whole(&|m| m["annotations"][ANNOTATION] = "pool=forged".into()),
        ),
        "changing the scope by an update of namespaces/status",
    );
    refused_by_scope_policy(
        &finalize(&whole(&|m| {
            m["annotations"][ANNOTATION] = "pool=forged".into()
        })),
        "changing the scope by an update of namespaces/finalize",
    );
    refused_by_scope_policy(
        &finalize(&whole(&|m| {
            m["annotations"]
                .as_object_mut()
                .expect("annotations")
                .remove(ANNOTATION);
        })),
        "removing the scope by an update of namespaces/finalize",
    );
    assert_eq!(scope_of(k, &ns), EVERY_NODE_BUT_PROTECTED);
}
