//! Broken, hostile and heavy input: each has its expected outcome, and none affects other
//! TraceJobs or leaves a process behind.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::host::assert_no_bpftrace;
use crate::support::outputs::output;
use crate::support::tracejobs::{message, stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{wait_for, Agent, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "hostile_system_call_is_refused",
            run: system_is_refused,
        },
        Test {
            name: "hostile_program_of_exactly_64k_runs",
            run: program_of_exactly_the_limit,
        },
        Test {
            name: "hostile_program_that_never_attaches_fails",
            run: never_attaches,
        },
        Test {
            name: "hostile_program_that_exits_at_once_completes",
            run: exits_immediately,
        },
        Test {
            name: "hostile_bpftrace_missing_fails_clearly",
            run: bpftrace_missing,
        },
        Test {
            name: "hostile_bpftrace_killed_by_signal_fails",
            run: bpftrace_killed,
        },
        Test {
            name: "hostile_stop_before_start_runs_nothing",
            run: stop_before_start,
        },
        Test {
            name: "hostile_stop_set_and_unset_still_stops",
            run: stop_set_and_unset,
        },
        Test {
            name: "hostile_delete_while_stopping_leaves_nothing",
            run: delete_while_stopping,
        },
        Test {
            name: "hostile_same_name_again_is_a_new_run",
            run: same_name_again,
        },
        Test {
            name: "hostile_twenty_jobs_at_once",
            run: twenty_jobs_at_once,
        },
    ]
}

fn system_is_refused(env: &Env) {
    let ns = env.namespace("system");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    let marker = std::env::temp_dir().join(format!("tracejob-pwned-{ns}"));
    let program = format!(
        "BEGIN {{ system(\"touch {}\"); exit(); }}",
        marker.display()
    );
    k.apply(&ns, &tracejob_yaml("sys", &agent.node, &program, ""));
    wait_phase(k, &ns, "sys", "Failed", Duration::from_secs(20));
    assert!(
        message(k, &ns, "sys").contains("unsafe"),
        "{}",
        message(k, &ns, "sys")
    );
    assert!(!marker.exists(), "system() ran a command");
    assert_no_bpftrace(&agent);
}

fn program_of_exactly_the_limit(env: &Env) {
    let ns = env.namespace("limit");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    let body = "BEGIN { printf(\"fits\\n\"); exit(); }\n";
    let comment = format!("//{}\n", "x".repeat(64 * 1024 - body.len() - 3));
    let program = format!("{comment}{body}");
    assert_eq!(program.len(), 64 * 1024);
    let tj = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "big"}, "spec": {"nodeName": agent.node, "program": program}
    });
    k.apply(&ns, &tj.to_string());
    wait_phase(k, &ns, "big", "Completed", Duration::from_secs(30));
    assert!(output(k, &ns, "big", "output").contains("fits"));
}

fn never_attaches(env: &Env) {
    // This kernel has no kprobes: bpftrace says "Attaching 1 probe..." and then fails.
    let ns = env.namespace("noattach");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml("kp", &agent.node, "kprobe:vfs_read { @x = count(); }", ""),
    );
    wait_phase(k, &ns, "kp", "Failed", Duration::from_secs(20));
    let m = message(k, &ns, "kp");
    assert!(m.contains("Error attaching probe"), "{m}");
    assert_eq!(
        k.jsonpath(&ns, "tj/kp", ".status.startTime"),
        "",
        "it was never Running"
    );
    assert!(
        !agent.logs().contains("probes attached; tracing"),
        "reported tracing for a probe that never attached"
    );
}

fn exits_immediately(env: &Env) {
    let ns = env.namespace("instant");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml("now", &agent.node, "BEGIN { exit(); }", ""),
    );
    wait_phase(k, &ns, "now", "Completed", Duration::from_secs(20));
    assert_eq!(k.jsonpath(&ns, "tj/now", ".status.exitCode"), "0");
}

fn bpftrace_missing(env: &Env) {
    let ns = env.namespace("nobpftrace");
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--bpftrace", "/nonexistent/bpftrace"],
        &[],
    );
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml("m", &agent.node, "BEGIN { exit(); }", ""),
    );
    wait_phase(k, &ns, "m", "Failed", Duration::from_secs(20));
    let m = message(k, &ns, "m");
    assert!(m.contains("cannot start /nonexistent/bpftrace"), "{m}");
    // The agent serves on.
    k.apply(
        &ns,
        &tracejob_yaml("m2", &agent.node, "BEGIN { exit(); }", ""),
    );
    wait_phase(k, &ns, "m2", "Failed", Duration::from_secs(20));
}

