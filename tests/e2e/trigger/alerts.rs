//! Alerts become traces: a metric breach traces its node once and the resolve stops it, an alert
//! on a pod traces that pod, a namespace scoped away runs nothing, and limits hold under a burst.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{curl, made, status, trigger_yaml, Loop, PROGRAM};
use crate::support::outputs::output;
use crate::support::pods::{report_running, FakeContainer};
use crate::support::wait::wait_phase;
use crate::support::{must, wait_for, Agent, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "trigger_metric_breach_traces_the_node_once_and_resolve_stops_it",
            run: breach_traces_the_node,
        },
        Test {
            name: "trigger_alert_on_a_pod_traces_that_pod",
            run: alert_on_a_pod,
        },
        Test {
            name: "trigger_in_a_namespace_scoped_away_runs_nothing",
            run: scoped_away,
        },
        Test {
            name: "trigger_limits_hold_under_a_burst_of_50_alerts",
            run: burst_limits,
        },
    ]
}

/// A pod on `node` whose container `app` runs as `container_id`, as the kubelet would report it.
fn pod_on(k: &Kubectl, ns: &str, pod: &str, node: &str, container_id: &str) {
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": ns},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "localhost/none:1"}]}
    });
    k.apply(ns, &object.to_string());
    report_running(k, ns, pod, "app", container_id);
}

