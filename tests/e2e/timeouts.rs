//! Every trace ends: the start timeout, the deadline and grace period as the server caps them,
//! SIGINT repeated until bpftrace ends, and SIGKILL exactly after the grace period.

use std::time::{Duration, Instant};

use crate::support::host::assert_no_bpftrace;
use crate::support::outputs::output;
use crate::support::tracejobs::{condition, message, stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{double_agent, double_program, must, wait_for, Agent, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "robust_deadline_and_grace_are_capped_by_the_server",
            run: deadline_and_grace_capped,
        },
        Test {
            name: "robust_a_trace_that_never_attaches_fails_at_the_start_timeout",
            run: never_attaches,
        },
        Test {
            name: "robust_an_include_of_a_fifo_fails_at_the_start_timeout",
            run: include_of_a_fifo,
        },
        Test {
            name: "robust_sigkill_comes_exactly_after_the_grace_period",
            run: sigkill_after_grace,
        },
        Test {
            name: "robust_sigint_is_repeated_until_bpftrace_ends",
            run: sigint_repeated,
        },
    ]
}

/// Case 2: a deadline or grace period near the 64-bit maximum used to panic the job's task.
fn deadline_and_grace_capped(env: &Env) {
    let ns = env.namespace("caps");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    for (field, value) in [
        ("deadline", i64::MAX.to_string()),
        ("deadlineGracePeriod", "9223372036854775000".to_string()),
        ("deadline", "2592001".to_string()),
        ("deadlineGracePeriod", "3601".to_string()),
    ] {
        let yaml = tracejob_yaml(
            "huge",
            &agent.node,
            SYSCOUNT,
            &format!("  {field}: {value}\n"),
        );
        let r = k.run_with_stdin(&["apply", "--validate=false", "-n", &ns, "-f", "-"], &yaml);
        assert!(!r.ok, "{field}: {value} was accepted");
        assert!(r.stderr.contains(&format!("spec.{field}")), "{}", r.stderr);
    }
    // The largest values accepted run, stop and are deleted like any other.
    k.apply(
        &ns,
        &tracejob_yaml(
            "longest",
            &agent.node,
            SYSCOUNT,
            "  deadline: 2592000\n  deadlineGracePeriod: 3600\n",
        ),
    );
    wait_phase(k, &ns, "longest", "Running", Duration::from_secs(30));
    stop(k, &ns, "longest");
    wait_phase(k, &ns, "longest", "Completed", Duration::from_secs(60));
    assert!(output(k, &ns, "longest", "output").contains("@syscalls["));
    assert_no_bpftrace(&agent);
}

/// Bullet: a bpftrace that never attached never met its deadline.
fn never_attaches(env: &Env) {
    let ns = env.namespace("noattach2");
    let agent = double_agent(env, &format!("{ns}-node"), &["--start-timeout", "2"]);
    let k = &env.kubectl;
    let t0 = Instant::now();
    k.apply(
        &ns,
        &tracejob_yaml("stuck", &agent.node, &double_program(&["attach=never"]), ""),
    );
    wait_phase(k, &ns, "stuck", "Failed", Duration::from_secs(30));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(
        condition(k, &ns, "stuck", "Failed", "reason"),
        "StartTimeout"
    );
    let m = message(k, &ns, "stuck");
    assert!(m.contains("still compiling"), "bpftrace's stderr: {m}");
    assert_eq!(k.jsonpath(&ns, "tj/stuck", ".status.startTime"), "");
}

/// Real bpftrace blocked before it attaches: the program includes a FIFO nobody writes.
fn include_of_a_fifo(env: &Env) {
    let ns = env.namespace("fifo");
    let dir = must(tempfile::tempdir(), "tempdir");
    let fifo = dir.path().join("header.h");
    must(
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)),
        "mkfifo",
    );
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--start-timeout", "3"],
        &[],
    );
    let k = &env.kubectl;
    let program = format!("#include \"{}\"\n{SYSCOUNT}", fifo.display());
    k.apply(&ns, &tracejob_yaml("inc", &agent.node, &program, ""));
    wait_phase(k, &ns, "inc", "Failed", Duration::from_secs(60));
    assert_eq!(condition(k, &ns, "inc", "Failed", "reason"), "StartTimeout");
    assert_no_bpftrace(&agent);
}

/// The grace period, exactly: a bpftrace that ignores SIGINT is killed when it ends.
fn sigkill_after_grace(env: &Env) {
    let ns = env.namespace("graceful");
    let agent = double_agent(env, &format!("{ns}-node"), &[]);
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml(
            "deaf",
            &agent.node,
            &double_program(&["sigint=ignore"]),
            "  deadlineGracePeriod: 3\n",
        ),
    );
    wait_phase(k, &ns, "deaf", "Running", Duration::from_secs(30));
    let t0 = Instant::now();
    stop(k, &ns, "deaf");
    wait_for(Duration::from_secs(20), "the double to be killed", || {
        agent.bpftraces().is_empty().then_some(())
    });
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "killed {took:?} after the stop; the grace period is 3 s"
    );
    wait_phase(k, &ns, "deaf", "Failed", Duration::from_secs(30));
    assert_eq!(
        condition(k, &ns, "deaf", "Failed", "reason"),
        "GracePeriodExceeded"
    );
}

/// The repeated SIGINT: a bpftrace that acts only on the second one ends cleanly with its maps.
fn sigint_repeated(env: &Env) {
    let ns = env.namespace("again");
    let agent = double_agent(env, &format!("{ns}-node"), &[]);
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml(
            "slow",
            &agent.node,
            &double_program(&["sigint=second", "maps=@after: 2"]),
            "  deadlineGracePeriod: 60\n",
        ),
    );
    wait_phase(k, &ns, "slow", "Running", Duration::from_secs(30));
    let t0 = Instant::now();
    stop(k, &ns, "slow");
    wait_phase(k, &ns, "slow", "Completed", Duration::from_secs(60));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "ended {took:?} after the stop; the second SIGINT is due after 2 s"
    );
    assert!(output(k, &ns, "slow", "output").contains("@after: 2"));
    assert!(agent.logs().contains("sending SIGINT again"));
}
