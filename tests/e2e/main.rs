//! End-to-end tests: the agent binary against a real kube-apiserver and real bpftrace, driven
//! through kubectl as a user would. One binary with its own runner (libtest-mimic), so the
//! control plane it starts is ended exactly once, after every test, also when a test fails.

mod api;
mod docs;
mod fanout;
mod faults;
mod flamegraph;
mod hostile;
mod lifecycle;
mod metrics;
mod output;
mod plugin;
mod receiver;
mod releases;
mod reliability;
mod security;
mod support;
mod target;
mod timeouts;
mod trace_metrics;
mod trigger;
mod userspace;
mod waits;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Trial};
use support::{ControlPlane, Env, Test};

/// The compatibility subset (TRACEJOB_E2E_COMPAT): what depends most on the server's release.
const COMPAT: [&str; 16] = [
    "api_server_and_kubectl_are_the_pinned_release",
    "api_invalid_tracejobs_are_rejected_naming_the_field",
    "lifecycle_biolatency_apply_stop_configmap",
    "lifecycle_other_nodes_tracejob_untouched",
    "security_agent_token_is_fenced_to_its_own_node",
    "security_agent_token_writes_only_its_own_outputs_and_events",
    "security_agent_token_cannot_write_another_nodes_tracejobnode",
    "security_deny_by_default_traces_nothing_from_unannotated_namespaces",
    "security_namespace_scope_is_set_only_with_its_own_permission",
    "security_namespace_scope_is_guarded_on_status_and_finalize",
    "security_summarizer_token_writes_only_summaries_and_merged_outputs",
    "security_can_i_lists_match_the_readme",
    "security_spec_cannot_change_after_creation",
    "target_without_node_name_is_taken_by_the_pods_node_only",
    "fanout_selector_runs_on_matching_nodes_and_merges",
    "native_live_output_before_stop",
];

/// The longest tests (the runner names the slowest at the end), started first so that none of
/// them starts last and sets the run's length alone. Not the slow-disk test (85 s): it measures
/// the agent's /healthz latency, which these five (API servers restarted, 20 agents, large
/// objects) disturb; in its place among the others it starts once they are done.
const SLOW_FIRST: [&str; 5] = [
    "faults_api_server_down_while_nodes_start",
    "security_receiver_outlives_300_large_tracejobs_labelled_by_a_tenant",
    "faults_api_server_down_while_nodes_store",
    "security_summarizer_merges_eight_32mib_outputs_in_its_memory_limit",
    "faults_watches_expire_after_compaction",
];

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    let mut tests: Vec<Test> = Vec::new();
    tests.extend(api::tests());
    tests.extend(lifecycle::tests());
    tests.extend(waits::tests());
    tests.extend(timeouts::tests());
    tests.extend(output::tests());
    tests.extend(metrics::tests());
    tests.extend(reliability::tests());
    tests.extend(hostile::tests());
    tests.extend(plugin::tests());
    tests.extend(fanout::tests());
    tests.extend(faults::tests());
    tests.extend(security::tests());
    tests.extend(target::tests());
    tests.extend(releases::tests());
    tests.extend(trigger::tests());
    tests.extend(receiver::tests());
    tests.extend(docs::tests());
    tests.extend(userspace::tests());
    tests.extend(trace_metrics::tests());
    tests.extend(flamegraph::tests());
    for name in SLOW_FIRST {
        assert!(
            tests.iter().any(|t| t.name == name),
            "SLOW_FIRST names {name}, which is not a test"
        );
    }
    // On the oldest supported release, a short subset: the API as the server enforces it, a
    // lifecycle, server-side node filtering, the fences, a pod target, a fan-out.
    if std::env::var_os("TRACEJOB_E2E_COMPAT").is_some() {
        tests.retain(|t| COMPAT.contains(&t.name));
        assert_eq!(tests.len(), COMPAT.len(), "a compatibility test is missing");
    }
    // A stable sort: the slow ones first, in SLOW_FIRST's order, the others as listed above.
    tests.sort_by_key(|t| {
        SLOW_FIRST
            .iter()
            .position(|name| *name == t.name)
            .unwrap_or(SLOW_FIRST.len())
    });
    if args.list {
        let trials = tests
            .iter()
            .map(|t| Trial::test(t.name, || Ok(())))
            .collect();
        libtest_mimic::run(&args, trials).exit();
    }
    support::require_bpftrace_environment();
    let env = Arc::new(Env::new(ControlPlane::start()));
    env.install_crd();
    args.test_threads = args.test_threads.or(std::env::var("E2E_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .or(Some(4)));
    // How long each test took, so the slowest are named at the end (they set the run's length).
    let took: Arc<Mutex<Vec<(Duration, &'static str)>>> = Arc::default();
    let trials = tests
        .into_iter()
        .map(|t| {
            let env = env.clone();
            let took = took.clone();
            Trial::test(t.name, move || {
                let started = Instant::now();
                (t.run)(&env);
                if let Ok(mut took) = took.lock() {
                    took.push((started.elapsed(), t.name));
                }
                Ok(())
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Ok(mut took) = took.lock() {
        took.sort_unstable_by(|a, b| b.cmp(a));
        let all: Duration = took.iter().map(|(d, _)| *d).sum();
        eprintln!(
            "the slowest end-to-end tests (of {}, {:.0} s in all):",
            took.len(),
            all.as_secs_f64()
        );
        for (d, name) in took.iter().take(12) {
            eprintln!("  {:6.1} s  {name}", d.as_secs_f64());
        }
    }
    // The last reference: the control plane ends here.
    drop(env);
    if conclusion.num_passed + conclusion.num_failed == 0 {
        eprintln!("no end-to-end test matches the filter: nothing was tested");
        return std::process::ExitCode::FAILURE;
    }
    if conclusion.has_failed() {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
