//! One trace, many nodes: a node selector fans a TraceJob out to every agent whose node
//! matches; each reports in a TraceJobNode of its own, the summarizer keeps the TraceJob's summary
//! and stores the merged maps, and `kubectl tracejob output` shows them.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::tracejobs::stop;
use crate::support::{must, pool, register_node, wait_for, Agent, Env, Kubectl, Summarizer, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "fanout_selector_runs_on_matching_nodes_and_merges",
            run: runs_on_matching_nodes_and_merges,
        },
        Test {
            name: "fanout_summary_writer_fails_over_within_30s",
            run: summary_writer_fails_over,
        },
        Test {
            name: "fanout_plugin_run_nodes_prints_the_merged_maps",
            run: plugin_run_nodes,
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

/// The TraceJobNodes of a TraceJob, as `kubectl get tjn -l` lists them.
fn parts(k: &Kubectl, ns: &str, name: &str) -> Vec<serde_json::Value> {
    let selector = format!("observe.tracejob.dev/tracejob={name}");
    let json = k.ok(&["get", "-n", ns, "tjn", "-l", &selector, "-o", "json"]);
    let list: serde_json::Value = must(serde_json::from_str(&json), "TraceJobNode list");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// (node, phase) of each TraceJobNode of a TraceJob.
fn entries(k: &Kubectl, ns: &str, name: &str) -> Vec<(String, String)> {
    let mut e: Vec<(String, String)> = parts(k, ns, name)
        .iter()
        .map(|p| {
            (
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["status"]["phase"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
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

/// `kubectl tracejob ARGS` in namespace `ns`: stdout, as text.
fn plugin(env: &Env, ns: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&crate::support::plugin_stdout(env, ns, args)).into_owned()
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
    let _summarizer = Summarizer::of(env, &ns);
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
    // Each part is owned by the TraceJob (so it goes with it) and labelled with its node; the
    // printer columns show node and phase.
    let uid = k.jsonpath(&ns, "tj/wide", ".metadata.uid");
    for p in parts(k, &ns, "wide") {
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["uid"].as_str(), owner["controller"].as_bool()),
            (Some(uid.as_str()), Some(true)),
            "{p}"
        );
        assert_eq!(
            p["metadata"]["labels"]["observe.tracejob.dev/node"], p["spec"]["nodeName"],
            "{p}"
        );
    }
    let table = k.ok(&[
        "get",
        "tjn",
        "-n",
        &ns,
        "-l",
        "observe.tracejob.dev/tracejob=wide",
    ]);
    assert!(
        table.starts_with("NAME") && table.contains("NODE") && table.contains("PROBES"),
        "{table}"
    );
    assert!(
        table.contains(&format!("{} ", names[0])) && table.contains("Running"),
        "{table}"
    );

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
    wait_for(
        Duration::from_secs(30),
        "the summary and the merged output",
        || {
            (k.jsonpath(
                &ns,
                "tj/wide",
                ".status.phase} {.status.progress} {.status.mergedNodes",
            ) == "Completed 2/2 2")
                .then_some(())
        },
    );
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
        "observe.tracejob.dev/tracejob=wide,observe.tracejob.dev/node",
        "-o",
        "jsonpath={.items[*].metadata.labels.observe\\.tracejob\\.dev/node}",
    ]);
    let mut labelled: Vec<&str> = labels.split_whitespace().collect();
    labelled.sort();
    assert_eq!(labelled, [names[0].as_str(), names[1].as_str()]);

    // The merged histogram is the two nodes' added bucket by bucket: in the ConfigMap that
    // status.outputRef names, as plain kubectl shows it, and as the plugin merges it.
    let merged_cm = k.jsonpath(&ns, "tj/wide", ".status.outputRef.name");
    let stored: serde_json::Value = must(
        serde_json::from_str(&k.jsonpath(
            &ns,
            &format!("configmap/{merged_cm}"),
            ".data.maps\\.json",
        )),
        "merged maps.json",
    );
    let stored_text = k.jsonpath(&ns, &format!("configmap/{merged_cm}"), ".data.output");
    assert!(
        stored_text.contains("@h:") && stored_text.contains("@calls: "),
        "{stored_text}"
    );
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
    let stored_h: std::collections::BTreeMap<i64, u64> = hist(&stored, "@h")
        .into_iter()
        .filter(|(_, c)| *c > 0)
        .collect();
    assert_eq!(
        stored_h, sum,
        "the stored merged histogram is not the sum of the nodes'"
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

/// Two summarizers, one holding the Lease: killed, the other takes the summary over within 30 s.
fn summary_writer_fails_over(env: &Env) {
    let ns = env.namespace("fanout-failover");
    let k = &env.kubectl;
    let (_, _agents) = pool(env, &ns, 2);
    let mut writers = [
        Summarizer::start(env, &ns, "summarizer", "one"),
        Summarizer::start(env, &ns, "summarizer", "two"),
    ];
    let program = "tracepoint:raw_syscalls:sys_enter { @calls = count(); }";
    k.apply(
        &ns,
        &fanned("fb", &format!(r#"{{"pool": "{ns}"}}"#), program),
    );
    wait_for(Duration::from_secs(60), "the Running summary", || {
        (k.jsonpath(&ns, "tj/fb", ".status.phase} {.status.progress") == "Running 0/2")
            .then_some(())
    });
    let holder = k.jsonpath(&ns, "lease/summarizer", ".spec.holderIdentity");
    let (gone, other) = if holder == "one" {
        (0, "two")
    } else {
        (1, "one")
    };
    assert_eq!(
        writers[gone].identity, holder,
        "the Lease names neither summarizer"
    );
    let proc = writers[gone].proc.as_mut().expect("summarizer");
    proc.signal(Signal::SIGKILL);
    assert!(proc.wait_exit(Duration::from_secs(10)).is_some());
    let killed = std::time::Instant::now();
    stop(k, &ns, "fb");
    wait_for(Duration::from_secs(60), "both nodes completed", || {
        (entries(k, &ns, "fb").iter().all(|(_, p)| p == "Completed")).then_some(())
    });
    wait_for(
        Duration::from_secs(40),
        "the summary from the other summarizer",
        || {
            (k.jsonpath(&ns, "tj/fb", ".status.phase} {.status.progress") == "Completed 2/2")
                .then_some(())
        },
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(30),
        "the summary was taken over after {took:?}"
    );
    assert_eq!(
        k.jsonpath(&ns, "lease/summarizer", ".spec.holderIdentity"),
        other
    );
}

/// `kubectl tracejob run nodes -l ...` as a user runs it: the trace ends itself on each node and
/// the merged maps are printed; `get` shows the progress over the nodes.
fn plugin_run_nodes(env: &Env) {
    let ns = env.namespace("fanout-plugin");

    let (names, _agents) = pool(env, &ns, 2);
    let _summarizer = Summarizer::of(env, &ns);
    let selector = format!("pool={ns}");
    let out = plugin(
        env,
        &ns,
        &[
            "run",
            "nodes",
            "-l",
            &selector,
            "--name",
            "both",
            "-e",
            "BEGIN { @x = count(); exit(); }",
        ],
    );
    assert!(
        out.lines().any(|l| l.trim() == "@x: 2"),
        "the counts of both nodes added:\n{out}"
    );
    let get = plugin(env, &ns, &["get", "both"]);
    assert!(
        get.contains("2/2 nodes") && get.contains("Completed"),
        "{get}"
    );
    let apart = plugin(env, &ns, &["output", "both", "--per-node"]);
    for n in &names {
        assert!(apart.contains(&format!("==> node {n} <==")), "{apart}");
    }
    assert_eq!(apart.matches("@x: 1").count(), 2, "{apart}");
}

fn scope_on_each_node(env: &Env) {
    let ns = env.namespace("fanout-scope");
    let k = &env.kubectl;
    let (a, b) = (format!("{ns}-a"), format!("{ns}-b"));
    register_node(env, &a, &[("pool", "scoped"), ("zone", "a")]);
    register_node(env, &b, &[("pool", "scoped"), ("zone", "b")]);
    k.ok(&[
        "annotate",
        "--overwrite",
        "namespace",
        &ns,
        "observe.tracejob.dev/node-selector=zone=a",
    ]);
    let agents = [Agent::start(env, &a), Agent::start(env, &b)];
    let _summarizer = Summarizer::of(env, &ns);
    k.apply(
        &ns,
        &fanned(
            "scoped",
            r#"{"pool": "scoped"}"#,
            "BEGIN { @x = count(); exit(); }",
        ),
    );
    // The refused node writes nothing: no TraceJobNode, nothing in the TraceJob; it counts it.
    wait_for(Duration::from_secs(30), "the refusal counted", || {
        (agents[1].metric_if_present("tracejob_fanout_refused_total{reason=\"NodeNotAllowed\"}")
            == Some(1.0))
        .then_some(())
    });
    wait_entries(k, &ns, "scoped", &[(&a, "Completed")]);
    wait_for(Duration::from_secs(30), "the summary", || {
        (k.jsonpath(&ns, "tj/scoped", ".status.phase} {.status.progress") == "Completed 1/1")
            .then_some(())
    });
    assert!(agents[1].bpftraces().is_empty());
    let tj = k.ok(&["get", "tj", "-n", &ns, "scoped", "-o", "json"]);
    assert!(!tj.contains(&b), "node {b} is named in the TraceJob:\n{tj}");
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
        // What would reach every agent at once.
        (
            serde_json::json!({"nodeSelector": {}, "program": "BEGIN {}"}),
            "must select something",
        ),
        (
            serde_json::json!({"nodeSelector": {"matchLabels": {}}, "program": "BEGIN {}"}),
            "must select something",
        ),
        (
            serde_json::json!({"nodeName": "", "program": "BEGIN {}"}),
            "spec.nodeName",
        ),
        (
            serde_json::json!({"nodeName": "Not_A_Node", "program": "BEGIN {}"}),
            "spec.nodeName",
        ),
    ] {
        let yaml = serde_json::json!({
            "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
            "metadata": {"name": "bad"}, "spec": spec
        });
        let r = env
            .kubectl
            .run_with_stdin(&["apply", "-n", &ns, "-f", "-"], &yaml.to_string());
        assert!(!r.ok && r.stderr.contains(says), "{spec}: {}", r.stderr);
    }
}
