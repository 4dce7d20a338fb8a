//! The dispatcher (`agent::Dispatcher`), fed the watch's updates by hand.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use tokio::sync::mpsc;

use super::fixture::{tracejob, unassigned, Agent, PATIENCE};
use crate::agent::Dispatcher;
use crate::cluster::watch::{Source, Update};
use crate::host::rundir::Record;

/// `agent`'s dispatcher, not ready yet, with `left` the runs on disk at its start.
fn dispatcher(agent: &Agent, left: Vec<Record>) -> Dispatcher {
    Dispatcher {
        ctx: agent.ctx.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        parts: Default::default(),
        jobs: HashMap::new(),
        finished: HashMap::new(),
        synced: HashMap::new(),
        left,
    }
}

/// A TraceJob deleted while the watch was disconnected brings no deletion event: the watch's
/// relist that follows does not list it (`Update::Synced` without its UID), and that is how its
/// actor is told it was deleted. Only that watch's jobs are concerned: the relist of this node's
/// TraceJobs says nothing of the unassigned ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_that_misses_a_tracejob_tells_its_actor_it_was_deleted() {
    let mut agent = Agent::new(vec![]);
    let mut dispatcher = dispatcher(&agent, Vec::new());
    let (done, mut ended) = mpsc::unbounded_channel();

    // Two TraceJobs whose actors wait without a word to the API server: one of this node, in a
    // namespace the agent's stores do not know yet (and of no known age: it never gives up), and
    // one about a pod that is not on this node.
    let mut gone = tracejob("gone");
    gone.metadata.namespace = Some("unknown".into());
    gone.metadata.creation_timestamp = None;
    let other = unassigned("other", "elsewhere");
    let (gone_uid, other_uid) = (gone.uid().expect("a uid"), other.uid().expect("a uid"));

    // The first list of each watch.
    dispatcher.handle(Update::Seen(gone.clone()), &done);
    dispatcher.handle(Update::Seen(other.clone()), &done);
    dispatcher.handle(
        Update::Synced(Source::Node, HashSet::from([gone_uid.clone()])),
        &done,
    );
    dispatcher.handle(
        Update::Synced(Source::Unassigned, HashSet::from([other_uid.clone()])),
        &done,
    );
    assert!(
        dispatcher.ready.load(Ordering::Relaxed),
        "both watches listed"
    );
    let spec = |uid: &str| dispatcher.jobs[uid].1.subscribe();
    let (gone_spec, other_spec) = (spec(&gone_uid), spec(&other_uid));
    agent.api.assert_quiet(Duration::from_millis(200)).await;
    assert!(ended.try_recv().is_err(), "both actors wait");

    // The watch of this node's TraceJobs restarts; `gone` was deleted meanwhile.
    dispatcher.handle(Update::Synced(Source::Node, HashSet::new()), &done);
    assert!(
        gone_spec.borrow().is_none(),
        "its actor is told it was deleted"
    );
    assert!(
        other_spec.borrow().is_some(),
        "the other watch's TraceJob is not"
    );

    let uid = tokio::time::timeout(PATIENCE, ended.recv())
        .await
        .expect("the deleted TraceJob's actor ends")
        .expect("a UID");
    assert_eq!(uid, gone_uid);
    dispatcher.done(uid);
    assert!(ended.try_recv().is_err(), "the other actor goes on");
    agent.api.assert_quiet(Duration::from_millis(100)).await;
}

/// A job that ended is remembered until the watch it came from lists without it. After an API
/// server restart both watches relist, one after the other; the relist of this node's
/// TraceJobs must not make the agent forget an unassigned (or fanned-out) job that ended, or
/// the next version of it seen starts an actor again (which, with no record of the run left on
/// disk, reported a node that had completed as Failed: RunLost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_of_one_watch_keeps_the_other_watchs_ended_jobs() {
    let agent = Agent::new(vec![]);
    let mut dispatcher = dispatcher(&agent, Vec::new());
    let (done, _ended) = mpsc::unbounded_channel();
    let mut job = unassigned("ended", "elsewhere");
    job.metadata.namespace = Some("unknown".into());
    job.metadata.creation_timestamp = None;
    let uid = job.uid().expect("a uid");

    // The first lists, then the TraceJob created; its actor ends.
    dispatcher.handle(Update::Synced(Source::Node, HashSet::new()), &done);
    dispatcher.handle(Update::Synced(Source::Unassigned, HashSet::new()), &done);
    dispatcher.handle(Update::Seen(job.clone()), &done);
    assert!(dispatcher.jobs.contains_key(&uid), "an actor for it");
    dispatcher.done(uid.clone());

    // The API server restarts: this node's watch relists first, then the other one.
    dispatcher.handle(Update::Synced(Source::Node, HashSet::new()), &done);
    dispatcher.handle(Update::Seen(job.clone()), &done);
    assert!(
        !dispatcher.jobs.contains_key(&uid),
        "the ended job was started again after the other watch's relist"
    );
    dispatcher.handle(
        Update::Synced(Source::Unassigned, HashSet::from([uid.clone()])),
        &done,
    );
    dispatcher.handle(Update::Seen(job.clone()), &done);
    assert!(!dispatcher.jobs.contains_key(&uid), "nor after its own");

    // Deleted while the watch was down: its own watch's relist forgets it.
    dispatcher.handle(Update::Synced(Source::Unassigned, HashSet::new()), &done);
    assert!(dispatcher.finished.is_empty(), "{:?}", dispatcher.finished);
}

/// Once both watches have listed, the runs an earlier agent left whose TraceJob is in neither
/// list are ended and removed; a run this agent started in between (its TraceJob created after
/// the first watch listed and before the second did) is not one of them. It was: its files were
/// removed under its actor, which then could neither save its record nor read its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_between_the_first_lists_is_not_an_orphan() {
    let agent = Agent::new(vec![]);
    let state = agent.ctx.state.clone();
    let record = |name: &str, uid: &str| Record {
        namespace: "unknown".into(),
        name: name.into(),
        uid: uid.into(),
        run_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string(),
        ..Default::default()
    };
    // Left by an earlier agent; its TraceJob was deleted while no agent ran.
    let orphan = record("orphan", "orphan-uid");
    state.create(&orphan, "BEGIN {}").expect("a run");
    let mut dispatcher = dispatcher(&agent, state.records());
    let (done, _ended) = mpsc::unbounded_channel();

    // This node's watch lists (nothing), then a TraceJob is created and its actor (waiting
    // quietly: its namespace is unknown to the stores) has its run on disk.
    dispatcher.handle(Update::Synced(Source::Node, HashSet::new()), &done);
    let mut job = tracejob("new");
    job.metadata.namespace = Some("unknown".into());
    job.metadata.creation_timestamp = None;
    let uid = job.uid().expect("a uid");
    dispatcher.handle(Update::Seen(job), &done);
    let live = record("new", &uid);
    state.create(&live, "BEGIN {}").expect("a run");

    // The other watch's first list: the orphan goes, the new run stays.
    dispatcher.handle(Update::Synced(Source::Unassigned, HashSet::new()), &done);
    tokio::time::timeout(PATIENCE, async {
        while state.load(&orphan.run_id).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the orphan's run is removed");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        state.load(&live.run_id).is_some(),
        "the new run's files were removed under its actor"
    );
}
