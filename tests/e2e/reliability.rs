//! Results are never lost when the agent dies: traces outlive it and the next agent takes them over.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::api::tracejob_yaml;
use crate::lifecycle::{
    assert_no_bpftrace, disk_io, histogram_counts, output, stop, wait_phase, SYSCOUNT,
};
use crate::support::{must, Agent, Env, Proc, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "reliability_agent_sigkill_readopts_two_traces",
            run: agent_sigkill_readopts_two_traces,
        },
        Test {
            name: "reliability_agent_sigterm_leaves_traces_to_next_agent",
            run: agent_sigterm_leaves_traces,
        },
        Test {
            name: "reliability_bpftrace_killed_while_no_agent_is_reported_as_it_was",
            run: bpftrace_killed_while_no_agent,
        },
        Test {
            name: "reliability_deleted_while_no_agent_is_ended",
            run: deleted_while_no_agent,
        },
        Test {
            name: "reliability_deadline_counts_across_a_takeover",
            run: deadline_counts_across_a_takeover,
        },
        Test {
            name: "reliability_one_agent_per_state_directory",
            run: one_agent_per_state_directory,
        },
        Test {
            name: "reliability_bad_flags_end_the_agent_at_once",
            run: bad_flags_end_the_agent_at_once,
        },
    ]
}

/// `tracejob-agent run ARGS` as a process of its own, which must exit within `within`: its exit
/// status and everything it printed (stdout and stderr).
fn agent_that_exits(
    env: &Env,
    args: &[&str],
    within: Duration,
) -> (std::process::ExitStatus, String) {
    let tmp = must(tempfile::tempdir(), "tempdir");
    let log = tmp.path().join("out");
    let out = must(std::fs::File::create(&log), "log");
    let err = must(out.try_clone(), "log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tracejob-agent"));
    cmd.arg("run")
        .args(args)
        .env("KUBECONFIG", &env.cp.kubeconfig)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut proc = Proc::spawn("agent-that-exits", &mut cmd);
    let status = proc.wait_exit(within);
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("still running after {within:?}:\n{printed}"));
    (status, printed)
}

