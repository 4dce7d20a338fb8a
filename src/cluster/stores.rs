//! What the agent knows of the cluster besides its TraceJobs, each kept up to date by a reflector
//! (a watch that keeps a store, as kube-rs's controllers do) instead of a GET per job: its own
//! Node (its labels), every Namespace's metadata (the node-selector annotation), and the pods on
//! its node (a target's container). The Node and the pods are filtered by the API server (on
//! `metadata.name` and `spec.nodeName`), so what reaches the agent does not grow with the
//! cluster's nodes. Each store says when it changed, so a job waiting on it wakes then, without
//! asking the API server anything. Each event that reaches the agent is counted.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use super::traffic::Traffic;
use crate::resource::vocabulary::Annotation;

/// A store kept by its reflector, and a signal that it changed.
pub struct Watched<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    changed: watch::Receiver<u64>,
}

/// The changes of one store, as a job waits for them.
pub struct Changes(watch::Receiver<u64>);

impl Changes {
    /// Waits until the store changes after this was made or last waited on. Never returns if its
    /// reflector is gone (it only goes with the agent).
    pub async fn next(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether the store changed since this was made or last waited on; marks it seen.
    pub fn take(&mut self) -> bool {
        let changed = self.0.has_changed().unwrap_or(false);
        self.0.mark_unchanged();
        changed
    }
}

impl<K> Watched<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + Sync,
{
    /// Starts the reflector of `api` (filtered by `config`) in a task of its own. `name` names
    /// it in `tracejob_watch_events_total`; `trim` drops what the agent never reads.
    fn start(
        api: Api<K>,
        config: watcher::Config,
        name: &'static str,
        metrics: Arc<Traffic>,
        trim: fn(&mut K),
    ) -> Watched<K> {
        let (store, writer) = reflector::store();
        let (tx, changed) = watch::channel(0u64);
        let events = watcher::watcher(api, config).default_backoff().modify(trim);
        let stream = reflector::reflector(writer, events).for_each(move |event| {
            match &event {
                Ok(Event::Apply(_) | Event::InitApply(_) | Event::Delete(_)) => {
                    metrics.watch_event(name);
                }
                Ok(Event::Init | Event::InitDone) => {}
                Err(e) => tracing::warn!(error = %e, watch = name, "watching failed; retrying"),
            }
            // The store has the change by now (a (re)list's objects only once it is complete).
            if matches!(
                event,
                Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)
            ) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
            std::future::ready(())
        });
        tokio::spawn(stream);
        Watched { store, changed }
    }

    /// The changes from now on.
    pub fn changes(&self) -> Changes {
        let mut rx = self.changed.clone();
        rx.mark_unchanged();
        Changes(rx)
    }

    /// An object of the store (namespaced by `namespace`, if given).
    pub fn get(&self, name: &str, namespace: Option<&str>) -> Option<Arc<K>> {
        let key = ObjectRef::new(name);
        let key = match namespace {
            Some(ns) => key.within(ns),
            None => key,
        };
        self.store.get(&key)
    }

    async fn ready(&self) -> Result<(), Error> {
        self.store.wait_until_ready().await.map_err(|_| Error)
    }
}

#[cfg(test)]
impl<K> Watched<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// A store that has listed `objects` and never changes (no watch behind it): for unit tests.
    pub(crate) fn fixed(objects: Vec<K>) -> Watched<K> {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for object in objects {
            writer.apply_watcher_event(&Event::InitApply(object));
        }
        writer.apply_watcher_event(&Event::InitDone);
        // Its sender gone, `Changes::next` waits forever, as it does once a reflector is gone.
        let (_, changed) = watch::channel(0u64);
        Watched { store, changed }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a watch of the cluster (nodes, namespaces, pods) ended before it listed them")]
pub struct Error;

/// The agent's stores of its Node, the Namespaces and its node's pods.
pub struct Stores {
    node_name: String,
    /// Its own Node, metadata only (its labels are all that is read).
    pub node: Watched<PartialObjectMeta<Node>>,
    /// Every Namespace, metadata only (their annotations are all that is read).
    pub namespaces: Watched<PartialObjectMeta<Namespace>>,
    /// The pods whose spec.nodeName is this node.
    pub pods: Watched<Pod>,
}

/// What the agent never reads of an object: its managed fields.
fn trim<K: ResourceExt>(k: &mut K) {
    k.managed_fields_mut().clear();
}

impl Stores {
    /// Starts the three reflectors for node `node`.
    pub fn start(client: &Client, node: &str, metrics: Arc<Traffic>) -> Stores {
        Stores {
            node_name: node.to_string(),
            node: Watched::start(
                Api::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={node}")),
                "nodes",
                metrics.clone(),
                trim,
            ),
            namespaces: Watched::start(
                Api::all(client.clone()),
                watcher::Config::default(),
                "namespaces",
                metrics.clone(),
                trim,
            ),
            pods: Watched::start(
                Api::all(client.clone()),
                watcher::Config::default().fields(&format!("spec.nodeName={node}")),
                "pods",
                metrics,
                trim,
            ),
        }
    }

    /// Stores of node `node` that hold these objects, ready at once, without watches: for unit
    /// tests.
    #[cfg(test)]
    pub(crate) fn fixed(
        node: &str,
        nodes: Vec<PartialObjectMeta<Node>>,
        namespaces: Vec<PartialObjectMeta<Namespace>>,
        pods: Vec<Pod>,
    ) -> Stores {
        Stores {
            node_name: node.to_string(),
            node: Watched::fixed(nodes),
            namespaces: Watched::fixed(namespaces),
            pods: Watched::fixed(pods),
        }
    }

    /// Waits until each store has listed its objects once.
    pub async fn ready(&self) -> Result<(), Error> {
        self.node.ready().await?;
        self.namespaces.ready().await?;
        self.pods.ready().await
    }

    /// This node's labels; None while its Node is not known.
    pub fn node_labels(&self) -> Option<BTreeMap<String, String>> {
        self.node
            .get(&self.node_name, None)
            .map(|n| n.labels().clone())
    }

    /// A namespace's node-selector annotation (`Some(None)`: it has none); None while the
    /// namespace is not known.
    pub fn namespace_selector(&self, namespace: &str) -> Option<Option<String>> {
        self.namespaces.get(namespace, None).map(|ns| {
            ns.annotations()
                .get(Annotation::NodeSelector.as_str())
                .cloned()
        })
    }

    /// A pod on this node; None if it is not on this node (or does not exist).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(name, Some(namespace))
    }
}
