//! The admission fences read as an attacker reads them: every path that writes a Namespace's
//! scope annotation, a node's part of a fan-out written with another node's token, and a node's
//! trace slots shared between namespaces.

use std::time::Duration;

use super::{cluster_role, denied, fan_out_yaml, install, node_output, ANNOTATION};
use crate::support::parts::{apply_status, part_names, part_yaml};
use crate::support::tokens::bound_token;
use crate::support::tracejobs::{stop, tracejob_yaml};
use crate::support::wait::wait_phase;
use crate::support::{
    must, wait_for, Agent, Env, Kubectl, Summarizer, Test, EVERY_NODE_BUT_PROTECTED,
};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "security_namespace_scope_is_guarded_on_status_and_finalize",
            run: scope_guarded_on_subresources,
        },
        Test {
            name: "security_agent_token_cannot_take_another_nodes_part",
            run: parts_named_for_their_node,
        },
        Test {
            name: "security_summarizer_counts_and_merges_only_valid_parts",
            run: summarizer_counts_valid_parts,
        },
        Test {
            name: "security_summarizer_merges_eight_32mib_outputs_in_its_memory_limit",
            run: summarizer_merges_in_bounded_memory,
        },
        Test {
            name: "security_one_namespace_cannot_take_all_of_a_nodes_traces",
            run: fair_shares_of_a_node,
        },
    ]
}

/// Refused at admission: by a fence (denied, forbidden) or by the CRD's own rules (invalid).
fn refused(r: &crate::support::kubectl::Run, what: &str) {
    assert!(!r.ok, "{what} was allowed");
    assert!(
        r.stderr.contains("denied")
            || r.stderr.contains("forbidden")
            || r.stderr.contains("is named TRACEJOB.NODE"),
        "{what}: {}",
        r.stderr
    );
}

/// As the agent writes a part: server-side apply, a create when absent.
fn apply_part(who: &Kubectl, yaml: &str) -> crate::support::kubectl::Run {
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
}

