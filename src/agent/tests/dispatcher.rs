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
use crate::resource::TraceJobNode;

/// A TraceJob deleted while the watch was disconnected brings no deletion event: the watch's
/// relist that follows does not list it (`Update::Synced` without its UID), and that is how its
/// actor is told it was deleted. Only that watch's jobs are concerned: the relist of this node's
/// TraceJobs says nothing of the unassigned ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_that_misses_a_tracejob_tells_its_actor_it_was_deleted() {
    let mut agent = Agent::new(vec![]);
    let mut dispatcher = Dispatcher {
        ctx: agent.ctx.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        parts: kube::runtime::reflector::store::<TraceJobNode>().0,
        jobs: HashMap::new(),
        finished: HashSet::new(),
        synced: HashMap::new(),
    };
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
