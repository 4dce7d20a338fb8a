//! What operators watch: /metrics through a TraceJob's life, /readyz only after the caches synced.

use std::time::Duration;

use crate::support::tracejobs::{stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{must, register_node, wait_for, Agent, ControlPlane, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "native_metrics_follow_a_lifecycle",
            run: metrics_follow_a_lifecycle,
        },
        Test {
            name: "native_readyz_only_after_sync",
            run: readyz_only_after_sync,
        },
    ]
}

fn metrics_follow_a_lifecycle(env: &Env) {
    let ns = env.namespace("metrics");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    // Ready, as a scrape would wait for: /metrics answers from the process's first moment, but the
    // bpftrace version is learnt (by running it) only after that, before the TraceJobs are listed.
    wait_for(Duration::from_secs(20), "/readyz to answer 200", || {
        (agent.get("/readyz").0 == 200).then_some(())
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
