//! The job actor (`job::run`), one behaviour per test, each answered request checked.

use std::time::Duration;

use http::Method;
use kube::ResourceExt;

use super::fixture::{
    configmaps, next_version, path_of, pod, stopped, tracejob, unassigned, Agent, NAMESPACE, NODE,
    PATIENCE,
};
use crate::host::process::Identity;
use crate::host::rundir::{read_json, Record};
use crate::host::shim::{self, Started};
use crate::resource::{Phase, TraceJob, TraceJobStatus};

/// A claim is written only if the TraceJob is still the version read. Refused with 409 (it
/// changed meanwhile: here a label), the writer reads the newest version and the actor decides
/// again from it: still unclaimed, it claims that version, once, and runs bpftrace once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_in_conflict_is_decided_again_from_the_newest_version() {
    let mut agent = Agent::new(vec![]);
    let job = tracejob("conflict");
    let actor = agent.run(job.clone());

    let claim = agent.api.next().await;
    claim.assert_status_write(&job);
    assert_eq!(claim.precondition(), Some("1"), "the claim is conditional");
    let status = claim.status();
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(status.node_name.as_deref(), Some(NODE));
    assert!(status.id.is_some(), "the claim names the run");
    claim.fail(409, "Conflict");

    let read = agent.api.next().await;
    read.assert_request(Method::GET, &path_of(&job));
    let mut newest = next_version(&job);
    newest.labels_mut().insert("team".into(), "storage".into());
    read.reply(200, &newest);

    let claim = agent.api.next().await;
    claim.assert_status_write(&job);
    assert_eq!(
        claim.precondition(),
        Some("2"),
        "claimed at the newest version"
    );
    let run_id = claim.status().id.expect("the run's id");
    let claimed = claim.accept_status(&newest);

    // Its probe attached, the trace is reported Running: no longer conditional, same run.
    let running = agent.api.next().await;
    running.assert_status_write(&job);
    assert_eq!(running.precondition(), None);
    assert_eq!(running.status().phase, Some(Phase::Running));
    assert_eq!(running.status().id.as_deref(), Some(run_id.as_str()));
    let running = running.accept_status(&claimed);
    assert_eq!(agent.bpftrace_runs(), 1);

    actor.update(&stopped(&running));
    agent.expect_collected(&running, &run_id).await;
    actor.ended().await;
    assert_eq!(agent.bpftrace_runs(), 1, "bpftrace ran once");
    assert!(agent.run_dirs().is_empty(), "{:?}", agent.run_dirs());
}

/// The same conflict, but the newest version shows that another node's agent claimed it (a
/// TraceJob about a pod names no node: the agent of the pod's node claims it, and the pod was
/// here when this agent looked): this agent leaves it alone, no bpftrace, no further write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_lost_to_another_node_does_not_start() {
    let mut agent = Agent::new(vec![pod("web")]);
    let job = unassigned("lost", "web");
    let actor = agent.run(job.clone());

    let claim = agent.api.next().await;
    claim.assert_status_write(&job);
    assert_eq!(claim.precondition(), Some("1"));
    claim.fail(409, "Conflict");

    let read = agent.api.next().await;
    read.assert_request(Method::GET, &path_of(&job));
    let mut newest = next_version(&job);
    newest.status = Some(TraceJobStatus {
        phase: Some(Phase::Pending),
        id: Some(uuid::Uuid::new_v4().to_string()),
        node_name: Some("m".into()),
        ..Default::default()
    });
    read.reply(200, &newest);

    agent.api.assert_quiet(Duration::from_millis(300)).await;
    actor.ended().await;
    assert_eq!(agent.bpftrace_runs(), 0);
    assert!(agent.run_dirs().is_empty(), "{:?}", agent.run_dirs());
}

/// spec.stop set before the agent first saw the TraceJob: it is claimed, bpftrace never runs,
/// the (empty) output is stored, and it ends Completed saying bpftrace was not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_before_the_start_runs_no_bpftrace() {
    let mut agent = Agent::new(vec![]);
    let mut job = tracejob("early");
    job.spec.stop = true;
    let actor = agent.run(job.clone());

    let claim = agent.api.next().await;
    claim.assert_status_write(&job);
    assert_eq!(claim.precondition(), Some("1"));
    let run_id = claim.status().id.expect("the run's id");
    let claimed = claim.accept_status(&job);

    // No Running, no Stopping: the output (nothing) is stored at once.
    let create = agent.api.next().await;
    create.assert_request(Method::POST, &configmaps());
    let created = create.accept_create();
    let configmap = created["metadata"]["name"].as_str().map(String::from);
    assert!(configmap.is_some(), "a named ConfigMap: {created}");

    let completed = agent.api.next().await;
    completed.assert_status_write(&job);
    let status = completed.status();
    assert_eq!(status.phase, Some(Phase::Completed), "{status:?}");
    assert_eq!(status.id.as_deref(), Some(run_id.as_str()));
    let message = status.message.unwrap_or_default();
    assert!(message.contains("bpftrace was not run"), "{message}");
    assert_eq!(status.output_ref.map(|r| r.name), configmap);
    completed.accept_status(&claimed);

    actor.ended().await;
    assert_eq!(agent.bpftrace_runs(), 0, "bpftrace never ran");
    assert!(agent.run_dirs().is_empty(), "{:?}", agent.run_dirs());
}