fn bpftrace_killed(env: &Env) {
    let ns = env.namespace("killed");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("k9", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "k9", "Running", Duration::from_secs(30));
    for pid in agent.bpftraces() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    wait_phase(k, &ns, "k9", "Failed", Duration::from_secs(20));
    assert!(
        message(k, &ns, "k9").contains("killed by signal 9"),
        "{}",
        message(k, &ns, "k9")
    );
}

fn stop_before_start(env: &Env) {
    let ns = env.namespace("prestop");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml("early", &agent.node, SYSCOUNT, "  stop: true\n"),
    );
    wait_phase(k, &ns, "early", "Completed", Duration::from_secs(20));
    assert!(message(k, &ns, "early").contains("bpftrace was not run"));
    assert!(!agent.logs().contains("bpftrace started"));
    assert_eq!(output(k, &ns, "early", "output"), "");
}

fn stop_set_and_unset(env: &Env) {
    let ns = env.namespace("flipflop");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("ff", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "ff", "Running", Duration::from_secs(30));
    stop(k, &ns, "ff");
    k.ok(&[
        "patch",
        "-n",
        &ns,
        "tj",
        "ff",
        "--type=merge",
        "-p",
        r#"{"spec":{"stop":false}}"#,
    ]);
    // A stop is final once seen: SIGINT cannot be taken back.
    wait_phase(k, &ns, "ff", "Completed", Duration::from_secs(30));
    assert!(output(k, &ns, "ff", "output").contains("@syscalls["));
    assert_no_bpftrace(&agent);
}

fn delete_while_stopping(env: &Env) {
    let ns = env.namespace("delstop");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("ds", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "ds", "Running", Duration::from_secs(30));
    stop(k, &ns, "ds");
    k.ok(&["delete", "-n", &ns, "tj", "ds", "--wait=false"]);
    assert_no_bpftrace(&agent);
    wait_for(Duration::from_secs(30), "no ConfigMap left", || {
        let cms = k.ok(&[
            "get",
            "configmap",
            "-n",
            &ns,
            "-l",
            "observe.tracejob.dev/tracejob=ds",
            "-o",
            "name",
        ]);
        cms.trim().is_empty().then_some(())
    });
}

fn same_name_again(env: &Env) {
    let ns = env.namespace("again");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    let yaml = tracejob_yaml(
        "rerun",
        &agent.node,
        "BEGIN { printf(\"run\\n\"); exit(); }",
        "",
    );
    k.apply(&ns, &yaml);
    wait_phase(k, &ns, "rerun", "Completed", Duration::from_secs(20));
    let (id1, cm1) = (
        k.jsonpath(&ns, "tj/rerun", ".status.id"),
        k.jsonpath(&ns, "tj/rerun", ".status.outputRef.name"),
    );
    k.ok(&["delete", "-n", &ns, "tj", "rerun"]);
    k.apply(&ns, &yaml);
    wait_phase(k, &ns, "rerun", "Completed", Duration::from_secs(20));
    let (id2, cm2) = (
        k.jsonpath(&ns, "tj/rerun", ".status.id"),
        k.jsonpath(&ns, "tj/rerun", ".status.outputRef.name"),
    );
    assert_ne!(id1, id2, "a new run gets a new id");
    assert_ne!(cm1, cm2, "and its own ConfigMap");
    assert!(output(k, &ns, "rerun", "output").contains("run"));
}

fn twenty_jobs_at_once(env: &Env) {
    let ns = env.namespace("twenty");
    // Twenty traces of one namespace at once: past its default share of the node (8).
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--max-running-traces-per-namespace", "32"],
        &[],
    );
    let k = &env.kubectl;
    let all: String = (0..20)
        .map(|i| {
            tracejob_yaml(
                &format!("j{i}"),
                &agent.node,
                &format!("tracepoint:raw_syscalls:sys_enter {{ @j{i}[comm] = count(); }}"),
                "",
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    k.apply(&ns, &all);
    for i in 0..20 {
        wait_phase(
            k,
            &ns,
            &format!("j{i}"),
            "Running",
            Duration::from_secs(120),
        );
    }
    assert_eq!(agent.bpftraces().len(), 20);
    for i in 0..20 {
        stop(k, &ns, &format!("j{i}"));
    }
    for i in 0..20 {
        wait_phase(
            k,
            &ns,
            &format!("j{i}"),
            "Completed",
            Duration::from_secs(120),
        );
        let text = output(k, &ns, &format!("j{i}"), "output");
        assert!(
            text.contains(&format!("@j{i}[")),
            "job {i} has no map of its own:\n{text}"
        );
    }
    let cms = k.ok(&[
        "get",
        "configmap",
        "-n",
        &ns,
        "-l",
        "observe.tracejob.dev/tracejob",
        "-o",
        "name",
    ]);
    assert_eq!(cms.lines().count(), 20);
    assert_no_bpftrace(&agent);
}
