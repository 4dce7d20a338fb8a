//! One job's lifecycle as pure decisions: given what the TraceJob asks and what the bpftrace
//! process is doing, what the agent does next; and how a run that ended is reported. No I/O here;
//! the job actor carries the decisions out.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::resource::vocabulary::Reason;
use crate::resource::{Phase, TraceJob, MAX_DEADLINE_SECONDS, MAX_GRACE_SECONDS};

/// What the agent does on first seeing a TraceJob for its node.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstSight {
    /// Never run: claim it (status.id, Pending) and start it.
    Start,
    /// Run by an earlier agent on this node whose record is on disk: take it over.
    Resume,
    /// Claimed, but this node has no record of the run: it cannot be resumed.
    Lost,
    /// Completed or Failed, or claimed by another node's agent: not this agent's to run.
    Ignore,
}

/// `node`: this agent's node. `has_record`: the state directory holds a record for the
/// TraceJob's status.id. Also decides again after a claim lost to a newer version of the object.
pub fn first_sight(job: &TraceJob, node: &str, has_record: bool) -> FirstSight {
    // A TraceJob without spec.nodeName (a pod target) is seen by every agent; only the one that
    // claimed it may resume it or call it lost.
    let claimed_elsewhere = job
        .status
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| n != node);
    match (job.phase(), job.run_id()) {
        (Some(p), _) if p.is_final() => FirstSight::Ignore,
        (_, None) => FirstSight::Start,
        (_, Some(_)) if claimed_elsewhere => FirstSight::Ignore,
        (_, Some(_)) if has_record => FirstSight::Resume,
        (_, Some(_)) => FirstSight::Lost,
    }
}

/// Why a trace is being ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    Requested,
    Deadline,
    Deleted,
    /// The output on disk reached the agent's per-job limit.
    OutputLimit,
    /// The agent is being removed from the node and no agent will take the trace over.
    AgentRemoved,
    /// bpftrace did not attach its probes within the start timeout.
    StartTimeout,
    /// The API server refuses this job's status: it cannot be reported, so it is not run on.
    StatusRejected,
    /// The target container stopped, or its pod was deleted.
    TargetLost,
    /// The target container restarted: a new process, with a new root, that the probes on the
    /// old one's files may not see.
    TargetRestarted,
    /// The namespace may no longer trace this node (its annotation or the node's labels changed).
    Revoked,
    /// The agent could not save the run's record on the node (its state directory is full or
    /// read-only): what it would decide next could not be kept, so the run ends now.
    RecordNotSaved,
}

impl StopReason {
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::Requested => "spec.stop was set",
            StopReason::Deadline => "the deadline was reached",
            StopReason::Deleted => "the TraceJob was deleted",
            StopReason::OutputLimit => {
                "its output reached the agent's per-job limit (--max-output-bytes)"
            }
            StopReason::AgentRemoved => "the agent was removed from the node",
            StopReason::StartTimeout => {
                "bpftrace did not attach its probes within the agent's start timeout (--start-timeout)"
            }
            StopReason::StatusRejected => "the API server rejected the TraceJob's status",
            StopReason::TargetLost => "the target container is gone",
            StopReason::TargetRestarted => "the target container restarted",
            StopReason::Revoked => "its namespace may no longer trace this node",
            StopReason::RecordNotSaved => {
                "the agent could not save the run's record in its state directory on the node"
            }
        }
    }
}

/// The bpftrace process as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Process {
    /// Started, probes not attached yet.
    Starting { since: Instant },
    /// Probes attached: tracing.
    Tracing { since: Instant },
    /// SIGINT sent at `at` (last sent at `signalled`): printing its maps.
    Interrupted {
        at: Instant,
        signalled: Instant,
        reason: StopReason,
    },
    /// SIGKILL sent after the grace period.
    Killed { reason: StopReason },
    /// Gone.
    Exited(Exit),
}

/// How bpftrace ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Never started: spec.stop was already set when the TraceJob was claimed.
    NotStarted,
    /// bpftrace (or its shim) could not be started; says why.
    CouldNotStart(String),
    /// Its shim ended without recording how bpftrace ended (it was killed).
    Unrecorded,
}

/// What the spec and the agent ask for right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub stop: bool,
    pub deleted: bool,
    /// The output on disk reached the soft limit.
    pub output_full: bool,
    /// The agent is exiting and no agent will take the trace over.
    pub agent_removed: bool,
    /// The API server refuses this job's status.
    pub status_rejected: bool,
    /// An interrupted bpftrace is still in its event loop and printed nothing since SIGINT.
    pub stuck: bool,
    /// The target container restarted, stopped or went with its pod.
    pub target_lost: bool,
    /// It restarted (with `target_lost`).
    pub target_restarted: bool,
    /// The namespace may no longer trace this node.
    pub revoked: bool,
    /// A save of the run's record failed.
    pub record_unsaved: bool,
    pub deadline: Duration,
    pub grace: Duration,
    pub start_timeout: Duration,
}

