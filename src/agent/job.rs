//! One actor per job. Its loop waits on the process, on spec changes, on a timer and on the
//! completions of writes it started, never on a write itself: the decisions (`decide::job`) go on
//! while the API server is slow or down. It claims the TraceJob, starts the run (through the
//! shim), reports Running, stops it when asked or due, decides and records the outcome, has the
//! output collected (off the async threads) and stored, and reports the end.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use nix::sys::signal::Signal;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use crate::agent::Ctx;
use crate::cluster::lookup;
use crate::cluster::stores::Changes;
use crate::cluster::writer::{self, Desired, StatusWriter, Written};
use crate::decide::job::{
    self as decide, Exit, FirstSight, Found, Outcome, Process, Step, StopReason, Wanted,
};
use crate::decide::{scope, status, target};
use crate::host::process::{self, Identity};
use crate::host::rundir::{self, Landed, Record, RunFiles};
use crate::host::shim::{self, Ended, Started};
use crate::host::{bpftrace, container};
use crate::metrics::Metrics;
use crate::output::collect::{self, Collected};
use crate::output::fit::{Contents, CONFIGMAP_BUDGET};
use crate::resource::{OutputRef, Phase, Target, TraceJob, TraceJobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

/// Follows one TraceJob from first sight until its outcome is reported (or it is deleted, or the
/// agent exits and leaves it to the next agent). `spec` brings its newest version; None when it
/// was deleted; closed when the agent exits.
pub async fn run(ctx: Arc<Ctx>, job: TraceJob, spec: watch::Receiver<Option<TraceJob>>) {
    let status = ctx.writer.status_writer(&job);
    let mut actor = Actor {
        ours: job.status.clone().unwrap_or_default(),
        reason: "Starting".into(),
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
    live: Live,
    /// The target container, looked at whenever this node's pods change while the trace runs.
    target: Option<TargetWatch>,
    /// This run's place among the node's `--max-running-traces` (none: taken over beyond it, or
    /// never started).
    _slot: Option<OwnedSemaphorePermit>,
}

struct TargetWatch {
    target: Target,
    started: target::Running,
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
    Over,
}

/// The reason of a TraceJob refused on this node.
/// The condition of a trace waiting for a place among the node's running traces.
const WAITING: &str = "Waiting";
/// A claim the API server forbids this agent (403).
const CLAIM_FORBIDDEN: &str = "ClaimForbidden";
const NODE_NOT_ALLOWED: &str = "NodeNotAllowed";

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
    Ready(target::Running, container::Container),
    Fail(&'static str, String),
    Over,
}

/// What a running trace's target is watched for, if it has one.
fn target_watch(job: &TraceJob, record: &Record, pods: Changes) -> Option<TargetWatch> {
    let target = job.spec.target.clone()?;
    let id = record.target_id.clone()?;
    Some(TargetWatch {
        started: target::Running {
            name: record.target_name.clone().unwrap_or_default(),
            id,
            restarts: 0,
        },
        target,
        pods,
        look: true,
    })
}

/// The program with the target's variables filled in, or why it cannot be.
fn filled_in(program: &str, c: &container::Container) -> Result<String, String> {
    let cgroup = match c.cgroup {
        Some(id) => id.to_string(),
        None => {
            let probe = target::substitute(program, &[(target::CONTAINER_CGROUP, String::new())]);
            if probe != program {
                return Err(format!(
                    "{} cannot be filled in: this node has no cgroup v2 hierarchy (filter on {} instead)",
                    target::CONTAINER_CGROUP,
                    target::CONTAINER_PID
                ));
            }
            String::new()
        }
    };
    Ok(target::substitute(
        program,
        &[
            (target::CONTAINER_PID, c.main.to_string()),
            (target::CONTAINER_CGROUP, cgroup),
        ],
    ))
}

/// How long ago the TraceJob was created.
impl Actor {
    /// Decides what to do with the TraceJob: claim and start it, take over its run, or not.
    async fn begin(&mut self) -> Option<Run> {
        let mut delays = writer::backoff();
        loop {
            let record = self
                .seen
                .job
                .run_id()
                .and_then(|id| self.ctx.state.load(id));
            match decide::first_sight(&self.seen.job, self.ctx.writer.node(), record.is_some()) {
                FirstSight::Ignore => {
                    // Reported, but the agent stopped before cleaning up.
                    if let Some(r) = record {
                        let _ = self.ctx.state.remove(&r.run_id);
                    }
                    return None;
                }
                FirstSight::Lost => {
                    let message = "this node's agent has no record of the run (its state directory was lost); it cannot be resumed";
                    warn!(message);
                    self.fail_unstarted("RunLost", message.into()).await;
                    return None;
                }
                FirstSight::Resume => return record.map(|r| self.resume(r)),
                FirstSight::Start => {
                    if let Some(selector) = self.seen.job.spec.node_selector.clone() {
                        match self.selects_this_node(selector).await {
                            Some(true) => {}
                            Some(false) | None => return None,
                        }
                    }
                    if let Some(target) = self.seen.job.spec.target.clone() {
                        match self.place(&target).await {
                            Place::Here => {}
                            // A newer version of the TraceJob: decide again from it.
                            Place::Again => continue,
                            Place::Over => return None,
                            Place::Fail(reason, why) => {
                                self.fail_unclaimed(reason, why).await;
                                return None;
                            }
                        }
                    }
                    let claimed = match self.scope().await {
                        Scope::Allowed => self.claim().await,
                        Scope::Refused(why) => self.refuse(why).await,
                        Scope::Over => Claimed::Over,
                    };
                    match claimed {
                        Claimed::Won(run_id) => return self.start(run_id).await,
                        Claimed::Again => {
                            // A conflict is decided again at once; a refused write after a
                            // pause.
                            if self.rejected.take().is_some() {
                                let pause = delays.next().unwrap_or(Duration::from_secs(30));
                                if !self.pause(pause).await {
                                    return None;
                                }
                            }
                        }
                        Claimed::Refused | Claimed::Over => return None,
                    }
                }
            }
        }
    }

    /// Whether spec.nodeSelector selects this node (its labels as its Node's watch has them).
    /// None: deleted or the agent exits meanwhile.
    async fn selects_this_node(&mut self, selector: LabelSelector) -> Option<bool> {
        let labels = self.node_labels().await?;
        Some(match Selector::try_from(selector) {
            Ok(s) => s.matches(&labels),
            Err(e) => {
                warn!(error = %e, "spec.nodeSelector cannot be read");
                false
            }
        })
    }

    /// This node's labels, waiting (and following the TraceJob) while its Node is not known.
    /// None: deleted or the agent exits meanwhile.
    async fn node_labels(&mut self) -> Option<BTreeMap<String, String>> {
        let mut changes = self.ctx.stores.node.changes();
        let mut said = false;
        loop {
            if let Some(labels) = self.ctx.stores.node_labels() {
                return Some(labels);
            }
            if !said {
                warn!(
                    node = self.ctx.writer.node(),
                    "this node's Node object is not known yet; waiting for it"
                );
                said = true;
            }
            self.seen.follow(changes.next()).await?;
        }
    }

    /// The node-selector annotation of the TraceJob's namespace, waiting (and following the
    /// TraceJob) while the namespace is not known yet. None: deleted or the agent exits meanwhile.
    async fn namespace_selector(&mut self, namespace: &str) -> Option<Option<String>> {
        let mut changes = self.ctx.stores.namespaces.changes();
        loop {
            if let Some(annotation) = self.ctx.stores.namespace_selector(namespace) {
                return Some(annotation);
            }
            self.seen.follow(changes.next()).await?;
        }
    }

    /// Whether this TraceJob's namespace may trace this node (`decide::scope`), from the
    /// namespace's annotation and the node's labels, as their watches have them.
    async fn scope(&mut self) -> Scope {
        let namespace = self.seen.job.namespace().unwrap_or_default();
        let Some(annotation) = self.namespace_selector(&namespace).await else {
            return Scope::Over;
        };
        let Some(labels) = self.node_labels().await else {
            return Scope::Over;
        };
        match self.allowed(annotation.as_deref(), &labels) {
            Ok(()) => Scope::Allowed,
            Err(why) => Scope::Refused(why),
        }
    }

    /// `scope::allowed` for this node under the agent's flags.
    fn allowed(
        &self,
        annotation: Option<&str>,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        scope::allowed(
            annotation,
            self.ctx.writer.node(),
            labels,
            self.ctx.config.unannotated_namespaces,
            &self.ctx.config.protected_node_labels,
        )
    }

    /// Ends a TraceJob this node may not run: Failed, NodeNotAllowed, and no bpftrace.
    async fn refuse(&mut self, why: String) -> Claimed {
        info!(%why, "not running this TraceJob: its namespace may not trace this node");
        if self.seen.job.spec.node_selector.is_some() {
            // One of many nodes: a refused node writes nothing (the TraceJob's size, and the API
            // server's work, must not grow with the nodes that may not run it); it is counted.
            self.ctx
                .metrics
                .fanout_refused
                .get_or_create(&crate::metrics::Reason {
                    reason: NODE_NOT_ALLOWED.into(),
                })
                .inc();
            return Claimed::Refused;
        }
        self.fail_unclaimed(NODE_NOT_ALLOWED, why).await
    }

    /// Ends a TraceJob that was never started: Failed with `reason`, written only if it is still
    /// the version read. (A TraceJob without spec.nodeName gets here only on its pod's node.)
    async fn fail_unclaimed(&mut self, reason: &str, why: String) -> Claimed {
        self.ours = TraceJobStatus {
            phase: Some(Phase::Failed),
            node_name: Some(self.ctx.writer.node().to_string()),
            completion_time: Some(writer::now()),
            message: Some(why.clone()),
            ..Default::default()
        };
        match self.write_claim(reason).await {
            Claimed::Won(_) => {
                warn!(reason, %why, "the TraceJob failed before it started");
                self.ctx.writer.event(&self.seen.job, true, "Failed", why);
                self.ctx.metrics.failed(reason);
                Claimed::Refused
            }
            other => other,
        }
    }

    /// Claims the TraceJob for a run: status.id and Pending, only if the object is still the
    /// version read (so one TraceJob is never started twice).
    async fn claim(&mut self) -> Claimed {
        let run_id = uuid::Uuid::new_v4().to_string();
        self.ours = TraceJobStatus {
            phase: Some(Phase::Pending),
            id: Some(run_id.clone()),
            node_name: Some(self.ctx.writer.node().to_string()),
            message: Some(format!(
                "starting bpftrace on node {}",
                self.ctx.writer.node()
            )),
            ..Default::default()
        };
        let claimed = self.write_claim("Starting").await;
        if let Claimed::Won(_) = claimed {
            tracing::Span::current().record("id", run_id.as_str());
            return Claimed::Won(run_id);
        }
        claimed
    }

    /// Writes `self.ours` only if the TraceJob is still the version read (a node's entry of a
    /// TraceJob on several nodes is its own: it needs no precondition).
    async fn write_claim(&mut self, reason: &str) -> Claimed {
        let precondition = match self.seen.job.spec.node_selector {
            Some(_) => None,
            None => self.seen.job.resource_version(),
        };
        let seq = self.report_if(precondition, reason);
        loop {
            tokio::select! {
                written = self.status.written.recv() => match written {
                    Some(Written::Done { seq: s, .. }) if s == seq => {
                        return Claimed::Won(String::new());
                    }
                    Some(Written::Conflict { seq: s, newest }) if s == seq => {
                        info!("the TraceJob changed while it was claimed; deciding again");
                        match newest {
                            Some(n) => self.seen.job = *n,
                            None => return self.wait_for_newer().await,
                        }
                        return Claimed::Again;
                    }
                    Some(Written::Gone { .. }) => return Claimed::Over,
                    Some(Written::Rejected { seq: s, error, forbidden: true }) if s == seq => {
                        // Forbidden for this agent (its token, RBAC or the fence): trying again
                        // cannot help, and every agent retrying would flood the API server.
                        tracing::error!(%error, "the API server forbids this agent to claim the TraceJob; giving it up");
                        self.ctx.metrics.failed(CLAIM_FORBIDDEN);
                        self.ctx.writer.event(&self.seen.job, true, CLAIM_FORBIDDEN, format!("the agent of node {} may not claim this TraceJob: {error}", self.ctx.writer.node()));
                        return Claimed::Refused;
                    }
                    Some(Written::Rejected { seq: s, error, .. }) if s == seq => {
                        warn!(%error, "the claim was refused; trying again later");
                        self.rejected = Some(error);
                        return Claimed::Again;
                    }
                    Some(_) => {}
                    None => return Claimed::Over,
                },
                alive = self.seen.next() => if !alive || self.seen.deleted {
                    return Claimed::Over;
                },
            }
        }
    }

    /// Waits for the next version of the TraceJob. Over if it was deleted or the agent exits.
    async fn wait_for_newer(&mut self) -> Claimed {
        if self.seen.next().await && !self.seen.deleted {
            Claimed::Again
        } else {
            Claimed::Over
        }
    }

    /// Waits `pause`, following spec changes meanwhile. False: deleted or the agent exits.
    async fn pause(&mut self, pause: Duration) -> bool {
        self.seen.follow(tokio::time::sleep(pause)).await.is_some()
    }

    /// Starts a claimed run: its directory and record, then the shim and bpftrace.
    async fn start(&mut self, run_id: String) -> Option<Run> {
        let slot = self.slot().await?;
        let mut record = Record {
            namespace: self.seen.job.namespace().unwrap_or_default(),
            name: self.seen.job.name_any(),
            uid: self.seen.job.uid().unwrap_or_default(),
            run_id,
            ..Default::default()
        };
        let mut program = self.seen.job.spec.program.clone();
        if let Some(target) = self.seen.job.spec.target.clone() {
            if self.seen.job.spec.stop {
                // Stopped before it started: nothing to resolve.
            } else {
                match self.resolve(&target).await {
                    Resolved::Ready(running, container) => {
                        match filled_in(&program, &container) {
                            Ok(p) => program = p,
                            Err(why) => {
                                self.fail_started("TargetInvalid", why).await;
                                return None;
                            }
                        }
                        info!(container = %running.id, pid = container.main, cgroup = ?container.cgroup, "the target container runs here");
                        record.target_id = Some(running.id);
                        record.target_name = Some(running.name);
                        record.program = Some(program.clone());
                    }
                    Resolved::Fail(reason, why) => {
                        self.fail_started(reason, why).await;
                        return None;
                    }
                    Resolved::Over => return None,
                }
            }
        }
        let files = match self.ctx.state.create(&record, &program) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "the run's directory could not be made");
                let message = format!("the agent could not store the run on the node: {e}");
                self.fail_unstarted("RunDirFailed", message).await;
                return None;
            }
        };
        let mut run = Run {
            record,
            files,
            process: Process::Starting {
                since: Instant::now(),
            },
            exit: tokio::spawn(async {}),
            since: Instant::now(),
            stop_seen: None,
            sigint_pending: false,
            printed_at_sigint: 0,
            live: Live::default(),
            target: None,
            _slot: slot,
        };
        run.target = target_watch(&self.seen.job, &run.record, self.ctx.stores.pods.changes());
        if self.seen.job.spec.stop {
            info!("spec.stop was set before the trace started; not running bpftrace");
            run.process = Process::Exited(Exit::NotStarted);
            return Some(run);
        }
        let cfg = &self.ctx.config;
        let spawned = shim::spawn(
            &self.ctx.exe,
            &run.files,
            &cfg.bpftrace,
            &self.seen.job.spec.args,
            cfg.max_output_bytes,
            cfg.host_cgroup_root.as_deref(),
        );
        match spawned {
            Ok(mut child) => {
                info!(shim = child.id(), "trace started under its shim");
                run.record.shim = child.id().and_then(|pid| Identity::of(pid as i32));
                self.save(&run.record);
                run.exit = tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                self.ctx.metrics.running.inc();
            }
            Err(e) => {
                let why = format!("cannot start the agent's shim for bpftrace: {e}");
                run.process = Process::Exited(Exit::CouldNotStart(why));
            }
        }
        Some(run)
    }

    /// A place among the traces this node runs (`--max-running-traces`), waited for while the
    /// node runs as many, Pending with a Waiting condition that says so. None: deleted or the
    /// agent exits meanwhile; Some(None): stopped while it waited (it will not run).
    async fn slot(&mut self) -> Option<Option<OwnedSemaphorePermit>> {
        let slots = self.ctx.slots.clone();
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Some(Some(permit));
        }
        let max = self.ctx.config.max_running_traces;
        info!(
            max,
            "this node runs as many traces as it may; waiting for one to end"
        );
        self.ours.message = Some(format!(
            "waiting: node {} runs {max} traces, its --max-running-traces; this one starts when one of them ends",
            self.ctx.writer.node()
        ));
        self.ours.conditions.retain(|c| c.type_ != WAITING);
        self.ours
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: WAITING.into(),
                status: "True".into(),
                reason: "MaxRunningTraces".into(),
                message: self.ours.message.clone().unwrap_or_default(),
                last_transition_time: writer::now(),
                observed_generation: self.seen.job.metadata.generation,
            });
        self.report("Starting");
        let permit = loop {
            if self.seen.job.spec.stop {
                break None;
            }
            tokio::select! {
                permit = slots.clone().acquire_owned() => break permit.ok(),
                alive = self.seen.next() => if !alive || self.seen.deleted { return None },
            }
        };
        for c in self
            .ours
            .conditions
            .iter_mut()
            .filter(|c| c.type_ == WAITING)
        {
            c.status = "False".into();
            c.reason = "Started".into();
            c.message = "a slot freed".into();
            c.last_transition_time = writer::now();
        }
        Some(permit)
    }

    /// Whether this node runs a TraceJob with a target: the one its pod runs on, as this node's
    /// pod store has it. While the pod is not here, a TraceJob that names no node is waited on
    /// without a request or a write (every node sees it; the pod's node takes it), woken by a
    /// change of this node's pods. One that names this node is failed saying what is wrong (a
    /// GET says where the pod is), or waited on while its pod is not scheduled yet, up to
    /// `--target-timeout` from the TraceJob's creation.
    async fn place(&mut self, target: &Target) -> Place {
        let namespace = self.seen.job.namespace().unwrap_or_default();
        let named = self.seen.job.spec.node_name.clone();
        let timeout = self.ctx.config.target_timeout();
        let deadline = Instant::now() + timeout.saturating_sub(decide::age_of(&self.seen.job));
        let mut pods = self.ctx.stores.pods.changes();
        let mut ask = true;
        let mut delays = writer::backoff();
        loop {
            let here = self.ctx.stores.pod(&namespace, &target.pod).is_some();
            let named = match (target::place(here, named.is_some()), &named) {
                (target::Place::Here, _) => return Place::Here,
                (target::Place::Ask, Some(named)) => named,
                (target::Place::Wait | target::Place::Ask, _) => {
                    tokio::select! {
                        _ = pods.next() => continue,
                        alive = self.seen.next() => return self.again(alive),
                    }
                }
            };
            if ask {
                let client = self.ctx.client.clone();
                let Some(found) = self
                    .seen
                    .follow(lookup::pod(&client, &namespace, &target.pod))
                    .await
                else {
                    return Place::Over;
                };
                match found {
                    Ok(pod) => {
                        let expired = Instant::now() >= deadline;
                        match target::absent(
                            pod.as_ref(),
                            target,
                            &namespace,
                            named,
                            expired,
                            timeout,
                        ) {
                            target::Absent::Fail(reason, why) => return Place::Fail(reason, why),
                            target::Absent::Wait => ask = false,
                        }
                    }
                    Err(e) => {
                        let pause = delays.next().unwrap_or(Duration::from_secs(30));
                        warn!(error = %e, retry_in = ?pause, "cannot read the target pod yet");
                        if !self.pause(pause).await {
                            return Place::Over;
                        }
                        continue;
                    }
                }
            }
            // Until the pod is here, or the deadline (then asked once more), or a newer version.
            let expired = Instant::now() >= deadline;
            tokio::select! {
                _ = pods.next() => {}
                _ = tokio::time::sleep_until(deadline.into()), if !expired => ask = true,
                alive = self.seen.next() => return self.again(alive),
            }
        }
    }

    /// After `Seen::next`: decide again, unless the TraceJob was deleted or the agent exits.
    fn again(&self, alive: bool) -> Place {
        if alive && !self.seen.deleted {
            Place::Again
        } else {
            Place::Over
        }
    }

    /// The target container, once it runs (waiting up to `--target-timeout` from the claim),
    /// and its processes on this node. The pod is read from this node's pod store: the wait
    /// wakes when it changes, and every 2 s to look for the container's processes.
    async fn resolve(&mut self, target: &Target) -> Resolved {
        let timeout = self.ctx.config.target_timeout();
        let since = Instant::now();
        let mut said = String::new();
        let mut pods = self.ctx.stores.pods.changes();
        loop {
            let namespace = self.seen.job.namespace().unwrap_or_default();
            // It was on this node when placed: gone from the store, it was deleted.
            let Some(pod) = self.ctx.stores.pod(&namespace, &target.pod) else {
                return Resolved::Fail(
                    "TargetNotFound",
                    target::not_found(&target.pod, &namespace),
                );
            };
            let waiting = match target::container(&pod, target) {
                target::Found::Running(running) => {
                    let root = self
                        .ctx
                        .config
                        .host_cgroup_root
                        .clone()
                        .unwrap_or_else(|| "/sys/fs/cgroup".into());
                    match container::find(&running.id, &root) {
                        Ok(c) => return Resolved::Ready(running, c),
                        Err(e) => e.to_string(),
                    }
                }
                target::Found::NotRunning(why) => why,
                target::Found::Wrong(why) => return Resolved::Fail("TargetInvalid", why),
            };
            if since.elapsed() >= timeout {
                return Resolved::Fail(
                    "TargetNotRunning",
                    format!(
                        "{waiting} (waited {}s, --target-timeout)",
                        timeout.as_secs()
                    ),
                );
            }
            if waiting != said {
                // Tell the user what it waits for.
                self.ours.message = Some(format!("waiting for the target: {waiting}"));
                self.report("Starting");
                said = waiting;
            }
            let nap = Duration::from_secs(2).min(timeout.saturating_sub(since.elapsed()));
            let changed_or_nap = async {
                tokio::select! {
                    _ = pods.next() => {}
                    _ = tokio::time::sleep(nap) => {}
                }
            };
            if self.seen.follow(changed_or_nap).await.is_none() {
                return Resolved::Over;
            }
        }
    }

    /// Ends a claimed TraceJob that could not start: Failed with `reason`, and no bpftrace.
    async fn fail_started(&mut self, reason: &str, why: String) {
        warn!(reason, %why, "the trace cannot start");
        self.fail_unstarted(reason, why).await;
    }

    /// Takes over a run an earlier agent on this node started.
    fn resume(&mut self, record: Record) -> Run {
        tracing::Span::current().record("id", record.run_id.as_str());
        let files = match self.ctx.state.files(&record.run_id) {
            Ok(f) => f,
            // load() found the record under this id, so it is a UUID.
            Err(_) => RunFiles::in_dir(Path::new("/nonexistent")),
        };
        let running = record.shim.is_some_and(|s| s.is_alive());
        let now = Instant::now();
        let found = Found {
            running,
            ended: rundir::read_json::<Ended>(&files.ended).map(|e| exit_of(Some(e))),
            stopped: record.stopped,
            killed: record.killed,
            tracing_since: record.tracing_since.map(|t| instant_of(t, now)),
        };
        let process = decide::resume(found, now);
        info!(?process, "taking over a trace started by an earlier agent");
        let exit = match record.shim {
            Some(shim) if running => {
                self.ctx.metrics.running.inc();
                tokio::spawn(async move {
                    while shim.is_alive() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            }
            _ => tokio::spawn(async {}),
        };
        let mut run = Run {
            stop_seen: record.stopped.map(|_| now),
            record,
            files,
            process,
            exit,
            since: now,
            sigint_pending: false,
            printed_at_sigint: 0,
            live: Live::default(),
            target: None,
            // A trace taken over runs already: it takes a place if one is free.
            _slot: self.ctx.slots.clone().try_acquire_owned().ok(),
        };
        run.target = target_watch(&self.seen.job, &run.record, self.ctx.stores.pods.changes());
        run
    }

    /// Follows the run until bpftrace has ended, then reports its outcome.
    async fn follow(&mut self, mut run: Run) {
        loop {
            if let Process::Starting { .. } = run.process {
                self.check_attached(&mut run);
            }
            if run.sigint_pending {
                self.signal(&mut run, Signal::SIGINT);
            }
            if let Process::Tracing { .. } = run.process {
                self.copy_live(&mut run);
            }
            if matches!(
                run.process,
                Process::Starting { .. } | Process::Tracing { .. }
            ) {
                self.check_target(&mut run);
                self.check_scope(&mut run);
            }
            let now = Instant::now();
            let wanted = self.wanted(&run);
            match decide::next(wanted, &run.process, now) {
                Step::Collect => break,
                Step::Interrupt(reason) => self.interrupt(&mut run, reason),
                Step::Reinterrupt => {
                    warn!("bpftrace has not ended since SIGINT; sending SIGINT again");
                    self.signal(&mut run, Signal::SIGINT);
                    if let Process::Interrupted { at, reason, .. } = run.process {
                        run.process = Process::Interrupted {
                            at,
                            signalled: now,
                            reason,
                        };
                    }
                }
                Step::Kill => {
                    warn!("bpftrace did not exit within the grace period; killing it");
                    self.signal(&mut run, Signal::SIGKILL);
                    run.record.killed = true;
                    self.save(&run.record);
                    let reason = run.record.stopped.unwrap_or(StopReason::Requested);
                    run.process = Process::Killed { reason };
                }
                Step::Wait(until) => {
                    if !self.wait(&mut run, until).await {
                        return;
                    }
                }
            }
        }
        self.finish(run).await;
    }

    /// Waits for the next thing that can change a decision. False: the agent is exiting.
    async fn wait(&mut self, run: &mut Run, until: Option<Instant>) -> bool {
        let now = Instant::now();
        let nap = if matches!(run.process, Process::Starting { .. }) || run.sigint_pending {
            // Looking for the attach line (or for bpftrace's PID) often.
            Duration::from_millis(25)
        } else {
            // At least every second: the output's size and live output.
            until.map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(now).min(Duration::from_secs(1))
            })
        };
        let live = async {
            match run.live.in_flight.as_mut() {
                Some(handle) => handle.await.ok(),
                None => std::future::pending().await,
            }
        };
        let pods_changed = async {
            match run.target.as_mut() {
                Some(t) if run.record.target_lost.is_none() => t.pods.next().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut run.exit => {
                run.process = Process::Exited(exit_of(rundir::read_json(&run.files.ended)));
                self.ctx.metrics.running.dec();
            }
            alive = self.seen.next() => return alive,
            written = self.status.written.recv() => self.on_written(written),
            copied = live => {
                run.live.in_flight = None;
                self.on_live_copied(run, copied);
            }
            _ = pods_changed => {
                if let Some(t) = run.target.as_mut() {
                    t.look = true;
                }
            }
            _ = tokio::time::sleep(nap) => {}
        }
        true
    }

    fn wanted(&self, run: &Run) -> Wanted {
        let (head, _) = shim::split(self.ctx.config.max_output_bytes);
        let printed = std::fs::metadata(&run.files.stdout).map_or(0, |m| m.len());
        let stuck = matches!(run.process, Process::Interrupted { .. })
            && printed == run.printed_at_sigint
            && run
                .record
                .bpftrace
                .is_some_and(|p| process::is_polling(p.pid));
        Wanted {
            deleted: self.seen.deleted,
            output_full: printed >= head,
            stuck,
            target_lost: run.record.target_lost.is_some(),
            revoked: run.record.revoked.is_some(),
            agent_removed: *self.ctx.removed.borrow(),
            status_rejected: self.rejected.is_some(),
            ..Wanted::of(&self.seen.job, self.ctx.config.start_timeout())
        }
    }

    fn on_written(&mut self, written: Option<Written>) {
        match written {
            Some(Written::Gone { .. }) => self.seen.deleted = true,
            Some(Written::Rejected { error, .. }) => {
                warn!(%error, "the API server refused the status; stopping the trace");
                self.rejected = Some(error);
            }
            Some(Written::Done { .. } | Written::Conflict { .. }) | None => {}
        }
    }

    /// Reports Running once bpftrace is tracing.
    fn check_attached(&mut self, run: &mut Run) {
        if run.record.bpftrace.is_none() {
            if let Some(started) = rundir::read_json::<Started>(&run.files.started) {
                if let Some(e) = &started.cgroup_error {
                    warn!(error = %e, "the trace stays in the agent's cgroup: it will end if the agent's container stops");
                }
                info!(pid = started.bpftrace.pid, "bpftrace started");
                run.record.bpftrace = Some(started.bpftrace);
                self.save(&run.record);
            }
        }
        let Some(p) = run.record.bpftrace else { return };
        let files = &run.files;
        let printed = std::fs::metadata(&files.stdout).map_or(0, |m| m.len());
        // Up to 0.23 the attach line is on stdout; 0.27 prints it on stderr.
        let (line, printed_after) =
            match bpftrace::attach_line(&bpftrace::head(&files.stdout, 4096)) {
                Some(line) => (Some(line), printed > line.end as u64),
                None => (
                    bpftrace::attach_line(&bpftrace::head(&files.stderr, 16384)),
                    printed > 0,
                ),
            };
        let Some(probes) = decide::tracing(line, printed_after, process::is_polling(p.pid)) else {
            return;
        };
        let latency = run.since.elapsed();
        self.ctx.metrics.started.inc();
        Metrics::observe(&self.ctx.metrics.start_latency, latency);
        run.process = Process::Tracing {
            since: Instant::now(),
        };
        run.record.probes = Some(probes);
        run.record.tracing_since = Some(k8s_openapi::jiff::Timestamp::now().as_second());
        self.save(&run.record);
        info!(probes, ?latency, "probes attached; tracing");
        if self.seen.deleted {
            return;
        }
        self.ours = TraceJobStatus {
            phase: Some(Phase::Running),
            pid: Some(p.pid.into()),
            probes: Some(probes.into()),
            start_time: Some(writer::now()),
            message: Some(format!("tracing with {probes} probes")),
            ..self.ours.clone()
        };
        self.report("ProbesAttached");
        self.ctx.writer.event(
            &self.seen.job,
            false,
            "Started",
            format!("bpftrace attached {probes} probes (pid {})", p.pid),
        );
    }

    fn interrupt(&mut self, run: &mut Run, reason: StopReason) {
        info!(reason = reason.describe(), "stopping: sending SIGINT");
        let now = Instant::now();
        run.process = Process::Interrupted {
            at: now,
            signalled: now,
            reason,
        };
        run.stop_seen = Some(now);
        run.record.stopped = Some(reason);
        self.save(&run.record);
        run.sigint_pending = true;
        self.signal(run, Signal::SIGINT);
        if self.seen.deleted {
            return;
        }
        let why = match (&run.record.target_lost, &run.record.revoked, reason) {
            (Some(lost), _, StopReason::TargetLost) => lost.clone(),
            (_, Some(revoked), StopReason::Revoked) => {
                format!("{}: {revoked}", reason.describe())
            }
            _ => reason.describe().to_string(),
        };
        self.ours.phase = Some(Phase::Stopping);
        self.ours.message = Some(format!(
            "stopping: {why}; waiting for bpftrace to print its maps"
        ));
        self.report("Stopping");
        self.ctx.writer.event(
            &self.seen.job,
            false,
            "Stopping",
            format!("sent SIGINT: {why}"),
        );
    }

    /// Signals bpftrace, once its shim has said which process it is.
    fn signal(&mut self, run: &mut Run, signal: Signal) {
        if run.record.bpftrace.is_none() {
            run.record.bpftrace =
                rundir::read_json::<Started>(&run.files.started).map(|s| s.bpftrace);
        }
        match run.record.bpftrace {
            Some(p) => {
                p.signal(signal);
                if signal == Signal::SIGINT {
                    run.sigint_pending = false;
                    run.printed_at_sigint =
                        std::fs::metadata(&run.files.stdout).map_or(0, |m| m.len());
                }
            }
            // Not started yet: the shim is about to start it; SIGINT is sent once it has.
            None => run.sigint_pending = signal == Signal::SIGINT,
        }
    }

    /// Looks at the target pod in this node's pod store, first and whenever the store changed:
    /// a restart of the container or the pod's deletion ends the trace.
    fn check_target(&mut self, run: &mut Run) {
        let Some(watch) = run.target.as_mut() else {
            return;
        };
        if watch.pods.take() {
            watch.look = true;
        }
        if !watch.look || run.record.target_lost.is_some() {
            return;
        }
        watch.look = false;
        let namespace = self.seen.job.namespace().unwrap_or_default();
        // The pod runs on this node: not in the store, it was deleted.
        let pod = self.ctx.stores.pod(&namespace, &watch.target.pod);
        if let Some(why) = target::lost(pod.as_deref(), &watch.target, &watch.started) {
            info!(%why, "the target is gone; stopping the trace");
            run.record.target_lost = Some(why);
            self.save(&run.record);
        }
    }

    /// Whether the namespace may still trace this node, from the watched Namespace and Node (a
    /// memory read: done on every turn of the loop, so a revoked scope stops the trace within a
    /// second or two). A running trace taken over after a restart is checked the same way.
    fn check_scope(&mut self, run: &mut Run) {
        if run.record.revoked.is_some() {
            return;
        }
        let namespace = self.seen.job.namespace().unwrap_or_default();
        let (Some(annotation), Some(labels)) = (
            self.ctx.stores.namespace_selector(&namespace),
            self.ctx.stores.node_labels(),
        ) else {
            // Not watched (yet): nothing is known to have changed.
            return;
        };
        if let Err(why) = self.allowed(annotation.as_deref(), &labels) {
            info!(%why, "the namespace may no longer trace this node; stopping the trace");
            run.record.revoked = Some(why);
            self.save(&run.record);
        }
    }

    /// Copies the newest output into the ConfigMap while the trace runs: at most every
    /// `--live-interval`, only when it grew, past the attach line, within the node's budget.
    fn copy_live(&mut self, run: &mut Run) {
        let Some(interval) = self.ctx.config.live_interval() else {
            return;
        };
        if self.seen.deleted
            || run.live.in_flight.is_some()
            || run.live.last.is_some_and(|t| t.elapsed() < interval)
        {
            return;
        }
        let printed = std::fs::metadata(&run.files.stdout).map_or(0, |m| m.len());
        let from = bpftrace::attach_line(&bpftrace::head(&run.files.stdout, 4096))
            .map_or(0, |l| l.end as u64);
        if printed <= from || printed == run.live.size {
            return;
        }
        run.live.last = Some(Instant::now());
        let window = self.ctx.config.live_window_bytes;
        let bytes = (printed - from).min(window);
        let spent = self
            .ctx
            .live_budget
            .lock()
            .map(|mut b| b.spend(bytes, Instant::now()))
            .unwrap_or(false);
        if !spent {
            self.ctx.metrics.live_skipped.inc();
            return;
        }
        let (writer, job, run_id, path) = (
            self.ctx.writer.clone(),
            self.seen.job.clone(),
            run.record.run_id.clone(),
            run.files.stdout.clone(),
        );
        let ours = self.ours.output_ref.as_ref().map(|r| r.name.clone());
        run.live.in_flight = Some(tokio::spawn(
            async move {
                let read = tokio::task::spawn_blocking(move || {
                    collect::live_window(&path, from, window)
                        .map(|(offset, bytes)| (offset, contents_of(bytes), printed))
                })
                .await;
                let (offset, contents, printed) = match read {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(format!("reading the output: {e}")),
                    Err(e) => return Err(format!("reading the output: {e}")),
                };
                let name = writer
                    .output(&job, &run_id, &contents, Some(offset), ours.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((name, printed))
            }
            .in_current_span(),
        ));
    }

    fn on_live_copied(&mut self, run: &mut Run, copied: Option<Result<(String, u64), String>>) {
        match copied {
            Some(Ok((name, printed))) => {
                self.ctx.metrics.live_bytes.inc_by(
                    printed
                        .saturating_sub(run.live.size)
                        .min(self.ctx.config.live_window_bytes),
                );
                run.live.size = printed;
                let output_ref = Some(OutputRef { name });
                if self.ours.output_ref != output_ref && !self.seen.deleted {
                    self.ours.output_ref = output_ref;
                    let reason = self.reason.clone();
                    self.report(&reason);
                }
            }
            Some(Err(e)) => warn!(error = %e, "live output not written; trying again later"),
            None => {}
        }
    }

    /// Decides and records the outcome, has the output collected and stored, reports the end
    /// and removes the run's files. Each step done is recorded, so an agent that takes the run
    /// over after a restart goes on from there instead of doing it again.
    async fn finish(&mut self, mut run: Run) {
        let exit = match &run.process {
            Process::Exited(e) => e.clone(),
            _ => Exit::Unrecorded,
        };
        let ended = rundir::read_json::<Ended>(&run.files.ended);
        if run.record.stopped.is_none() && ended.as_ref().is_some_and(|e| e.limit_reached) {
            // The shim stopped it at the output limit before this agent saw the limit reached.
            run.record.stopped = Some(StopReason::OutputLimit);
        }
        let outcome = match run.record.outcome.clone() {
            Some(o) => o,
            None => {
                let stderr = tokio::fs::read(&run.files.stderr).await.unwrap_or_default();
                let errors = bpftrace::error_text(&String::from_utf8_lossy(&stderr));
                let o = decide::outcome(&exit, run.record.stopped, run.record.killed, &errors);
                run.record.outcome = Some(o.clone());
                self.save(&run.record);
                o
            }
        };
        let mut outcome = outcome;
        if let (Some(StopReason::TargetLost), Some(why)) =
            (run.record.stopped, &run.record.target_lost)
        {
            outcome.message = format!("{}: {why}", outcome.message);
        }
        if let (Some(StopReason::Revoked), Some(why)) = (run.record.stopped, &run.record.revoked) {
            outcome.message = format!("{}: {why}", outcome.message);
        }
        info!(phase = %outcome.phase, ?exit, reason = %outcome.reason, "bpftrace ended");
        if let Some(live) = run.live.in_flight.take() {
            // A live copy must land before the final output, and the ConfigMap it made is the
            // run's own (an aborted one could have made it unseen).
            let abort = live.abort_handle();
            match tokio::time::timeout(Duration::from_secs(30), live).await {
                Ok(copied) => self.on_live_copied(&mut run, copied.ok()),
                Err(_) => abort.abort(),
            }
        }
        let landed = match run.record.landed.clone() {
            Some(l) => Some(l),
            None if self.seen.deleted => None,
            None => match self.store(&run).await {
                Stored::Landed(l) => {
                    info!(configmap = %l.configmap, bytes = l.bytes, stored = %l.reason, "output stored");
                    run.record.landed = Some(l.clone());
                    self.save(&run.record);
                    Some(l)
                }
                Stored::Failed(e) => {
                    outcome.phase = Phase::Failed;
                    outcome.reason = "OutputNotStored".into();
                    outcome.message =
                        format!("{}; the output could not be stored: {e}", outcome.message);
                    None
                }
                Stored::Interrupted => return,
            },
        };
        if !self.seen.deleted && !self.seen.exiting {
            self.report_outcome(&outcome, landed.as_ref(), run.stop_seen);
            if !self.report_until_written().await {
                // The agent is exiting: the next one reports from the record.
                return;
            }
        }
        if self.seen.exiting {
            return;
        }
        if let Err(e) = self.ctx.state.remove(&run.record.run_id) {
            warn!(error = %e, "could not remove the run's files");
        }
    }

    /// Waits until the final status is written. If the API server refuses it, a plain Failed
    /// status saying why is written instead; if that is refused too, both are tried again with
    /// backoff while the record keeps the outcome. False: the agent is exiting first.
    async fn report_until_written(&mut self) -> bool {
        let wanted = (self.ours.clone(), self.reason.clone());
        let mut delays = writer::backoff();
        loop {
            let error = match self.reported().await {
                Reported::Written | Reported::Deleted => {
                    debug!("final status written");
                    return true;
                }
                Reported::Exiting => return false,
                Reported::Rejected(e) => e,
            };
            warn!(%error, "the API server refused the final status; reporting Failed instead");
            self.ours.phase = Some(Phase::Failed);
            self.ours.message = Some(format!(
                "the API server refused the TraceJob's status: {error}"
            ));
            self.report("StatusRejected");
            match self.reported().await {
                Reported::Written | Reported::Deleted => return true,
                Reported::Exiting => return false,
                Reported::Rejected(error) => {
                    let pause = delays.next().unwrap_or(Duration::from_secs(30));
                    warn!(%error, retry_in = ?pause, "the API server refuses every status of this TraceJob; keeping its outcome on the node and trying again");
                    if !self.pause(pause).await {
                        return !self.seen.exiting;
                    }
                    (self.ours, self.reason) = wanted.clone();
                    let reason = self.reason.clone();
                    self.report(&reason);
                }
            }
        }
    }

    /// Collects the output (a few runs at a time, on blocking threads) and stores it in the
    /// ConfigMap, retrying transient failures, while following the TraceJob.
    async fn store(&mut self, run: &Run) -> Stored {
        let ctx = self.ctx.clone();
        let stdout = run.files.stdout.clone();
        let dropped = rundir::read_json::<Ended>(&run.files.ended).map_or(0, |e| e.stdout.dropped);
        let program = run.record.program.clone();
        let (writer, job, run_id) = (
            self.ctx.writer.clone(),
            self.seen.job.clone(),
            run.record.run_id.clone(),
        );
        let ours = self.ours.output_ref.as_ref().map(|r| r.name.clone());
        let mut task = tokio::spawn(
            async move {
                let collected = {
                    let _permit = ctx.collections.acquire().await;
                    ctx.metrics.collecting.inc();
                    ctx.metrics.collections.inc();
                    let version = ctx.bpftrace_version.clone();
                    // The program as it ran goes beside the output when it differs from the spec.
                    let budget = CONFIGMAP_BUDGET
                        .saturating_sub(program.as_ref().map_or(0, |p| p.len() as u64));
                    let read = tokio::task::spawn_blocking(move || {
                        collect::collect(&stdout, dropped, &version, budget).map(|mut c| {
                            if let Some(p) = program {
                                c.contents.data.insert("program".into(), p);
                            }
                            c
                        })
                    })
                    .await;
                    ctx.metrics.collecting.dec();
                    match read {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => return Err(format!("reading the output on the node: {e}")),
                        Err(e) => return Err(format!("reading the output on the node: {e}")),
                    }
                };
                let Collected { contents, stored } = collected;
                let mut delays = writer::backoff();
                let mut ours = ours;
                loop {
                    match writer.output(&job, &run_id, &contents, None, ours.as_deref()).await {
                        Ok(name) => {
                            let (reason, message) = stored.describe(&name);
                            return Ok(Landed {
                                configmap: name,
                                reason: reason.into(),
                                message,
                                bytes: stored.raw + stored.dropped_on_node,
                            });
                        }
                        Err(e) if e.is_transient() => {
                            let delay = delays.next().unwrap_or(Duration::from_secs(30));
                            warn!(error = %e, retry_in = ?delay, "writing the output ConfigMap failed");
                            tokio::time::sleep(delay).await;
                        }
                        // A name this run was writing is not ours after all (deleted and taken
                        // meanwhile): start again from a new ConfigMap.
                        Err(e) if ours.is_some() && e.is_refused() => {
                            warn!(error = %e, "the run's ConfigMap cannot be updated; writing a new one");
                            ours = None;
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            .in_current_span(),
        );
        loop {
            tokio::select! {
                done = &mut task => return match done {
                    Ok(Ok(l)) => Stored::Landed(l),
                    Ok(Err(e)) => Stored::Failed(e),
                    Err(e) => Stored::Failed(e.to_string()),
                },
                alive = self.seen.next() => if !alive || self.seen.deleted {
                    task.abort();
                    return Stored::Interrupted;
                },
                written = self.status.written.recv() => self.on_written(written),
            }
        }
    }

    fn report_outcome(
        &mut self,
        outcome: &Outcome,
        landed: Option<&Landed>,
        stop_seen: Option<Instant>,
    ) {
        let mut message = outcome.message.clone();
        let mut conditions = std::mem::take(&mut self.ours.conditions);
        conditions.retain(|c| c.type_ != "OutputStored");
        if let Some(l) = landed {
            if l.reason != "Stored" || l.message.contains("binaryData") {
                message = format!("{message}; {}", l.message);
            }
            conditions.push(status::output_stored(
                &l.reason,
                &l.message,
                &self.seen.job,
                writer::now(),
            ));
            if let Some(seen) = stop_seen {
                Metrics::observe(&self.ctx.metrics.collect_latency, seen.elapsed());
            }
        }
        self.ours = TraceJobStatus {
            phase: Some(outcome.phase),
            exit_code: outcome.exit_code,
            completion_time: Some(writer::now()),
            message: Some(message.clone()),
            output_ref: landed.map(|l| OutputRef {
                name: l.configmap.clone(),
            }),
            conditions,
            ..self.ours.clone()
        };
        self.report(&outcome.reason);
        if outcome.phase == Phase::Completed {
            self.ctx.metrics.completed.inc();
        } else {
            self.ctx.metrics.failed(&outcome.reason);
        }
        let reported = Outcome {
            message,
            ..outcome.clone()
        };
        let (warning, reason, note) = decide::event(
            &reported,
            landed.map_or(0, |l| l.bytes),
            landed.map(|l| l.configmap.as_str()),
        );
        self.ctx.writer.event(&self.seen.job, warning, reason, note);
    }

    /// Fails a TraceJob that has no run to collect from.
    async fn fail_unstarted(&mut self, reason: &str, message: String) {
        self.ours.phase = Some(Phase::Failed);
        self.ours.completion_time = Some(writer::now());
        self.ours.message = Some(message.clone());
        self.report(reason);
        self.ctx
            .writer
            .event(&self.seen.job, true, "Failed", message);
        self.ctx.metrics.failed(reason);
        if let Reported::Rejected(error) = self.reported().await {
            warn!(%error, "the API server refused the status");
        }
    }

    /// Waits until the last status handed to the writer is written, or will not be.
    async fn reported(&mut self) -> Reported {
        loop {
            tokio::select! {
                written = self.status.written.recv() => match written {
                    Some(Written::Done { seq, .. }) if seq == self.seq => return Reported::Written,
                    Some(Written::Gone { .. }) | None => return Reported::Deleted,
                    Some(Written::Rejected { seq, error, .. }) if seq == self.seq => {
                        return Reported::Rejected(error);
                    }
                    Some(_) => {}
                },
                alive = self.seen.next() => if !alive {
                    return Reported::Exiting;
                } else if self.seen.deleted {
                    return Reported::Deleted;
                },
            }
        }
    }

    /// Hands the status this agent wants to the writer.
    fn report(&mut self, reason: &str) {
        self.report_if(None, reason);
    }

    fn report_if(&mut self, precondition: Option<String>, reason: &str) -> u64 {
        self.reason = reason.to_string();
        self.ours = status::complete(self.ours.clone(), reason, &self.seen.job, writer::now());
        self.seq += 1;
        self.status.write(Desired {
            seq: self.seq,
            status: self.ours.clone(),
            precondition,
        });
        self.seq
    }

    fn save(&self, record: &Record) {
        if let Err(e) = self.ctx.state.save(record) {
            warn!(error = %e, "could not save the run's record");
        }
    }
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

/// A live copy's contents: the output as text, or byte for byte when it is not UTF-8.
fn contents_of(bytes: Vec<u8>) -> Contents {
    let mut contents = Contents::default();
    match String::from_utf8(bytes) {
        Ok(text) => {
            contents.data.insert("output".into(), text);
        }
        Err(e) => {
            contents.binary.insert("output".into(), e.into_bytes());
        }
    }
    contents
}
