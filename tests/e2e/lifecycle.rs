//! The product as a user drives it: apply, patch stop, read the ConfigMap, `kubectl describe` and
//! `kubectl wait`; failures; deadlines; deletion; other nodes' TraceJobs; node limits.

use std::time::Duration;

use crate::support::host::{assert_no_bpftrace, disk_io};
use crate::support::outputs::{histogram_counts, output};
use crate::support::tracejobs::{sample_yaml, stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{must, wait_for, Agent, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "lifecycle_traces_past_max_running_wait_then_run_in_a_limited_cgroup",
            run: node_limits,
        },
        Test {
            name: "lifecycle_revoked_scope_stops_the_trace_within_10s_with_its_maps",
            run: revoked_scope_stops_the_trace,
        },
        Test {
            name: "lifecycle_biolatency_apply_stop_configmap",
            run: biolatency_apply_stop_configmap,
        },
        Test {
            name: "lifecycle_every_sample_runs_and_collects",
            run: every_sample_runs_and_collects,
        },
        Test {
            name: "lifecycle_syntax_error_fails_with_bpftrace_error",
            run: syntax_error_fails,
        },
        Test {
            name: "lifecycle_unknown_tracepoint_fails",
            run: unknown_tracepoint_fails,
        },
        Test {
            name: "lifecycle_exit_completes_without_stop",
            run: exit_completes_without_stop,
        },
        Test {
            name: "lifecycle_deadline_stops_and_collects",
            run: deadline_stops_and_collects,
        },
        Test {
            name: "lifecycle_delete_running_leaves_nothing",
            run: delete_running_leaves_nothing,
        },
        Test {
            name: "lifecycle_other_nodes_tracejob_untouched",
            run: other_nodes_tracejob_untouched,
        },
        Test {
            name: "native_describe_tells_the_story",
            run: describe_tells_the_story,
        },
        Test {
            name: "native_kubectl_wait_both_forms",
            run: kubectl_wait_both_forms,
        },
    ]
}

