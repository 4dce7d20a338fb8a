//! The status the agent reports, as a pure function of what it knows: the conditions follow the
//! phase (Running, Completed, Failed; and OutputStored once output landed), each keeping its
//! lastTransitionTime while its status does not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::resource::{NodeStatus, Phase, TraceJob, TraceJobStatus};

/// The condition types derived from the phase.
const PHASE_CONDITIONS: [&str; 3] = ["Running", "Completed", "Failed"];

/// The `OutputStored` condition: how the output was stored (reason Stored, Compressed or
/// Truncated).
pub fn output_stored(reason: &str, message: &str, job: &TraceJob, now: Time) -> Condition {
    Condition {
        type_: "OutputStored".to_string(),
        status: "True".to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: now,
        observed_generation: job.metadata.generation,
    }
}

/// `status` as it is written: the conditions its phase implies (with `reason` on the one that is
/// True), the other conditions it carries kept, and the generation it reflects.
pub fn complete(
    mut status: TraceJobStatus,
    reason: &str,
    job: &TraceJob,
    now: Time,
) -> TraceJobStatus {
    let phase = status.phase.unwrap_or(Phase::Pending);
    let message = status.message.clone().unwrap_or_default();
    let mut extra: Vec<Condition> = std::mem::take(&mut status.conditions)
        .into_iter()
        .filter(|c| !PHASE_CONDITIONS.contains(&c.type_.as_str()))
        .collect();
    status.conditions = conditions(phase, reason, &message, job, now);
    status.conditions.append(&mut extra);
    status.observed_generation = job.metadata.generation;
    status
}

/// The conditions for `phase`: `Running` (True while tracing), `Completed` and `Failed`, keeping
/// each one's lastTransitionTime while its status does not change.
pub fn conditions(
    phase: Phase,
    reason: &str,
    message: &str,
    job: &TraceJob,
    now: Time,
) -> Vec<Condition> {
    let previous = job
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let wanted = [
        ("Running", phase == Phase::Running),
        ("Completed", phase == Phase::Completed),
        ("Failed", phase == Phase::Failed),
    ];
    wanted
        .iter()
        .map(|(kind, on)| {
            let status = if *on { "True" } else { "False" };
            let last = previous
                .iter()
                .find(|c| c.type_ == *kind && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: kind.to_string(),
                status: status.to_string(),
                reason: if *on {
                    reason.to_string()
                } else {
                    format!("Phase{phase}")
                },
                message: if *on {
                    message.to_string()
                } else {
                    format!("phase is {phase}")
                },
                last_transition_time: last,
                observed_generation: job.metadata.generation,
            }
        })
        .collect()
}

/// The summary of a TraceJob run on several nodes (spec.nodeSelector): its phase, progress
/// ("done/total"), message and conditions, from its nodes' entries. Pending until a node runs
/// it; then Stopping while any node stops, else Running while any runs; once every node is done,
/// Completed if any node completed (the message names those that failed), else Failed.
pub fn summary(job: &TraceJob, now: Time) -> TraceJobStatus {
    let nodes: &[NodeStatus] = job
        .status
        .as_ref()
        .map(|s| s.nodes.as_slice())
        .unwrap_or_default();
    let is = |p: Phase| nodes.iter().filter(|n| n.phase == Some(p)).count();
    let done = nodes
        .iter()
        .filter(|n| n.phase.is_some_and(Phase::is_final))
        .count();
    let total = nodes.len();
    let failed: Vec<String> = nodes
        .iter()
        .filter(|n| n.phase == Some(Phase::Failed))
        .map(|n| {
            format!(
                "{} ({})",
                n.node,
                n.reason
                    .as_deref()
                    .or(n.message.as_deref())
                    .unwrap_or("failed")
            )
        })
        .collect();
    let (phase, reason) = if total == 0 {
        (Phase::Pending, "NoNodeYet")
    } else if done == total && is(Phase::Completed) > 0 {
        (Phase::Completed, "NodesDone")
    } else if done == total {
        (Phase::Failed, "NodesFailed")
    } else if is(Phase::Stopping) > 0 {
        (Phase::Stopping, "NodesStopping")
    } else if is(Phase::Running) > 0 {
        (Phase::Running, "NodesRunning")
    } else {
        (Phase::Pending, "NodesStarting")
    };
    let mut message = format!("{done} of {total} nodes done");
    if !failed.is_empty() {
        message += &format!("; failed on {}", failed.join(", "));
    }
    let status = TraceJobStatus {
        phase: Some(phase),
        progress: Some(format!("{done}/{total}")),
        message: Some(message),
        ..Default::default()
    };
    complete(status, reason, job, now)
}

