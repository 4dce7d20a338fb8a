//! A disk that refuses the agent's writes: that job fails with a reason that says so, the agent
//! and its other jobs go on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::host::{alive, assert_no_bpftrace};
use crate::support::outputs::output;
use crate::support::tracejobs::{condition, field, message, stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{must, wait_for, Agent, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "core_a_failed_record_save_fails_that_job_only_and_the_agent_stays_healthy",
            run: failed_save_fails_that_job_only,
        },
        Test {
            name: "robust_a_full_disk_after_the_claim_fails_the_job",
            run: full_disk_after_claim,
        },
    ]
}

/// The series of the counter registered as `record_save_failures`.
const SAVE_FAILURES: &str = "tracejob_record_save_failures_total";

/// A file made immutable (`chattr +i`) for as long as this lives: it can be neither replaced by
/// a rename nor removed. Made mutable again when dropped, so its temporary directory can go.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let st = must(
            Command::new("chattr").arg("+i").arg(path).status(),
            "run chattr (apt-get install e2fsprogs)",
        );
        assert!(st.success(), "chattr +i {} failed", path.display());
        Immutable(path.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Issue #24: every save of a run's record is awaited, and one that fails ends that run
/// (SIGINT) as Failed with the reason RecordNotSaved, its maps still stored; the agent answers
/// /healthz all along and its other run goes on to complete.
///
/// How a save is made to fail for one run only: its `record.json` is made immutable (chattr +i,
/// on this ext4). Every save writes `record.json.tmp` and renames it over `record.json`, and a
/// rename cannot replace an immutable file (EPERM), while everything else of that run (bpftrace's
/// open stdout, the shim's `ended.json`, reading the output) works as before.
fn failed_save_fails_that_job_only(env: &Env) {
    let ns = env.namespace("core-unsaved");
    let k = &env.kubectl;
    // No live copies: the output ConfigMap is the final store's.
    let mut agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--live-interval", "0"],
        &[],
    );
    for name in ["a", "b"] {
        k.apply(&ns, &tracejob_yaml(name, &agent.node, SYSCOUNT, ""));
    }
    for name in ["a", "b"] {
        wait_phase(k, &ns, name, "Running", Duration::from_secs(60));
    }
    let id = field(k, &ns, "a", ".status.id");
    assert!(!id.is_empty(), "tj/a is Running without a status.id");
    let record = agent.state_dir.join("jobs").join(&id).join("record.json");
    assert!(
        record.is_file(),
        "the run of tj/a has no record at {}",
        record.display()
    );
    assert_eq!(agent.metric(SAVE_FAILURES), 0.0, "a save failed already");
    let b_pid = field(k, &ns, "b", ".status.pid");

    let probe = agent.probe_healthz();
    let _immutable = Immutable::set(&record);
    stop(k, &ns, "a");
    // Its save of "stopped" fails: it ends at once, not completed.
    wait_for(Duration::from_secs(60), "tj/a to end", || {
        let phase = field(k, &ns, "a", ".status.phase");
        (phase == "Completed" || phase == "Failed").then_some(())
    });
    let (phase, message) = (
        field(k, &ns, "a", ".status.phase"),
        field(k, &ns, "a", ".status.message"),
    );
    assert_eq!(phase, "Failed", "tj/a: {message}");
    assert_eq!(
        condition(k, &ns, "a", "Failed", "reason"),
        "RecordNotSaved",
        "tj/a: {message}"
    );
    assert!(
        message.contains("could not save the run's record"),
        "{message}"
    );
    // The OS error, as the rename met it.
    assert!(
        message.contains("Operation not permitted (os error 1)"),
        "{message}"
    );
    assert!(
        agent.metric(SAVE_FAILURES) >= 1.0,
        "the failed save is not counted"
    );
    assert_eq!(
        agent.metric_if_present(r#"tracejob_traces_failed_total{reason="RecordNotSaved"}"#),
        Some(1.0),
        "tj/a is not counted as failed for RecordNotSaved"
    );
    // Its maps were collected and stored all the same.
    let a_out = output(k, &ns, "a", "output");
    assert!(a_out.contains("@syscalls["), "tj/a's output: {a_out}");

    // The agent, and tj/b, went on.
    assert!(alive(&mut agent), "the agent exited");
    assert_eq!(field(k, &ns, "b", ".status.phase"), "Running");
    assert_eq!(
        agent.bpftraces(),
        vec![b_pid.parse::<i32>().unwrap_or(-1)],
        "tj/b's bpftrace, and only it, runs"
    );
    stop(k, &ns, "b");
    wait_phase(k, &ns, "b", "Completed", Duration::from_secs(60));
    let b_out = output(k, &ns, "b", "output");
    assert!(b_out.contains("@syscalls["), "tj/b's output: {b_out}");
    let slowest = probe.finish();
    assert!(
        slowest < Duration::from_secs(2),
        "/healthz took {slowest:?} (10 s: it did not answer 200) while a save failed"
    );
    assert!(alive(&mut agent), "the agent exited");
    assert_no_bpftrace(&agent);
}

/// Bullet: a failure after the claim (here: the node's disk is full) left the job Pending.
fn full_disk_after_claim(env: &Env) {
    let ns = env.namespace("diskfull");
    let agent = Agent::start(env, &format!("{ns}-node"));
    wait_for(Duration::from_secs(30), "the agent to be ready", || {
        (agent.get("/readyz").0 == 200).then_some(())
    });
    // The node's disk, as the agent's runs see it, is nearly full.
    let jobs = agent.state_dir.join("jobs");
    let mounted = must(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tracejob-full"])
            .arg(&jobs)
            .status(),
        "mount tmpfs",
    );
    assert!(mounted.success(), "mounting a small tmpfs failed");
    let unmount = Unmount(jobs);
    let k = &env.kubectl;
    // A program larger than the room left on the node.
    let comment = format!("// {}\n", "x".repeat(63 * 1024));
    let program = format!("{comment}{SYSCOUNT}");
    let tj = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "big"}, "spec": {"nodeName": agent.node, "program": program}
    });
    k.apply(&ns, &tj.to_string());
    wait_phase(k, &ns, "big", "Failed", Duration::from_secs(30));
    let m = message(k, &ns, "big");
    assert!(m.contains("could not store the run"), "{m}");
    assert!(agent.bpftraces().is_empty());
    drop(agent);
    drop(unmount);
}