/// A second agent on a state directory in use exits at once, naming the directory and its lock,
/// and leaves the first one and its trace alone; the trace's shim does not hold the lock, so the
/// next agent takes it once the first is gone (killed while the trace runs) and goes on.
fn one_agent_per_state_directory(env: &Env) {
    let ns = env.namespace("statelock");
    let mut agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("t", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "t", "Running", Duration::from_secs(30));
    let pids = agent.bpftraces();
    let state = agent.state_dir.to_string_lossy().into_owned();
    let port = crate::support::control_plane::free_port().to_string();
    let started = std::time::Instant::now();
    let (status, printed) = agent_that_exits(
        env,
        &[
            "--node-name",
            &agent.node,
            "--state-dir",
            &state,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        Duration::from_secs(5),
    );
    assert!(!status.success(), "the second agent ran:\n{printed}");
    assert!(
        printed.contains(&format!("the state directory {state} is in use"))
            && printed.contains(&format!("{state}/agent.lock")),
        "the error names neither the directory nor its lock:\n{printed}"
    );
    eprintln!("the second agent exited after {:?}", started.elapsed());
    // The first goes on as before.
    let first = agent.proc.as_mut().expect("agent");
    assert!(
        matches!(first.child.try_wait(), Ok(None)),
        "the first agent exited"
    );
    assert_eq!(agent.bpftraces(), pids, "the trace was touched");
    assert_eq!(k.jsonpath(&ns, "tj/t", ".status.phase"), "Running");
    // The shim outlives the agent without its lock: the next agent takes the trace over.
    kill_agent(&mut agent, Signal::SIGKILL);
    assert_eq!(agent.bpftraces(), pids, "bpftrace died with the agent");
    agent.restart(&[]);
    stop(k, &ns, "t");
    wait_phase(k, &ns, "t", "Completed", Duration::from_secs(30));
    assert!(output(k, &ns, "t", "output").contains("@syscalls["));
    assert!(
        !agent.logs().contains("is in use"),
        "the restarted agent found the lock held"
    );
}

/// Flags that cannot work end the agent before it does anything, with a usage error naming the
/// flag (exit status 2, as clap's), instead of failing every trace later.
fn bad_flags_end_the_agent_at_once(env: &Env) {
    let tmp = must(tempfile::tempdir(), "tempdir");
    let state = tmp.path().join("state");
    let state = state.to_string_lossy();
    let base = ["--node-name", "bad-flags", "--state-dir", &state];
    for (extra, expected) in [
        (
            &["--max-output-bytes", "0"][..],
            &["--max-output-bytes", "0 is not in 65536..="][..],
        ),
        (
            &["--live-window-bytes", "2097152"],
            &["--live-window-bytes", "not in 1024..=1024000"],
        ),
        (
            &[
                "--max-output-bytes",
                "65536",
                "--live-window-bytes",
                "131072",
            ],
            &["--live-window-bytes 131072 is more than --max-output-bytes 65536"],
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let started = std::time::Instant::now();
        let (status, printed) = agent_that_exits(env, &args, Duration::from_secs(5));
        assert_eq!(status.code(), Some(2), "{extra:?}:\n{printed}");
        for e in expected {
            assert!(printed.contains(e), "{extra:?}: no {e:?} in:\n{printed}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{extra:?} took {:?}",
            started.elapsed()
        );
        assert!(
            !tmp.path().join("state").exists(),
            "{extra:?}: the agent started on its state directory"
        );
    }
}

fn biolatency(node: &str) -> String {
    crate::api::sample_yaml("biolatency", node)
}

fn kill_agent(agent: &mut Agent, signal: Signal) {
    let proc = agent.proc.as_mut().expect("agent running");
    proc.signal(signal);
    let status = proc.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "agent did not exit on {signal:?}");
}

fn agent_sigkill_readopts_two_traces(env: &Env) {
    let ns = env.namespace("sigkill");
    let mut agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &biolatency(&agent.node));
    k.apply(&ns, &tracejob_yaml("sys", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "biolatency", "Running", Duration::from_secs(30));
    wait_phase(k, &ns, "sys", "Running", Duration::from_secs(30));
    let mut before = agent.bpftraces();
    before.sort();
    assert_eq!(before.len(), 2);

    kill_agent(&mut agent, Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    let mut alive = agent.bpftraces();
    alive.sort();
    assert_eq!(alive, before, "bpftrace died with the agent");
    disk_io();

    agent.restart(&[]);
    disk_io();
    stop(k, &ns, "biolatency");
    stop(k, &ns, "sys");
    wait_phase(k, &ns, "biolatency", "Completed", Duration::from_secs(30));
    wait_phase(k, &ns, "sys", "Completed", Duration::from_secs(30));
    let bio = output(k, &ns, "biolatency", "output");
    assert!(
        histogram_counts(&bio).iter().sum::<u64>() > 0,
        "empty histogram after re-adoption:\n{bio}"
    );
    assert!(output(k, &ns, "sys", "output").contains("@syscalls["));
    assert!(agent
        .logs()
        .contains("taking over a trace started by an earlier agent"));
    assert_no_bpftrace(&agent);
}

fn agent_sigterm_leaves_traces(env: &Env) {
    let ns = env.namespace("sigterm");
    let mut agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("t", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "t", "Running", Duration::from_secs(30));
    let pids = agent.bpftraces();
    kill_agent(&mut agent, Signal::SIGTERM);
    assert!(agent
        .logs()
        .contains("running traces are left for the next agent"));
    // Long enough for a SIGINT, had one been sent, to have made bpftrace print and exit.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        agent.bpftraces(),
        pids,
        "SIGTERM to the agent ended the trace"
    );
    let jobs = must(std::fs::read_dir(agent.state_dir.join("jobs")), "state dir");
    for job in jobs.flatten() {
        let printed = std::fs::read_to_string(job.path().join("stdout")).unwrap_or_default();
        assert!(
            !printed.contains("@syscalls["),
            "the trace was interrupted as the agent exited"
        );
    }
    assert_eq!(k.jsonpath(&ns, "tj/t", ".status.phase"), "Running");
    agent.restart(&[]);
    stop(k, &ns, "t");
    wait_phase(k, &ns, "t", "Completed", Duration::from_secs(30));
    assert!(output(k, &ns, "t", "output").contains("@syscalls["));
}

/// bpftrace's shim records how it ended even when no agent watches: the next agent reports that.
fn bpftrace_killed_while_no_agent(env: &Env) {
    let ns = env.namespace("dead");
    let mut agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("d", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "d", "Running", Duration::from_secs(30));
    kill_agent(&mut agent, Signal::SIGKILL);
    for pid in agent.bpftraces() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert_no_bpftrace(&agent);
    agent.restart(&[]);
    wait_phase(k, &ns, "d", "Failed", Duration::from_secs(30));
    let message = k.jsonpath(&ns, "tj/d", ".status.message");
    assert!(message.contains("killed by signal 9"), "{message}");
    assert!(
        !k.jsonpath(&ns, "tj/d", ".status.outputRef.name").is_empty(),
        "what it left is kept"
    );
}

fn deleted_while_no_agent(env: &Env) {
    let ns = env.namespace("deleted-offline");
    let mut agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("x", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "x", "Running", Duration::from_secs(30));
    kill_agent(&mut agent, Signal::SIGKILL);
    k.ok(&["delete", "-n", &ns, "tj", "x"]);
    agent.restart(&[]);
    assert_no_bpftrace(&agent);
}

fn deadline_counts_across_a_takeover(env: &Env) {
    let ns = env.namespace("takeover-deadline");
    let mut agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml("dl", &agent.node, SYSCOUNT, "  deadline: 10\n"),
    );
    wait_phase(k, &ns, "dl", "Running", Duration::from_secs(30));
    kill_agent(&mut agent, Signal::SIGKILL);
    std::thread::sleep(Duration::from_secs(5));
    let restarted = std::time::Instant::now();
    agent.restart(&[]);
    wait_phase(k, &ns, "dl", "Completed", Duration::from_secs(30));
    let after = restarted.elapsed();
    assert!(
        after < Duration::from_secs(9),
        "the deadline started over at the takeover: Completed {after:?} after it"
    );
    assert!(k
        .jsonpath(&ns, "tj/dl", ".status.message")
        .contains("deadline"));
}
