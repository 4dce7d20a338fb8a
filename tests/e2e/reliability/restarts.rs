//! Traces outlive the agent and the next agent takes them over, as they were.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{agent_that_exits, biolatency, kill_agent};
use crate::support::host::{assert_no_bpftrace, disk_io};
use crate::support::outputs::{histogram_counts, output};
use crate::support::tracejobs::{stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{double_agent, double_program, must, wait_for, Agent, Env, Test};

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
            name: "robust_tracejobs_labelled_while_being_claimed_all_run",
            run: labelled_while_claimed,
        },
        Test {
            name: "robust_an_exit_while_no_agent_watches_is_reported_as_it_was",
            run: exit_while_no_agent,
        },
    ]
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

/// Case 3: TraceJobs whose metadata is written while the agent claims them were never run.
fn labelled_while_claimed(env: &Env) {
    let ns = env.namespace("labelled");
    let node = format!("{ns}-node");
    let k = &env.kubectl;
    let program = double_program(&["exit-after-ms=200"]);
    let names: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
    let all: Vec<String> = names
        .iter()
        .map(|n| tracejob_yaml(n, &node, &program, ""))
        .collect();
    k.apply(&ns, &all.join("---\n"));
    // Labelling controllers write every TraceJob's metadata over and over, from before the agent
    // lists them until they are done.
    let done = Arc::new(AtomicBool::new(false));
    let labellers: Vec<_> = (0..4)
        .map(|t| {
            let (k, ns, done) = (k.clone(), ns.clone(), done.clone());
            std::thread::spawn(move || {
                let mut round = 0;
                while !done.load(Ordering::SeqCst) {
                    round += 1;
                    k.run(&[
                        "label",
                        "-n",
                        &ns,
                        "tj",
                        "--all",
                        &format!("labeller-{t}={round}"),
                        "--overwrite",
                    ]);
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(30), "the labellers at work", || {
        (!k.jsonpath(&ns, "tj/l39", ".metadata.labels.labeller-3")
            .is_empty())
        .then_some(())
    });
    let agent = double_agent(env, &node, &[]);
    for name in &names {
        wait_phase(k, &ns, name, "Completed", Duration::from_secs(120));
    }
    done.store(true, Ordering::SeqCst);
    for l in labellers {
        let _ = l.join();
    }
    assert!(
        agent.logs().contains("changed while it was claimed"),
        "no claim met a concurrent write: the test did not test it"
    );
}

/// Bullet: an exit seen by no agent was reported as a failure ("ended while no agent was
/// watching"); the shim now records bpftrace's exit status durably.
fn exit_while_no_agent(env: &Env) {
    let ns = env.namespace("unwatched");
    let mut agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml(
            "e",
            &agent.node,
            "tracepoint:raw_syscalls:sys_enter { @n = count(); }\ninterval:s:3 { exit(); }",
            "",
        ),
    );
    wait_phase(k, &ns, "e", "Running", Duration::from_secs(30));
    let proc = agent.proc.as_mut().expect("agent");
    proc.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(proc.wait_exit(Duration::from_secs(10)).is_some());
    wait_for(
        Duration::from_secs(30),
        "bpftrace to exit on its own",
        || agent.bpftraces().is_empty().then_some(()),
    );
    agent.restart(&[]);
    wait_phase(k, &ns, "e", "Completed", Duration::from_secs(30));
    assert_eq!(k.jsonpath(&ns, "tj/e", ".status.exitCode"), "0");
    assert!(output(k, &ns, "e", "output").contains("@n: "));
}
