//! This node's parts of TraceJobs on several nodes (`TraceJobNode`s whose spec.nodeName is this
//! node), as this agent knows them: listed once at its start (an earlier agent of this node may
//! have left some), then kept from its own writes. No watch: only this node's agent writes its
//! parts (the admission fence lets a node's token write only its own node's), so a watch would
//! bring back nothing but the agent's own writes; and the API server's watch cache does not
//! index a CRD's selectable fields, so every event of every part was matched against every
//! agent's watch, N x N for a fan-out to N nodes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::api::ListParams;
use kube::Api;

use crate::resource::crd::NODE_FIELD;
use crate::resource::TraceJobNode;

/// This node's parts by the UID of the TraceJob that owns each.
#[derive(Default, Debug)]
pub struct Parts {
    by_owner: RwLock<HashMap<String, Arc<TraceJobNode>>>,
}

impl Parts {
    /// Lists this node's parts (paged), replacing what was known.
    pub async fn load(&self, api: &Api<TraceJobNode>, node: &str) -> Result<usize, kube::Error> {
        let mut params = ListParams::default()
            .fields(&format!("{NODE_FIELD}={node}"))
            .limit(500);
        let mut listed = HashMap::new();
        loop {
            let page = api.list(&params).await?;
            for part in page.items {
                if let Some(uid) = part.owner_uid().map(String::from) {
                    listed.insert(uid, Arc::new(part));
                }
            }
            match page.metadata.continue_ {
                Some(next) if !next.is_empty() => params = params.continue_token(&next),
                _ => break,
            }
        }
        let n = listed.len();
        if let Ok(mut m) = self.by_owner.write() {
            *m = listed;
        }
        Ok(n)
    }

    /// The part of the TraceJob with this UID, if this node has one.
    pub fn get(&self, owner: &str) -> Option<Arc<TraceJobNode>> {
        self.by_owner.read().ok()?.get(owner).cloned()
    }

    /// A part as the API server returned it from this agent's write.
    pub fn record(&self, part: TraceJobNode) {
        let Some(uid) = part.owner_uid().map(String::from) else {
            return;
        };
        if let Ok(mut m) = self.by_owner.write() {
            m.insert(uid, Arc::new(part));
        }
    }

    /// The TraceJob is gone (its parts go with it).
    pub fn forget(&self, owner: &str) {
        if let Ok(mut m) = self.by_owner.write() {
            m.remove(owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::TraceJob;

    fn part(owner: &str, node: &str) -> TraceJobNode {
        let mut job: TraceJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
            "metadata": {"name": "wide", "namespace": "ns", "uid": owner},
            "spec": {"nodeSelector": {"matchLabels": {"a": "b"}}, "program": "BEGIN {}"},
        }))
        .expect("a TraceJob");
        job.metadata.uid = Some(owner.into());
        TraceJobNode::part_of(&job, node)
    }

    #[test]
    fn a_written_part_is_known_by_its_owner_until_forgotten() {
        let parts = Parts::default();
        assert!(parts.get("u1").is_none());
        parts.record(part("u1", "n1"));
        assert_eq!(
            parts.get("u1").map(|p| p.spec.node_name.clone()),
            Some("n1".to_string())
        );
        assert!(parts.get("u2").is_none());
        parts.forget("u1");
        assert!(parts.get("u1").is_none());
    }
}