fn sample(name: &str, node: &str) -> String {
    sample_yaml(name, node)
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

/// `--max-running-traces`: a TraceJob past it waits Pending, saying why, and runs once a slot
/// frees; and the traces' host cgroup has the memory and pid limits the flags give.
fn node_limits(env: &Env) {
    let ns = env.namespace("limits");
    let k = &env.kubectl;
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &[
            "--max-running-traces",
            "1",
            "--host-cgroup-root",
            "/sys/fs/cgroup",
            "--traces-memory-max",
            "1073741824",
            "--traces-pids-max",
            "777",
        ],
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
    k.apply(&ns, &job("first"));
    wait_phase(k, &ns, "first", "Running", Duration::from_secs(30));
    k.apply(&ns, &job("second"));
    crate::support::wait_for(Duration::from_secs(30), "the second to wait", || {
        let reason = k.jsonpath(
            &ns,
            "tj/second",
            ".status.conditions[?(@.type==\"Waiting\")].reason",
        );
        (reason == "MaxRunningTraces").then_some(())
    });
    let message = k.jsonpath(&ns, "tj/second", ".status.message");
    assert!(message.contains("--max-running-traces"), "{message}");
    // It stays waiting while the first runs (well past the few hundred ms a start takes).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(k.jsonpath(&ns, "tj/second", ".status.phase"), "Pending");
    assert_eq!(agent.bpftraces().len(), 1, "two traces run at once");
    stop(k, &ns, "first");
    wait_phase(k, &ns, "second", "Running", Duration::from_secs(60));
    // The cgroup the traces run in, on this host (cgroup v1 controllers here; v2 knobs where
    // the host has them).
    let read = |path: &str| std::fs::read_to_string(path).map(|v| v.trim().to_string());
    let memory = read("/sys/fs/cgroup/memory/tracejob-traces/memory.limit_in_bytes")
        .or_else(|_| read("/sys/fs/cgroup/tracejob-traces/memory.max"));
    let pids = read("/sys/fs/cgroup/pids/tracejob-traces/pids.max")
        .or_else(|_| read("/sys/fs/cgroup/tracejob-traces/pids.max"));
    assert_eq!(memory.as_deref().ok(), Some("1073741824"), "{memory:?}");
    assert_eq!(pids.as_deref().ok(), Some("777"), "{pids:?}");
    let pid = k.jsonpath(&ns, "tj/second", ".status.pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains(":memory:") && l.ends_with("/tracejob-traces")),
        "bpftrace is not in the limited cgroup:\n{cgroups}"
    );
    stop(k, &ns, "second");
    wait_phase(k, &ns, "second", "Completed", Duration::from_secs(60));
}

/// A trace whose namespace may no longer trace its node (the annotation changed, or the node's
/// labels did) is stopped within 10 s, its maps collected, and ends NodeNotAllowed saying why;
/// an agent that takes a trace over checks again.
fn revoked_scope_stops_the_trace(env: &Env) {
    let ns = env.namespace("revoke");
    let k = &env.kubectl;
    let node = format!("{ns}-node");
    crate::support::register_node(env, &node, &[("zone", "a")]);
    let annotate = |selector: &str| {
        k.ok(&[
            "annotate",
            "--overwrite",
            "namespace",
            &ns,
            &format!("observe.tracejob.dev/node-selector={selector}"),
        ]);
    };
    annotate("zone=a");
    let mut agent = Agent::start(env, &node);
    let program = "tracepoint:raw_syscalls:sys_enter { @calls = count(); }";
    let job = |name: &str| {
        serde_json::json!({
            "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
            "metadata": {"name": name},
            "spec": {"nodeName": node, "program": program, "deadlineGracePeriod": 300}
        })
        .to_string()
    };
    let revoked_within = |name: &str, change: &dyn Fn(), says: &str| {
        wait_phase(k, &ns, name, "Running", Duration::from_secs(30));
        let t = std::time::Instant::now();
        change();
        crate::support::wait_for(Duration::from_secs(30), "the trace to stop", || {
            let phase = k.jsonpath(&ns, &format!("tj/{name}"), ".status.phase");
            (phase == "Stopping" || phase == "Failed").then_some(())
        });
        let took = t.elapsed();
        assert!(
            took <= Duration::from_secs(10),
            "stopped {took:?} after the change"
        );
        wait_phase(k, &ns, name, "Failed", Duration::from_secs(60));
        let reason = k.jsonpath(
            &ns,
            &format!("tj/{name}"),
            ".status.conditions[?(@.type==\"Failed\")].reason",
        );
        let message = k.jsonpath(&ns, &format!("tj/{name}"), ".status.message");
        assert_eq!(reason, "NodeNotAllowed", "{message}");
        assert!(message.contains(says), "{message:?} does not say {says:?}");
        assert!(
            output(k, &ns, name, "output").contains("@calls: "),
            "the maps were not kept"
        );
    };
    // The namespace's annotation changes.
    k.apply(&ns, &job("by-annotation"));
    revoked_within("by-annotation", &|| annotate("zone=b"), "(zone=b)");
    // The node's labels change.
    annotate("zone=a");
    k.apply(&ns, &job("by-label"));
    revoked_within(
        "by-label",
        &|| {
            k.ok(&["label", "--overwrite", "node", &node, "zone=c"]);
        },
        "(zone=a)",
    );
    // Changed while no agent ran: the next agent checks before going on.
    k.ok(&["label", "--overwrite", "node", &node, "zone=a"]);
    k.apply(&ns, &job("on-takeover"));
    wait_phase(k, &ns, "on-takeover", "Running", Duration::from_secs(30));
    let proc = agent.proc.as_mut().expect("agent");
    proc.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(proc.wait_exit(Duration::from_secs(10)).is_some());
    annotate("zone=b");
    agent.restart(&[]);
    wait_phase(k, &ns, "on-takeover", "Failed", Duration::from_secs(60));
    let message = k.jsonpath(&ns, "tj/on-takeover", ".status.message");
    assert!(message.contains("may no longer trace"), "{message}");
}

fn biolatency_apply_stop_configmap(env: &Env) {
    let ns = env.namespace("bio");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &sample("biolatency", &agent.node));
    wait_phase(k, &ns, "biolatency", "Running", Duration::from_secs(30));
    let status = k.jsonpath(
        &ns,
        "tj/biolatency",
        ".status.pid} {.status.probes} {.status.id",
    );
    let fields: Vec<&str> = status.split(' ').collect();
    assert_eq!(
        agent.bpftraces(),
        vec![fields[0].parse::<i32>().unwrap_or(-1)],
        "status.pid is the bpftrace"
    );
    assert_eq!(
        fields[1], "3",
        "biolatency attaches 3 probes (2 tracepoints and END)"
    );
    assert!(uuid_like(fields[2]), "status.id is a UUID: {status}");
    disk_io();
    stop(k, &ns, "biolatency");
    wait_phase(k, &ns, "biolatency", "Completed", Duration::from_secs(30));
    assert_eq!(k.jsonpath(&ns, "tj/biolatency", ".status.exitCode"), "0");
    let text = output(k, &ns, "biolatency", "output");
    assert!(text.contains("@usecs: \n"), "{text}");
    let counts = histogram_counts(&text);
    assert!(
        counts.iter().sum::<u64>() > 0,
        "no I/O was counted:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with('[') && l.contains(", ") && l.contains(")") && l.contains("|@")),
        "{text}"
    );
    let maps: serde_json::Value = must(
        serde_json::from_str(&output(k, &ns, "biolatency", "maps.json")),
        "maps.json",
    );
    let usecs = maps["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "@usecs"))
        .cloned()
        .unwrap_or_default();
    let json_counts: Vec<u64> = usecs["entries"][0]["hist"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["count"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(
        json_counts, counts,
        "maps.json holds the same buckets as the text"
    );
    // The ConfigMap is labelled and owned by the TraceJob.
    let cm = k.jsonpath(&ns, "tj/biolatency", ".status.outputRef.name");
    let meta = k.jsonpath(&ns, &format!("configmap/{cm}"), ".metadata.ownerReferences[0].kind} {.metadata.labels.observe\\.tracejob\\.dev/tracejob} {.metadata.labels.observe\\.tracejob\\.dev/node");
    assert_eq!(meta, format!("TraceJob biolatency {}", agent.node));
    assert_no_bpftrace(&agent);
    let conditions = k.jsonpath(
        &ns,
        "tj/biolatency",
        ".status.conditions[?(@.type==\"Completed\")].status",
    );
    assert_eq!(conditions, "True");
}

fn every_sample_runs_and_collects(env: &Env) {
    let ns = env.namespace("samples");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    let names = ["syscount", "rwsize", "runqlat", "biolatency"];
    // Every sample is run: these here, podsyscount (it needs a running pod) in the cluster test,
    // podfunclatency and podprofile in userspace.rs (they need a container).
    let mut samples: Vec<String> = must(
        std::fs::read_dir(crate::support::repo_root().join("bpf-samples")),
        "bpf-samples",
    )
    .flatten()
    .filter_map(|e| {
        e.file_name()
            .to_string_lossy()
            .strip_suffix(".yaml")
            .map(String::from)
    })
    .collect();
    samples.sort();
    let mut covered: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    covered.extend(["podsyscount", "podfunclatency", "podprofile"].map(String::from));
    // Run and drawn by trace_metrics::flamegraph_profile_*.
    covered.push("profile".into());
    covered.sort();
    assert_eq!(samples, covered, "a sample no test runs");
    for name in names {
        k.apply(&ns, &sample(name, &agent.node));
    }
    for name in names {
        wait_phase(k, &ns, name, "Running", Duration::from_secs(60));
    }
    disk_io();
    for name in names {
        stop(k, &ns, name);
    }
    for name in names {
        wait_phase(k, &ns, name, "Completed", Duration::from_secs(60));
    }
    for (name, map) in [
        ("syscount", "@syscalls["),
        ("rwsize", "@write_bytes["),
        ("runqlat", "@usecs:"),
    ] {
        let text = output(k, &ns, name, "output");
        assert!(text.contains(map), "{name}: {map} missing from\n{text}");
    }
}

fn syntax_error_fails(env: &Env) {
    let ns = env.namespace("syntax");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml(
            "bad",
            &agent.node,
            "tracepoint:raw_syscalls:sys_enter { @x = count( }",
            "",
        ),
    );
    wait_phase(k, &ns, "bad", "Failed", Duration::from_secs(15));
    let message = k.jsonpath(&ns, "tj/bad", ".status.message");
    assert!(message.contains("ERROR: syntax error"), "{message}");
    assert!(!message.contains("RLIMIT_MEMLOCK"), "{message}");
    assert_eq!(k.jsonpath(&ns, "tj/bad", ".status.exitCode"), "1");
    assert_eq!(
        k.jsonpath(
            &ns,
            "tj/bad",
            ".status.conditions[?(@.type==\"Failed\")].status"
        ),
        "True"
    );
    // The agent keeps serving: the next TraceJob runs.
    k.apply(
        &ns,
        &tracejob_yaml(
            "good",
            &agent.node,
            "BEGIN { printf(\"hi\\n\"); exit(); }",
            "",
        ),
    );
    wait_phase(k, &ns, "good", "Completed", Duration::from_secs(15));
}

fn unknown_tracepoint_fails(env: &Env) {
    let ns = env.namespace("unknown-tp");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml(
            "tp",
            &agent.node,
            "tracepoint:nosuch:thing { @x = count(); }",
            "",
        ),
    );
    wait_phase(k, &ns, "tp", "Failed", Duration::from_secs(15));
    let message = k.jsonpath(&ns, "tj/tp", ".status.message");
    assert!(
        message.contains("tracepoint not found: nosuch:thing"),
        "{message}"
    );
}

