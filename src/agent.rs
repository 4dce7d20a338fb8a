//! The agent: routes watch updates to one task per job; each task carries out the lifecycle's
//! decisions (start, report Running, interrupt, kill, collect) and reports through `report`.
//!
//! On SIGTERM the agent exits and leaves running traces running: bpftrace is in its own process
//! group (and, in a pod, its own host cgroup), writes to files in the state directory, and the
//! next agent on the node takes it over. Only when no agent will come back (`handover`) does it
//! stop them first.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use kube::{Api, Client, ResourceExt};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch as channel};
use tracing::{info, warn, Instrument};

use crate::api::{Phase, TraceJob, TraceJobStatus};
use crate::bpftrace::{self, Identity, Running};
use crate::cgroup;
use crate::handover::{self, Handover, PodRef};
use crate::lifecycle::{self, Exit, FirstSight, Process, Step, StopReason, Wanted};
use crate::metrics::Metrics;
use crate::output;
use crate::report::{self, Writer};
use crate::server::{self, Health};
use crate::state::{Record, StateDir};
use crate::storage::Stored;
use crate::watch::{self, Update};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] crate::state::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot handle SIGTERM: {0}")]
    Signal(std::io::Error),
}

pub struct Config {
    pub node: String,
    pub bpftrace: PathBuf,
    pub state_dir: PathBuf,
    /// Bytes of bpftrace output kept on disk per job; past it the trace is stopped.
    pub max_output_bytes: u64,
    /// Where /healthz, /readyz and /metrics are served.
    pub listen: SocketAddr,
    /// How often output is mirrored into the ConfigMap while a trace runs; None: only at the end.
    pub live_interval: Option<Duration>,
    /// The agent's own pod, when it runs in one: on exit, its DaemonSet tells whether another
    /// agent will take over the traces.
    pub pod: Option<PodRef>,
    /// The host's /sys/fs/cgroup as mounted in the agent's container: each bpftrace moves into
    /// its own cgroup there, so it outlives the container. None: bpftrace stays in the agent's.
    pub host_cgroup_root: Option<PathBuf>,
}

struct Ctx {
    metrics: Arc<Metrics>,
    /// `bpftrace --version`, recorded in maps.json.
    bpftrace_version: String,
    /// How often output is mirrored while a trace runs; None: only at the end.
    live_interval: Option<Duration>,
    bpftrace: PathBuf,
    max_output_bytes: u64,
    host_cgroup_root: Option<PathBuf>,
    state: StateDir,
    writer: Writer,
    /// Becomes true when the agent exits and no agent will take the traces over.
    removed: channel::Receiver<bool>,
}