impl Wanted {
    pub fn of(job: &TraceJob, start_timeout: Duration) -> Wanted {
        Wanted {
            stop: job.spec.stop,
            deleted: false,
            output_full: false,
            agent_removed: false,
            status_rejected: false,
            stuck: false,
            target_lost: false,
            target_restarted: false,
            revoked: false,
            record_unsaved: false,
            deadline: secs(job.spec.deadline, MAX_DEADLINE_SECONDS),
            grace: secs(job.spec.deadline_grace_period, MAX_GRACE_SECONDS),
            start_timeout,
        }
    }

    /// Why the trace should end now, regardless of time.
    fn stop_reason(&self) -> Option<StopReason> {
        if self.deleted {
            Some(StopReason::Deleted)
        } else if self.record_unsaved {
            Some(StopReason::RecordNotSaved)
        } else if self.stop {
            Some(StopReason::Requested)
        } else if self.status_rejected {
            Some(StopReason::StatusRejected)
        } else if self.revoked {
            Some(StopReason::Revoked)
        } else if self.target_lost && self.target_restarted {
            Some(StopReason::TargetRestarted)
        } else if self.target_lost {
            Some(StopReason::TargetLost)
        } else if self.output_full {
            Some(StopReason::OutputLimit)
        } else if self.agent_removed {
            Some(StopReason::AgentRemoved)
        } else {
            None
        }
    }
}

/// Seconds from the spec, within what the API server accepts (an older server may not enforce
/// the maxima, so they hold here too).
fn secs(n: i64, max: i64) -> Duration {
    Duration::from_secs(n.clamp(1, max).unsigned_abs())
}

/// How long an interrupted bpftrace may sit stuck before SIGINT is sent again. bpftrace 0.17 was
/// seen here, rarely and under load, still in its event loop minutes after a single SIGINT, the
/// signal neither pending nor acted on; a second one ends it normally, maps printed. But a second
/// SIGINT while bpftrace is ending (detaching, printing a large map) kills it and loses the maps,
/// so it is sent only to a bpftrace that is stuck: still waiting for events, nothing printed
/// since the last one.
pub const REPEAT_SIGINT: Duration = Duration::from_secs(2);

/// The next step for a started job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send SIGINT (and report Stopping unless the TraceJob is gone).
    Interrupt(StopReason),
    /// Send SIGINT again: bpftrace has sat stuck for REPEAT_SIGINT since the last one.
    Reinterrupt,
    /// Send SIGKILL: the grace period is over.
    Kill,
    /// The process is gone: decide the outcome, collect the output and report.
    Collect,
    /// Nothing to do until something changes, or until the given instant.
    Wait(Option<Instant>),
}

pub fn next(wanted: Wanted, process: &Process, now: Instant) -> Step {
    let reason = wanted.stop_reason();
    // An instant too far ahead to represent is never reached.
    let due = |at: Option<Instant>| at.is_some_and(|t| now >= t);
    match *process {
        Process::Exited(_) => Step::Collect,
        Process::Starting { since } => {
            let timeout = since.checked_add(wanted.start_timeout);
            match reason {
                Some(r) => Step::Interrupt(r),
                None if due(timeout) => Step::Interrupt(StopReason::StartTimeout),
                None => Step::Wait(timeout),
            }
        }
        Process::Tracing { since } => {
            let deadline = since.checked_add(wanted.deadline);
            match reason {
                Some(r) => Step::Interrupt(r),
                None if due(deadline) => Step::Interrupt(StopReason::Deadline),
                None => Step::Wait(deadline),
            }
        }
        Process::Interrupted { at, signalled, .. } => {
            let kill_at = at.checked_add(wanted.grace);
            let again_at = signalled.checked_add(REPEAT_SIGINT);
            if due(kill_at) {
                Step::Kill
            } else if due(again_at) && wanted.stuck {
                Step::Reinterrupt
            } else {
                Step::Wait(match (kill_at, again_at) {
                    (Some(k), Some(a)) => Some(k.min(a)),
                    (k, a) => k.or(a),
                })
            }
        }
        Process::Killed { .. } => Step::Wait(None),
    }
}

/// bpftrace's attach line: `Attaching 3 probes...` (0.17 to 0.23, printed as attaching begins)
/// or `Attached 3 probes` (0.27 and later, printed once attached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachLine {
    pub probes: u32,
    /// The line says the probes are attached (not only that attaching began).
    pub done: bool,
    /// Byte offset just after the line: anything printed after it came from a probe that fired.
    pub end: usize,
}