/// Node A's bound token, as a compromised node would use it: it cannot create node B's part
/// (TRACEJOB.B) before B does, nor a second part of its own under another name, nor a part with
/// a second owner; its own part, TRACEJOB.A, goes through, and so does B's own. Two fan-outs
/// whose old part names were the same (`p` on node `q-N`, `p-q` on node `N`) both run. A
/// fan-out whose name cannot name its parts is refused at `kubectl apply`.
fn parts_named_for_their_node(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("fence-parts");
    let dir = must(tempfile::tempdir(), "tempdir");
    let node_a = format!("{ns}-a");
    let node_b = format!("{ns}-b");
    let (_, a_config) = bound_token(env, &node_a, dir.path());
    let (_, b_config) = bound_token(env, &node_b, dir.path());
    let (as_a, as_b) = (k.with_kubeconfig(&a_config), k.with_kubeconfig(&b_config));
    k.apply(&ns, &fan_out_yaml("wide"));
    let uid = k.jsonpath(&ns, "tj/wide", ".metadata.uid");
    let owner = Some(("wide", uid.as_str()));
    let b_name = format!("wide.{node_b}");
    for (name, what) in [
        (b_name.clone(), "taking node B's part name"),
        (
            "wide-extra-1".to_string(),
            "a second part under another name",
        ),
        (format!("wide-{node_a}"), "a part named the old way"),
    ] {
        refused(
            &apply_part(
                &as_a,
                &part_yaml(&name, &ns, &node_a, &node_a, "wide", owner),
            ),
            &format!("node A {what}"),
        );
    }
    let own = format!("wide.{node_a}");
    let mut two_owners: serde_json::Value = must(
        serde_json::from_str(&part_yaml(&own, &ns, &node_a, &node_a, "wide", owner)),
        "part",
    );
    two_owners["metadata"]["ownerReferences"]
        .as_array_mut()
        .expect("owners")
        .push(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "name": "x",
            "uid": "00000000-0000-4000-8000-000000000000"
        }));
    denied(
        &apply_part(&as_a, &two_owners.to_string()),
        "node A's part with a second owner",
    );
    let r = apply_part(
        &as_a,
        &part_yaml(&own, &ns, &node_a, &node_a, "wide", owner),
    );
    assert!(r.ok, "node A's own part was refused: {}", r.stderr);
    let r = apply_status(
        &as_a,
        &ns,
        "tracejobnodes",
        &own,
        "tracejob-agent",
        &serde_json::json!({"phase": "Running", "id": "run-a"}),
    );
    assert!(r.ok, "node A's own status was refused: {}", r.stderr);
    let r = apply_part(
        &as_b,
        &part_yaml(&b_name, &ns, &node_b, &node_b, "wide", owner),
    );
    assert!(r.ok, "node B's own part was refused: {}", r.stderr);

    // `p` on node `q-N` and `p-q` on node `N` were both `p-q-N`: now each has its own.
    let (node_q, node_n) = (format!("q-{ns}"), ns.clone());
    let (_, q_config) = bound_token(env, &node_q, dir.path());
    let (_, n_config) = bound_token(env, &node_n, dir.path());
    for (job, node, config) in [("p", &node_q, &q_config), ("p-q", &node_n, &n_config)] {
        k.apply(&ns, &fan_out_yaml(job));
        let uid = k.jsonpath(&ns, &format!("tj/{job}"), ".metadata.uid");
        let name = format!("{job}.{node}");
        let r = apply_part(
            &k.with_kubeconfig(config),
            &part_yaml(&name, &ns, node, node, job, Some((job, &uid))),
        );
        assert!(r.ok, "the part {name} was refused: {}", r.stderr);
        assert_eq!(
            k.jsonpath(&ns, &format!("tjn/{name}"), ".spec.traceJob"),
            job
        );
    }

    // A fan-out's name is a label value without a dot, refused as the user applies it.
    for name in ["a.b".to_string(), "l".repeat(64)] {
        let r = k.run_with_stdin(&["apply", "-n", &ns, "-f", "-"], &fan_out_yaml(&name));
        assert!(!r.ok, "a fan-out named {name} was accepted");
        assert!(r.stderr.contains("no dot"), "{}", r.stderr);
    }
    // The same names on one node are fine.
    let r = k.run_with_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        &tracejob_yaml("a.b", &node_a, "BEGIN {}", ""),
    );
    assert!(r.ok, "{}", r.stderr);

    let parts = part_names(k, &ns);
    let q_part = format!("p.{node_q}");
    let n_part = format!("p-q.{node_n}");
    let mut expected = vec![
        own.as_str(),
        b_name.as_str(),
        q_part.as_str(),
        n_part.as_str(),
    ];
    expected.sort();
    assert_eq!(parts, expected);
}

