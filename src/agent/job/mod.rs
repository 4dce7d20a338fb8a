//! One actor per job. Its loop waits on the process, on spec changes, on a timer and on the
//! completions of writes it started, never on a write itself: the decisions (`decide::job`) go on
//! while the API server is slow or down. It claims the TraceJob, starts the run (through the
//! shim), reports Running, stops it when asked or due, decides and records the outcome, has the
//! output collected (off the async threads) and stored, and reports the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

mod admit;
mod claim;
mod live;
mod metrics;
mod report;
mod run;
mod start;
mod store;
mod target;

use crate::agent::Ctx;
use crate::cluster::stores::Changes;
use crate::cluster::writer::StatusWriter;
use crate::decide::job::{self as decide, Exit, Process};
use crate::decide::target as placing;
use crate::host::container;
use crate::host::progress::Progress;
use crate::host::rundir::{self, Landed, Record, RunFiles};
use crate::host::shim::Ended;
use crate::resource::vocabulary::Reason;
use crate::resource::{Target, TraceJob, TraceJobStatus};

/// Follows one TraceJob from first sight until its outcome is reported (or it is deleted, or the
/// agent exits and leaves it to the next agent). `spec` brings its newest version; None when it
/// was deleted; closed when the agent exits.
pub async fn run(ctx: Arc<Ctx>, job: TraceJob, spec: watch::Receiver<Option<TraceJob>>) {
    let status = ctx.writer.status_writer(&job);
    let mut actor = Actor {
        ours: job.status.clone().unwrap_or_default(),
        reason: Reason::Starting.as_str().into(),
        ctx,
        seen: Seen {
            rx: spec,
            job,
            deleted: false,
            exiting: false,
        },
        status,
        seq: 0,
        rejected: None,
        unsaved: None,
    };
    if let Some(run) = actor.begin().await {
        actor.follow(run).await;
    }
}

struct Actor {
    ctx: Arc<Ctx>,
    seen: Seen,
    status: StatusWriter,
    seq: u64,
    /// The status this agent last asked for, and the reason of its phase's condition.
    ours: TraceJobStatus,
    reason: String,
    /// Why the API server refused a status write for good.
    rejected: Option<String>,
    /// Why the run's record could not be saved, when a save failed: the run ends.
    unsaved: Option<String>,
}

/// The TraceJob as the watch brings it.
struct Seen {
    rx: watch::Receiver<Option<TraceJob>>,
    /// The newest version.
    job: TraceJob,
    deleted: bool,
    /// The agent is exiting: leave the run as it is for the next agent.
    exiting: bool,
}

impl Seen {
    /// Awaits `work` while taking in newer versions of the TraceJob. None: it was deleted or the
    /// agent exits meanwhile.
    async fn follow<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                alive = self.next() => if !alive || self.deleted { return None },
            }
        }
    }

    /// Takes in the next version of the TraceJob. False when the agent is exiting.
    async fn next(&mut self) -> bool {
        if self.rx.changed().await.is_err() {
            self.exiting = true;
            return false;
        }
        match self.rx.borrow_and_update().clone() {
            Some(job) => self.job = job,
            None => self.deleted = true,
        }
        true
    }
}

/// A started run.
struct Run {
    record: Record,
    files: RunFiles,
    process: Process,
    /// Ends when the shim has exited (bpftrace has ended and its end is recorded).
    exit: JoinHandle<()>,
    /// When this agent started or took it over.
    since: Instant,
    /// When the stop was seen, for the collect latency.
    stop_seen: Option<Instant>,
    /// A SIGINT is due but bpftrace's PID is not known yet (its shim is starting it).
    sigint_pending: bool,
    /// Bytes of output when SIGINT was last sent: none since, and still polling, is stuck.
    printed_at_sigint: u64,
    /// The last look at its files and its bpftrace (`host::progress`).
    progress: Progress,
    /// The attach line was looked for after bpftrace started: `progress.output_from` is known.
    attach_known: bool,
    live: Live,
    /// The target container, looked at whenever this node's pods change while the trace runs.
    target: Option<TargetWatch>,
    /// Its maps exported as metrics (spec.metrics).
    metrics: Option<metrics::Exporting>,
    /// This run's place among the node's `--max-running-traces` and its namespace's
    /// `--max-running-traces-per-namespace` (none: taken over beyond them, or never started).
    _slot: Slot,
}

