//! Native to kubectl and visible to operators: Events, conditions for `kubectl wait`, live output,
//! /metrics, /healthz and /readyz, and maps.json that renders back to bpftrace's text.

use std::time::Duration;

use crate::api::tracejob_yaml;
use crate::lifecycle::{disk_io, output, stop, wait_phase, SYSCOUNT};
use crate::support::{must, register_node, wait_for, Agent, ControlPlane, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "native_describe_tells_the_story",
            run: describe_tells_the_story,
        },
        Test {
            name: "native_kubectl_wait_both_forms",
            run: kubectl_wait_both_forms,
        },
        Test {
            name: "native_live_output_before_stop",
            run: live_output_before_stop,
        },
        Test {
            name: "native_metrics_follow_a_lifecycle",
            run: metrics_follow_a_lifecycle,
        },
        Test {
            name: "native_readyz_only_after_sync",
            run: readyz_only_after_sync,
        },
        Test {
            name: "native_maps_json_renders_back_to_bpftrace_text",
            run: maps_json_renders_back,
        },
    ]
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

fn live_output_before_stop(env: &Env) {
    let ns = env.namespace("live");
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--live-interval", "1"],
        &[],
    );
    let k = &env.kubectl;
    let program = "interval:ms:300 { @ticks = count(); printf(\"tick\\n\"); }\ninterval:s:1 { print(@ticks); }";
    k.apply(&ns, &tracejob_yaml("l", &agent.node, program, ""));
    wait_phase(k, &ns, "l", "Running", Duration::from_secs(30));
    let live = wait_for(
        Duration::from_secs(20),
        "live output in the ConfigMap",
        || {
            let cm = k.jsonpath(&ns, "tj/l", ".status.outputRef.name");
            if cm.is_empty() {
                return None;
            }
            let text = output(k, &ns, "l", "output");
            (text.contains("tick") && text.contains("@ticks: ")).then_some(text)
        },
    );
    assert_eq!(
        k.jsonpath(&ns, "tj/l", ".status.phase"),
        "Running",
        "output was visible only after the stop"
    );
    assert!(live.lines().filter(|l| *l == "tick").count() >= 1, "{live}");
    // The live copy is the newest part of the output; its annotation says where it begins.
    let cm = k.jsonpath(&ns, "tj/l", ".status.outputRef.name");
    let annotation = |name: &str| {
        k.jsonpath(
            &ns,
            &format!("configmap/{cm}"),
            &format!(".metadata.annotations.{}", name.replace('.', "\\.")),
        )
    };
    let offset: usize = must(
        annotation("observe.tracejob.dev/live-offset").parse(),
        "live-offset",
    );
    stop(k, &ns, "l");
    wait_phase(k, &ns, "l", "Completed", Duration::from_secs(30));
    let last = output(k, &ns, "l", "output");
    assert!(
        last.get(offset..)
            .is_some_and(|rest| rest.starts_with(&live)),
        "the live copy is not the output from its offset {offset}:\n{live}\n--- final ---\n{last}"
    );
    assert_eq!(
        annotation("observe.tracejob.dev/live"),
        "",
        "the final output is not marked live"
    );
}

