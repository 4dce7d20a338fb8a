//! The agent: the watch of its node's TraceJobs feeds a dispatcher, which keeps one actor per
//! job (`job`) and tells each the newest version of its TraceJob.
//!
//! On SIGTERM the agent exits and leaves running traces running: each runs under its shim, in
//! its own process group (and, in a pod, its own host cgroup), writing to files in the state
//! directory, and the next agent on the node takes it over. Only when no agent will come back
//! (`handover`) does it stop them first.

pub mod config;
mod ctx;
pub mod job;
pub mod metrics;
#[cfg(test)]
mod tests;
pub mod trace_metrics;

pub use config::Config;
pub use ctx::{Ctx, Facts};
pub use metrics::Metrics;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::{Api, ResourceExt};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};

use crate::cluster::client;
use crate::cluster::handover::{self, Handover};
use crate::cluster::stores::Stores;
use crate::cluster::watch::{Source, Update};
use crate::host::bpftrace;
use crate::host::rundir::{self, StateDir};
use crate::host::shim::Started;
use crate::resource::{TraceJob, TraceJobNode};
use crate::serve;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] rundir::Error),
    #[error("invalid flags: {0}")]
    Config(#[from] config::Invalid),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot find the agent's own executable (it runs as each trace's shim): {0}")]
    Exe(std::io::Error),
    #[error("cannot handle SIGTERM: {0}")]
    Signal(std::io::Error),
    #[error("a task on a blocking thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot limit the traces' cgroup: {0}")]
    Cgroup(#[from] crate::host::cgroup::Error),
    #[error(transparent)]
    Stores(#[from] crate::cluster::stores::Error),
}

/// Runs until SIGTERM or SIGINT: the process around `serve` (the health and metrics endpoint,
/// the client, the signals).
pub async fn run(config: Config) -> Result<(), Error> {
    let exe = std::env::current_exe().map_err(Error::Exe)?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    serve::spawn_probes(
        config.listen,
        ready.clone(),
        "TraceJobs not listed yet\n",
        metrics.registry(),
    );
    let client = client::connect(metrics.traffic.clone()).await?;
    // Polled first once the agent serves: until then SIGTERM ends the process at once.
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(Error::Signal)?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    };
    serve(config, client, metrics, exe, ready, shutdown).await
}

/// One node's agent, until `shutdown` resolves: `run` in a process of its own, or one of many
/// in the benchmark's process (hollow nodes: each its own client, metrics and state directory).
/// `exe` is the `tracejob-agent` binary each trace's shim runs as; `ready` is set once the
/// TraceJobs are listed (/readyz).
pub async fn serve(
    config: Config,
    client: kube::Client,
    metrics: Arc<Metrics>,
    exe: PathBuf,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    config.validate()?;
    // Locked for this agent's life: a second agent on the directory ends here.
    let dir = config.state_dir.clone();
    let state = tokio::task::spawn_blocking(move || StateDir::open(&dir)).await??;
    if let Some(root) = config.host_cgroup_root.clone() {
        limit_traces(root, &config).await?;
    }
    let command = config.bpftrace.clone();
    let version = tokio::task::spawn_blocking(move || bpftrace::version(&command))
        .await?
        .unwrap_or_else(|| "unknown".into());
    info!(node = %config.node_name, bpftrace = %config.bpftrace.display(), %version, "tracejob-agent starting");
    metrics
        .bpftrace
        .get_or_create(&metrics::Version {
            version: version.clone(),
        })
        .set(1);
    let (removed_tx, removed) = watch::channel(false);
    let pod = config.pod();
    let node = config.node_name.clone();
    // Watched from the start, and listed before any TraceJob is decided.
    let stores = Stores::start(&client, &node, metrics.traffic.clone());
    let trace_metrics = Arc::new(trace_metrics::Registry::default());
    trace_metrics::spawn(config.trace_metrics_listen, trace_metrics.clone());
    let ctx = Arc::new(Ctx::new(
        config,
        client.clone(),
        metrics.clone(),
        Facts {
            bpftrace_version: version,
            state,
            exe,
            stores,
            removed,
            trace_metrics,
        },
    ));
    // This node's parts of TraceJobs on several nodes, listed before any TraceJob is looked at:
    // a part is how a restarted agent knows it already runs one. Listed once; from then on the
    // agent's own writes keep them (see cluster::parts).
    let parts = ctx.writer.parts().clone();
    let parts_api: Api<TraceJobNode> = Api::all(client.clone());
    let mut delays = crate::cluster::writer::backoff();
    loop {
        match parts.load(&parts_api, &node).await {
            Ok(_) => break,
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                warn!(error = %e, retry_in = ?delay, "listing this node's TraceJobNodes failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
    // Awaited a while, not forever: a watch the agent may not make (its RBAC) must not hide
    // every TraceJob. Those that need the missing facts wait, saying so in their status
    // (NodeUnknown, NamespaceUnknown), and fail after --wait-timeout.
    match tokio::time::timeout(STORES_LISTED_WITHIN, ctx.stores.ready()).await {
        Ok(listed) => listed?,
        Err(_) => warn!(
            within = ?STORES_LISTED_WITHIN,
            "the watches of this node's Node, the Namespaces or this node's pods have not listed yet (see the 'watching failed' lines: the agent's RBAC?); going on without them"
        ),
    }
    // The runs an earlier agent left, read before any actor of this one writes a record: only
    // those can be orphans (a run this agent starts before both watches have listed is not).
    let left = {
        let state = ctx.state.clone();
        tokio::task::spawn_blocking(move || state.records())
            .await
            .unwrap_or_default()
    };
    let updates =
        crate::cluster::watch::updates(Api::all(client.clone()), &node, metrics.traffic.clone());
    tokio::pin!(updates);

    let mut dispatcher = Dispatcher {
        ctx,
        ready,
        parts,
        jobs: HashMap::new(),
        finished: HashMap::new(),
        synced: HashMap::new(),
        left,
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(update) = updates.next() => dispatcher.handle(update, &done_tx),
            Some(uid) = done_rx.recv() => dispatcher.done(uid),
            stop = &mut shutdown => {
                stop?;
                break;
            }
        }
    }
    match handover::check(client, pod.as_ref()).await {
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
            // The actors stop and collect; if the pod's grace period ends first, each bpftrace
            // has had its SIGINT and still ends on its own.
            while !dispatcher.jobs.is_empty() {
                match done_rx.recv().await {
                    Some(uid) => dispatcher.done(uid),
                    None => break,
                }
            }
        }
    }
    Ok(())
}

/// How long the agent waits for its stores' first lists before it looks at TraceJobs anyway.
const STORES_LISTED_WITHIN: Duration = Duration::from_secs(5);

/// Sets the memory and pid limits of the cgroup every trace runs in (off the async threads: it
/// writes to cgroupfs).
async fn limit_traces(root: PathBuf, config: &Config) -> Result<(), Error> {
    let limits = crate::host::cgroup::Limits {
        memory_bytes: config.traces_memory_max,
        pids: config.traces_pids_max,
    };
    let written =
        tokio::task::spawn_blocking(move || crate::host::cgroup::limit_traces(&root, limits))
            .await??;
    if written.iter().any(|p| p.ends_with("pids.max"))
        && written.iter().any(|p| !p.ends_with("pids.max"))
    {
        info!(?written, ?limits, "the traces' cgroup is limited");
    } else {
        warn!(?written, ?limits, "this host lacks a memory or pids cgroup controller: the traces' cgroup is not fully limited");
    }
    Ok(())
}

struct Dispatcher {
    ctx: Arc<Ctx>,
    /// Set once the first list of TraceJobs is complete (/readyz).
    ready: Arc<AtomicBool>,
    /// Live job actors by TraceJob UID, with the watch they came from; `None` sent to one means
    /// the TraceJob was deleted, and a closed channel that the agent is exiting.
    jobs: HashMap<String, (Source, watch::Sender<Option<TraceJob>>)>,
    /// This node's parts of TraceJobs on several nodes (`TraceJobNode`), as listed at the
    /// start and written since.
    parts: Arc<crate::cluster::parts::Parts>,
    /// Jobs whose actor ended, with the watch they came from, so a stale event never starts or
    /// fails them again.
    finished: HashMap<String, Source>,
    /// The watches that have listed TraceJobs at least once, and every UID they listed then.
    synced: HashMap<Source, HashSet<String>>,
    /// The runs on disk at the agent's start, until both watches have listed once.
    left: Vec<rundir::Record>,
}

impl Dispatcher {
    fn handle(&mut self, update: Update, done: &mpsc::UnboundedSender<String>) {
        match update {
            Update::Seen(job) => {
                let uid = job.uid().unwrap_or_default();
                // A TraceJob on several nodes: this node's part is its status here.
                let part = self.part_of(&uid);
                let late = !crate::decide::job::joins(&job, part.is_some());
                let job = job.view_with(part.as_deref());
                if let Some((_, tx)) = self.jobs.get(&uid) {
                    let _ = tx.send(Some(job));
                    return;
                }
                if self.finished.contains_key(&uid) {
                    return;
                }
                let source = match job.spec.node_name {
                    Some(_) => Source::Node,
                    None => Source::Unassigned,
                };
                if late {
                    // Stopped or over before this node joined: it does not.
                    self.finished.insert(uid, source);
                    return;
                }
                let (tx, rx) = watch::channel(Some(job.clone()));
                self.jobs.insert(uid.clone(), (source, tx));
                let span = tracing::info_span!("job", namespace = %job.namespace().unwrap_or_default(), name = %job.name_any(), id = tracing::field::Empty);
                if let Some(id) = job.run_id() {
                    span.record("id", id);
                }
                let ctx = self.ctx.clone();
                let done = done.clone();
                tokio::spawn(
                    async move {
                        job::run(ctx, job, rx).await;
                        let _ = done.send(uid);
                    }
                    .instrument(span),
                );
            }
            Update::Deleted(job) => {
                let uid = job.uid().unwrap_or_default();
                if let Some((_, tx)) = self.jobs.get(&uid) {
                    let _ = tx.send(None);
                }
                self.finished.remove(&uid);
                self.parts.forget(&uid);
            }
            Update::Synced(source, existing) => {
                for (uid, (from, tx)) in &self.jobs {
                    if *from == source && !existing.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                // An ended job is forgotten once its own watch lists without it (deleted); the
                // other watch's list says nothing of it.
                self.finished.retain(|uid, from| {
                    let keep = *from != source || existing.contains(uid);
                    if !keep {
                        self.parts.forget(uid);
                    }
                    keep
                });
                let first = self.synced.insert(source, existing).is_none();
                let all: HashSet<String> = self.synced.values().flatten().cloned().collect();
                // Ready, and runs without a TraceJob ended, once both watches have listed.
                if first && self.synced.len() == 2 {
                    self.ready.store(true, Ordering::Relaxed);
                    self.end_orphans(&all);
                }
            }
        }
    }

    /// This node's part of the TraceJob with this UID, if it has one.
    fn part_of(&self, uid: &str) -> Option<Arc<TraceJobNode>> {
        self.parts.get(uid)
    }

    fn done(&mut self, uid: String) {
        if let Some((source, _)) = self.jobs.remove(&uid) {
            self.finished.insert(uid, source);
        }
    }

    /// Runs left by an earlier agent whose TraceJob was deleted while no agent ran: end them
    /// (their files are removed on blocking threads).
    fn end_orphans(&mut self, existing: &HashSet<String>) {
        for record in std::mem::take(&mut self.left) {
            let live = self.jobs.contains_key(&record.uid);
            if crate::decide::job::is_orphan(&record.uid, existing, live) {
                tokio::spawn(end_orphan(self.ctx.state.clone(), record));
            }
        }
    }
}

/// Ends one orphaned run: its bpftrace gets a short chance to end cleanly (nobody wants its
/// output: its ConfigMap went with the TraceJob), then SIGKILL; its files go once its shim ended.
async fn end_orphan(state: StateDir, record: crate::host::rundir::Record) {
    let run = record.run_id.clone();
    let look = state.clone();
    let started = tokio::task::spawn_blocking(move || {
        look.files(&run)
            .ok()
            .and_then(|f| rundir::read_json::<Started>(&f.started))
            .map(|s| s.bpftrace)
            .filter(|p| p.is_alive())
    })
    .await
    .ok()
    .flatten();
    if let Some(p) = started {
        info!(namespace = %record.namespace, name = %record.name, id = %record.run_id, "TraceJob was deleted while no agent ran; ending its bpftrace");
        p.signal(Signal::SIGINT);
        if tokio::time::timeout(Duration::from_secs(5), p.exited())
            .await
            .is_err()
        {
            p.signal(Signal::SIGKILL);
        }
    }
    // Its shim ends with bpftrace.
    if let Some(shim) = record.shim {
        shim.exited().await;
    }
    let id = record.run_id.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || state.remove(&id)).await {
        warn!(error = %e, id = %record.run_id, "could not remove an orphaned run's files");
    }
}