fn exit_completes_without_stop(env: &Env) {
    let ns = env.namespace("exit");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    let program =
        "tracepoint:raw_syscalls:sys_enter { @n = count(); }\ninterval:ms:500 { exit(); }";
    k.apply(&ns, &tracejob_yaml("ends", &agent.node, program, ""));
    wait_phase(k, &ns, "ends", "Completed", Duration::from_secs(30));
    let text = output(k, &ns, "ends", "output");
    assert!(text.contains("@n: "), "{text}");
    assert_eq!(k.jsonpath(&ns, "tj/ends", ".spec.stop"), "false");
}

fn deadline_stops_and_collects(env: &Env) {
    let ns = env.namespace("deadline");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml("dl", &agent.node, SYSCOUNT, "  deadline: 3\n"),
    );
    wait_phase(k, &ns, "dl", "Running", Duration::from_secs(30));
    let start = std::time::Instant::now();
    wait_phase(k, &ns, "dl", "Completed", Duration::from_secs(30));
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "stopped before its deadline"
    );
    let message = k.jsonpath(&ns, "tj/dl", ".status.message");
    assert!(message.contains("deadline"), "{message}");
    assert!(output(k, &ns, "dl", "output").contains("@syscalls["));
}

fn delete_running_leaves_nothing(env: &Env) {
    let ns = env.namespace("delete");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("gone", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "gone", "Running", Duration::from_secs(30));
    assert_eq!(agent.bpftraces().len(), 1);
    k.ok(&["delete", "-n", &ns, "tj", "gone"]);
    assert_no_bpftrace(&agent);
    // With the garbage collector running, nothing of the job stays in the namespace.
    wait_for(
        Duration::from_secs(30),
        "no ConfigMap of the deleted TraceJob",
        || {
            let cms = k.ok(&[
                "get",
                "configmap",
                "-n",
                &ns,
                "-l",
                "observe.tracejob.dev/tracejob=gone",
                "-o",
                "name",
            ]);
            cms.trim().is_empty().then_some(())
        },
    );
    wait_for(
        Duration::from_secs(10),
        "the run's files to be removed",
        || {
            let left = std::fs::read_dir(agent.state_dir.join("jobs"))
                .map(|d| d.count())
                .unwrap_or(0);
            (left == 0).then_some(())
        },
    );
}

