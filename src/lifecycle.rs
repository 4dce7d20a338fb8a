//! The job lifecycle as pure decisions: given what the TraceJob asks and what the bpftrace process
//! is doing, what the agent does next. No I/O here; `agent` carries the decisions out.

use std::time::{Duration, Instant};

use crate::api::{Phase, TraceJob};

/// What the agent does on first seeing a TraceJob for its node.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstSight {
    /// Never run: claim it (status.id, Pending) and start bpftrace.
    Start,
    /// Run by an earlier agent on this node whose record is on disk: take it over.
    Adopt,
    /// Claimed, but this node has no record of the run: it cannot be resumed.
    Lost,
    /// Completed or Failed: never run again.
    Ignore,
}

/// `has_record`: the state directory holds a record for the TraceJob's status.id.
pub fn first_sight(job: &TraceJob, has_record: bool) -> FirstSight {
    match (job.phase(), job.run_id()) {
        (Some(p), _) if p.is_final() => FirstSight::Ignore,
        (_, None) => FirstSight::Start,
        (_, Some(_)) if has_record => FirstSight::Adopt,
        (_, Some(_)) => FirstSight::Lost,
    }
}

/// Why a trace is being ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Requested,
    Deadline,
    Deleted,
    /// The output on disk reached the agent's per-job limit.
    OutputLimit,
    /// The agent is being removed from the node and no agent will take the trace over.
    AgentRemoved,
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
        }
    }
}

/// The bpftrace process as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// Spawned, probes not attached yet.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// It ended while this agent watched, but an earlier agent started it, so its exit status
    /// cannot be read.
    NotOurChild,
    /// It was gone when this agent started: it ended while no agent watched.
    Unwatched,
    /// Never started: spec.stop was already set when the agent first saw the TraceJob.
    NotStarted,
}

/// What the spec asks for right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub stop: bool,
    pub deleted: bool,
    /// The output on disk is over the per-job limit.
    pub output_full: bool,
    /// The agent is exiting and no agent will take the trace over.
    pub agent_removed: bool,
    pub deadline: Duration,
    pub grace: Duration,
}

impl Wanted {
    pub fn of(job: &TraceJob) -> Wanted {
        Wanted {
            stop: job.spec.stop,
            deleted: false,
            output_full: false,
            agent_removed: false,
            deadline: secs(job.spec.deadline),
            grace: secs(job.spec.deadline_grace_period),
        }
    }
}

fn secs(n: i64) -> Duration {
    Duration::from_secs(n.max(1).unsigned_abs())
}

/// How long an interrupted bpftrace may go on before SIGINT is sent again. bpftrace acts on any
/// number of SIGINTs the same way, but a trace was seen here, rarely and under load, still in
/// its event loop minutes after a single one.
pub const REPEAT_SIGINT: Duration = Duration::from_secs(10);

/// The next step for a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send SIGINT (and report Stopping unless the TraceJob is gone).
    Interrupt(StopReason),
    /// Send SIGINT again: bpftrace has not ended REPEAT_SIGINT after the last one.
    Reinterrupt,
    /// Send SIGKILL: the grace period is over.
    Kill,
    /// The process is gone: collect its output and report the outcome.
    Collect,
    /// Nothing to do until something changes, or until the given instant.
    Wait(Option<Instant>),
}

pub fn next(wanted: Wanted, process: Process, now: Instant) -> Step {
    let reason = if wanted.deleted {
        Some(StopReason::Deleted)
    } else if wanted.stop {
        Some(StopReason::Requested)
    } else if wanted.output_full {
        Some(StopReason::OutputLimit)
    } else if wanted.agent_removed {
        Some(StopReason::AgentRemoved)
    } else {
        None
    };
    match process {
        Process::Exited(_) => Step::Collect,
        Process::Starting { .. } => match reason {
            Some(r) => Step::Interrupt(r),
            None => Step::Wait(None),
        },
        Process::Tracing { since } => {
            let deadline = since + wanted.deadline;
            match reason {
                Some(r) => Step::Interrupt(r),
                None if now >= deadline => Step::Interrupt(StopReason::Deadline),
                None => Step::Wait(Some(deadline)),
            }
        }
        Process::Interrupted { at, signalled, .. } => {
            let kill_at = at + wanted.grace;
            let again_at = signalled + REPEAT_SIGINT;
            if now >= kill_at {
                Step::Kill
            } else if now >= again_at {
                Step::Reinterrupt
            } else {
                Step::Wait(Some(kill_at.min(again_at)))
            }
        }
        Process::Killed { .. } => Step::Wait(None),
    }
}