/// Whether a started bpftrace is tracing yet, and with how many probes. Up to 0.23 bpftrace
/// prints "Attaching N probes..." before it attaches, and a probe can still fail after it, so
/// the line alone is not enough: it is tracing once the line says so (0.27+), or it waits for
/// events, or a probe has already printed something (a busy bpftrace may never sit idle).
pub fn tracing(line: Option<AttachLine>, printed_after_it: bool, polling: bool) -> Option<u32> {
    let line = line?;
    (line.done || printed_after_it || polling).then_some(line.probes)
}

/// What a restarted agent finds of a run it takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The shim still runs, so bpftrace has not finished.
    pub running: bool,
    /// How bpftrace ended, if the shim recorded it.
    pub ended: Option<Exit>,
    /// SIGINT was sent, and why.
    pub stopped: Option<StopReason>,
    pub killed: bool,
    /// It was tracing (probes attached) since this instant.
    pub tracing_since: Option<Instant>,
}

/// Where a taken-over run stands: its deadline still counts from when it began tracing, and a
/// stop already sent is not sent as a first stop again.
pub fn resume(found: Found, now: Instant) -> Process {
    if !found.running {
        return Process::Exited(found.ended.unwrap_or(Exit::Unrecorded));
    }
    match (found.stopped, found.killed, found.tracing_since) {
        (Some(reason), true, _) => Process::Killed { reason },
        (Some(reason), false, _) => Process::Interrupted {
            at: now,
            signalled: now,
            reason,
        },
        (None, _, Some(since)) => Process::Tracing { since },
        (None, _, None) => Process::Starting { since: now },
    }
}

/// The outcome of a run, decided once (and recorded) before it is reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub phase: Phase,
    /// The reason of the Completed or Failed condition, and the metric's label.
    pub reason: String,
    pub exit_code: Option<i64>,
    pub message: String,
}

/// The outcome of a run that ended: `stopped` says why SIGINT was sent, if it was; `errors` is
/// bpftrace's error text.
pub fn outcome(exit: &Exit, stopped: Option<StopReason>, killed: bool, errors: &str) -> Outcome {
    let errors = errors.trim();
    let with_errors = |msg: String| {
        if errors.is_empty() {
            msg
        } else {
            format!("{msg}: {errors}")
        }
    };
    let failed = |reason: &str, exit_code: Option<i64>, message: String| Outcome {
        phase: Phase::Failed,
        reason: reason.to_string(),
        exit_code,
        message,
    };
    let code = match exit {
        Exit::Code(c) => Some(i64::from(*c)),
        _ => None,
    };
    if killed {
        return failed(
            Reason::GracePeriodExceeded.as_str(),
            code,
            "bpftrace did not exit within deadlineGracePeriod after SIGINT and was killed; its maps may be missing".into(),
        );
    }
    if stopped == Some(StopReason::StartTimeout) {
        return failed(
            Reason::StartTimeout.as_str(),
            code,
            with_errors(format!("stopped: {}", StopReason::StartTimeout.describe())),
        );
    }
    if stopped == Some(StopReason::Revoked) {
        // Its maps are still collected and stored; the trace itself ended for want of rights.
        return failed(
            Reason::NodeNotAllowed.as_str(),
            code,
            format!("stopped: {}", StopReason::Revoked.describe()),
        );
    }
    if stopped == Some(StopReason::RecordNotSaved) {
        // Its maps are still collected and stored: the output is in memory and on disk already.
        return failed(
            Reason::RecordNotSaved.as_str(),
            code,
            format!("stopped: {}", StopReason::RecordNotSaved.describe()),
        );
    }
    if stopped == Some(StopReason::StatusRejected) {
        return failed(
            Reason::StatusRejected.as_str(),
            code,
            "stopped: the API server rejected the TraceJob's status".into(),
        );
    }
    match exit {
        Exit::Code(0) => Outcome {
            phase: Phase::Completed,
            // The maps are collected; the reason says they end at the restart.
            reason: if stopped == Some(StopReason::TargetRestarted) {
                Reason::TargetRestarted.as_str().into()
            } else {
                Reason::Collected.as_str().into()
            },
            exit_code: code,
            message: match stopped {
                Some(r) => format!("bpftrace exited 0 after SIGINT ({})", r.describe()),
                None => "bpftrace exited 0 on its own".into(),
            },
        },
        Exit::Code(c) => failed(
            Reason::BpftraceFailed.as_str(),
            code,
            with_errors(format!("bpftrace exited {c}")),
        ),
        Exit::Signal(sig) => failed(
            Reason::KilledBySignal.as_str(),
            None,
            with_errors(format!("bpftrace was killed by signal {sig}")),
        ),
        Exit::NotStarted => Outcome {
            phase: Phase::Completed,
            reason: Reason::Collected.as_str().into(),
            exit_code: None,
            message: "spec.stop was set before the trace started; bpftrace was not run".into(),
        },
        Exit::CouldNotStart(why) => failed(Reason::StartFailed.as_str(), None, why.clone()),
        Exit::Unrecorded => failed(
            Reason::EndedUnrecorded.as_str(),
            None,
            with_errors("bpftrace's supervisor ended without recording how bpftrace ended; the output it left is kept".into()),
        ),
    }
}