/// An authenticated notification is answered within 100 ms (as curl times the call).
fn assert_answered_at_once(lp: &Loop) {
    let out = must(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-m", "5"])
            .args(["-w", "%{http_code} %{time_total}", "-X", "POST", "-H"])
            .arg(format!("Authorization: Bearer {}", lp.token))
            .args(["-d", r#"{"version":"4","status":"firing","alerts":[]}"#])
            .arg(format!("http://127.0.0.1:{}/alerts", lp.receiver_port))
            .output(),
        "curl",
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, secs) = text.split_once(' ').unwrap_or(("0", "9"));
    assert_eq!(code, "200", "{text}");
    let secs: f64 = secs.trim().parse().unwrap_or(9.0);
    assert!(secs < 0.1, "a notification took {secs} s to be answered");
}

fn breach_traces_the_node(env: &Env) {
    let ns = env.namespace("trigger-node");
    let k = &env.kubectl;
    let rule = "HighLatency";
    let agent = Agent::start(env, &format!("{ns}-node"));
    let node = agent.node.clone();
    let lp = Loop::start(env, &ns, rule, true, "2s");
    k.apply(
        &ns,
        &trigger_yaml(
            "io",
            &[
                &format!("alertname=\"{rule}\""),
                "severity=~\"page|critical\"",
            ],
            "Node",
            600,
            "{}",
        ),
    );
    // Unauthenticated and wrongly authenticated calls are refused and counted.
    let alert = r#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"HighLatency","severity":"page","node":"x"},"startsAt":"2025-01-01T00:00:00Z","fingerprint":"0000000000000001"}]}"#;
    let url = format!("http://127.0.0.1:{}/alerts", lp.receiver_port);
    let (code, _) = curl(&["-X", "POST", "-d", alert, &url]);
    assert_eq!(code, 401, "a call without a token was not refused");
    let (code, _) = curl(&[
        "-X",
        "POST",
        "-H",
        "Authorization: Bearer not-the-token",
        "-d",
        alert,
        &url,
    ]);
    assert_eq!(code, 401, "a call with a wrong token was not refused");
    assert_eq!(
        lp.metric(r#"tracejob_trigger_notifications_total{result="unauthorized"}"#),
        2.0
    );
    assert!(
        made(k, &ns, "io").is_empty(),
        "a refused call made a TraceJob"
    );
    assert_answered_at_once(&lp);
    // The breach: the rule fires, Alertmanager calls the receiver, the TraceJob runs on the node.
    let breach = Instant::now();
    lp.set(&[(&format!("node=\"{node}\""), 0.9)]);
    let name = wait_for(Duration::from_secs(60), "a TraceJob from the alert", || {
        made(k, &ns, "io").first().cloned()
    });
    wait_phase(k, &ns, &name, "Running", Duration::from_secs(60));
    let running = breach.elapsed();
    let call = lp
        .relay
        .calls()
        .first()
        .copied()
        .expect("a webhook call was seen");
    let from_call = call.elapsed();
    eprintln!(
        "trigger loop: breach to Running {:.2} s (breach to the webhook call {:.2} s); webhook call to Running {:.0} ms",
        running.as_secs_f64(),
        (call - breach).as_secs_f64(),
        from_call.as_secs_f64() * 1000.0
    );
    assert_eq!(
        k.jsonpath(&ns, &format!("tj/{name}"), ".spec.nodeName"),
        node
    );
    let owner = k.jsonpath(
        &ns,
        &format!("tj/{name}"),
        ".metadata.ownerReferences[0].kind",
    );
    assert_eq!(owner, "TraceTrigger");
    let labels = k.jsonpath(
        &ns,
        &format!("tj/{name}"),
        ".metadata.annotations.observe\\.tracejob\\.dev/alert-labels",
    );
    assert!(labels.contains(&format!("\"node\":\"{node}\"")), "{labels}");
    // Repeated notifications (every 2 s) make no second TraceJob.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        made(k, &ns, "io"),
        std::slice::from_ref(&name),
        "one TraceJob per alert and target"
    );
    wait_for(Duration::from_secs(10), "the trigger's status", || {
        (status(k, &ns, "io", ".status.tracesCreated") == "1").then_some(())
    });
    assert!(!status(k, &ns, "io", ".status.lastFired").is_empty());
    // The plugin shows which TraceJobs the trigger made.
    let listed = must(
        Command::new(env!("CARGO_BIN_EXE_kubectl-tracejob"))
            .args(["get", "-n", &ns, "--trigger", "io"])
            .env("KUBECONFIG", &env.cp.kubeconfig)
            .output(),
        "kubectl tracejob get --trigger",
    );
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains(&name) && listed.contains(&node), "{listed}");
    // Resolved: the trace is stopped early (its deadline is 10 minutes), its maps kept.
    let resolve = Instant::now();
    lp.set(&[(&format!("node=\"{node}\""), 0.1)]);
    wait_phase(k, &ns, &name, "Completed", Duration::from_secs(60));
    assert!(resolve.elapsed() < Duration::from_secs(120));
    assert_eq!(k.jsonpath(&ns, &format!("tj/{name}"), ".spec.stop"), "true");
    assert!(
        output(k, &ns, &name, "output").contains("@calls: "),
        "the maps were not collected"
    );
    assert!(lp.metric("tracejob_trigger_traces_stopped_total") >= 1.0);
    // It flaps: firing again within the cooldown starts nothing, and says so.
    lp.set(&[(&format!("node=\"{node}\""), 0.9)]);
    wait_for(Duration::from_secs(60), "the flap suppressed", || {
        (status(k, &ns, "io", ".status.suppressed.Cooldown") == "1").then_some(())
    });
    assert_eq!(
        made(k, &ns, "io"),
        std::slice::from_ref(&name),
        "a second TraceJob in the cooldown"
    );
    assert_eq!(
        lp.metric(r#"tracejob_trigger_traces_suppressed_total{reason="Cooldown"}"#),
        1.0
    );
    assert_eq!(lp.metric("tracejob_trigger_traces_created_total"), 1.0);
    let row = k.ok(&["get", "tt", "-n", &ns, "io", "--no-headers"]);
    assert!(row.split_whitespace().nth(1) == Some("Node"), "{row}");
    lp.set(&[(&format!("node=\"{node}\""), 0.1)]);
    assert!(agent.bpftraces().is_empty());
}

fn alert_on_a_pod(env: &Env) {
    let ns = env.namespace("trigger-pod");
    let k = &env.kubectl;
    let rule = "PodSlow";
    let agent = Agent::start(env, &format!("{ns}-node"));
    let container = FakeContainer::start(&ns);
    pod_on(k, &ns, "web", &agent.node, &container.id);
    let lp = Loop::start(env, &ns, rule, true, "1h");
    k.apply(
        &ns,
        &trigger_yaml(
            "slow",
            &[&format!("alertname=\"{rule}\"")],
            "Pod",
            600,
            "{}",
        )
        .replace(
            PROGRAM,
            "tracepoint:raw_syscalls:sys_enter /pid == $container_pid/ { @calls = count(); }",
        ),
    );
    let breach = Instant::now();
    lp.set(&[(&format!("namespace=\"{ns}\",pod=\"web\""), 0.9)]);
    let name = wait_for(Duration::from_secs(60), "a TraceJob from the alert", || {
        made(k, &ns, "slow").first().cloned()
    });
    wait_phase(k, &ns, &name, "Running", Duration::from_secs(60));
    eprintln!(
        "trigger loop (pod): breach to Running {:.2} s",
        breach.elapsed().as_secs_f64()
    );
    assert_eq!(
        k.jsonpath(&ns, &format!("tj/{name}"), ".spec.target.pod"),
        "web"
    );
    assert_eq!(
        k.jsonpath(&ns, &format!("tj/{name}"), ".status.nodeName"),
        agent.node
    );
    lp.set(&[(&format!("namespace=\"{ns}\",pod=\"web\""), 0.1)]);
    wait_phase(k, &ns, &name, "Completed", Duration::from_secs(60));
    assert!(output(k, &ns, &name, "output").contains("@calls"));
    assert_eq!(made(k, &ns, "slow").len(), 1);
}

fn scoped_away(env: &Env) {
    let ns = env.namespace("trigger-scoped");
    let k = &env.kubectl;
    let rule = "Scoped";
    let agent = Agent::start(env, &format!("{ns}-node"));
    // The namespace may trace no node this test has: the trigger grants nothing more.
    k.ok(&[
        "annotate",
        "--overwrite",
        "namespace",
        &ns,
        "observe.tracejob.dev/node-selector=zone=elsewhere",
    ]);
    let lp = Loop::start(env, &ns, rule, true, "1h");
    k.apply(
        &ns,
        &trigger_yaml("t", &[&format!("alertname=\"{rule}\"")], "Node", 600, "{}"),
    );
    lp.set(&[(&format!("node=\"{}\"", agent.node), 0.9)]);
    let name = wait_for(Duration::from_secs(60), "a TraceJob from the alert", || {
        made(k, &ns, "t").first().cloned()
    });
    wait_phase(k, &ns, &name, "Failed", Duration::from_secs(60));
    let reason = k.jsonpath(
        &ns,
        &format!("tj/{name}"),
        ".status.conditions[?(@.type==\"Failed\")].reason",
    );
    assert_eq!(reason, "NodeNotAllowed");
    assert!(agent.bpftraces().is_empty(), "a bpftrace ran");
    assert!(
        !agent.logs().contains("bpftrace started"),
        "{}",
        agent.logs()
    );
}

fn burst_limits(env: &Env) {
    let ns = env.namespace("trigger-burst");
    let k = &env.kubectl;
    // Alertmanager alone: the test sends it the alerts, as Prometheus would.
    let lp = Loop::start(env, &ns, "unused", false, "1h");
    let matchers = ["alertname=\"Burst\""];
    k.apply(
        &ns,
        &trigger_yaml(
            "running",
            &matchers,
            "Node",
            600,
            "{cooldownSeconds: 0, maxRunning: 3, maxPerHour: 100}",
        ),
    );
    k.apply(
        &ns,
        &trigger_yaml(
            "hourly",
            &matchers,
            "Node",
            600,
            "{cooldownSeconds: 0, maxRunning: 100, maxPerHour: 5}",
        ),
    );
    // Each on a node of its own that no agent runs: no trace ends, so each stays running.
    let alerts: Vec<serde_json::Value> = (0..50)
        .map(
            |i| serde_json::json!({"labels": {"alertname": "Burst", "node": format!("{ns}-n{i}")}}),
        )
        .collect();
    let body = serde_json::Value::from(alerts).to_string();
    let (code, text) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &format!("http://127.0.0.1:{}/api/v2/alerts", lp.alertmanager_port),
    ]);
    assert_eq!(code, 200, "Alertmanager refused the alerts: {text}");
    wait_for(Duration::from_secs(60), "every alert decided", || {
        let r = status(k, &ns, "running", ".status.suppressed.MaxRunning");
        let h = status(k, &ns, "hourly", ".status.suppressed.MaxPerHour");
        (r == "47" && h == "45").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(made(k, &ns, "running").len(), 3);
    assert_eq!(made(k, &ns, "hourly").len(), 5);
    assert_eq!(status(k, &ns, "running", ".status.tracesCreated"), "3");
    assert_eq!(status(k, &ns, "hourly", ".status.tracesCreated"), "5");
    assert_eq!(
        status(k, &ns, "running", ".status.suppressed.MaxRunning"),
        "47"
    );
    assert_eq!(
        status(k, &ns, "hourly", ".status.suppressed.MaxPerHour"),
        "45"
    );
    assert_eq!(lp.metric("tracejob_trigger_traces_created_total"), 8.0);
    let calls = lp.relay.calls().len();
    assert!(
        calls >= 50,
        "Alertmanager made {calls} webhook calls, not one per alert"
    );
    assert_answered_at_once(&lp);
}
