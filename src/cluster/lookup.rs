//! What the agent reads besides its TraceJobs: the TraceJob's namespace (its node-selector
//! annotation), its own Node (its labels) and a TraceJob's target pod. One GET each, within a
//! time limit.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{Api, Client};

use crate::decide::scope::ANNOTATION;

/// How long a lookup may take before it counts as failed (and is tried again later).
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0} does not exist")]
    Missing(String),
}

async fn get<K>(api: Api<K>, name: &str, what: String) -> Result<K, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match tokio::time::timeout(TIMEOUT, api.get_opt(name)).await {
        Ok(Ok(Some(k))) => Ok(k),
        Ok(Ok(None)) => Err(Error::Missing(what)),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Error::Timeout(TIMEOUT)),
    }
}

/// The namespace's node-selector annotation, if it has one.
pub async fn namespace_selector(client: &Client, namespace: &str) -> Result<Option<String>, Error> {
    let ns = get(
        Api::<Namespace>::all(client.clone()),
        namespace,
        format!("namespace {namespace}"),
    )
    .await?;
    Ok(ns
        .metadata
        .annotations
        .and_then(|a| a.get(ANNOTATION).cloned()))
}

/// The labels of a node.
pub async fn node_labels(client: &Client, node: &str) -> Result<BTreeMap<String, String>, Error> {
    let n = get(
        Api::<Node>::all(client.clone()),
        node,
        format!("node {node}"),
    )
    .await?;
    Ok(n.metadata.labels.unwrap_or_default())
}

/// A pod, if it exists.
pub async fn pod(client: &Client, namespace: &str, name: &str) -> Result<Option<Pod>, Error> {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    match tokio::time::timeout(TIMEOUT, api.get_opt(name)).await {
        Ok(found) => Ok(found?),
        Err(_) => Err(Error::Timeout(TIMEOUT)),
    }
}