/// Parts that no agent writes today (a second part of a node, a part with two owners, named
/// the old way, as from before an upgrade or written past the fence) are not counted: the
/// summary counts one valid part per node, says which it left out (message, condition
/// Rejected, a Warning Event, tracejob_summarizer_rejected on /metrics), and the merged output
/// holds only the outputs the valid parts' own agents wrote, saying which it left out.
fn summarizer_counts_valid_parts(env: &Env) {
    install(env);
    let k = &env.kubectl;
    let ns = env.namespace("fence-summary");
    let dir = must(tempfile::tempdir(), "tempdir");
    let (node_a, node_d) = (format!("{ns}-a"), format!("{ns}-d"));
    let (_, a_config) = bound_token(env, &node_a, dir.path());
    let (_, d_config) = bound_token(env, &node_d, dir.path());
    let (as_a, as_d) = (k.with_kubeconfig(&a_config), k.with_kubeconfig(&d_config));
    k.apply(&ns, &fan_out_yaml("wide"));
    let uid = k.jsonpath(&ns, "tj/wide", ".metadata.uid");
    let owner = Some(("wide", uid.as_str()));
    let run_a = "0b6c1f1e-0000-4000-8000-00000000000a";
    let run_d = "1c7d2a2f-0000-4000-8000-00000000000d";
    let completed = |run: &str, output: &str| serde_json::json!({"phase": "Completed", "id": run, "outputRef": {"name": output}});
    // Node A: its part and its output, as its agent writes them.
    let a_part = format!("wide.{node_a}");
    let r = apply_part(
        &as_a,
        &part_yaml(&a_part, &ns, &node_a, &node_a, "wide", owner),
    );
    assert!(r.ok, "{}", r.stderr);
    let r = as_a.run_with_stdin(
        &["create", "-f", "-"],
        &node_output(
            "wide-output-0b6c1f1e",
            &ns,
            &node_a,
            "wide",
            &uid,
            "@from_a: 1\n",
        ),
    );
    assert!(r.ok, "{}", r.stderr);
    let r = apply_status(
        &as_a,
        &ns,
        "tracejobnodes",
        &a_part,
        "tracejob-agent",
        &completed(run_a, "wide-output-0b6c1f1e"),
    );
    assert!(r.ok, "{}", r.stderr);
    // Node D: its own part, pointing (by a write past the fence) at an output node A wrote.
    let d_part = format!("wide.{node_d}");
    let r = apply_part(
        &as_d,
        &part_yaml(&d_part, &ns, &node_d, &node_d, "wide", owner),
    );
    assert!(r.ok, "{}", r.stderr);
    let r = as_a.run_with_stdin(
        &["create", "-f", "-"],
        &node_output(
            "wide-output-1c7d2a2f",
            &ns,
            &node_a,
            "wide",
            &uid,
            "@forged: 1000\n",
        ),
    );
    assert!(r.ok, "{}", r.stderr);
    let r = apply_status(
        k,
        &ns,
        "tracejobnodes",
        &d_part,
        "tracejob-agent",
        &completed(run_d, "wide-output-1c7d2a2f"),
    );
    assert!(r.ok, "{}", r.stderr);
    // Forged parts, as an admin could write them past the fence: a part of node F labelled for
    // node A, and a part of node E with a second owner.
    let (node_e, node_f) = (format!("{ns}-e"), format!("{ns}-f"));
    // The second owner exists: the garbage collector removes an owner reference that names
    // nothing (and would make this part valid again before the summarizer looks).
    k.ok(&["create", "configmap", "x", "-n", &ns]);
    let x_uid = k.jsonpath(&ns, "configmap/x", ".metadata.uid");
    for (name, node, label, extra_owner) in [
        (format!("wide.{node_f}"), &node_f, &node_a, false),
        (format!("wide.{node_e}"), &node_e, &node_e, true),
    ] {
        let mut part: serde_json::Value = must(
            serde_json::from_str(&part_yaml(&name, &ns, node, label, "wide", owner)),
            "part",
        );
        if extra_owner {
            part["metadata"]["ownerReferences"]
                .as_array_mut()
                .expect("owners")
                .push(serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap", "name": "x",
                    "uid": x_uid
                }));
        }
        k.apply(&ns, &part.to_string());
        let r = apply_status(
            k,
            &ns,
            "tracejobnodes",
            &name,
            "tracejob-agent",
            &completed(run_a, "wide-output-0b6c1f1e"),
        );
        assert!(r.ok, "{}", r.stderr);
    }
    let summarizer = Summarizer::of(env, &ns);
    let status = wait_for(Duration::from_secs(60), "the merged output", || {
        let json = k.ok(&["get", "tj/wide", "-n", &ns, "-o", "jsonpath={.status}"]);
        let status: serde_json::Value = serde_json::from_str(&json).ok()?;
        status.get("outputRef").is_some().then_some(status)
    });
    assert_eq!(status["progress"], "2/2", "{status:#}");
    assert_eq!(status["nodeCounts"]["completed"], 2, "{status:#}");
    let condition = |type_: &str| {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or_else(|| panic!("no condition {type_}: {status:#}"))
    };
    let rejected = condition("Rejected");
    assert_eq!(rejected["reason"], "InvalidParts");
    for name in [format!("wide.{node_f}"), format!("wide.{node_e}")] {
        assert!(
            rejected["message"]
                .as_str()
                .unwrap_or_default()
                .contains(&name),
            "{rejected:#}"
        );
    }
    let incomplete = condition("OutputIncomplete");
    assert!(
        incomplete["message"]
            .as_str()
            .unwrap_or_default()
            .contains("wide-output-1c7d2a2f"),
        "{incomplete:#}"
    );
    let merged = status["outputRef"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let text = k.ok(&[
        "get",
        "cm",
        &merged,
        "-n",
        &ns,
        "-o",
        "jsonpath={.data.output}",
    ]);
    assert!(text.contains("@from_a: 1"), "{text}");
    assert!(
        !text.contains("forged"),
        "a forged output was merged: {text}"
    );
    let events = k.ok(&[
        "get",
        "events.events.k8s.io",
        "-n",
        &ns,
        "-o",
        "jsonpath={range .items[*]}{.reason} {.regarding.name}{\"\\n\"}{end}",
    ]);
    for reason in ["InvalidParts wide", "InvalidOutputs wide"] {
        assert!(
            events.lines().any(|l| l == reason),
            "no Event {reason}: {events}"
        );
    }
    for reason in ["InvalidParts", "InvalidOutputs"] {
        let n = summarizer
            .metric(&format!(
                "tracejob_summarizer_rejected_total{{reason=\"{reason}\"}}"
            ))
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{reason}: {n}");
    }
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

/// A node with two trace slots (`--max-running-traces 2`, so one per namespace by default):
/// one namespace's second TraceJob waits (Waiting, MaxRunningTracesPerNamespace) while another
/// namespace's runs, and starts when its namespace's first ends.
fn fair_shares_of_a_node(env: &Env) {
    let k = &env.kubectl;
    let (greedy, other) = (env.namespace("fence-greedy"), env.namespace("fence-other"));
    let agent = Agent::start_with(
        env,
        &format!("{greedy}-node"),
        &env.cp.kubeconfig,
        &["--max-running-traces", "2"],
        &[],
    );
    let job = |name: &str| {
        tracejob_yaml(
            name,
            &agent.node,
            "tracepoint:raw_syscalls:sys_enter { @calls = count(); }",
            "",
        )
    };
    k.apply(&greedy, &job("first"));
    wait_phase(k, &greedy, "first", "Running", Duration::from_secs(60));
    k.apply(&greedy, &job("second"));
    wait_for(
        Duration::from_secs(60),
        "the namespace's second to wait",
        || {
            let reason = k.jsonpath(
                &greedy,
                "tj/second",
                ".status.conditions[?(@.type==\"Waiting\")].reason",
            );
            (reason == "MaxRunningTracesPerNamespace").then_some(())
        },
    );
    let message = k.jsonpath(&greedy, "tj/second", ".status.message");
    assert!(
        message.contains("--max-running-traces-per-namespace"),
        "{message}"
    );
    // The node's other slot is another namespace's to take.
    k.apply(&other, &job("theirs"));
    wait_phase(k, &other, "theirs", "Running", Duration::from_secs(60));
    assert_eq!(k.jsonpath(&greedy, "tj/second", ".status.phase"), "Pending");
    assert_eq!(agent.bpftraces().len(), 2);
    stop(k, &greedy, "first");
    wait_phase(k, &greedy, "second", "Running", Duration::from_secs(60));
    for (ns, name) in [(&greedy, "second"), (&other, "theirs")] {
        stop(k, ns, name);
        wait_phase(k, ns, name, "Completed", Duration::from_secs(60));
    }
}

/// The summarizer's memory limit in its manifest (daemonset/summarizer.yaml).
const SUMMARIZER_MEMORY: u64 = 512 * 1024 * 1024;

/// A cgroup v1 memory cgroup holding one process at `limit` bytes (no swap here), removed when
/// dropped (after its process has gone).
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(name: &str, limit: u64) -> MemoryCgroup {
        let dir = std::path::PathBuf::from("/sys/fs/cgroup/memory").join(name);
        must(std::fs::create_dir_all(&dir), "memory cgroup");
        must(
            std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()),
            "memory.limit_in_bytes",
        );
        MemoryCgroup(dir)
    }

    fn hold(&self, pid: i32) {
        must(
            std::fs::write(self.0.join("cgroup.procs"), pid.to_string()),
            "cgroup.procs",
        );
    }

    fn read(&self, file: &str) -> u64 {
        std::fs::read_to_string(self.0.join(file))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{file} of {}", self.0.display()))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Eight nodes' outputs of a fan-out, each 32 MiB of printed lines (gzip in the ConfigMap, as the
/// agent stores a large output), merged by a summarizer held to its manifest's memory limit: it
/// is never killed, and the merged output says which nodes it holds and which it left out (over
/// `--merge-budget-bytes`).
fn summarizer_merges_in_bounded_memory(env: &Env) {
    use std::io::Write;
    let k = &env.kubectl;
    let ns = env.namespace("fence-merge");
    k.apply(&ns, &fan_out_yaml("wide"));
    let uid = k.jsonpath(&ns, "tj/wide", ".metadata.uid");
    let owner = Some(("wide", uid.as_str()));
    for i in 0..8 {
        let node = format!("{ns}-n{i}");
        let run = format!("{i:08x}-0000-4000-8000-000000000000");
        let output = format!("wide-output-{i:08x}");
        let line = format!("node {i}: a line the program printed, as long as many are\n");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut written = 0;
        while written < 32 * 1024 * 1024 {
            must(gz.write_all(line.as_bytes()), "gzip");
            written += line.len();
        }
        let gz = must(gz.finish(), "gzip");
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": output, "namespace": ns,
                "labels": {"observe.tracejob.dev/node": node, "observe.tracejob.dev/tracejob": "wide"},
                "ownerReferences": [{
                    "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
                    "name": "wide", "uid": uid, "controller": true
                }]
            },
            "binaryData": {"output.gz": base64(&gz)}
        });
        let r = k.run_with_stdin(&["create", "-f", "-"], &cm.to_string());
        assert!(r.ok, "{}", r.stderr);
        let part = format!("wide.{node}");
        k.apply(&ns, &part_yaml(&part, &ns, &node, &node, "wide", owner));
        let r = apply_status(
            k,
            &ns,
            "tracejobnodes",
            &part,
            "tracejob-agent",
            &serde_json::json!({"phase": "Completed", "id": run, "outputRef": {"name": output}}),
        );
        assert!(r.ok, "{}", r.stderr);
    }
    let cgroup = MemoryCgroup::new(&format!("tracejob-e2e-{ns}"), SUMMARIZER_MEMORY);
    let mut summarizer = Summarizer::of(env, &ns);
    cgroup.hold(summarizer.proc.as_ref().expect("running").pid());
    let status = wait_for(Duration::from_secs(300), "the merged output", || {
        if let Some(exited) = summarizer
            .proc
            .as_mut()
            .and_then(|p| p.child.try_wait().ok().flatten())
        {
            panic!(
                "the summarizer exited ({exited}; memory.failcnt {}), during the merge",
                cgroup.read("memory.failcnt")
            );
        }
        let json = k.ok(&["get", "tj/wide", "-n", &ns, "-o", "jsonpath={.status}"]);
        let status: serde_json::Value = serde_json::from_str(&json).ok()?;
        status.get("outputRef").is_some().then_some(status)
    });
    let peak = cgroup.read("memory.max_usage_in_bytes");
    eprintln!("summarizer peak memory: {} MiB", peak / (1024 * 1024));
    assert!(peak < SUMMARIZER_MEMORY, "{peak}");
    let condition = |type_: &str| {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or_else(|| panic!("no condition {type_}: {status:#}"))
    };
    let stored = condition("OutputStored")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let incomplete = condition("OutputIncomplete")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(incomplete.contains("merge budget"), "{incomplete}");
    assert!(stored.contains(&format!("{ns}-n0")), "{stored}");
    eprintln!("{stored}\n{incomplete}");
    summarizer.proc = None;
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
