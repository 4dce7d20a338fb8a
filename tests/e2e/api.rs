//! The TraceJob API as the server enforces it: the generated CRD, validation, columns, explain.

use std::process::Command;
use std::time::Duration;

use crate::support::tracejobs::tracejob_yaml;
use crate::support::wait::wait_phase;
use crate::support::{must, wait_for, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "api_valid_tracejob_is_accepted_with_defaults",
            run: valid_tracejob_is_accepted_with_defaults,
        },
        Test {
            name: "api_invalid_tracejobs_are_rejected_naming_the_field",
            run: invalid_tracejobs_are_rejected,
        },
        Test {
            name: "api_get_shows_printer_columns",
            run: get_shows_printer_columns,
        },
        Test {
            name: "api_explain_describes_fields",
            run: explain_describes_fields,
        },
        Test {
            name: "api_status_subresource",
            run: status_subresource,
        },
        Test {
            name: "api_server_and_kubectl_are_the_pinned_release",
            run: server_and_kubectl_are_the_pinned_release,
        },
    ]
}

/// The header and first row of a kubectl table, cut at the header's column starts (so an empty
/// cell stays in its column).
fn columns(table: &str) -> Vec<(String, String)> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let row = lines.next().unwrap_or_default();
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let end = starts.get(k + 1).copied().unwrap_or(usize::MAX);
            let cut = |line: &str| {
                line.get(start..end.min(line.len()))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            (cut(header), cut(row))
        })
        .collect()
}

fn valid_tracejob_is_accepted_with_defaults(env: &Env) {
    let ns = env.namespace("api-valid");
    let yaml = "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {name: ok}\nspec: {nodeName: nowhere, program: 'BEGIN { exit(); }', args: ['1']}\n";
    env.kubectl.apply(&ns, yaml);
    let spec = env.kubectl.jsonpath(
        &ns,
        "tj/ok",
        ".spec.deadline} {.spec.deadlineGracePeriod} {.spec.stop",
    );
    assert_eq!(spec, "3600 30 false", "defaults come from the schema");
}

fn invalid_tracejobs_are_rejected(env: &Env) {
    let ns = env.namespace("api-invalid");
    let big = "x".repeat(64 * 1024 + 1);
    let cases: Vec<(&str, String, &str)> = vec![
        ("missing program", "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {name: a}\nspec: {nodeName: node-a}\n".into(), "spec.program"),
        ("missing nodeName", "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {name: b}\nspec: {program: 'BEGIN {}'}\n".into(), "spec.nodeName"),
        ("empty program", "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {name: c}\nspec: {nodeName: node-a, program: ''}\n".into(), "spec.program"),
        ("program over 64 KiB", format!("apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: d}}\nspec: {{nodeName: node-a, program: '{big}'}}\n"), "spec.program"),
        ("negative deadline", "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {name: e}\nspec: {nodeName: node-a, program: 'BEGIN {}', deadline: -5}\n".into(), "spec.deadline"),
        ("zero grace period", "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {name: f}\nspec: {nodeName: node-a, program: 'BEGIN {}', deadlineGracePeriod: 0}\n".into(), "spec.deadlineGracePeriod"),
        ("65 args", format!("apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: h}}\nspec: {{nodeName: node-a, program: 'BEGIN {{}}', args: [{}]}}\n", vec!["a"; 65].join(", ")), "spec.args"),
        ("an arg over 4 KiB", format!("apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: i}}\nspec: {{nodeName: node-a, program: 'BEGIN {{}}', args: ['{}']}}\n", "x".repeat(4097)), "spec.args[0]"),
    ];
    for (what, yaml, field) in cases {
        let r = env
            .kubectl
            // --validate=false: the API server itself must reject it, not kubectl's schema copy.
            .run_with_stdin(&["apply", "--validate=false", "-n", &ns, "-f", "-"], &yaml);
        assert!(!r.ok, "{what}: the server accepted it");
        assert!(
            r.stderr.contains(field),
            "{what}: the error does not name {field}: {}",
            r.stderr
        );
    }
    // A program of exactly the limit is accepted.
    let exact = format!("apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: g}}\nspec: {{nodeName: node-a, program: '{}'}}\n", "x".repeat(64 * 1024));
    env.kubectl.apply(&ns, &exact);
    assert!(
        env.kubectl
            .ok(&["get", "tj", "-n", &ns, "-o", "name"])
            .trim()
            == "tracejob.observe.tracejob.dev/g"
    );
}

