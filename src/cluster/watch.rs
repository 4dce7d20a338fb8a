//! The TraceJobs this node may run, as a stream of updates: seen, deleted, and "the list is
//! complete" after every (re)list, so deletions missed while disconnected are noticed too. Two
//! watches, both filtered by the API server on `spec.nodeName` (a selectable field of the CRD):
//! this node's TraceJobs, and the unassigned ones (no `spec.nodeName`: a target pod, wherever it
//! runs). Nothing of other nodes' TraceJobs reaches the agent; each event that does is counted.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};

use super::traffic::Traffic;
use crate::resource::crd::NODE_FIELD;
use crate::resource::TraceJob;

/// Which watch an update came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// TraceJobs whose spec.nodeName is this node.
    Node,
    /// TraceJobs without a spec.nodeName.
    Unassigned,
}

#[derive(Debug)]
pub enum Update {
    Seen(TraceJob),
    Deleted(TraceJob),
    /// A (re)list of one watch finished: these are the UIDs of every TraceJob of it that exists.
    Synced(Source, HashSet<String>),
}

/// Watches the TraceJobs this node may run in every namespace, retrying with backoff on errors.
pub fn updates(
    api: Api<TraceJob>,
    node: &str,
    metrics: Arc<Traffic>,
) -> impl Stream<Item = Update> {
    futures::stream::select(
        watch(api.clone(), Source::Node, node, metrics.clone()),
        watch(api, Source::Unassigned, "", metrics),
    )
}

fn watch(
    api: Api<TraceJob>,
    source: Source,
    node: &str,
    metrics: Arc<Traffic>,
) -> impl Stream<Item = Update> {
    let config = watcher::Config::default().fields(&format!("{NODE_FIELD}={node}"));
    let mut listing: HashSet<String> = HashSet::new();
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            if matches!(
                event,
                Ok(Event::Apply(_) | Event::InitApply(_) | Event::Delete(_))
            ) {
                let watch = match source {
                    Source::Node => "node",
                    Source::Unassigned => "unassigned",
                };
                metrics.watch_event(watch);
            }
            let update = match event {
                Ok(Event::Apply(tj)) => Some(Update::Seen(tj)),
                Ok(Event::InitApply(tj)) => {
                    listing.insert(tj.uid().unwrap_or_default());
                    Some(Update::Seen(tj))
                }
                Ok(Event::Delete(tj)) => Some(Update::Deleted(tj)),
                Ok(Event::Init) => {
                    listing.clear();
                    None
                }
                Ok(Event::InitDone) => Some(Update::Synced(source, std::mem::take(&mut listing))),
                Err(e) => {
                    tracing::warn!(error = %e, "watching TraceJobs failed; retrying");
                    None
                }
            };
            std::future::ready(update)
        })
}