/// What of a fan-out TraceJob's summary shows whether it was written since: phase, progress and
/// message.
pub type SummaryKey = (Option<Phase>, Option<String>, Option<String>);

pub fn summary_key(job: &TraceJob) -> SummaryKey {
    job.status.as_ref().map_or((None, None, None), |s| {
        (s.phase, s.progress.clone(), s.message.clone())
    })
}

/// The agents of this many nodes (the first by name among the TraceJob's entries) keep its
/// summary current; the others stand by.
pub const SUMMARISERS: usize = 2;

/// Whether this node's agent should write a fan-out TraceJob's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryDue {
    /// Not a fan-out TraceJob, or this node takes no part in it.
    NotOurs,
    /// The summary says what the entries say.
    Current,
    /// Stale, and this node is one of the `SUMMARISERS`: write it a moment from now (a burst of
    /// entry writes then costs a few summary writes, not one per node).
    Soon,
    /// Stale, and another node's agent should write it: write it only if nobody has for a while
    /// (those agents may be gone).
    Fallback,
}

pub fn summary_due(node: &str, job: &TraceJob, now: Time) -> SummaryDue {
    let nodes = job
        .status
        .as_ref()
        .map(|s| s.nodes.as_slice())
        .unwrap_or_default();
    if job.spec.node_selector.is_none() || !nodes.iter().any(|n| n.node == node) {
        return SummaryDue::NotOurs;
    }
    let want = summary(job, now);
    if summary_key(job) == (want.phase, want.progress, want.message) {
        return SummaryDue::Current;
    }
    let mut names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    names.sort_unstable();
    if names.iter().take(SUMMARISERS).any(|n| *n == node) {
        SummaryDue::Soon
    } else {
        SummaryDue::Fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::example as job;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn conditions_follow_the_phase_and_keep_transition_times() {
        let t0 = Time(Timestamp::from_second(1_000).expect("time"));
        let t1 = Time(Timestamp::from_second(2_000).expect("time"));
        let mut tj = job();
        let running = conditions(
            Phase::Running,
            "ProbesAttached",
            "3 probes",
            &tj,
            t0.clone(),
        );
        assert_eq!(running.iter().filter(|c| c.status == "True").count(), 1);
        assert_eq!(running[0].type_, "Running");
        assert_eq!(running[0].reason, "ProbesAttached");
        tj.status = Some(TraceJobStatus {
            conditions: running,
            ..Default::default()
        });
        let done = conditions(Phase::Completed, "Collected", "", &tj, t1.clone());
        let by = |t: &str| {
            done.iter()
                .find(|c| c.type_ == t)
                .cloned()
                .expect("condition")
        };
        assert_eq!(by("Completed").status, "True");
        assert_eq!(by("Completed").last_transition_time, t1);
        assert_eq!(by("Running").status, "False");
        assert_eq!(
            by("Failed").last_transition_time,
            t0,
            "Failed stayed False since t0"
        );
    }

    #[test]
    fn a_fan_out_summary_follows_its_nodes() {
        let now = Time(Timestamp::from_second(1_000).expect("time"));
        let entry = |node: &str, phase: Phase| NodeStatus {
            node: node.into(),
            phase: Some(phase),
            reason: (phase == Phase::Failed).then(|| "NodeNotAllowed".to_string()),
            ..Default::default()
        };
        let with = |nodes: Vec<NodeStatus>| {
            let mut tj = job();
            tj.status = Some(TraceJobStatus {
                nodes,
                ..Default::default()
            });
            summary(&tj, now.clone())
        };
        let s = with(vec![]);
        assert_eq!(
            (s.phase, s.progress.as_deref()),
            (Some(Phase::Pending), Some("0/0"))
        );
        let s = with(vec![entry("a", Phase::Running), entry("b", Phase::Pending)]);
        assert_eq!(
            (s.phase, s.progress.as_deref()),
            (Some(Phase::Running), Some("0/2"))
        );
        let s = with(vec![
            entry("a", Phase::Completed),
            entry("b", Phase::Stopping),
        ]);
        assert_eq!(
            (s.phase, s.progress.as_deref()),
            (Some(Phase::Stopping), Some("1/2"))
        );
        let s = with(vec![
            entry("a", Phase::Completed),
            entry("b", Phase::Failed),
        ]);
        assert_eq!(s.phase, Some(Phase::Completed));
        assert_eq!(s.progress.as_deref(), Some("2/2"));
        assert!(s
            .message
            .as_deref()
            .is_some_and(|m| m.contains("failed on b (NodeNotAllowed)")));
        assert!(s
            .conditions
            .iter()
            .any(|c| c.type_ == "Completed" && c.status == "True"));
        let s = with(vec![entry("a", Phase::Failed), entry("b", Phase::Failed)]);
        assert_eq!(s.phase, Some(Phase::Failed));
    }

    #[test]
    fn the_first_nodes_by_name_write_a_stale_summary_and_the_others_stand_by() {
        let now = Time(Timestamp::from_second(1_000).expect("time"));
        let entry = |node: &str, phase: Phase| NodeStatus {
            node: node.into(),
            phase: Some(phase),
            ..Default::default()
        };
        let mut tj = job();
        assert_eq!(summary_due("a", &tj, now.clone()), SummaryDue::NotOurs);
        tj.spec.node_name = None;
        tj.spec.node_selector = Some(Default::default());
        tj.status = Some(TraceJobStatus {
            nodes: vec![
                entry("c", Phase::Running),
                entry("a", Phase::Running),
                entry("b", Phase::Pending),
            ],
            ..Default::default()
        });
        assert_eq!(summary_due("a", &tj, now.clone()), SummaryDue::Soon);
        assert_eq!(summary_due("b", &tj, now.clone()), SummaryDue::Soon);
        assert_eq!(summary_due("c", &tj, now.clone()), SummaryDue::Fallback);
        assert_eq!(summary_due("d", &tj, now.clone()), SummaryDue::NotOurs);
        // Written: current for everyone, until an entry changes.
        let written = summary(&tj, now.clone());
        if let Some(s) = tj.status.as_mut() {
            s.phase = written.phase;
            s.progress = written.progress;
            s.message = written.message;
        }
        for node in ["a", "b", "c"] {
            assert_eq!(summary_due(node, &tj, now.clone()), SummaryDue::Current);
        }
        if let Some(s) = tj.status.as_mut() {
            s.nodes[2].phase = Some(Phase::Running);
        }
        assert_eq!(
            summary_due("a", &tj, now.clone()),
            SummaryDue::Current,
            "the same phase and progress"
        );
        if let Some(s) = tj.status.as_mut() {
            s.nodes[2].phase = Some(Phase::Completed);
        }
        assert_eq!(summary_due("a", &tj, now.clone()), SummaryDue::Soon);
        assert_eq!(summary_due("c", &tj, now), SummaryDue::Fallback);
    }

    #[test]
    fn complete_keeps_output_stored_and_sets_the_generation() {
        let now = Time(Timestamp::from_second(1_000).expect("time"));
        let mut tj = job();
        tj.metadata.generation = Some(4);
        let status = TraceJobStatus {
            phase: Some(Phase::Completed),
            message: Some("done".into()),
            conditions: vec![output_stored("Compressed", "gzip", &tj, now.clone())],
            ..Default::default()
        };
        let written = complete(status, "Collected", &tj, now);
        let types: Vec<&str> = written
            .conditions
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, ["Running", "Completed", "Failed", "OutputStored"]);
        assert_eq!(written.observed_generation, Some(4));
        assert_eq!(written.conditions[1].reason, "Collected");
        assert_eq!(written.conditions[1].message, "done");
    }
}