/// An outcome with the detail of why its trace was stopped, when the reason has one (which
/// container was lost, why the scope was revoked, which save failed).
pub fn explained(mut outcome: Outcome, stopped: Option<StopReason>, detail: Details) -> Outcome {
    let why = match stopped {
        Some(StopReason::TargetLost | StopReason::TargetRestarted) => detail.target_lost,
        Some(StopReason::Revoked) => detail.revoked,
        Some(StopReason::RecordNotSaved) => detail.unsaved,
        _ => None,
    };
    if let Some(why) = why {
        outcome.message = format!("{}: {why}", outcome.message);
    }
    outcome
}

/// Why a trace is stopping, as the Stopping status and Event say it.
pub fn stop_message(reason: StopReason, detail: Details) -> String {
    match (reason, detail) {
        (
            StopReason::TargetLost | StopReason::TargetRestarted,
            Details {
                target_lost: Some(lost),
                ..
            },
        ) => lost.to_string(),
        (
            StopReason::Revoked,
            Details {
                revoked: Some(why), ..
            },
        )
        | (
            StopReason::RecordNotSaved,
            Details {
                unsaved: Some(why), ..
            },
        ) => format!("{}: {why}", reason.describe()),
        _ => reason.describe().to_string(),
    }
}

/// What the run recorded of why it was stopped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Details<'a> {
    pub target_lost: Option<&'a str>,
    pub revoked: Option<&'a str>,
    pub unsaved: Option<&'a str>,
}

/// A run whose output could not be stored fails, saying why after what bpftrace did.
pub fn not_stored(outcome: Outcome, error: &str) -> Outcome {
    Outcome {
        phase: Phase::Failed,
        reason: Reason::OutputNotStored.as_str().into(),
        message: format!(
            "{}; the output could not be stored: {error}",
            outcome.message
        ),
        ..outcome
    }
}

/// A run whose end could not be recorded on the node fails, saying so after what bpftrace did
/// (its output is still stored when it can be).
pub fn not_recorded(outcome: Outcome, error: &str) -> Outcome {
    Outcome {
        phase: Phase::Failed,
        reason: Reason::RecordNotSaved.as_str().into(),
        message: format!(
            "{}; the agent could not save the run's record on the node: {error}",
            outcome.message
        ),
        ..outcome
    }
}

/// Whether an interrupted bpftrace sits stuck: still in its event loop (`polling`), nothing
/// printed since the last SIGINT. Only such a one gets SIGINT again (see REPEAT_SIGINT).
pub fn stuck(process: &Process, printed: u64, printed_at_sigint: u64, polling: bool) -> bool {
    matches!(process, Process::Interrupted { .. }) && printed == printed_at_sigint && polling
}

/// Whether a node that has no part of a TraceJob on several nodes yet joins it: not once it was
/// stopped or ended (a node labelled late, or an agent started late, does not start it again).
pub fn joins(job: &TraceJob, has_part: bool) -> bool {
    job.spec.node_selector.is_none()
        || has_part
        || !(job.spec.stop || job.phase().is_some_and(|p| p.is_final()))
}

/// Whether a run an earlier agent left in the state directory is an orphan: its TraceJob (by
/// UID) is in none of the watches' first lists and no actor of this agent has it, so it was
/// deleted while no agent ran, and the run is ended and removed.
pub fn is_orphan(uid: &str, listed: &std::collections::HashSet<String>, has_actor: bool) -> bool {
    !listed.contains(uid) && !has_actor
}

/// The Event that reports an outcome: (warning, reason, note).
pub fn event(
    outcome: &Outcome,
    output_bytes: u64,
    configmap: Option<&str>,
) -> (bool, &'static str, String) {
    match (outcome.phase, configmap) {
        (Phase::Completed, Some(cm)) => (
            false,
            Reason::Completed.as_str(),
            format!("{output_bytes} bytes of output in ConfigMap {cm}"),
        ),
        _ => (true, Reason::Failed.as_str(), outcome.message.clone()),
    }
}

/// How long a TraceJob waits quietly for a fact the agent's watches bring (its Node, its
/// namespace) before its status says so: a fresh agent's watches list within a second or two.
pub const FACT_QUIET: Duration = Duration::from_secs(2);

/// Where a wait for a fact stands, by the TraceJob's age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactWait {
    /// Wait without a word.
    Quiet,
    /// Say in status what it waits for (Pending, a Waiting condition).
    Say,
    /// Fail it.
    GiveUp,
}

