//! The status the agent reports, as a pure function of what it knows: the conditions follow the
//! phase (Running, Completed, Failed; and OutputStored once output landed), each keeping its
//! lastTransitionTime while its status does not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::resource::vocabulary::{ConditionType, Reason};
use crate::resource::{
    FailedNode, NodeCounts, Phase, TraceJob, TraceJobNode, TraceJobStatus, MAX_FAILED_NODES,
};

/// The condition types derived from the phase.
const PHASE_CONDITIONS: [&str; 3] = [
    ConditionType::Running.as_str(),
    ConditionType::Completed.as_str(),
    ConditionType::Failed.as_str(),
];

/// The `OutputStored` condition: how the output was stored (reason Stored, Compressed or
/// Truncated).
pub fn output_stored(reason: &str, message: &str, job: &TraceJob, now: Time) -> Condition {
    Condition {
        type_: ConditionType::OutputStored.as_str().to_string(),
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

/// The Waiting condition of a TraceJob that waits for something before it can start (a place
/// among the node's traces, a fact about the cluster), with the reason and message saying what.
pub fn waiting(reason: &str, message: &str, job: &TraceJob, now: Time) -> Condition {
    Condition {
        type_: ConditionType::Waiting.as_str().into(),
        status: "True".into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: now,
        observed_generation: job.metadata.generation,
    }
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
        (ConditionType::Running.as_str(), phase == Phase::Running),
        (ConditionType::Completed.as_str(), phase == Phase::Completed),
        (ConditionType::Failed.as_str(), phase == Phase::Failed),
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

/// The summary of a TraceJob run on several nodes (spec.nodeSelector), from its nodes' parts:
/// phase, progress ("done/total"), counts by phase, the failed nodes (at most
/// `MAX_FAILED_NODES`, first by name), message and conditions. Its size does not grow with the
/// number of nodes. Pending until a node runs it; then Stopping while any node stops, else
/// Running while any runs; once every node is done, Completed if any node completed, else
/// Failed. The merged output's reference is kept as it is.
pub fn summary(job: &TraceJob, parts: &[&TraceJobNode], now: Time) -> TraceJobStatus {
    let phase_of = |p: &&TraceJobNode| p.status.as_ref().and_then(|s| s.phase);
    let is = |want: Phase| parts.iter().filter(|p| phase_of(p) == Some(want)).count();
    let counts = NodeCounts {
        // A part without a phase yet is starting.
        pending: count(
            parts
                .iter()
                .filter(|p| matches!(phase_of(p), None | Some(Phase::Pending)))
                .count(),
        ),
        running: count(is(Phase::Running)),
        stopping: count(is(Phase::Stopping)),
        completed: count(is(Phase::Completed)),
        failed: count(is(Phase::Failed)),
    };
    let total = parts.len();
    let done = is(Phase::Completed) + is(Phase::Failed);
    let mut failed: Vec<FailedNode> = parts
        .iter()
        .filter(|p| phase_of(p) == Some(Phase::Failed))
        .map(|p| FailedNode {
            node: p.spec.node_name.clone(),
            reason: p.status.as_ref().and_then(|s| s.reason.clone()),
            message: p.status.as_ref().and_then(|s| s.message.clone()).map(|m| {
                // A node's message can be bpftrace's whole error text: a line is enough here.
                m.lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect()
            }),
        })
        .collect();
    failed.sort_by(|a, b| a.node.cmp(&b.node));
    let failed_count = failed.len();
    failed.truncate(MAX_FAILED_NODES);
    let (phase, reason) = if total == 0 {
        (Phase::Pending, Reason::NoNodeYet.as_str())
    } else if done == total && is(Phase::Completed) > 0 {
        (Phase::Completed, Reason::NodesDone.as_str())
    } else if done == total {
        (Phase::Failed, Reason::NodesFailed.as_str())
    } else if is(Phase::Stopping) > 0 {
        (Phase::Stopping, Reason::NodesStopping.as_str())
    } else if is(Phase::Running) > 0 {
        (Phase::Running, Reason::NodesRunning.as_str())
    } else {
        (Phase::Pending, Reason::NodesStarting.as_str())
    };
    let mut message = format!("{done} of {total} nodes done");
    if failed_count > 0 {
        let names: Vec<&str> = failed.iter().map(|f| f.node.as_str()).collect();
        message += &format!("; failed on {failed_count}: {}", names.join(", "));
        if failed_count > failed.len() {
            message += ", ...";
        }
    }
    let status = TraceJobStatus {
        phase: Some(phase),
        progress: Some(format!("{done}/{total}")),
        message: Some(message),
        node_counts: Some(counts),
        failed_nodes: failed,
        output_ref: job.status.as_ref().and_then(|s| s.output_ref.clone()),
        merged_nodes: job.status.as_ref().and_then(|s| s.merged_nodes),
        conditions: job
            .status
            .as_ref()
            .map(|s| {
                s.conditions
                    .iter()
                    // The merged output's, kept until it is merged again.
                    .filter(|c| {
                        c.type_ == ConditionType::OutputStored.as_str()
                            || c.type_ == ConditionType::OutputIncomplete.as_str()
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    };
    complete(status, reason, job, now)
}

/// A fan-out's parts, split: those its nodes' agents wrote as they write them (`node::invalid_part`
/// finds nothing wrong), which are counted, and why each other one is not. At most one part per
/// node is valid (its name is TRACEJOB.NODE).
pub fn sort_parts<'a>(
    job: &TraceJob,
    parts: &[&'a TraceJobNode],
) -> (Vec<&'a TraceJobNode>, Vec<String>) {
    let mut valid = Vec::new();
    let mut rejected = Vec::new();
    for p in parts {
        match crate::resource::node::invalid_part(job, p) {
            None => valid.push(*p),
            Some(why) => rejected.push(why),
        }
    }
    rejected.sort();
    (valid, rejected)
}

/// How many of the rejected objects a message names.
const NAMED_REJECTED: usize = 5;

/// `status` saying that these parts (`why` each) were not counted: in its message (so a change
/// is written) and a condition Rejected, reason InvalidParts.
pub fn parts_rejected(
    mut status: TraceJobStatus,
    why: &[String],
    job: &TraceJob,
    now: Time,
) -> TraceJobStatus {
    if why.is_empty() {
        return status;
    }
    let said = named(why);
    let message = format!("{} TraceJobNode(s) not counted: {said}", why.len());
    status.message = Some(match status.message.take() {
        Some(m) => format!("{m}; {message}"),
        None => message.clone(),
    });
    status
        .conditions
        .retain(|c| c.type_ != ConditionType::Rejected.as_str());
    status.conditions.push(Condition {
        type_: ConditionType::Rejected.as_str().into(),
        status: "True".into(),
        reason: Reason::InvalidParts.as_str().into(),
        message,
        last_transition_time: now,
        observed_generation: job.metadata.generation,
    });
    status
}

/// The first few of `why`, joined, and how many more there are.
pub fn named(why: &[String]) -> String {
    let mut said = why
        .iter()
        .take(NAMED_REJECTED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if why.len() > NAMED_REJECTED {
        said += &format!("; and {} more", why.len() - NAMED_REJECTED);
    }
    said
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether the TraceJob's status already says what `want` (a `summary`) says; the conditions'
/// times aside.
pub fn summary_is_current(job: &TraceJob, want: &TraceJobStatus) -> bool {
    job.status.as_ref().is_some_and(|s| {
        s.phase == want.phase
            && s.progress == want.progress
            && s.message == want.message
            && s.node_counts == want.node_counts
            && s.failed_nodes == want.failed_nodes
            && s.output_ref == want.output_ref
            && s.merged_nodes == want.merged_nodes
    })
}

/// Whether a TraceJob is a pod target with no spec.nodeName that no node has taken yet: only the
/// pod's node's agent can take it, and only the summarizer can tell that none will.
pub fn unclaimed_target(job: &TraceJob) -> bool {
    job.spec.target.is_some() && job.spec.node_name.is_none() && job.phase().is_none()
}

/// Whether a fan-out TraceJob's merged output is due: every node that joined has ended, and the
/// merged output (if any) holds fewer nodes than have ended (a late node ended since).
pub fn merge_due(job: &TraceJob, parts: &[&TraceJobNode]) -> bool {
    let merged = job.status.as_ref().and_then(|s| s.merged_nodes);
    all_parts_done(parts) && merged != Some(count(parts.len()))
}

/// Whether every node that joined a fan-out TraceJob has ended (and at least one joined): its
/// merged output is due.
pub fn all_parts_done(parts: &[&TraceJobNode]) -> bool {
    !parts.is_empty()
        && parts.iter().all(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(Phase::is_final)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::example as job;
    use crate::resource::TraceJobNodeStatus;
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

    fn part(node: &str, phase: Option<Phase>, reason: Option<&str>) -> TraceJobNode {
        let mut p = TraceJobNode::part_of(&job(), node);
        p.status = Some(TraceJobNodeStatus {
            phase,
            reason: reason.map(String::from),
            message: reason.map(|r| format!("{r}\nsecond line")),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_fan_out_summary_follows_its_nodes() {
        let now = Time(Timestamp::from_second(1_000).expect("time"));
        let mut tj = job();
        tj.spec.node_selector = Some(Default::default());
        let of = |parts: Vec<TraceJobNode>| {
            let refs: Vec<&TraceJobNode> = parts.iter().collect();
            summary(&tj, &refs, now.clone())
        };
        let s = of(vec![]);
        assert_eq!(
            (s.phase, s.progress.as_deref()),
            (Some(Phase::Pending), Some("0/0"))
        );
        let s = of(vec![
            part("a", None, None),
            part("b", Some(Phase::Running), None),
        ]);
        assert_eq!(
            (s.phase, s.progress.as_deref()),
            (Some(Phase::Running), Some("0/2"))
        );
        assert_eq!(
            s.node_counts.as_ref().map(|c| (c.pending, c.running)),
            Some((1, 1))
        );
        let s = of(vec![
            part("a", Some(Phase::Completed), None),
            part("b", Some(Phase::Stopping), None),
        ]);
        assert_eq!(s.phase, Some(Phase::Stopping));
        let s = of(vec![
            part("a", Some(Phase::Completed), None),
            part("b", Some(Phase::Failed), Some("BpftraceFailed")),
        ]);
        assert_eq!(
            (s.phase, s.progress.as_deref()),
            (Some(Phase::Completed), Some("2/2"))
        );
        assert_eq!(s.failed_nodes.len(), 1);
        assert_eq!(s.failed_nodes[0].reason.as_deref(), Some("BpftraceFailed"));
        assert_eq!(
            s.failed_nodes[0].message.as_deref(),
            Some("BpftraceFailed"),
            "one line"
        );
        assert!(
            s.message
                .as_deref()
                .is_some_and(|m| m.contains("failed on 1: b")),
            "{s:?}"
        );
        let s = of(vec![part("a", Some(Phase::Failed), Some("X"))]);
        assert_eq!(s.phase, Some(Phase::Failed));
    }

    #[test]
    fn the_summary_is_bounded_whatever_the_number_of_nodes() {
        let now = Time(Timestamp::from_second(1_000).expect("time"));
        let mut tj = job();
        tj.spec.node_selector = Some(Default::default());
        let size = |n: usize| {
            let parts: Vec<TraceJobNode> = (0..n)
                .map(|i| {
                    part(
                        &format!("node-{i:05}"),
                        Some(Phase::Failed),
                        Some("NodeNotAllowed"),
                    )
                })
                .collect();
            let refs: Vec<&TraceJobNode> = parts.iter().collect();
            let s = summary(&tj, &refs, now.clone());
            assert_eq!(s.failed_nodes.len(), n.min(MAX_FAILED_NODES));
            assert_eq!(s.node_counts.as_ref().map(|c| c.failed), Some(n as i64));
            serde_json::to_vec(&s).expect("json").len()
        };
        let (small, large) = (size(30), size(5000));
        // Only the counts' digits grow.
        assert!(
            large <= small + 64,
            "{small} bytes at 30 nodes, {large} at 5000"
        );
    }

    #[test]
    fn a_summary_is_current_until_a_node_changes() {
        let now = Time(Timestamp::from_second(1_000).expect("time"));
        let mut tj = job();
        tj.spec.node_selector = Some(Default::default());
        let parts = [part("a", Some(Phase::Running), None)];
        let refs: Vec<&TraceJobNode> = parts.iter().collect();
        let want = summary(&tj, &refs, now.clone());
        assert!(!summary_is_current(&tj, &want));
        tj.status = Some(want.clone());
        assert!(summary_is_current(&tj, &summary(&tj, &refs, now.clone())));
        let parts = [part("a", Some(Phase::Completed), None)];
        let refs: Vec<&TraceJobNode> = parts.iter().collect();
        assert!(!summary_is_current(&tj, &summary(&tj, &refs, now)));
        assert!(all_parts_done(&refs));
        assert!(!all_parts_done(&[]));
    }
}
