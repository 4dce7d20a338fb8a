//! The summarizer's writes: a fan-out TraceJob's summary (server-side apply of its status, field
//! manager `MANAGER`), its merged output ConfigMap, and the end of an unassigned pod-target
//! TraceJob whose pod no node can take. One attempt each; the caller looks again later.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::Ctx;
use crate::cluster::writer::now;
use crate::decide::status;
use crate::output::read::Merger;
use crate::resource::node::controller;
use crate::resource::vocabulary::{ConditionType, Label, Reason};
use crate::resource::{OutputRef, Phase, TraceJob, TraceJobNode, TraceJobStatus};

/// The field manager of the summarizer's status writes.
pub const MANAGER: &str = "tracejob-summarizer";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the nodes' output cannot be merged: {0}")]
    Merge(String),
}

/// What became of a look at a TraceJob.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written, or nothing to write (it changed or went meanwhile).
    Done,
    /// Nothing to write yet: look again later.
    Again,
}

/// The merged output's ConfigMap name: the TraceJob's name and `-output-merged`.
pub fn merged_name(tracejob: &str) -> String {
    let suffix = "-output-merged";
    let base: String = tracejob.chars().take(253 - suffix.len()).collect();
    format!("{}{suffix}", base.trim_end_matches(['-', '.']))
}

/// Writes a fan-out TraceJob's summary `want` (`parts`: its valid parts); first, when `merge`,
/// its merged output.
pub async fn fan_out(
    ctx: &Ctx,
    job: &TraceJob,
    parts: &[TraceJobNode],
    mut want: TraceJobStatus,
    merge: bool,
) -> Result<Outcome, Error> {
    if merge {
        let (name, merged, how, left_out) = merged_output(ctx, job, parts).await?;
        want.output_ref = Some(OutputRef { name });
        want.merged_nodes = Some(i64::try_from(parts.len()).unwrap_or(i64::MAX));
        let message = format!(
            "the maps of {} nodes merged ({how}): {}",
            merged.len(),
            status::named(&merged)
        );
        want.conditions.retain(|c| {
            c.type_ != ConditionType::OutputStored.as_str()
                && c.type_ != ConditionType::OutputIncomplete.as_str()
        });
        want.conditions.push(status::output_stored(
            Reason::Merged.as_str(),
            &message,
            job,
            now(),
        ));
        if !left_out.is_empty() {
            super::report_rejected(ctx, job, Reason::InvalidOutputs.as_str(), &left_out);
            want.conditions.push(Condition {
                type_: ConditionType::OutputIncomplete.as_str().into(),
                status: "True".into(),
                reason: Reason::InvalidOutputs.as_str().into(),
                message: format!(
                    "{} of {} nodes merged; left out: {}",
                    merged.len(),
                    parts.len(),
                    status::named(&left_out)
                ),
                last_transition_time: now(),
                observed_generation: job.metadata.generation,
            });
        }
    }
    apply_status(&ctx.client, job, want, None).await
}

/// Applies `status` to the TraceJob (onto `version` only, when given). A TraceJob gone, or
/// changed since `version`, needs nothing more.
async fn apply_status(
    client: &Client,
    job: &TraceJob,
    status: TraceJobStatus,
    version: Option<String>,
) -> Result<Outcome, Error> {
    let mut object = json!({
        "apiVersion": TraceJob::api_version(&()),
        "kind": TraceJob::kind(&()),
        "metadata": { "name": job.name_any() },
        "status": status,
    });
    if let Some(rv) = version {
        object["metadata"]["resourceVersion"] = json!(rv);
    }
    let api: Api<TraceJob> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    match api
        .patch_status(
            &job.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
    {
        Ok(_) => Ok(Outcome::Done),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Outcome::Done),
        Err(e) => Err(e.into()),
    }
}

