//! The agent: the watch of its node's TraceJobs feeds a dispatcher, which keeps one actor per
//! job (`job`) and tells each the newest version of its TraceJob.
//!
//! On SIGTERM the agent exits and leaves running traces running: each runs under its shim, in
//! its own process group (and, in a pod, its own host cgroup), writing to files in the state
//! directory, and the next agent on the node takes it over. Only when no agent will come back
//! (`handover`) does it stop them first.

pub mod job;
pub mod server;
pub mod summary;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::{Api, ResourceExt};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{info, warn, Instrument};

use crate::cluster::client;
use crate::cluster::handover::{self, Handover};
use crate::cluster::watch::{Source, Update};
use crate::cluster::writer::Writer;
use crate::config::Config;
use crate::decide::budget::Budget;
use crate::host::bpftrace;
use crate::host::rundir::{self, StateDir};
use crate::host::shim::Started;
use crate::metrics::Metrics;
use crate::resource::TraceJob;
use server::Health;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] rundir::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot find the agent's own executable (it runs as each trace's shim): {0}")]
    Exe(std::io::Error),
    #[error("cannot handle SIGTERM: {0}")]
    Signal(std::io::Error),
}

/// What every job actor shares.
pub struct Ctx {
    pub config: Config,
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
    /// `bpftrace --version`, recorded in maps.json.
    pub bpftrace_version: String,
    pub state: StateDir,
    pub writer: Writer,
    /// This binary, which runs as each trace's shim.
    pub exe: PathBuf,
    /// Collections (read, parse, compress) running at once, at most.
    pub collections: Semaphore,
    /// The node's live-output budget, shared by its jobs.
    pub live_budget: Mutex<Budget>,
    /// Becomes true when the agent exits and no agent will take the traces over.
    pub removed: watch::Receiver<bool>,
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    let state = StateDir::open(&config.state_dir)?;
    let exe = std::env::current_exe().map_err(Error::Exe)?;
    let version = bpftrace::version(&config.bpftrace).unwrap_or_else(|| "unknown".into());
    info!(node = %config.node_name, bpftrace = %config.bpftrace.display(), %version, "tracejob-agent starting");
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
    let client = client::connect(metrics.clone()).await?;
    let (removed_tx, removed) = watch::channel(false);
    let pod = config.pod();
    let node = config.node_name.clone();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        metrics: metrics.clone(),
        bpftrace_version: version,
        writer: Writer::new(client.clone(), &node),
        exe,
        collections: Semaphore::new(usize::from(config.max_concurrent_collections)),
        live_budget: Mutex::new(Budget::new(
            config.live_budget_bytes_per_minute,
            Instant::now(),
        )),
        state,
        removed,
        config,
    });
    let updates = crate::cluster::watch::updates(Api::all(client.clone()), &node, metrics);
    tokio::pin!(updates);

    let mut dispatcher = Dispatcher {
        ctx,
        ready,
        jobs: HashMap::new(),
        summaries: HashMap::new(),
        finished: HashSet::new(),
        synced: HashMap::new(),
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    loop {
        tokio::select! {
            Some(update) = updates.next() => dispatcher.handle(update, &done_tx),
            Some(uid) = done_rx.recv() => dispatcher.done(uid),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
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

struct Dispatcher {
    ctx: Arc<Ctx>,
    /// Set once the first list of TraceJobs is complete (/readyz).
    ready: Arc<AtomicBool>,
    /// Live job actors by TraceJob UID, with the watch they came from; `None` sent to one means
    /// the TraceJob was deleted, and a closed channel that the agent is exiting.
    jobs: HashMap<String, (Source, watch::Sender<Option<TraceJob>>)>,
    /// The summary keepers of the TraceJobs on several nodes that this node takes part in, by
    /// UID (`summary`).
    summaries: HashMap<String, watch::Sender<Option<TraceJob>>>,
    /// Jobs whose actor ended, so a stale event never starts or fails them again.
    finished: HashSet<String>,
    /// The watches that have listed TraceJobs at least once, and every UID they listed then.
    synced: HashMap<Source, HashSet<String>>,
}

impl Dispatcher {
    fn handle(&mut self, update: Update, done: &mpsc::UnboundedSender<String>) {
        match update {
            Update::Seen(job) => {
                let uid = job.uid().unwrap_or_default();
                // A TraceJob on several nodes: this node's entry is its status here.
                let node = self.ctx.writer.node().to_string();
                let late = job.spec.node_selector.is_some()
                    && !job
                        .status
                        .as_ref()
                        .is_some_and(|s| s.nodes.iter().any(|n| n.node == node))
                    && (job.spec.stop || job.phase().is_some_and(|p| p.is_final()));
                if job.spec.node_selector.is_some() {
                    self.summarise(&uid, &job);
                }
                let job = job.view_for(&node);
                if let Some((_, tx)) = self.jobs.get(&uid) {
                    let _ = tx.send(Some(job));
                    return;
                }
                if self.finished.contains(&uid) {
                    return;
                }
                if late {
                    // Stopped or over before this node joined: it does not.
                    self.finished.insert(uid);
                    return;
                }
                let source = match job.spec.node_name {
                    Some(_) => Source::Node,
                    None => Source::Unassigned,
                };
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
                if let Some(tx) = self.summaries.remove(&uid) {
                    let _ = tx.send(None);
                }
                if let Some((_, tx)) = self.jobs.get(&uid) {
                    let _ = tx.send(None);
                }
                self.finished.remove(&uid);
            }
            Update::Synced(source, existing) => {
                for (uid, (from, tx)) in &self.jobs {
                    if *from == source && !existing.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                if source == Source::Unassigned {
                    self.summaries.retain(|uid, tx| {
                        let keep = existing.contains(uid);
                        if !keep {
                            let _ = tx.send(None);
                        }
                        keep
                    });
                }
                let first = self.synced.insert(source, existing).is_none();
                let all: HashSet<String> = self.synced.values().flatten().cloned().collect();
                self.finished.retain(|uid| all.contains(uid));
                // Ready, and runs without a TraceJob ended, once both watches have listed.
                if first && self.synced.len() == 2 {
                    self.ready.store(true, Ordering::Relaxed);
                    self.end_orphans(&all);
                }
            }
        }
    }

    /// Hands a TraceJob on several nodes to its summary keeper, started once this node has an
    /// entry in it.
    fn summarise(&mut self, uid: &str, job: &TraceJob) {
        if let Some(tx) = self.summaries.get(uid) {
            let _ = tx.send(Some(job.clone()));
            return;
        }
        let node = self.ctx.writer.node();
        let ours = job
            .status
            .as_ref()
            .is_some_and(|s| s.nodes.iter().any(|n| n.node == node));
        if ours {
            let (tx, rx) = watch::channel(Some(job.clone()));
            summary::keep(self.ctx.writer.clone(), job, rx);
            self.summaries.insert(uid.to_string(), tx);
        }
    }

    fn done(&mut self, uid: String) {
        self.jobs.remove(&uid);
        self.finished.insert(uid);
    }

    /// Runs left by an earlier agent whose TraceJob was deleted while no agent ran: end them.
    fn end_orphans(&self, existing: &HashSet<String>) {
        for record in self.ctx.state.records() {
            if existing.contains(&record.uid) {
                continue;
            }
            let state = self.ctx.state.clone();
            tokio::spawn(async move {
                let started = state
                    .files(&record.run_id)
                    .ok()
                    .and_then(|f| rundir::read_json::<Started>(&f.started));
                if let Some(p) = started.map(|s| s.bpftrace).filter(|p| p.is_alive()) {
                    info!(namespace = %record.namespace, name = %record.name, id = %record.run_id, "TraceJob was deleted while no agent ran; ending its bpftrace");
                    // Nobody wants its output (its ConfigMap went with the TraceJob): a short
                    // chance to end cleanly, then SIGKILL.
                    p.signal(Signal::SIGINT);
                    let until = Instant::now() + Duration::from_secs(5);
                    while p.is_alive() && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    p.signal(Signal::SIGKILL);
                }
                // Its shim ends with bpftrace; the files go once it has.
                if let Some(shim) = record.shim {
                    while shim.is_alive() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let _ = state.remove(&record.run_id);
            });
        }
    }
}