fn get_shows_printer_columns(env: &Env) {
    let ns = env.namespace("api-columns");
    let agent = crate::support::Agent::start(env, &format!("{ns}-node"));
    env.kubectl.apply(
        &ns,
        &tracejob_yaml("cols", &agent.node, "BEGIN { exit(); }", ""),
    );
    wait_phase(
        &env.kubectl,
        &ns,
        "cols",
        "Completed",
        Duration::from_secs(30),
    );
    let out = env.kubectl.ok(&["get", "tj", "-n", &ns]);
    let table = columns(&out);
    let names: Vec<&str> = table.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["NAME", "NODE", "NODES", "PHASE", "PROBES", "OUTPUT", "AGE"],
        "{out}"
    );
    let cell = |name: &str| {
        table
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no column {name}:\n{out}"))
    };
    assert_eq!(cell("NODE"), agent.node, "{out}");
    // A single-node TraceJob has no progress over nodes.
    assert_eq!(cell("NODES"), "", "{out}");
    assert_eq!(cell("PHASE"), "Completed", "{out}");
    assert_eq!(cell("PROBES"), "1", "{out}");
    assert!(cell("OUTPUT").starts_with("cols-output-"), "{out}");
}

fn explain_describes_fields(env: &Env) {
    let out = wait_for(
        Duration::from_secs(30),
        "the CRD schema to be published",
        || {
            let r = env.kubectl.run(&["explain", "tracejob.spec.program"]);
            (r.ok && r.stdout.contains("The bpftrace program text")).then_some(r.stdout)
        },
    );
    assert!(out.contains("64 KiB"), "{out}");
    let deadline = env.kubectl.ok(&["explain", "tracejob.spec.deadline"]);
    assert!(deadline.contains("Seconds the trace may run"), "{deadline}");
}

fn status_subresource(env: &Env) {
    let ns = env.namespace("api-status");
    env.kubectl
        .apply(&ns, &tracejob_yaml("st", "node-x", "BEGIN { exit(); }", ""));
    // The status subresource takes the status; a write of the main resource ignores it.
    let url = format!(
        "{}/apis/observe.tracejob.dev/v1alpha1/namespaces/{ns}/tracejobs/st/status",
        env.cp.server_url()
    );
    let out = must(
        Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(env.cp.ca_file())
            .args([
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/merge-patch+json",
                "-H",
            ])
            .arg(format!(
                "Authorization: Bearer {}",
                "tracejob-test-admin-token"
            ))
            .args(["-d", r#"{"status":{"phase":"Running","probes":3}}"#])
            .arg(&url)
            .output(),
        "curl",
    );
    assert!(
        out.status.success(),
        "status patch failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        env.kubectl
            .jsonpath(&ns, "tj/st", ".status.phase} {.status.probes"),
        "Running 3"
    );
    let bad = env.kubectl.run(&[
        "patch",
        "-n",
        &ns,
        "tj/st",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Completed"}}"#,
    ]);
    assert!(bad.ok, "{}", bad.stderr);
    assert_eq!(
        env.kubectl.jsonpath(&ns, "tj/st", ".status.phase"),
        "Running",
        "a main-resource write changed status"
    );
    let rejected = env.kubectl.run(&[
        "patch",
        "-n",
        &ns,
        "tj/st",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Exploded"}}"#,
    ]);
    assert!(
        !rejected.ok && rejected.stderr.contains("status.phase"),
        "an unknown phase was accepted: {}",
        rejected.stderr
    );
}

/// `kubectl version` reports the release the build module pins, for the server and for kubectl,
/// and it is one of the supported range (1.34 or later).
fn server_and_kubectl_are_the_pinned_release(env: &Env) {
    let pinned = crate::support::control_plane::pinned_release();
    let out: serde_json::Value = must(
        serde_json::from_str(&env.kubectl.ok(&["version", "-o", "json"])),
        "kubectl version -o json",
    );
    for side in ["serverVersion", "clientVersion"] {
        assert_eq!(
            out[side]["gitVersion"].as_str(),
            Some(pinned.as_str()),
            "{side}: {out}"
        );
    }
    let minor: u32 = out["serverVersion"]["minor"]
        .as_str()
        .and_then(|m| m.trim_end_matches('+').parse().ok())
        .unwrap_or_else(|| panic!("no minor version: {out}"));
    assert_eq!(out["serverVersion"]["major"].as_str(), Some("1"), "{out}");
    assert!(minor >= 34, "1.{minor} is older than the supported range");
}
