//! One trace, many nodes: a node selector fans a TraceJob out to every agent whose node
//! matches; each reports its own entry, the summary follows them, and `kubectl tracejob output`
//! merges the maps.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::lifecycle::stop;
use crate::support::{must, register_node, wait_for, Agent, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "fanout_selector_runs_on_matching_nodes_and_merges",
            run: runs_on_matching_nodes_and_merges,
        },
        Test {
            name: "fanout_summary_is_written_when_its_writers_are_gone",
            run: summary_when_its_writers_are_gone,
        },
        Test {
            name: "fanout_namespace_scope_applies_on_each_node",
            run: scope_on_each_node,
        },
        Test {
            name: "fanout_spec_takes_node_name_or_selector_not_both",
            run: one_or_the_other,
        },
    ]
}

fn fanned(name: &str, labels: &str, program: &str) -> String {
    let selector: serde_json::Value = serde_json::from_str(labels).expect("labels");
    serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": name},
        "spec": {"nodeSelector": {"matchLabels": selector}, "program": program, "deadlineGracePeriod": 300}
    })
    .to_string()
}

/// (node, phase) of each entry of status.nodes.
fn entries(k: &Kubectl, ns: &str, name: &str) -> Vec<(String, String)> {
    let json = k.ok(&["get", "-n", ns, "tj", name, "-o", "json"]);
    let tj: serde_json::Value = must(serde_json::from_str(&json), "TraceJob json");
    let mut e: Vec<(String, String)> = tj["status"]["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    (
                        n["node"].as_str().unwrap_or_default().to_string(),
                        n["phase"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    e.sort();
    e
}

fn wait_entries(k: &Kubectl, ns: &str, name: &str, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect();
    wait_for(Duration::from_secs(120), "the nodes' entries", || {
        (entries(k, ns, name) == want).then_some(())
    });
}

/// `kubectl tracejob ARGS` (the plugin, through kubectl) in namespace `ns`: stdout.
fn plugin(env: &Env, ns: &str, args: &[&str]) -> String {
    let dir = std::path::PathBuf::from(env!("CARGO_BIN_EXE_kubectl-tracejob"));
    let path = format!(
        "{}:{}",
        dir.parent().expect("dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = must(
        Command::new(&env.kubectl.path)
            .env("KUBECONFIG", &env.kubectl.kubeconfig)
            .env("PATH", path)
            .args(["tracejob", "-n", ns])
            .args(args)
            .output(),
        "kubectl tracejob",
    );
    assert!(
        out.status.success(),
        "kubectl tracejob {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The histogram buckets of `map` as maps.json has them.
fn hist(maps: &serde_json::Value, map: &str) -> Vec<(i64, u64)> {
    let entries = maps["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == map))
        .and_then(|m| m["entries"].as_array())
        .cloned()
        .unwrap_or_default();
    entries
        .first()
        .and_then(|e| e["hist"].as_array())
        .map(|b| {
            b.iter()
                .map(|b| {
                    (
                        b["low"].as_i64().unwrap_or(-1),
                        b["count"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn runs_on_matching_nodes_and_merges(env: &Env) {
    let ns = env.namespace("fanout");
    let k = &env.kubectl;
    let names: Vec<String> = (1..=3).map(|i| format!("{ns}-n{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        let pool = if i < 2 { "traced" } else { "other" };
        register_node(env, n, &[("pool", pool)]);
    }
    let mut agents: Vec<Agent> = names.iter().map(|n| Agent::start(env, n)).collect();
    let program = "tracepoint:raw_syscalls:sys_enter { @h = hist(args->id); @calls = count(); }";
    k.apply(&ns, &fanned("wide", r#"{"pool": "traced"}"#, program));
    wait_entries(
        k,
        &ns,
        "wide",
        &[(&names[0], "Running"), (&names[1], "Running")],
    );
    // The summary follows the entries a moment later (the writer debounces it).
    wait_for(Duration::from_secs(30), "the Running summary", || {
        (k.jsonpath(&ns, "tj/wide", ".status.phase} {.status.progress") == "Running 0/2")
            .then_some(())
    });
    assert!(agents[2].bpftraces().is_empty(), "the third node runs it");

    // An agent killed mid-run: the next one takes its trace over, and its node completes.
    let proc = agents[1].proc.as_mut().expect("agent");
    proc.signal(Signal::SIGKILL);
    assert!(proc.wait_exit(Duration::from_secs(10)).is_some());
    agents[1].restart(&[]);
    wait_for(Duration::from_secs(30), "the takeover", || {
        agents[1]
            .logs()
            .contains("taking over a trace started by an earlier agent")
            .then_some(())
    });
    stop(k, &ns, "wide");
    wait_entries(
        k,
        &ns,
        "wide",
        &[(&names[0], "Completed"), (&names[1], "Completed")],
    );
    wait_for(Duration::from_secs(30), "the summary", || {
        (k.jsonpath(&ns, "tj/wide", ".status.phase} {.status.progress") == "Completed 2/2")
            .then_some(())
    });
    assert!(
        !agents[2].logs().contains("wide"),
        "the third node's agent acted on it:\n{}",
        agents[2].logs()
    );
    // Each node's output in a ConfigMap of its own, labelled with its node.
    let labels = k.ok(&[
        "get",
        "configmap",
        "-n",
        &ns,
        "-l",
        "observe.tracejob.dev/tracejob=wide",
        "-o",
        "jsonpath={.items[*].metadata.labels.observe\\.tracejob\\.dev/node}",
    ]);
    let mut labelled: Vec<&str> = labels.split_whitespace().collect();
    labelled.sort();
    assert_eq!(labelled, [names[0].as_str(), names[1].as_str()]);

    // The merged histogram is the two nodes' added bucket by bucket.
    let merged: serde_json::Value = must(
        serde_json::from_str(&plugin(env, &ns, &["output", "wide", "-o", "json"])),
        "json",
    );
    let per_node: Vec<Vec<(i64, u64)>> = names[..2]
        .iter()
        .map(|n| {
            let cm = k.ok(&[
                "get",
                "configmap",
                "-n",
                &ns,
                "-l",
                &format!("observe.tracejob.dev/tracejob=wide,observe.tracejob.dev/node={n}"),
                "-o",
                "jsonpath={.items[0].data.maps\\.json}",
            ]);
            hist(&must(serde_json::from_str(&cm), "maps.json"), "@h")
        })
        .collect();
    let mut sum: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
    for (low, count) in per_node.iter().flatten() {
        *sum.entry(*low).or_default() += count;
    }
    let merged_h: std::collections::BTreeMap<i64, u64> = hist(&merged, "@h")
        .into_iter()
        .filter(|(_, c)| *c > 0)
        .collect();
    sum.retain(|_, c| *c > 0);
    assert!(!sum.is_empty(), "no histogram to merge");
    assert_eq!(
        merged_h, sum,
        "the merged histogram is not the sum of the nodes'"
    );
    let text = plugin(env, &ns, &["output", "wide"]);
    assert!(text.contains("@h:") && text.contains("@calls: "), "{text}");
    let apart = plugin(env, &ns, &["output", "wide", "--per-node"]);
    for n in &names[..2] {
        assert!(apart.contains(&format!("==> node {n} <==")), "{apart}");
    }
    let get = plugin(env, &ns, &["get", "wide"]);
    assert!(
        get.contains("2/2 nodes") && get.contains("Completed"),
        "{get}"
    );
}

/// The agents of the first two nodes by name write the summary; with both gone, the third's
/// writes it after its stand-by time.
fn summary_when_its_writers_are_gone(env: &Env) {
    let ns = env.namespace("fanout-fallback");
    let k = &env.kubectl;
    let names: Vec<String> = (1..=3).map(|i| format!("{ns}-n{i}")).collect();
    for n in &names {
        register_node(env, n, &[("pool", &ns)]);
    }
    let mut agents: Vec<Agent> = names.iter().map(|n| Agent::start(env, n)).collect();
    let program = "tracepoint:raw_syscalls:sys_enter { @calls = count(); }";
    k.apply(
        &ns,
        &fanned("fb", &format!(r#"{{"pool": "{ns}"}}"#), program),
    );
    let running: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "Running")).collect();
    wait_entries(k, &ns, "fb", &running);
    wait_for(Duration::from_secs(30), "the Running summary", || {
        (k.jsonpath(&ns, "tj/fb", ".status.phase} {.status.progress") == "Running 0/3")
            .then_some(())
    });
    for agent in &mut agents[..2] {
        let proc = agent.proc.as_mut().expect("agent");
        proc.signal(Signal::SIGKILL);
        assert!(proc.wait_exit(Duration::from_secs(10)).is_some());
    }
    stop(k, &ns, "fb");
    wait_for(Duration::from_secs(120), "the third node's entry", || {
        entries(k, &ns, "fb")
            .contains(&(names[2].clone(), "Completed".to_string()))
            .then_some(())
    });
    // Its stand-by time is 10 to 20 s.
    wait_for(
        Duration::from_secs(60),
        "the summary from the third node",
        || {
            (k.jsonpath(&ns, "tj/fb", ".status.phase} {.status.progress") == "Running 1/3")
                .then_some(())
        },
    );
}

fn scope_on_each_node(env: &Env) {
    let ns = env.namespace("fanout-scope");
    let k = &env.kubectl;
    let (a, b) = (format!("{ns}-a"), format!("{ns}-b"));
    register_node(env, &a, &[("pool", "scoped"), ("zone", "a")]);
    register_node(env, &b, &[("pool", "scoped"), ("zone", "b")]);
    k.ok(&[
        "annotate",
        "namespace",
        &ns,
        "observe.tracejob.dev/node-selector=zone=a",
    ]);
    let _agents = [Agent::start(env, &a), Agent::start(env, &b)];
    k.apply(
        &ns,
        &fanned(
            "scoped",
            r#"{"pool": "scoped"}"#,
            "BEGIN { @x = count(); exit(); }",
        ),
    );
    wait_entries(k, &ns, "scoped", &[(&a, "Completed"), (&b, "Failed")]);
    wait_for(Duration::from_secs(30), "the summary", || {
        let s = k.jsonpath(&ns, "tj/scoped", ".status.phase} {.status.message");
        (s.starts_with("Completed") && s.contains(&format!("failed on {b} (NodeNotAllowed)")))
            .then_some(())
    });
}

fn one_or_the_other(env: &Env) {
    let ns = env.namespace("fanout-spec");
    for (spec, says) in [
        (
            serde_json::json!({"nodeName": "x", "nodeSelector": {"matchLabels": {"a": "b"}}, "program": "BEGIN {}"}),
            "not both",
        ),
        (
            serde_json::json!({"target": {"pod": "p"}, "nodeSelector": {"matchLabels": {"a": "b"}}, "program": "BEGIN {}"}),
            "takes no spec.nodeSelector",
        ),
        (serde_json::json!({"program": "BEGIN {}"}), "must be given"),
    ] {
        let yaml = serde_json::json!({
            "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
            "metadata": {"name": "bad"}, "spec": spec
        });
        let r = env.kubectl.run_with_stdin(
            &["apply", "--validate=false", "-n", &ns, "-f", "-"],
            &yaml.to_string(),
        );
        assert!(!r.ok && r.stderr.contains(says), "{spec}: {}", r.stderr);
    }
}