fn metrics_follow_a_lifecycle(env: &Env) {
    let ns = env.namespace("metrics");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    wait_for(Duration::from_secs(20), "/metrics to answer", || {
        (agent.get("/metrics").0 == 200).then_some(())
    });
    assert_eq!(agent.metric("tracejob_traces_started_total"), 0.0);
    // The release the agent runs, as bpftrace itself reports it.
    let out = must(
        std::process::Command::new("bpftrace")
            .arg("--version")
            .output(),
        "bpftrace --version",
    );
    let version = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .map(String::from)
        .expect("bpftrace prints its version");
    assert_eq!(
        agent.metric(&format!("tracejob_bpftrace_info{{version=\"{version}\"}}")),
        1.0
    );
    k.apply(&ns, &tracejob_yaml("m", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "m", "Running", Duration::from_secs(30));
    assert_eq!(agent.metric("tracejob_traces_running"), 1.0);
    assert_eq!(agent.metric("tracejob_traces_started_total"), 1.0);
    assert_eq!(agent.metric("tracejob_start_latency_seconds_count"), 1.0);
    assert!(agent.metric("tracejob_start_latency_seconds_sum") > 0.0);
    stop(k, &ns, "m");
    wait_phase(k, &ns, "m", "Completed", Duration::from_secs(30));
    wait_for(Duration::from_secs(5), "completed counted", || {
        (agent.metric("tracejob_traces_completed_total") == 1.0).then_some(())
    });
    assert_eq!(agent.metric("tracejob_traces_running"), 0.0);
    assert_eq!(agent.metric("tracejob_collect_latency_seconds_count"), 1.0);
    k.apply(
        &ns,
        &tracejob_yaml("bad", &agent.node, "BEGIN { @x = count( }", ""),
    );
    wait_phase(k, &ns, "bad", "Failed", Duration::from_secs(30));
    wait_for(Duration::from_secs(5), "failure counted by reason", || {
        (agent.metric_if_present("tracejob_traces_failed_total{reason=\"BpftraceFailed\"}")
            == Some(1.0))
        .then_some(())
    });
    assert!(
        agent.metric("tracejob_api_requests_total{method=\"WATCH\",resource=\"tracejobs\"}") >= 1.0
    );
    assert!(
        agent.metric("tracejob_api_requests_total{method=\"PATCH\",resource=\"tracejobs\"}") >= 3.0
    );
}

/// Its own control plane: the agent starts while the API server is down.
fn readyz_only_after_sync(_env: &Env) {
    let own = Env::new(ControlPlane::start());
    own.install_crd();
    register_node(&own, "ready-node", &[]);
    own.cp.stop_apiserver();
    let agent = Agent::start_registered("ready-node", &own.cp.kubeconfig, &[], &[]);
    wait_for(Duration::from_secs(20), "/healthz", || {
        (agent.get("/healthz").0 == 200).then_some(())
    });
    for _ in 0..10 {
        assert_eq!(
            agent.get("/readyz").0,
            503,
            "ready before listing TraceJobs"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    own.cp.start_apiserver();
    wait_for(
        Duration::from_secs(60),
        "/readyz after the first list",
        || (agent.get("/readyz").0 == 200).then_some(()),
    );
    drop(agent);
    drop(own);
}

fn maps_json_renders_back(env: &Env) {
    let ns = env.namespace("render");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &crate::api::sample_yaml("rwsize", &agent.node));
    wait_phase(k, &ns, "rwsize", "Running", Duration::from_secs(30));
    disk_io();
    stop(k, &ns, "rwsize");
    wait_phase(k, &ns, "rwsize", "Completed", Duration::from_secs(30));
    let text = output(k, &ns, "rwsize", "output");
    let maps: tracejob_agent::output::maps::Maps = must(
        serde_json::from_str(&output(k, &ns, "rwsize", "maps.json")),
        "maps.json",
    );
    let mut histograms = 0;
    for map in &maps.maps {
        for entry in &map.entries {
            if let tracejob_agent::output::maps::Value::Hist(buckets) = &entry.value {
                let header = format!(
                    "{}[{}]: \n",
                    map.name,
                    entry.key.as_deref().unwrap_or_default()
                );
                let rendered = format!(
                    "{header}{}",
                    tracejob_agent::output::maps::render_hist(buckets, maps.bpftrace.as_deref())
                );
                assert!(text.contains(&rendered), "maps.json renders differently from bpftrace:\n{rendered}\n--- bpftrace printed ---\n{text}");
                histograms += 1;
            }
        }
    }
    assert!(
        histograms >= 2,
        "too few histograms to compare: {histograms}"
    );
}
