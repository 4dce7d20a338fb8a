//! The TraceJobs of this node, as a stream of updates: seen, deleted, and "the list is complete"
//! after every (re)list, so deletions missed while disconnected are noticed too.

use std::collections::HashSet;

use futures::{Stream, StreamExt};
use kube::api::ListParams;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};

use crate::api::TraceJob;
use crate::crd::NODE_FIELD;

#[derive(Debug)]
pub enum Update {
    Seen(TraceJob),
    Deleted(TraceJob),
    /// A (re)list finished: these are the UIDs of every TraceJob of this node that exists.
    Synced(HashSet<String>),
}

/// Whether the server filters by node (CRD `selectableFields`, Kubernetes 1.31+) or this agent must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Server,
    Client,
}

/// Asks the server for one TraceJob by field selector: servers that cannot select on
/// spec.nodeName answer 400, and then the agent filters what it receives itself.
pub async fn detect_filter(api: &Api<TraceJob>, node: &str) -> Result<Filter, kube::Error> {
    let params = ListParams::default()
        .fields(&format!("{NODE_FIELD}={node}"))
        .limit(1);
    match api.list_metadata(&params).await {
        Ok(_) => Ok(Filter::Server),
        Err(kube::Error::Api(s)) if s.code == 400 => {
            tracing::info!(
                reason = %s.message,
                "the API server cannot select TraceJobs by spec.nodeName; filtering on this node instead"
            );
            Ok(Filter::Client)
        }
        Err(e) => Err(e),
    }
}

/// Watches TraceJobs of `node` in every namespace, retrying with backoff on errors.
pub fn updates(api: Api<TraceJob>, node: String, filter: Filter) -> impl Stream<Item = Update> {
    let mut config = watcher::Config::default();
    if filter == Filter::Server {
        config = config.fields(&format!("{NODE_FIELD}={node}"));
    }
    let mut listing: HashSet<String> = HashSet::new();
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let update = match event {
                Ok(Event::Apply(tj)) | Ok(Event::InitApply(tj)) if tj.spec.node_name != node => {
                    None
                }
                Ok(Event::Apply(tj)) => Some(Update::Seen(tj)),
                Ok(Event::InitApply(tj)) => {
                    listing.insert(tj.uid().unwrap_or_default());
                    Some(Update::Seen(tj))
                }
                Ok(Event::Delete(tj)) if tj.spec.node_name == node => Some(Update::Deleted(tj)),
                Ok(Event::Delete(_)) => None,
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
