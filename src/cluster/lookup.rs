//! The one read left that is not a watch (`stores` keeps everything else): where a target pod
//! is that is not on this node, for a TraceJob that names this node, to say what is wrong. One
//! GET, within a time limit, for the node's own TraceJobs only.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

/// How long a lookup may take before it counts as failed (and is tried again later).
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A pod, if it exists.
pub async fn pod(client: &Client, namespace: &str, name: &str) -> Result<Option<Pod>, Error> {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    match tokio::time::timeout(TIMEOUT, api.get_opt(name)).await {
        Ok(found) => Ok(found?),
        Err(_) => Err(Error::Timeout(TIMEOUT)),
    }
}
