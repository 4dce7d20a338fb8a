//! The TraceJobs of this node, as a stream of updates: seen, deleted, and "the list is complete"
//! after every (re)list, so deletions missed while disconnected are noticed too. The API server
//! filters by `spec.nodeName` (a selectable field of the CRD), so nothing of other nodes'
//! TraceJobs reaches the agent; each event that does is counted.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};

use crate::metrics::Metrics;
use crate::resource::crd::NODE_FIELD;
use crate::resource::TraceJob;

#[derive(Debug)]
pub enum Update {
    Seen(TraceJob),
    Deleted(TraceJob),
    /// A (re)list finished: these are the UIDs of every TraceJob of this node that exists.
    Synced(HashSet<String>),
}

/// Watches TraceJobs of `node` in every namespace, retrying with backoff on errors.
pub fn updates(
    api: Api<TraceJob>,
    node: &str,
    metrics: Arc<Metrics>,
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
                metrics.watch_events.inc();
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
                Ok(Event::InitDone) => Some(Update::Synced(std::mem::take(&mut listing))),
                Err(e) => {
                    tracing::warn!(error = %e, "watching TraceJobs failed; retrying");
                    None
                }
            };
            std::future::ready(update)
        })
}