/// A client from in-cluster configuration or KUBECONFIG that counts its requests by method
/// (watches apart from plain GETs).
async fn connect(metrics: Arc<Metrics>) -> Result<Client, Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let m = metrics.clone();
    let count =
        tower::util::MapRequestLayer::new(move |req: axum::http::Request<kube::client::Body>| {
            let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
            let path = req.uri().path();
            let resource = ["tracejobs", "configmaps", "events"]
                .into_iter()
                .find(|r| path.contains(&format!("/{r}")))
                .unwrap_or("other");
            metrics.request(
                if watch {
                    "WATCH"
                } else {
                    req.method().as_str()
                },
                resource,
            );
            req
        });
    let errors =
        tower::util::MapResultLayer::new(move |result: Result<axum::http::Response<_>, _>| {
            match &result {
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    m.api_errors.inc()
                }
                Err(_) => m.api_errors.inc(),
                Ok(_) => 0,
            };
            result
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&errors)
        .with_layer(&count)
        .build())
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    let state = StateDir::open(&config.state_dir)?;
    let version = bpftrace::version(&config.bpftrace).unwrap_or_else(|| "unknown".into());
    info!(node = %config.node, bpftrace = %config.bpftrace.display(), %version, "tracejob-agent starting");
    let metrics = Metrics::new();
    metrics
        .bpftrace
        .get_or_create(&crate::metrics::Version {
            version: version.clone(),
        })
        .set(1);
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health {
        ready: ready.clone(),
        metrics: metrics.clone(),
    };
    let listen = config.listen;
    tokio::spawn(async move {
        if let Err(e) = server::serve(listen, health).await {
            warn!(error = %e, %listen, "the health and metrics endpoint stopped");
        }
    });
    let client = connect(metrics.clone()).await?;
    let (removed_tx, removed) = channel::channel(false);
    let ctx = Arc::new(Ctx {
        metrics,
        bpftrace_version: version,
        live_interval: config.live_interval,
        bpftrace: config.bpftrace,
        max_output_bytes: config.max_output_bytes,
        host_cgroup_root: config.host_cgroup_root,
        writer: Writer::new(client.clone(), &config.node),
        state,
        removed,
    });
    let api: Api<TraceJob> = Api::all(client.clone());
    // The API server may not be reachable yet: keep trying (unready) rather than exit.
    let mut delay = Duration::from_millis(500);
    let filter = loop {
        match watch::detect_filter(&api, &config.node).await {
            Ok(f) => break f,
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "cannot list TraceJobs yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    };
    let updates = watch::updates(api, config.node, filter);
    tokio::pin!(updates);

    let mut dispatcher = Dispatcher {
        ctx,
        ready,
        jobs: HashMap::new(),
        finished: HashSet::new(),
        synced_once: false,
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    loop {
        tokio::select! {
            Some(update) = updates.next() => dispatcher.handle(update, &done_tx),
            Some(uid) = done_rx.recv() => {
                dispatcher.jobs.remove(&uid);
                dispatcher.finished.insert(uid);
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    match handover::check(client, config.pod.as_ref()).await {
        Handover::Successor => info!(
            running = dispatcher.jobs.len(),
            "tracejob-agent exiting; running traces are left for the next agent"
        ),
        Handover::NoSuccessor(why) => {
            info!(
                running = dispatcher.jobs.len(),
                why, "tracejob-agent exiting and no agent will take over; stopping the traces"
            );
            let _ = removed_tx.send(true);
            // The tasks stop and collect; if the pod's grace period ends first, each bpftrace
            // has had its SIGINT and still ends on its own.
            while !dispatcher.jobs.is_empty() {
                match done_rx.recv().await {
                    Some(uid) => {
                        dispatcher.jobs.remove(&uid);
                    }
                    None => break,
                }
            }
        }
    }
    Ok(())
}

struct Dispatcher {
    ctx: Arc<Ctx>,
    /// Set once the first list of TraceJobs is complete (/readyz).
    ready: Arc<AtomicBool>,
    /// Live job tasks by TraceJob UID; `None` sent to a task means the TraceJob was deleted.
    jobs: HashMap<String, channel::Sender<Option<TraceJob>>>,
    /// Jobs whose task ended, so a stale event never starts or fails them again.
    finished: HashSet<String>,
    synced_once: bool,
}

impl Dispatcher {
    fn handle(&mut self, update: Update, done: &mpsc::UnboundedSender<String>) {
        match update {
            Update::Seen(job) => {
                let uid = job.uid().unwrap_or_default();
                if let Some(tx) = self.jobs.get(&uid) {
                    let _ = tx.send(Some(job));
                    return;
                }
                if self.finished.contains(&uid) {
                    return;
                }
                let record = job.run_id().and_then(|id| self.ctx.state.load(id));
                let sight = lifecycle::first_sight(&job, record.is_some());
                if sight == FirstSight::Ignore {
                    // Landed, but the agent stopped before cleaning up.
                    if let Some(id) = job.run_id().filter(|_| record.is_some()) {
                        let _ = self.ctx.state.remove(id);
                    }
                    return;
                }
                let (tx, rx) = channel::channel(Some(job.clone()));
                self.jobs.insert(uid.clone(), tx);
                let span = tracing::info_span!("job", namespace = %job.namespace().unwrap_or_default(), name = %job.name_any(), id = tracing::field::Empty);
                let ctx = self.ctx.clone();
                let done = done.clone();
                tokio::spawn(
                    async move {
                        run_job(ctx, job, sight, record, rx).await;
                        let _ = done.send(uid);
                    }
                    .instrument(span),
                );
            }
            Update::Deleted(job) => {
                let uid = job.uid().unwrap_or_default();
                if let Some(tx) = self.jobs.get(&uid) {
                    let _ = tx.send(None);
                }
                self.finished.remove(&uid);
            }
            Update::Synced(existing) => {
                for (uid, tx) in &self.jobs {
                    if !existing.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                self.finished.retain(|uid| existing.contains(uid));
                if !self.synced_once {
                    self.synced_once = true;
                    self.ready.store(true, Ordering::Relaxed);
                    self.end_orphans(&existing);
                }
            }
        }
    }

    /// Traces left by an earlier agent whose TraceJob was deleted while no agent ran: end them.
    fn end_orphans(&self, existing: &HashSet<String>) {
        for record in self.ctx.state.records() {
            if existing.contains(&record.uid) {
                continue;
            }
            let state = self.ctx.state.clone();
            tokio::spawn(async move {
                if let Some(p) = record.process {
                    info!(namespace = %record.namespace, name = %record.name, id = %record.run_id, "TraceJob was deleted while no agent ran; ending its bpftrace");
                    interrupt_then_kill(p, Duration::from_secs(30)).await;
                }
                let _ = state.remove(&record.run_id);
            });
        }
    }
}

async fn interrupt_then_kill(p: Identity, grace: Duration) {
    p.signal(Signal::SIGINT);
    let until = Instant::now() + grace;
    while p.is_alive() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.signal(Signal::SIGKILL);
}

/// How long a write that failed is retried before the next try, at most.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Retries `write` with exponential backoff until it succeeds or fails for a reason retrying
/// cannot fix (the TraceJob is gone, a conflict, an invalid write, a ConfigMap not ours).
async fn persist<T, F, Fut>(what: &str, mut write: F) -> Result<T, report::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, report::Error>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "{what} failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// When a taken-over trace began tracing (its status.startTime), so its deadline still counts
/// from then and not from the takeover.
fn tracing_since(job: &TraceJob) -> Instant {
    let started = job.status.as_ref().and_then(|s| s.start_time.as_ref());
    let elapsed = started.and_then(|t| {
        let secs = (k8s_openapi::jiff::Timestamp::now() - t.0).get_seconds();
        u64::try_from(secs).ok().map(Duration::from_secs)
    });
    let now = Instant::now();
    elapsed.and_then(|e| now.checked_sub(e)).unwrap_or(now)
}

/// Reports Failed for a job that has no bpftrace to collect from.
async fn fail_without_run(ctx: &Ctx, job: &TraceJob, reason: &str, message: String) {
    let status = TraceJobStatus {
        phase: Some(Phase::Failed),
        completion_time: Some(report::now()),
        message: Some(message.clone()),
        ..job.status.clone().unwrap_or_default()
    };
    let _ = persist("reporting Failed", || {
        ctx.writer.status(job, status.clone(), reason)
    })
    .await;
    ctx.writer.event(job, true, "Failed", message).await;
    ctx.metrics.failed(reason);
}

/// One run of one TraceJob, from first sight to its output landing.
async fn run_job(
    ctx: Arc<Ctx>,
    job: TraceJob,
    sight: FirstSight,
    record: Option<Record>,
    rx: channel::Receiver<Option<TraceJob>>,
) {
    let mut task = match JobTask::begin(&ctx, job, sight, record, rx).await {
        Ok(Some(task)) => task,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "job could not be started");
            return;
        }
    };
    if task.drive().await == Driven::Exited {
        task.finish().await;
    }
}

/// How following a job's lifecycle ended.
#[derive(Debug, PartialEq, Eq)]
enum Driven {
    /// bpftrace exited: collect its output.
    Exited,
    /// The agent is shutting down: leave bpftrace running for the next agent.
    AgentExiting,
}

struct JobTask<'a> {
    ctx: &'a Ctx,
    /// The latest TraceJob; writes merge over its status.
    job: TraceJob,
    deleted: bool,
    rx: channel::Receiver<Option<TraceJob>>,
    record: Record,
    process: Process,
    exit: tokio::task::JoinHandle<Exit>,
    started: Instant,
    /// Why SIGINT was sent, if it was.
    stop_reason: Option<StopReason>,
    /// SIGKILL was sent after the grace period.
    killed: bool,
    /// When the stop was seen, for the collect latency.
    stop_seen: Option<Instant>,
    /// Counted in the running-traces gauge.
    counted_running: bool,
    /// When live output was last mirrored, and the output's size then.
    last_live: Option<Instant>,
    live_size: u64,
}

impl<'a> JobTask<'a> {
    async fn begin(
        ctx: &'a Ctx,
        job: TraceJob,
        sight: FirstSight,
        record: Option<Record>,
        rx: channel::Receiver<Option<TraceJob>>,
    ) -> Result<Option<JobTask<'a>>, Error> {
        let (job, record, running, process) = match (sight, record) {
            (FirstSight::Start, _) => {
                let run_id = uuid::Uuid::new_v4().to_string();
                let job = match persist("claiming the TraceJob", || ctx.writer.claim(&job, &run_id))
                    .await
                {
                    Ok(job) => job,
                    Err(e) => {
                        // Changed since it was read (the next event re-decides) or gone.
                        info!(error = %e, "not claimed");
                        return Ok(None);
                    }
                };
                tracing::Span::current().record("id", run_id.as_str());
                let mut record = Record {
                    namespace: job.namespace().unwrap_or_default(),
                    name: job.name_any(),
                    uid: job.uid().unwrap_or_default(),
                    run_id: run_id.clone(),
                    process: None,
                    probes: None,
                    interrupted: false,
                };
                let files = ctx.state.create(&record, &job.spec.program)?;
                if job.spec.stop {
                    info!("spec.stop was set before the trace started; not running bpftrace");
                    let running = Running::adopt(Identity {
                        pid: 0,
                        start_ticks: 0,
                    });
                    let exited = Process::Exited(Exit::NotStarted);
                    return Ok(Some(JobTask::new(ctx, job, rx, record, running, exited)));
                }
                match bpftrace::spawn(&ctx.bpftrace, &files, &job.spec.args) {
                    Ok(running) => {
                        record.process = Some(running.identity);
                        ctx.state.save(&record)?;
                        info!(pid = running.identity.pid, "bpftrace started");
                        if let Some(root) = &ctx.host_cgroup_root {
                            if let Err(e) = cgroup::move_to_traces(root, running.identity.pid) {
                                warn!(error = %e, "bpftrace stays in the agent's cgroup: it will end if the agent's container stops");
                            }
                        }
                        (
                            job,
                            record,
                            running,
                            Process::Starting {
                                since: Instant::now(),
                            },
                        )
                    }
                    Err(e) => {
                        warn!(error = %e, "bpftrace could not be started");
                        fail_without_run(ctx, &job, "StartFailed", e.to_string()).await;
                        let _ = ctx.state.remove(&run_id);
                        return Ok(None);
                    }
                }
            }
            (FirstSight::Adopt, Some(record)) => {
                tracing::Span::current().record("id", record.run_id.as_str());
                let Some(identity) = record.process.filter(|p| p.is_alive()) else {
                    // Started but gone while no agent watched: collect what it left.
                    let running = Running::adopt(Identity {
                        pid: 0,
                        start_ticks: 0,
                    });
                    return Ok(Some(JobTask::new(
                        ctx,
                        job,
                        rx,
                        record,
                        running,
                        Process::Exited(Exit::Unwatched),
                    )));
                };
                info!(
                    pid = identity.pid,
                    "taking over a trace started by an earlier agent"
                );
                let process = if record.interrupted {
                    Process::Interrupted {
                        at: Instant::now(),
                        signalled: Instant::now(),
                        reason: StopReason::Requested,
                    }
                } else if record.probes.is_some() {
                    Process::Tracing {
                        since: tracing_since(&job),
                    }
                } else {
                    Process::Starting {
                        since: Instant::now(),
                    }
                };
                (job, record.clone(), Running::adopt(identity), process)
            }
            _ => {
                let message = "this node's agent has no record of the run (its state directory was lost); it cannot be resumed";
                warn!(message);
                fail_without_run(ctx, &job, "RunLost", message.to_string()).await;
                return Ok(None);
            }
        };
        Ok(Some(JobTask::new(ctx, job, rx, record, running, process)))
    }

    fn new(
        ctx: &'a Ctx,
        job: TraceJob,
        rx: channel::Receiver<Option<TraceJob>>,
        record: Record,
        mut running: Running,
        process: Process,
    ) -> JobTask<'a> {
        let exit = match process {
            Process::Exited(e) => tokio::spawn(async move { e }),
            _ => tokio::spawn(async move { running.wait().await }),
        };
        let stop_reason = match process {
            Process::Interrupted { reason, .. } => Some(reason),
            _ => None,
        };
        let counted_running = !matches!(process, Process::Exited(_));
        if counted_running {
            ctx.metrics.running.inc();
        }
        JobTask {
            ctx,
            job,
            deleted: false,
            rx,
            record,
            process,
            exit,
            started: Instant::now(),
            stop_reason,
            killed: false,
            stop_seen: stop_reason.map(|_| Instant::now()),
            counted_running,
            last_live: None,
            live_size: 0,
        }
    }

    fn identity(&self) -> Option<Identity> {
        self.record.process
    }

    fn wanted(&self) -> Wanted {
        let output = std::fs::metadata(self.files().stdout)
            .map(|m| m.len())
            .unwrap_or(0);
        Wanted {
            deleted: self.deleted,
            output_full: output > self.ctx.max_output_bytes,
            agent_removed: *self.ctx.removed.borrow(),
            ..Wanted::of(&self.job)
        }
    }

    /// Follows the lifecycle until bpftrace has exited.
    async fn drive(&mut self) -> Driven {
        loop {
            // An exit that happened while a write was being retried is seen before deciding.
            if !matches!(self.process, Process::Exited(_)) {
                if let Some(exit) = (&mut self.exit).now_or_never() {
                    self.process = Process::Exited(exit.unwrap_or(Exit::NotOurChild));
                }
            }
            if let Process::Starting { .. } = self.process {
                self.check_attached().await;
            }
            if let Process::Tracing { .. } = self.process {
                self.mirror_live_output().await;
            }
            let now = Instant::now();
            match lifecycle::next(self.wanted(), self.process, now) {
                Step::Collect => return Driven::Exited,
                Step::Interrupt(reason) => self.interrupt(reason).await,
                Step::Reinterrupt => {
                    if let Process::Interrupted { at, reason, .. } = self.process {
                        warn!(
                            after = ?at.elapsed(),
                            "bpftrace has not ended since SIGINT; sending SIGINT again"
                        );
                        if let Some(p) = self.identity() {
                            p.signal(Signal::SIGINT);
                        }
                        self.process = Process::Interrupted {
                            at,
                            signalled: Instant::now(),
                            reason,
                        };
                    }
                }
                Step::Kill => {
                    warn!("bpftrace did not exit within the grace period; killing it");
                    if let Some(p) = self.identity() {
                        p.signal(Signal::SIGKILL);
                    }
                    self.killed = true;
                    self.process = Process::Killed {
                        reason: self.stop_reason.unwrap_or(StopReason::Requested),
                    };
                }
                Step::Wait(until) => {
                    // While starting, look for the attach line often; otherwise sleep until due.
                    let nap = match (self.process, until) {
                        (Process::Starting { .. }, _) => Duration::from_millis(25),
                        // Wake at least every second to check the output's size.
                        (_, Some(t)) => {
                            t.saturating_duration_since(now).min(Duration::from_secs(1))
                        }
                        (_, None) => Duration::from_secs(1),
                    };
                    tokio::select! {
                        exit = &mut self.exit => {
                            self.process = Process::Exited(exit.unwrap_or(Exit::NotOurChild));
                        }
                        changed = self.rx.changed(), if !self.deleted => {
                            // A closed channel is the dispatcher going away: the agent is exiting,
                            // not the TraceJob being deleted. Leave the trace to the next agent.
                            if changed.is_err() {
                                return Driven::AgentExiting;
                            }
                            match self.rx.borrow_and_update().clone() {
                                Some(job) => self.job = job,
                                None => self.deleted = true,
                            }
                        }
                        _ = tokio::time::sleep(nap) => {}
                    }
                }
            }
        }
    }

    /// Copies what bpftrace has printed so far into the output ConfigMap, at most every
    /// `live_interval`, only when it grew, and only once it printed more than its attach line.
    /// Best effort: a failed write is tried again at the next interval.
    async fn mirror_live_output(&mut self) {
        let Some(interval) = self.ctx.live_interval else {
            return;
        };
        if self.last_live.is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        let path = self.files().stdout;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let past_attach =
            bpftrace::attach_line(&bpftrace::head(&path, 4096)).map_or(0, |l| l.end as u64);
        if size <= past_attach || size == self.live_size || self.deleted {
            return;
        }
        self.last_live = Some(Instant::now());
        let stdout =
            String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
        let maps = self.parse(&stdout);
        match self
            .ctx
            .writer
            .output(&self.job, &self.record.run_id, &stdout, &maps)
            .await
        {
            Ok((output_ref, _)) => {
                self.live_size = size;
                let known = self.job.status.as_ref().and_then(|s| s.output_ref.as_ref());
                if known != Some(&output_ref) {
                    let status = TraceJobStatus {
                        output_ref: Some(output_ref),
                        ..self.current_status()
                    };
                    self.write_status(status, "ProbesAttached").await;
                }
            }
            Err(e) => warn!(error = %e, "live output not written; trying again later"),
        }
    }

    /// Reports Running once bpftrace has printed its attach line and reached its event loop.
    async fn check_attached(&mut self) {
        let Some(p) = self.identity() else { return };
        let files = self.files();
        let stdout_len = std::fs::metadata(&files.stdout)
            .map(|m| m.len())
            .unwrap_or(0);
        // Up to 0.23 the attach line is on stdout; 0.27 prints it on stderr.
        let (line, printed_after) =
            match bpftrace::attach_line(&bpftrace::head(&files.stdout, 4096)) {
                Some(line) => (line, stdout_len > line.end as u64),
                None => match bpftrace::attach_line(&bpftrace::head(&files.stderr, 16384)) {
                    Some(line) => (line, stdout_len > 0),
                    None => return,
                },
            };
        // Tracing: bpftrace said so (0.27+), or it is waiting for events, or a probe has already
        // printed something (a busy bpftrace may never sit idle in its event loop).
        if !(line.done || printed_after || bpftrace::is_polling(p.pid)) {
            return;
        }
        let probes = line.probes;
        self.ctx.metrics.started.inc();
        Metrics::observe(&self.ctx.metrics.start_latency, self.started.elapsed());
        self.process = Process::Tracing {
            since: Instant::now(),
        };
        self.record.probes = Some(probes);
        if let Err(e) = self.ctx.state.save(&self.record) {
            warn!(error = %e, "could not save the job record");
        }
        info!(probes, latency = ?self.started.elapsed(), "probes attached; tracing");
        if self.deleted {
            return;
        }
        let status = TraceJobStatus {
            phase: Some(Phase::Running),
            pid: Some(p.pid.into()),
            probes: Some(probes.into()),
            start_time: Some(report::now()),
            message: Some(format!("tracing with {probes} probes")),
            ..self.current_status()
        };
        self.write_status(status, "ProbesAttached").await;
        self.ctx
            .writer
            .event(
                &self.job,
                false,
                "Started",
                format!("bpftrace attached {probes} probes (pid {})", p.pid),
            )
            .await;
    }

    async fn interrupt(&mut self, reason: StopReason) {
        info!(reason = reason.describe(), "stopping: sending SIGINT");
        if let Some(p) = self.identity() {
            p.signal(Signal::SIGINT);
        }
        self.process = Process::Interrupted {
            at: Instant::now(),
            signalled: Instant::now(),
            reason,
        };
        self.stop_reason = Some(reason);
        self.stop_seen = Some(Instant::now());
        self.record.interrupted = true;
        if let Err(e) = self.ctx.state.save(&self.record) {
            warn!(error = %e, "could not save the job record");
        }
        if self.deleted {
            return;
        }
        let status = TraceJobStatus {
            phase: Some(Phase::Stopping),
            message: Some(format!(
                "stopping: {}; waiting for bpftrace to print its maps",
                reason.describe()
            )),
            ..self.current_status()
        };
        self.write_status(status, "Stopping").await;
        self.ctx
            .writer
            .event(
                &self.job,
                false,
                "Stopping",
                format!("sent SIGINT: {}", reason.describe()),
            )
            .await;
    }

    /// Collects the output and reports the outcome, then cleans the run's files.
    async fn finish(mut self) {
        let exit = match self.process {
            Process::Exited(e) => e,
            _ => Exit::NotOurChild,
        };
        let files = self.files();
        let stdout = std::fs::read_to_string(&files.stdout).unwrap_or_default();
        let stderr = std::fs::read_to_string(&files.stderr).unwrap_or_default();
        let (phase, exit_code, message) = lifecycle::outcome(
            exit,
            self.stop_reason,
            self.killed,
            &bpftrace::error_text(&stderr),
        );
        info!(%phase, ?exit, "bpftrace exited");
        if !self.deleted {
            self.report_outcome(exit, phase, exit_code, message, &stdout)
                .await;
        }
        if self.counted_running {
            self.ctx.metrics.running.dec();
        }
        if let Err(e) = self.ctx.state.remove(&self.record.run_id) {
            warn!(error = %e, "could not remove the run's files");
        }
    }

    async fn report_outcome(
        &mut self,
        exit: Exit,
        mut phase: Phase,
        exit_code: Option<i64>,
        mut message: String,
        stdout: &str,
    ) {
        let maps = self.parse(stdout);
        let (ctx, job, run_id) = (self.ctx, self.job.clone(), self.record.run_id.clone());
        let mut conditions = self.current_status().conditions;
        let output_ref = match persist("writing the output ConfigMap", || {
            ctx.writer.output(&job, &run_id, stdout, &maps)
        })
        .await
        {
            Ok((r, stored)) => {
                if let Some(seen) = self.stop_seen {
                    Metrics::observe(&self.ctx.metrics.collect_latency, seen.elapsed());
                }
                if stored != Stored::Plain {
                    let (_, note) = stored.describe(&r.name);
                    message = format!("{message}; {note}");
                }
                conditions.retain(|c| c.type_ != "OutputStored");
                conditions.push(report::output_condition(&stored, &r.name, &job));
                Some(r)
            }
            Err(e) => {
                phase = Phase::Failed;
                message = format!("{message}; the output could not be stored: {e}");
                None
            }
        };
        let status = TraceJobStatus {
            phase: Some(phase),
            exit_code,
            completion_time: Some(report::now()),
            message: Some(message.clone()),
            output_ref: output_ref.clone(),
            conditions,
            ..self.current_status()
        };
        let reason = match (phase, &output_ref, exit) {
            (Phase::Completed, _, _) => "Collected",
            (_, None, _) => "OutputNotStored",
            _ if self.killed => "GracePeriodExceeded",
            (_, _, Exit::Unwatched) => "EndedUnwatched",
            (_, _, Exit::Signal(_)) => "KilledBySignal",
            _ => "BpftraceFailed",
        };
        if phase == Phase::Completed {
            self.ctx.metrics.completed.inc();
        } else {
            self.ctx.metrics.failed(reason);
        }
        self.write_status(status, reason).await;
        let (warning, event, note) = match (phase, output_ref) {
            (Phase::Completed, Some(r)) => (
                false,
                "Completed",
                format!("{} bytes of output in ConfigMap {}", stdout.len(), r.name),
            ),
            _ => (true, "Failed", message),
        };
        self.ctx.writer.event(&self.job, warning, event, note).await;
    }

    /// The maps in bpftrace's output, labelled with the release that printed them.
    fn parse(&self, stdout: &str) -> output::Maps {
        output::Maps {
            bpftrace: Some(self.ctx.bpftrace_version.clone()),
            ..output::parse(stdout)
        }
    }

    fn files(&self) -> bpftrace::Files {
        self.ctx
            .state
            .files(&self.record.run_id)
            .unwrap_or_else(|_| bpftrace::Files::in_dir(self.ctx.state.root()))
    }

    fn current_status(&self) -> TraceJobStatus {
        let mut s = self.job.status.clone().unwrap_or_default();
        s.id = Some(self.record.run_id.clone());
        s
    }

    async fn write_status(&mut self, status: TraceJobStatus, reason: &str) {
        let (ctx, job) = (self.ctx, self.job.clone());
        match persist("writing status", || {
            ctx.writer.status(&job, status.clone(), reason)
        })
        .await
        {
            Ok(updated) => self.job = updated,
            Err(e) if e.is_not_found() => self.deleted = true,
            Err(e) => warn!(error = %e, "status not written"),
        }
    }
}
