//! Whether another agent will take over this node's traces once this one exits.
//!
//! A restarted or re-created agent pod re-adopts running traces, so on SIGTERM the agent leaves
//! them running. But when the agent is being uninstalled (`kubectl delete -k daemonset/`, or its
//! DaemonSet deleted), nothing will come back for them: the agent ends them instead, so removing
//! it leaves no bpftrace behind. The evidence is the agent pod's DaemonSet: gone or being
//! deleted, or the agent's own permissions already revoked (an uninstall deletes its binding).
//! When the API cannot answer, the traces are kept: losing results is the worse mistake.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

/// The agent's own pod, from the downward API.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// Leave the traces running: a next agent will take them over.
    Successor,
    /// End the traces now: nothing will take them over. Says why.
    NoSuccessor(String),
}

/// What became of the DaemonSet that owns the agent's pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// No DaemonSet owns the pod.
    NotADaemonSet,
    Live,
    Deleting,
    Gone,
}

/// How long the check may take; the pod's termination grace period is 30 s.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Decides for an agent about to exit. Not run in a pod (`pod` is None): whatever runs the agent
/// runs it again, as before.
pub async fn check(client: Client, pod: Option<&PodRef>) -> Handover {
    let Some(pod) = pod else {
        return Handover::Successor;
    };
    match tokio::time::timeout(TIMEOUT, owner(client, pod)).await {
        Ok(result) => decide(result),
        Err(_) => Handover::Successor,
    }
}

async fn owner(client: Client, pod: &PodRef) -> Result<Owner, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let me = pods.get(&pod.name).await?;
    let Some(ds) = me
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .find(|o| o.controller == Some(true) && o.kind == "DaemonSet")
    else {
        return Ok(Owner::NotADaemonSet);
    };
    let daemonsets: Api<DaemonSet> = Api::namespaced(client, &pod.namespace);
    Ok(match daemonsets.get_opt(&ds.name).await? {
        None => Owner::Gone,
        Some(d) if d.metadata.deletion_timestamp.is_some() => Owner::Deleting,
        // A DaemonSet of that name (even re-created) will run a pod on this node.
        Some(_) => Owner::Live,
    })
}

pub fn decide(owner: Result<Owner, kube::Error>) -> Handover {
    match owner {
        Ok(Owner::Live | Owner::NotADaemonSet) => Handover::Successor,
        Ok(Owner::Deleting) => {
            Handover::NoSuccessor("the agent's DaemonSet is being deleted".into())
        }
        Ok(Owner::Gone) => Handover::NoSuccessor("the agent's DaemonSet was deleted".into()),
        Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => Handover::NoSuccessor(
            "the agent's access to the API was revoked (it is being uninstalled)".into(),
        ),
        // Unreachable or unanswerable: keep the traces for whoever comes next.
        Err(_) => Handover::Successor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn traces_are_left_only_when_a_daemonset_will_bring_an_agent_back() {
        assert_eq!(decide(Ok(Owner::Live)), Handover::Successor);
        assert_eq!(decide(Ok(Owner::NotADaemonSet)), Handover::Successor);
        assert!(matches!(decide(Ok(Owner::Gone)), Handover::NoSuccessor(_)));
        assert!(matches!(
            decide(Ok(Owner::Deleting)),
            Handover::NoSuccessor(_)
        ));
        assert!(matches!(
            decide(Err(api_error(403))),
            Handover::NoSuccessor(_)
        ));
        assert!(matches!(
            decide(Err(api_error(401))),
            Handover::NoSuccessor(_)
        ));
        // Cannot tell: keep the results.
        assert_eq!(decide(Err(api_error(500))), Handover::Successor);
        assert_eq!(decide(Err(api_error(404))), Handover::Successor);
    }
}