/// The final phase, exit code and message for a run that ended.
pub fn outcome(
    exit: Exit,
    reason: Option<StopReason>,
    killed: bool,
    errors: &str,
) -> (Phase, Option<i64>, String) {
    let errors = errors.trim();
    let with_errors = |msg: String| {
        if errors.is_empty() {
            msg
        } else {
            format!("{msg}: {errors}")
        }
    };
    match exit {
        _ if killed => (
            Phase::Failed,
            None,
            "bpftrace did not exit within deadlineGracePeriod after SIGINT and was killed; its maps may be missing"
                .to_string(),
        ),
        Exit::Code(0) => {
            let how = match reason {
                Some(r) => format!("bpftrace exited 0 after SIGINT ({})", r.describe()),
                None => "bpftrace exited 0 on its own".to_string(),
            };
            (Phase::Completed, Some(0), how)
        }
        Exit::Code(code) => (Phase::Failed, Some(code.into()), with_errors(format!("bpftrace exited {code}"))),
        Exit::Signal(sig) => (
            Phase::Failed,
            None,
            with_errors(format!("bpftrace was killed by signal {sig}")),
        ),
        Exit::NotOurChild if errors.is_empty() => {
            let after = reason.map(|r| format!(" after SIGINT ({})", r.describe())).unwrap_or_default();
            let message = format!(
                "bpftrace ended{after} without printing errors; its exit status is unknown because an earlier agent started it"
            );
            (Phase::Completed, None, message)
        }
        Exit::NotOurChild => (Phase::Failed, None, with_errors("bpftrace ended".to_string())),
        Exit::NotStarted => (
            Phase::Completed,
            None,
            "spec.stop was set before the trace started; bpftrace was not run".to_string(),
        ),
        Exit::Unwatched => (
            Phase::Failed,
            None,
            with_errors("bpftrace ended while no agent was watching it; the output it left is kept".to_string()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TraceJobStatus;

    fn job(phase: Option<Phase>, id: Option<&str>) -> TraceJob {
        let mut tj = crate::api::example();
        tj.status = Some(TraceJobStatus {
            phase,
            id: id.map(String::from),
            ..Default::default()
        });
        tj
    }

    #[test]
    fn first_sight_runs_each_job_at_most_once() {
        assert_eq!(first_sight(&job(None, None), false), FirstSight::Start);
        assert_eq!(
            first_sight(&job(Some(Phase::Pending), Some("a")), true),
            FirstSight::Adopt
        );
        assert_eq!(
            first_sight(&job(Some(Phase::Running), Some("a")), true),
            FirstSight::Adopt
        );
        assert_eq!(
            first_sight(&job(Some(Phase::Running), Some("a")), false),
            FirstSight::Lost
        );
        assert_eq!(
            first_sight(&job(Some(Phase::Completed), Some("a")), true),
            FirstSight::Ignore
        );
        assert_eq!(
            first_sight(&job(Some(Phase::Failed), None), false),
            FirstSight::Ignore
        );
    }

    fn wanted() -> Wanted {
        Wanted {
            stop: false,
            deleted: false,
            output_full: false,
            agent_removed: false,
            deadline: Duration::from_secs(10),
            grace: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_tracing_job_waits_for_its_deadline_then_stops() {
        let t0 = Instant::now();
        let p = Process::Tracing { since: t0 };
        assert_eq!(
            next(wanted(), p, t0),
            Step::Wait(Some(t0 + Duration::from_secs(10)))
        );
        assert_eq!(
            next(wanted(), p, t0 + Duration::from_secs(10)),
            Step::Interrupt(StopReason::Deadline)
        );
    }

    #[test]
    fn stop_and_delete_interrupt_even_before_attach() {
        let t0 = Instant::now();
        let starting = Process::Starting { since: t0 };
        assert_eq!(next(wanted(), starting, t0), Step::Wait(None));
        assert_eq!(
            next(
                Wanted {
                    stop: true,
                    ..wanted()
                },
                starting,
                t0
            ),
            Step::Interrupt(StopReason::Requested)
        );
        let deleted = Wanted {
            deleted: true,
            stop: true,
            ..wanted()
        };
        assert_eq!(
            next(deleted, Process::Tracing { since: t0 }, t0),
            Step::Interrupt(StopReason::Deleted)
        );
    }

    #[test]
    fn a_full_output_stops_the_trace() {
        let t0 = Instant::now();
        let full = Wanted {
            output_full: true,
            ..wanted()
        };
        assert_eq!(
            next(full, Process::Tracing { since: t0 }, t0),
            Step::Interrupt(StopReason::OutputLimit)
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
            next(removed, Process::Starting { since: t0 }, t0),
            Step::Interrupt(StopReason::AgentRemoved)
        );
        assert_eq!(
            next(
                Wanted {
                    stop: true,
                    ..removed
                },
                Process::Tracing { since: t0 },
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
            next(wanted(), p, t0),
            Step::Wait(Some(t0 + Duration::from_secs(2)))
        );
        assert_eq!(next(wanted(), p, t0 + Duration::from_secs(2)), Step::Kill);
        assert_eq!(
            next(wanted(), Process::Exited(Exit::Code(0)), t0),
            Step::Collect
        );
    }

    #[test]
    fn sigint_is_repeated_until_the_grace_period_ends() {
        let t0 = Instant::now();
        let long = Wanted {
            grace: Duration::from_secs(300),
            ..wanted()
        };
        let p = Process::Interrupted {
            at: t0,
            signalled: t0,
            reason: StopReason::Requested,
        };
        assert_eq!(next(long, p, t0), Step::Wait(Some(t0 + REPEAT_SIGINT)));
        assert_eq!(next(long, p, t0 + REPEAT_SIGINT), Step::Reinterrupt);
        let again = Process::Interrupted {
            at: t0,
            signalled: t0 + REPEAT_SIGINT,
            reason: StopReason::Requested,
        };
        assert_eq!(
            next(long, again, t0 + REPEAT_SIGINT),
            Step::Wait(Some(t0 + 2 * REPEAT_SIGINT))
        );
        assert_eq!(next(long, again, t0 + long.grace), Step::Kill);
    }

    #[test]
    fn outcomes() {
        let (p, code, msg) = outcome(Exit::Code(0), Some(StopReason::Requested), false, "");
        assert_eq!((p, code), (Phase::Completed, Some(0)));
        assert!(msg.contains("spec.stop"), "{msg}");
        let (p, code, msg) = outcome(Exit::Code(1), None, false, "x.bt:1:1: ERROR: syntax error");
        assert_eq!((p, code), (Phase::Failed, Some(1)));
        assert!(msg.ends_with("ERROR: syntax error"), "{msg}");
        assert_eq!(outcome(Exit::Signal(9), None, false, "").0, Phase::Failed);
        assert_eq!(
            outcome(Exit::Code(0), Some(StopReason::Requested), true, "").0,
            Phase::Failed
        );
        assert_eq!(outcome(Exit::Unwatched, None, false, "").0, Phase::Failed);
        assert_eq!(
            outcome(Exit::NotStarted, None, false, "").0,
            Phase::Completed
        );
        let (p, _, msg) = outcome(Exit::NotOurChild, Some(StopReason::Deadline), false, "");
        assert_eq!(p, Phase::Completed);
        assert!(msg.contains("the deadline was reached"), "{msg}");
        assert_eq!(
            outcome(Exit::NotOurChild, None, false, "ERROR: x").0,
            Phase::Failed
        );
    }
}