/// The TraceJob is deleted while its output is being stored, and the API server fails (500,
/// retried): the actor gives the store up, reports nothing (there is nothing to report on), ends,
/// and removes the run's directory. Nothing goes on in the background: no more ConfigMap writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_while_the_output_is_stored_ends_the_actor_and_its_files() {
    let mut agent = Agent::new(vec![]);
    let job = tracejob("deleted");
    let actor = agent.run(job.clone());

    let claim = agent.api.next().await;
    claim.assert_status_write(&job);
    let claimed = claim.accept_status(&job);
    let running = agent.api.next().await;
    assert_eq!(running.status().phase, Some(Phase::Running));
    let running = running.accept_status(&claimed);
    assert_eq!(agent.run_dirs().len(), 1);

    actor.update(&stopped(&running));
    let stopping = agent.api.next().await;
    assert_eq!(stopping.status().phase, Some(Phase::Stopping));
    stopping.accept_status(&running);

    let create = agent.api.next().await;
    create.assert_request(Method::POST, &configmaps());
    create.fail(500, "InternalError");
    // A 500 is transient: the write is tried again. While that one is in flight, the TraceJob
    // is deleted.
    let again = agent.api.next().await;
    again.assert_request(Method::POST, &configmaps());
    actor.delete();

    actor.ended().await;
    assert!(agent.run_dirs().is_empty(), "{:?}", agent.run_dirs());
    // The store was abandoned: the answer to the write in flight goes nowhere, and no retry and
    // no status follow (a retry would come within a second).
    again.fail(500, "InternalError");
    agent.api.assert_quiet(Duration::from_millis(1500)).await;
}

/// A run an earlier agent on this node started (its record on disk, its shim and bpftrace still
/// running, the TraceJob Running with its id) is taken over: no claim is written, and when
/// spec.stop comes this agent sends bpftrace SIGINT, collects its map and reports Completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_left_by_an_earlier_agent_is_taken_over() {
    let mut agent = Agent::new(vec![]);
    let run_id = uuid::Uuid::new_v4().to_string();
    let mut job = tracejob("takeover");
    let mut earlier_shim = leave_running(&agent, &job, &run_id).await;
    job.status = Some(TraceJobStatus {
        phase: Some(Phase::Running),
        id: Some(run_id.clone()),
        node_name: Some(NODE.into()),
        probes: Some(1),
        ..Default::default()
    });

    let actor = agent.run(job.clone());
    // Taken over without a word: the TraceJob is claimed and Running already.
    agent.api.assert_quiet(Duration::from_millis(500)).await;
    assert!(!actor.is_finished(), "the actor follows the run");

    actor.update(&stopped(&job));
    agent.expect_collected(&job, &run_id).await;
    actor.ended().await;
    assert_eq!(agent.bpftrace_runs(), 1, "no second bpftrace");
    assert!(agent.run_dirs().is_empty(), "{:?}", agent.run_dirs());
    let status = tokio::time::timeout(PATIENCE, earlier_shim.wait())
        .await
        .expect("the shim has ended")
        .expect("its status");
    assert!(
        status.success(),
        "the shim recorded bpftrace's end: {status}"
    );
}

/// An earlier agent recorded that its trace attached but died before Running was written: the
/// agent that takes it over reports Running.
#[tokio::test]
async fn a_run_taken_over_before_its_running_was_written_is_reported_running() {
    let mut agent = Agent::new(vec![]);
    let run_id = uuid::Uuid::new_v4().to_string();
    let mut job = tracejob("unreported");
    let mut earlier_shim = leave_running(&agent, &job, &run_id).await;
    job.status = Some(TraceJobStatus {
        phase: Some(Phase::Pending),
        id: Some(run_id.clone()),
        node_name: Some(NODE.into()),
        ..Default::default()
    });

    let actor = agent.run(job.clone());
    let running = agent.api.next().await;
    running.assert_status_write(&job);
    let status = running.status();
    assert_eq!(status.phase, Some(Phase::Running), "{status:?}");
    assert_eq!(status.probes, Some(1));
    assert_eq!(status.id.as_deref(), Some(run_id.as_str()));
    let job = running.accept_status(&job);

    actor.update(&stopped(&job));
    agent.expect_collected(&job, &run_id).await;
    actor.ended().await;
    assert_eq!(agent.bpftrace_runs(), 1, "no second bpftrace");
    let _ = tokio::time::timeout(PATIENCE, earlier_shim.wait()).await;
}

/// What an earlier agent leaves of a trace it started and saw attach: the run's directory and
/// record, and its shim (started as the agent starts it), which runs bpftrace. The shim is this
/// test's child, not the actor's: as after a restart, the actor can only watch it by its PID.
async fn leave_running(agent: &Agent, job: &TraceJob, run_id: &str) -> tokio::process::Child {
    let (state, config) = (&agent.ctx.state, &agent.ctx.config);
    let mut record = Record {
        namespace: NAMESPACE.into(),
        name: job.name_any(),
        uid: job.uid().expect("a uid"),
        run_id: run_id.into(),
        ..Default::default()
    };
    let files = state.create(&record, &job.spec.program).expect("a run");
    let log = shim::log_file(&files)().expect("the shim's log");
    let shim = shim::spawn(
        &agent.ctx.exe,
        &files,
        log,
        &config.bpftrace,
        &[],
        config.max_output_bytes,
        None,
        None,
    )
    .expect("the shim starts");
    let started = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(started) = read_json::<Started>(&files.started) {
                return started;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the shim starts bpftrace");
    record.shim = Identity::of(shim.id().expect("the shim's pid") as i32);
    record.bpftrace = Some(started.bpftrace);
    record.probes = Some(1);
    record.tracing_since = Some(k8s_openapi::jiff::Timestamp::now().as_second());
    state.save(&record).expect("the record");
    shim
}
