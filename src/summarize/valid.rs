//! Which node outputs a fan-out's merged output may hold: only those the valid parts' own
//! agents wrote (the parts themselves are sorted by `decide::status::sort_parts`).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use crate::cluster::writer::output_name;
use crate::resource::node::{written_for, Written};
use crate::resource::{TraceJob, TraceJobNode};

/// Why a ConfigMap is not the output of `part` (a valid part of `job`) that its node's agent
/// writes: labelled with the part's node and the TraceJob, the TraceJob its one (controller)
/// owner, and named as the agent names that run's output (`cluster::writer::output_name`, from
/// the part's run id or its first 8 hex digits). None: it is.
pub fn invalid_output(job: &TraceJob, part: &TraceJobNode, cm: &ConfigMap) -> Option<String> {
    let name = cm.name_any();
    let node = &part.spec.node_name;
    let job_name = job.name_any();
    let run = part
        .status
        .as_ref()
        .and_then(|s| s.id.as_deref())
        .unwrap_or("");
    let short = run.split('-').next().unwrap_or(run);
    if run.is_empty()
        || (name != output_name(&job_name, run) && name != output_name(&job_name, short))
    {
        return Some(format!(
            "{name} is not named as node {node}'s output of run {run}"
        ));
    }
    match written_for(cm, job, node) {
        Written::Yes => None,
        Written::NotLabelled => Some(format!("{name} is not labelled as node {node}'s output")),
        Written::NotOwned => Some(format!(
            "{name} does not have this TraceJob as its one (controller) owner"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::node::controller;
    use crate::resource::vocabulary::Label;
    use crate::resource::TraceJobNodeStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    #[test]
    fn only_the_nodes_own_output_is_merged() {
        let mut job = crate::resource::example();
        job.metadata.uid = Some("u1".into());
        let mut part = TraceJobNode::part_of(&job, "n1");
        let run = "0b6c1f1e-0000-4000-8000-000000000000";
        part.status = Some(TraceJobNodeStatus {
            id: Some(run.into()),
            ..Default::default()
        });
        let output = |name: &str, node: &str| ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([
                    (Label::TraceJob.as_str().to_string(), "t".to_string()),
                    (Label::Node.as_str().to_string(), node.to_string()),
                ])),
                owner_references: Some(vec![controller(&job)]),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            invalid_output(&job, &part, &output(&output_name("t", "0b6c1f1e"), "n1")),
            None
        );
        assert_eq!(
            invalid_output(&job, &part, &output(&output_name("t", run), "n1")),
            None
        );
        assert!(
            invalid_output(&job, &part, &output(&output_name("t", "0b6c1f1e"), "n2")).is_some()
        );
        assert!(invalid_output(&job, &part, &output("t-output-ffffffff", "n1")).is_some());
        let mut owned_twice = output(&output_name("t", "0b6c1f1e"), "n1");
        let mut other = controller(&job);
        other.controller = None;
        owned_twice
            .metadata
            .owner_references
            .as_mut()
            .expect("owners")
            .push(other);
        assert!(invalid_output(&job, &part, &owned_twice).is_some());
    }
}