/// `timeout`: how long after its creation a TraceJob waits (`--wait-timeout`).
pub fn fact_wait(age: Duration, timeout: Duration) -> FactWait {
    if age >= timeout {
        FactWait::GiveUp
    } else if age >= FACT_QUIET {
        FactWait::Say
    } else {
        FactWait::Quiet
    }
}

/// How long until `fact_wait` changes its answer (at least a little: ages are in seconds).
pub fn fact_wait_next(age: Duration, timeout: Duration) -> Duration {
    let next = if age < FACT_QUIET {
        FACT_QUIET
    } else {
        timeout
    };
    next.saturating_sub(age).max(Duration::from_millis(500))
}

/// How long ago the TraceJob was created (zero if it does not say, or says the future).
pub fn age_of(job: &TraceJob) -> Duration {
    job.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| (k8s_openapi::jiff::Timestamp::now() - t.0).get_seconds())
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::TraceJobStatus;

    fn job(phase: Option<Phase>, id: Option<&str>) -> TraceJob {
        let mut tj = crate::resource::example();
        tj.status = Some(TraceJobStatus {
            phase,
            id: id.map(String::from),
            node_name: id.map(|_| "n".into()),
            ..Default::default()
        });
        tj
    }

    #[test]
    fn first_sight_leaves_another_nodes_run_alone() {
        let mut other = job(Some(Phase::Running), Some("a"));
        other.spec.node_name = None;
        if let Some(s) = other.status.as_mut() {
            s.node_name = Some("m".into());
        }
        assert_eq!(first_sight(&other, "n", false), FirstSight::Ignore);
        assert_eq!(first_sight(&other, "m", false), FirstSight::Lost);
        assert_eq!(first_sight(&other, "m", true), FirstSight::Resume);
    }

    #[test]
    fn first_sight_runs_each_job_at_most_once() {
        assert_eq!(first_sight(&job(None, None), "n", false), FirstSight::Start);
        assert_eq!(
            first_sight(&job(Some(Phase::Pending), Some("a")), "n", true),
            FirstSight::Resume
        );
        assert_eq!(
            first_sight(&job(Some(Phase::Running), Some("a")), "n", true),
            FirstSight::Resume
        );
        assert_eq!(
            first_sight(&job(Some(Phase::Running), Some("a")), "n", false),
            FirstSight::Lost
        );
        assert_eq!(
            first_sight(&job(Some(Phase::Completed), Some("a")), "n", true),
            FirstSight::Ignore
        );
        assert_eq!(
            first_sight(&job(Some(Phase::Failed), None), "n", false),
            FirstSight::Ignore
        );
    }

    fn wanted() -> Wanted {
        Wanted {
            stop: false,
            deleted: false,
            output_full: false,
            agent_removed: false,
            status_rejected: false,
            stuck: false,
            target_lost: false,
            target_restarted: false,
            revoked: false,
            record_unsaved: false,
            deadline: Duration::from_secs(10),
            grace: Duration::from_secs(2),
            start_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_tracing_job_waits_for_its_deadline_then_stops() {
        let t0 = Instant::now();
        let p = Process::Tracing { since: t0 };
        assert_eq!(
            next(wanted(), &p, t0),
            Step::Wait(Some(t0 + Duration::from_secs(10)))
        );
        assert_eq!(
            next(wanted(), &p, t0 + Duration::from_secs(10)),
            Step::Interrupt(StopReason::Deadline)
        );
    }

    #[test]
    fn durations_near_the_largest_never_overflow() {
        let mut tj = crate::resource::example();
        tj.spec.deadline = i64::MAX;
        tj.spec.deadline_grace_period = i64::MAX;
        let w = Wanted::of(&tj, Duration::MAX);
        assert_eq!(w.deadline, Duration::from_secs(MAX_DEADLINE_SECONDS as u64));
        assert_eq!(w.grace, Duration::from_secs(MAX_GRACE_SECONDS as u64));
        let t0 = Instant::now();
        // A start timeout too long to add to an Instant is never reached.
        assert_eq!(
            next(w, &Process::Starting { since: t0 }, t0),
            Step::Wait(None)
        );
        let huge = Wanted {
            deadline: Duration::MAX,
            grace: Duration::MAX,
            ..w
        };
        assert_eq!(
            next(huge, &Process::Tracing { since: t0 }, t0),
            Step::Wait(None)
        );
        let interrupted = Process::Interrupted {
            at: t0,
            signalled: t0,
            reason: StopReason::Requested,
        };
        assert_eq!(
            next(huge, &interrupted, t0),
            Step::Wait(Some(t0 + REPEAT_SIGINT))
        );
        tj.spec.deadline = i64::MIN;
        assert_eq!(
            Wanted::of(&tj, Duration::ZERO).deadline,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_trace_that_never_attaches_is_stopped_at_the_start_timeout() {
        let t0 = Instant::now();
        let starting = Process::Starting { since: t0 };
        assert_eq!(
            next(wanted(), &starting, t0),
            Step::Wait(Some(t0 + Duration::from_secs(5)))
        );
        assert_eq!(
            next(wanted(), &starting, t0 + Duration::from_secs(5)),
            Step::Interrupt(StopReason::StartTimeout)
        );
        let o = outcome(
            &Exit::Code(0),
            Some(StopReason::StartTimeout),
            false,
            "compiling",
        );
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Failed, "StartTimeout")
        );
        assert!(o.message.ends_with("compiling"), "{}", o.message);
    }

    #[test]
    fn stop_and_delete_interrupt_even_before_attach() {
        let t0 = Instant::now();
        let starting = Process::Starting { since: t0 };
        let stop = Wanted {
            stop: true,
            ..wanted()
        };
        assert_eq!(
            next(stop, &starting, t0),
            Step::Interrupt(StopReason::Requested)
        );
        let deleted = Wanted {
            deleted: true,
            stop: true,
            ..wanted()
        };
        assert_eq!(
            next(deleted, &Process::Tracing { since: t0 }, t0),
            Step::Interrupt(StopReason::Deleted)
        );
    }

    #[test]
    fn a_full_output_or_a_rejected_status_stops_the_trace() {
        let t0 = Instant::now();
        let full = Wanted {
            output_full: true,
            ..wanted()
        };
        assert_eq!(
            next(full, &Process::Tracing { since: t0 }, t0),
            Step::Interrupt(StopReason::OutputLimit)
        );
        let rejected = Wanted {
            status_rejected: true,
            ..full
        };
        assert_eq!(
            next(rejected, &Process::Tracing { since: t0 }, t0),
            Step::Interrupt(StopReason::StatusRejected)
        );
    }

    #[test]
    fn an_agent_removed_for_good_stops_its_traces_unless_the_user_already_did() {
        let t0 = Instant::now();
        let removed = Wanted {
            agent_removed: true,
            ..wanted()
        };
        assert_eq!(
            next(removed, &Process::Starting { since: t0 }, t0),
            Step::Interrupt(StopReason::AgentRemoved)
        );
        assert_eq!(
            next(
                Wanted {
                    stop: true,
                    ..removed
                },
                &Process::Tracing { since: t0 },
                t0
            ),
            Step::Interrupt(StopReason::Requested)
        );
    }

    #[test]
    fn an_interrupted_job_is_killed_after_the_grace_period_only() {
        let t0 = Instant::now();
        let p = Process::Interrupted {
            at: t0,
            signalled: t0,
            reason: StopReason::Requested,
        };
        // Unsetting stop cannot take back a SIGINT.
        assert_eq!(
            next(wanted(), &p, t0),
            Step::Wait(Some(t0 + Duration::from_secs(2)))
        );
        assert_eq!(next(wanted(), &p, t0 + Duration::from_secs(2)), Step::Kill);
        assert_eq!(
            next(wanted(), &Process::Exited(Exit::Code(0)), t0),
            Step::Collect
        );
    }

    #[test]
    fn sigint_is_repeated_only_to_a_stuck_bpftrace_until_the_grace_period_ends() {
        let t0 = Instant::now();
        let ending = Wanted {
            grace: Duration::from_secs(300),
            ..wanted()
        };
        let p = Process::Interrupted {
            at: t0,
            signalled: t0,
            reason: StopReason::Requested,
        };
        // Printing its maps (or detaching): a second SIGINT would kill it.
        assert_eq!(
            next(ending, &p, t0 + 3 * REPEAT_SIGINT),
            Step::Wait(Some(t0 + REPEAT_SIGINT))
        );
        let long = Wanted {
            stuck: true,
            ..ending
        };
        let p = Process::Interrupted {
            at: t0,
            signalled: t0,
            reason: StopReason::Requested,
        };
        assert_eq!(next(long, &p, t0), Step::Wait(Some(t0 + REPEAT_SIGINT)));
        assert_eq!(next(long, &p, t0 + REPEAT_SIGINT), Step::Reinterrupt);
        let again = Process::Interrupted {
            at: t0,
            signalled: t0 + REPEAT_SIGINT,
            reason: StopReason::Requested,
        };
        assert_eq!(
            next(long, &again, t0 + REPEAT_SIGINT),
            Step::Wait(Some(t0 + 2 * REPEAT_SIGINT))
        );
        assert_eq!(next(long, &again, t0 + long.grace), Step::Kill);
    }

    #[test]
    fn tracing_means_attached_not_only_announced() {
        let announced = AttachLine {
            probes: 3,
            done: false,
            end: 22,
        };
        assert_eq!(tracing(None, true, true), None);
        assert_eq!(tracing(Some(announced), false, false), None);
        assert_eq!(tracing(Some(announced), false, true), Some(3));
        assert_eq!(tracing(Some(announced), true, false), Some(3));
        let attached = AttachLine {
            done: true,
            ..announced
        };
        assert_eq!(tracing(Some(attached), false, false), Some(3));
    }

    #[test]
    fn a_taken_over_run_keeps_its_stop_and_its_deadline() {
        let t0 = Instant::now();
        let found = Found {
            running: true,
            ended: None,
            stopped: None,
            killed: false,
            tracing_since: Some(t0),
        };
        assert_eq!(resume(found.clone(), t0), Process::Tracing { since: t0 });
        let stopped = Found {
            stopped: Some(StopReason::Deadline),
            ..found.clone()
        };
        assert!(matches!(
            resume(stopped.clone(), t0),
            Process::Interrupted {
                reason: StopReason::Deadline,
                ..
            }
        ));
        assert_eq!(
            resume(
                Found {
                    killed: true,
                    ..stopped
                },
                t0
            ),
            Process::Killed {
                reason: StopReason::Deadline
            }
        );
        let starting = Found {
            tracing_since: None,
            ..found.clone()
        };
        assert_eq!(resume(starting, t0), Process::Starting { since: t0 });
        // Ended while no agent watched: its shim recorded how.
        let ended = Found {
            running: false,
            ended: Some(Exit::Code(0)),
            ..found.clone()
        };
        assert_eq!(resume(ended, t0), Process::Exited(Exit::Code(0)));
        let unrecorded = Found {
            running: false,
            ..found
        };
        assert_eq!(resume(unrecorded, t0), Process::Exited(Exit::Unrecorded));
    }

    #[test]
    fn a_revoked_scope_stops_the_trace_and_fails_it_not_allowed() {
        let wanted = Wanted {
            revoked: true,
            ..Wanted::of(&crate::resource::example(), Duration::from_secs(60))
        };
        assert_eq!(wanted.stop_reason(), Some(StopReason::Revoked));
        let o = outcome(&Exit::Code(0), Some(StopReason::Revoked), false, "");
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Failed, "NodeNotAllowed")
        );
        assert!(o.message.contains("may no longer trace"), "{}", o.message);
    }

    #[test]
    fn outcomes_and_their_events() {
        let o = outcome(&Exit::Code(0), Some(StopReason::Requested), false, "");
        assert_eq!((o.phase, o.exit_code), (Phase::Completed, Some(0)));
        assert!(o.message.contains("spec.stop"), "{}", o.message);
        assert_eq!(
            event(&o, 10, Some("cm")),
            (
                false,
                "Completed",
                "10 bytes of output in ConfigMap cm".into()
            )
        );
        let o = outcome(&Exit::Code(1), None, false, "x.bt:1:1: ERROR: syntax error");
        assert_eq!((o.phase, o.exit_code), (Phase::Failed, Some(1)));
        assert_eq!(o.reason, "BpftraceFailed");
        assert!(o.message.ends_with("ERROR: syntax error"), "{}", o.message);
        assert_eq!(event(&o, 0, Some("cm")).1, "Failed");
        assert_eq!(
            outcome(&Exit::Signal(9), None, false, "").reason,
            "KilledBySignal"
        );
        let killed = outcome(&Exit::Signal(9), Some(StopReason::Requested), true, "");
        assert_eq!(
            (killed.phase, killed.reason.as_str()),
            (Phase::Failed, "GracePeriodExceeded")
        );
        assert_eq!(
            outcome(&Exit::Unrecorded, None, false, "").reason,
            "EndedUnrecorded"
        );
        let not_run = outcome(&Exit::NotStarted, Some(StopReason::Requested), false, "");
        assert_eq!(not_run.phase, Phase::Completed);
        assert!(not_run.message.contains("bpftrace was not run"));
        let no_start = outcome(
            &Exit::CouldNotStart("cannot start /x: No such file".into()),
            None,
            false,
            "",
        );
        assert_eq!(
            (no_start.phase, no_start.reason.as_str()),
            (Phase::Failed, "StartFailed")
        );
        assert!(no_start.message.contains("cannot start /x"));
    }

    #[test]
    fn a_failed_save_stops_the_run_first_and_fails_it() {
        let now = Instant::now();
        let wanted = Wanted {
            record_unsaved: true,
            stop: true,
            ..Wanted::of(&crate::resource::example(), Duration::from_secs(5))
        };
        let tracing = Process::Tracing { since: now };
        assert_eq!(
            next(wanted, &tracing, now),
            Step::Interrupt(StopReason::RecordNotSaved)
        );
        let o = outcome(&Exit::Code(0), Some(StopReason::RecordNotSaved), false, "");
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Failed, "RecordNotSaved")
        );
        let o = explained(
            o,
            Some(StopReason::RecordNotSaved),
            Details {
                unsaved: Some("No space left on device"),
                ..Details::default()
            },
        );
        assert!(
            o.message.ends_with(": No space left on device"),
            "{}",
            o.message
        );
        // A save failing at the end of a completed run fails it too, after what bpftrace did.
        let done = outcome(&Exit::Code(0), Some(StopReason::Requested), false, "");
        let o = not_recorded(done.clone(), "read-only file system");
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Failed, "RecordNotSaved")
        );
        assert!(o.message.starts_with(&done.message));
        let o = not_stored(done, "forbidden");
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Failed, "OutputNotStored")
        );
    }

    #[test]
    fn a_restarted_target_ends_collected_as_target_restarted() {
        let lost = Wanted {
            target_lost: true,
            ..wanted()
        };
        assert_eq!(lost.stop_reason(), Some(StopReason::TargetLost));
        let restarted = Wanted {
            target_restarted: true,
            ..lost
        };
        assert_eq!(restarted.stop_reason(), Some(StopReason::TargetRestarted));
        let o = outcome(&Exit::Code(0), Some(StopReason::TargetRestarted), false, "");
        assert_eq!(
            (o.phase, o.reason.as_str()),
            (Phase::Completed, "TargetRestarted")
        );
        let d = Details {
            target_lost: Some("container app of pod web restarted"),
            ..Details::default()
        };
        let o = explained(o, Some(StopReason::TargetRestarted), d);
        assert!(
            o.message.ends_with(": container app of pod web restarted"),
            "{}",
            o.message
        );
        assert_eq!(
            stop_message(StopReason::TargetRestarted, d),
            "container app of pod web restarted"
        );
        // Gone, not restarted: collected, as before.
        let o = outcome(&Exit::Code(0), Some(StopReason::TargetLost), false, "");
        assert_eq!(o.reason, "Collected");
    }

    #[test]
    fn stop_messages_say_the_detail_of_the_reason() {
        let d = Details {
            target_lost: Some("container app restarted"),
            revoked: Some("label x removed"),
            unsaved: Some("disk full"),
        };
        assert_eq!(
            stop_message(StopReason::TargetLost, d),
            "container app restarted"
        );
        assert!(stop_message(StopReason::Revoked, d).ends_with(": label x removed"));
        assert!(stop_message(StopReason::RecordNotSaved, d).ends_with(": disk full"));
        assert_eq!(
            stop_message(StopReason::Deadline, d),
            StopReason::Deadline.describe()
        );
        assert_eq!(
            stop_message(StopReason::Revoked, Details::default()),
            StopReason::Revoked.describe()
        );
    }

    #[test]
    fn only_a_silent_polling_interrupted_bpftrace_is_stuck() {
        let now = Instant::now();
        let interrupted = Process::Interrupted {
            at: now,
            signalled: now,
            reason: StopReason::Requested,
        };
        assert!(stuck(&interrupted, 10, 10, true));
        assert!(!stuck(&interrupted, 11, 10, true), "it printed since");
        assert!(
            !stuck(&interrupted, 10, 10, false),
            "it left its event loop"
        );
        assert!(!stuck(&Process::Tracing { since: now }, 10, 10, true));
    }

    #[test]
    fn a_node_joins_a_fanout_only_while_it_runs() {
        let mut job = crate::resource::example();
        assert!(joins(&job, false), "one node's TraceJob is always its own");
        job.spec.node_selector = Some(Default::default());
        assert!(joins(&job, false));
        job.spec.stop = true;
        assert!(!joins(&job, false), "stopped before this node joined");
        assert!(joins(&job, true), "this node has its part: it follows it");
        job.spec.stop = false;
        job.status = Some(crate::resource::TraceJobStatus {
            phase: Some(Phase::Completed),
            ..Default::default()
        });
        assert!(!joins(&job, false), "over before this node joined");
    }

    #[test]
    fn orphans_are_runs_no_watch_listed() {
        let listed: std::collections::HashSet<String> = ["a".to_string()].into();
        assert!(!is_orphan("a", &listed, false));
        assert!(is_orphan("b", &listed, false));
        // Created after a watch listed, and already taken by an actor: not an orphan.
        assert!(!is_orphan("b", &listed, true));
    }

    #[test]
    fn a_wait_for_a_fact_is_quiet_then_said_then_given_up() {
        let (s, timeout) = (Duration::from_secs, Duration::from_secs(60));
        assert_eq!(fact_wait(s(0), timeout), FactWait::Quiet);
        assert_eq!(fact_wait(s(2), timeout), FactWait::Say);
        assert_eq!(fact_wait(s(59), timeout), FactWait::Say);
        assert_eq!(fact_wait(s(60), timeout), FactWait::GiveUp);
        assert_eq!(fact_wait_next(s(0), timeout), s(2));
        assert_eq!(fact_wait_next(s(10), timeout), s(50));
        // Past the timeout (a failure's write conflicted): looked at again soon, not at once.
        assert_eq!(fact_wait_next(s(90), timeout), Duration::from_millis(500));
    }
}