/// Reads every node's output (one paged LIST by the TraceJob's label, not a GET per node),
/// merges the maps and stores them in the merged ConfigMap. Only the output each part names
/// and its node's agent wrote (`node::invalid_output`) is merged. Returns its name, how many
/// nodes' outputs it holds, how it was stored, and why each other output was left out.
async fn merged_output(
    ctx: &Ctx,
    job: &TraceJob,
    parts: &[TraceJobNode],
) -> Result<(String, Vec<String>, &'static str, Vec<String>), Error> {
    let ns = job.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    // By output name: several parts may name one output (a part written past the fence), and
    // the output is merged once, for the part whose node wrote it.
    let mut wanted: HashMap<String, Vec<&TraceJobNode>> = HashMap::new();
    for p in parts {
        if let Some(r) = p.status.as_ref().and_then(|s| s.output_ref.as_ref()) {
            wanted.entry(r.name.clone()).or_default().push(p);
        }
    }
    let mut left_out = Vec::new();
    let selector = format!("{}={},!{}", Label::TraceJob, job.name_any(), Label::Merged);
    // Small pages (each output up to a ConfigMap's 1 MiB), each merged and let go before the
    // next is read: memory holds the running merge and one page, whatever the nodes.
    let mut params = ListParams::default().labels(&selector).limit(2);
    let mut merger = Some(Merger::new(
        &job.spec.program,
        ctx.max_output_bytes,
        ctx.merge_budget_bytes,
    ));
    loop {
        let page = api.list(&params).await?;
        let mut ours = Vec::new();
        for cm in page.items {
            let claims = wanted
                .get(&cm.name_any())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut owner = None;
            for part in claims {
                match super::valid::invalid_output(job, part, &cm) {
                    None => owner = owner.or(Some(part.spec.node_name.clone())),
                    // Another part naming it is reported, whoever wrote it.
                    Some(why) => left_out.push(why),
                }
            }
            if let Some(node) = owner {
                ours.push((node, cm));
            }
        }
        if !ours.is_empty() {
            // Parsing and merging is CPU work: off the async threads.
            let mut m = merger
                .take()
                .ok_or_else(|| Error::Merge("no merge".into()))?;
            let m = tokio::task::spawn_blocking(move || {
                for (node, cm) in &ours {
                    m.add(node, cm);
                }
                m
            })
            .await
            .map_err(|e| Error::Merge(e.to_string()))?;
            merger = Some(m);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    let merged = merger
        .take()
        .ok_or_else(|| Error::Merge("no merge".into()))?
        .finish();
    let included: Vec<String> = merged.printed.iter().map(|(n, _)| n.clone()).collect();
    for (node, why) in &merged.left_out {
        left_out.push(format!("node {node}'s output: {why}"));
    }
    let program = job.spec.program.clone();
    // Rendering and compressing is CPU work too.
    let (contents, how) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let maps = crate::output::maps::Maps {
            bpftrace: merged.bpftrace.clone(),
            maps: merged.merged.maps.clone(),
        };
        let maps_json = serde_json::to_string(&maps).map_err(|e| Error::Merge(e.to_string()))?;
        Ok(crate::output::fit::merged(
            merged.text(),
            maps_json,
            &program,
        ))
    })
    .await
    .map_err(|e| Error::Merge(e.to_string()))??;
    let name = merged_name(&job.name_any());
    let (data, binary) = contents.configmap_data();
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns),
            labels: Some(BTreeMap::from([
                (Label::TraceJob.as_str().to_string(), job.name_any()),
                (Label::Merged.as_str().to_string(), "true".to_string()),
            ])),
            owner_references: Some(vec![controller(job)]),
            ..Default::default()
        },
        data: Some(data),
        binary_data: Some(binary),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &cm).await {
        Ok(_) => {}
        // Written before (a late node ended since, or another summarizer wrote it): replaced
        // whole.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.replace(&name, &PostParams::default(), &cm).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok((name, included, how, left_out))
}

/// An unassigned pod-target TraceJob that no node claimed: Failed if its pod does not exist, or
/// was not scheduled to a node within `timeout` of the TraceJob's creation; otherwise looked at
/// again later (its node's agent claims it once the pod is there). Written only onto the version
/// read, so a claim made meanwhile wins.
pub async fn unclaimed(
    client: &Client,
    job: &TraceJob,
    timeout: Duration,
) -> Result<Outcome, Error> {
    let ns = job.namespace().unwrap_or_default();
    let Some(target) = &job.spec.target else {
        return Ok(Outcome::Done);
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let (reason, message) = match pods.get_opt(&target.pod).await? {
        None => (
            Reason::TargetNotFound.as_str(),
            format!("pod {} not found in namespace {ns}", target.pod),
        ),
        Some(pod)
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none() =>
        {
            if crate::decide::job::age_of(job) < timeout {
                return Ok(Outcome::Again);
            }
            (
                Reason::TargetNotRunning.as_str(),
                format!(
                    "pod {} was not scheduled to a node within {}s (--target-timeout)",
                    target.pod,
                    timeout.as_secs()
                ),
            )
        }
        // On a node: that node's agent claims it (or, without an agent there, nothing can).
        Some(_) => return Ok(Outcome::Again),
    };
    let failed = TraceJobStatus {
        phase: Some(Phase::Failed),
        completion_time: Some(now()),
        message: Some(message),
        ..Default::default()
    };
    let failed = status::complete(failed, reason, job, now());
    apply_status(client, job, failed, job.resource_version()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_names_are_valid() {
        assert_eq!(merged_name("bio"), "bio-output-merged");
        assert!(merged_name(&"x".repeat(253)).len() <= 253);
    }
}