/// A run's places: among its node's traces and among its namespace's on the node.
#[derive(Default)]
pub(super) struct Slot {
    _namespace: Option<OwnedSemaphorePermit>,
    _node: Option<OwnedSemaphorePermit>,
}

impl Run {
    /// What the record says of why the trace stopped, with the failed save's error if one failed.
    fn details<'a>(&'a self, unsaved: Option<&'a str>) -> decide::Details<'a> {
        decide::Details {
            target_lost: self.record.target_lost.as_deref(),
            revoked: self.record.revoked.as_deref(),
            unsaved,
        }
    }
}

/// What the shim recorded once bpftrace ended (read on a blocking thread).
async fn ended(files: &RunFiles) -> Option<Ended> {
    let path = files.ended.clone();
    tokio::task::spawn_blocking(move || rundir::read_json::<Ended>(&path))
        .await
        .ok()
        .flatten()
}

struct TargetWatch {
    target: Target,
    started: placing::Running,
    /// The changes of this node's pod store.
    pods: Changes,
    /// The store changed since the target was last looked at (or it never was).
    look: bool,
}

#[derive(Default)]
struct Live {
    last: Option<Instant>,
    /// Bytes of output when last copied.
    size: u64,
    in_flight: Option<JoinHandle<Result<(String, u64), String>>>,
}

/// What a claim came to.
enum Claimed {
    Won(String),
    /// The TraceJob changed or the write failed: decide again from the newest.
    Again,
    /// Ended as not allowed on this node.
    Refused,
    Over,
}

/// Whether the TraceJob's namespace may trace this node.
enum Scope {
    Allowed,
    Refused(String),
    /// Its facts were not known, and the wait ended (failed, deleted, the agent exits, or the
    /// TraceJob changed under the failure's write).
    Waited(Claimed),
}

/// A fact about the cluster a decision waits for, and what the user is told while it does.
struct Fact {
    /// The Waiting condition's reason, and the Failed one's when the wait is given up.
    reason: &'static str,
    message: String,
}

/// What a wait for a fact came to.
enum Waited<T> {
    Known(T),
    Ended(Claimed),
}

/// Which node runs a TraceJob with a target.
enum Place {
    Here,
    /// The TraceJob changed while its pod was waited for: decide again from the newest.
    Again,
    /// Nobody can: fail it, with this reason and message.
    Fail(&'static str, String),
    Over,
}

/// The target container, resolved on this node.
enum Resolved {
    Ready(placing::Running, container::Container),
    Fail(&'static str, String),
    Over,
}

/// What became of the last status handed to the writer.
enum Reported {
    Written,
    Deleted,
    Exiting,
    Rejected(String),
}

enum Stored {
    Landed(Landed),
    Failed(String),
    /// Deleted, or the agent is exiting: the next agent stores it.
    Interrupted,
}

/// How bpftrace ended, from what its shim recorded (nothing: it could not record it).
fn exit_of(ended: Option<Ended>) -> Exit {
    match ended {
        Some(Ended { error: Some(e), .. }) => Exit::CouldNotStart(e),
        Some(Ended { code: Some(c), .. }) => Exit::Code(c),
        Some(Ended {
            signal: Some(s), ..
        }) => Exit::Signal(s),
        _ => Exit::Unrecorded,
    }
}

/// The Instant of a Unix time in the past (`now` if it cannot be represented).
fn instant_of(unix_seconds: i64, now: Instant) -> Instant {
    let ago = k8s_openapi::jiff::Timestamp::now()
        .as_second()
        .saturating_sub(unix_seconds);
    u64::try_from(ago)
        .ok()
        .and_then(|s| now.checked_sub(Duration::from_secs(s)))
        .unwrap_or(now)
}