/// The API server filters each agent's watch by node (spec.nodeName is a selectable field of the
/// CRD): TraceJobs of other nodes, created and changed, never reach the agent.
fn other_nodes_tracejob_untouched(env: &Env) {
    let ns = env.namespace("other-node");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    wait_for(
        Duration::from_secs(30),
        "the agent to list TraceJobs",
        || (agent.get("/readyz").0 == 200).then_some(()),
    );
    let before = agent.metric(r#"tracejob_watch_events_total{watch="node"}"#);
    let theirs: Vec<String> = (0..10).map(|i| format!("theirs-{i}")).collect();
    for name in &theirs {
        k.apply(
            &ns,
            &tracejob_yaml(name, &format!("{ns}-elsewhere"), SYSCOUNT, ""),
        );
        k.ok(&["label", "-n", &ns, "tj", name, "touched=once"]);
        k.ok(&["annotate", "-n", &ns, "tj", name, "touched=twice"]);
    }
    // Watch events arrive in order: once this one has been handled, any event of the TraceJobs
    // above would have reached the agent before it.
    k.apply(
        &ns,
        &tracejob_yaml("ours", &agent.node, "BEGIN { exit(); }", "  stop: true\n"),
    );
    wait_phase(k, &ns, "ours", "Completed", Duration::from_secs(30));
    let received = agent.metric(r#"tracejob_watch_events_total{watch="node"}"#) - before;
    // The 30 changes above would be 30 events; "ours" makes a few of its own (created, claimed,
    // completed).
    assert!(
        (1.0..=5.0).contains(&received),
        "the agent received {received} watch events; other nodes' TraceJobs reached it"
    );
    for name in &theirs {
        assert_eq!(
            k.jsonpath(&ns, &format!("tj/{name}"), ".status"),
            "",
            "another node's TraceJob got a status"
        );
        assert!(
            !agent.logs().contains(name.as_str()),
            "the agent heard of {name}"
        );
    }
    assert!(agent.bpftraces().is_empty());
}

fn describe_tells_the_story(env: &Env) {
    let ns = env.namespace("describe");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("story", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "story", "Running", Duration::from_secs(30));
    stop(k, &ns, "story");
    wait_phase(k, &ns, "story", "Completed", Duration::from_secs(30));
    k.apply(
        &ns,
        &tracejob_yaml("broken", &agent.node, "BEGIN { @x = count( }", ""),
    );
    wait_phase(k, &ns, "broken", "Failed", Duration::from_secs(30));
    let story = wait_for(
        Duration::from_secs(20),
        "the Events in kubectl describe",
        || {
            let d = k.ok(&["describe", "tj", "-n", &ns, "story"]);
            d.contains("Completed").then_some(d)
        },
    );
    for expected in [
        "Started",
        "attached 1 probes",
        "Stopping",
        "sent SIGINT: spec.stop was set",
        "Completed",
        "bytes of output in ConfigMap",
    ] {
        assert!(
            story.contains(expected),
            "kubectl describe lacks {expected:?}:\n{story}"
        );
    }
    let broken = wait_for(Duration::from_secs(20), "the Failed event", || {
        let d = k.ok(&["describe", "tj", "-n", &ns, "broken"]);
        d.contains("Warning").then_some(d)
    });
    assert!(
        broken.contains("Failed") && broken.contains("syntax error"),
        "{broken}"
    );
}

fn kubectl_wait_both_forms(env: &Env) {
    let ns = env.namespace("wait");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("w", &agent.node, SYSCOUNT, ""));
    k.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=jsonpath={.status.phase}=Running",
        "--timeout=30s",
        "tj/w",
    ]);
    k.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=condition=Running",
        "--timeout=30s",
        "tj/w",
    ]);
    stop(k, &ns, "w");
    k.ok(&[
        "wait",
        "-n",
        &ns,
        "--for=condition=Completed",
        "--timeout=30s",
        "tj/w",
    ]);
    assert!(output(k, &ns, "w", "output").contains("@syscalls["));
}
