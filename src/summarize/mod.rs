//! The summarizer: one small component (a Deployment, one active replica through a Lease) that
//! keeps the status of every TraceJob on several nodes. Each node's agent writes only its own
//! part (`TraceJobNode`); the summarizer watches the TraceJobs and the parts and writes each
//! fan-out TraceJob's summary (at most once per `DEBOUNCE`) and, once every node has ended, its
//! merged output. It also ends unassigned pod-target TraceJobs that no node can take (the pod
//! does not exist, or is never scheduled): agents only see their own node's pods, so none of
//! them can tell.
//!
//! Flow: watch (reflectors of TraceJobs and TraceJobNodes) -> decide (`decide::status`) ->
//! write (`write`), each TraceJob's writes one at a time and never holding up the watch.

pub mod lease;
pub mod metrics;
pub mod valid;
pub mod write;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cluster::client;
use crate::decide::status;
use crate::resource::vocabulary::Reason;
use crate::resource::{TraceJob, TraceJobNode};
use crate::serve;
use metrics::Metrics;

/// At most one summary write per TraceJob in this time: a burst of node writes costs a few
/// summary writes, not one per node.
pub const DEBOUNCE: Duration = Duration::from_secs(2);
/// The longest wait between two summary writes of a large fan-out while its phase stays.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(15);

/// How long after its last summary write a fan-out of `nodes` nodes is written again while its
/// phase stays the same: 10 ms a node, between `DEBOUNCE` and `DEBOUNCE_MAX`. Every agent receives
/// every version of the TraceJob (its spec.stop is what they watch for), so a rollout that takes
/// longer on a larger fan-out must not write more versions: progress is written a few times per
/// rollout whatever its size, and a phase change at once.
pub fn debounce(nodes: usize) -> Duration {
    let per_node =
        Duration::from_millis(10).saturating_mul(u32::try_from(nodes).unwrap_or(u32::MAX));
    per_node.clamp(DEBOUNCE, DEBOUNCE_MAX)
}
/// How long an unassigned pod-target TraceJob may stay unclaimed before the summarizer looks at
/// its pod (the pod's node usually claims it at once), and how often it looks again.
const UNCLAIMED_LOOK: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_fan_out_is_summarized_less_often_within_bounds() {
        assert_eq!(debounce(0), DEBOUNCE);
        assert_eq!(debounce(100), DEBOUNCE);
        assert_eq!(debounce(300), Duration::from_secs(3));
        assert_eq!(debounce(1000), Duration::from_secs(10));
        assert_eq!(debounce(100_000), DEBOUNCE_MAX);
        assert_eq!(debounce(usize::MAX), DEBOUNCE_MAX);
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// The namespace of the Lease that elects the one active summarizer (the Deployment sets
    /// POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tracejob-system")]
    pub lease_namespace: String,

    /// The Lease's name.
    #[arg(long, default_value = "tracejob-summarizer")]
    pub lease_name: String,

    /// This replica's name in the Lease (the Deployment sets POD_NAME); default: host name and
    /// a random suffix.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Summarize the TraceJobs of this namespace only (default: every namespace).
    #[arg(long)]
    pub namespace: Option<String>,

    /// Seconds an unassigned pod-target TraceJob's pod may take to be scheduled to a node before
    /// the TraceJob fails (the agents' --target-timeout).
    #[arg(long, default_value_t = 120)]
    pub target_timeout: u64,

    /// Bytes a node's output may expand to (from gzip) when it is merged, at most; a node
    /// beyond is left out of the merged output, which says so.
    #[arg(long, default_value_t = crate::output::read::DEFAULT_EXPANDED_LIMIT, value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_output_bytes: u64,

    /// Bytes the nodes' printed lines and merged maps may take, together, while a fan-out's
    /// outputs are merged (one node at a time); a node that would take the merge past it is left
    /// out of the merged output, which says which nodes it holds.
    #[arg(long, default_value_t = 128 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub merge_budget_bytes: u64,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:9470")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub logs: crate::serve::Logs,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs until SIGTERM or SIGINT: a candidate until it holds the Lease, then the summarizer until
/// it loses it.
pub async fn run(config: Config) -> Result<(), Error> {
    let identity = config.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}", host.trim(), &suffix[..8])
    });
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    serve::spawn_probes(
        config.listen,
        ready.clone(),
        "not started yet\n",
        metrics.registry(),
    );
    let client = client::connect(metrics.traffic.clone()).await?;
    let elector = lease::Elector::new(
        Api::<Lease>::namespaced(client.clone(), &config.lease_namespace),
        &config.lease_name,
        &identity,
    );
    info!(identity, lease = %config.lease_name, namespace = %config.lease_namespace, "tracejob summarizer starting");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Kube(kube::Error::Service(Box::new(e))))?;
    tokio::select! {
        () = elect_and_lead(&elector, &client, &config, &ready, &metrics) => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn elect_and_lead(
    elector: &lease::Elector,
    client: &Client,
    config: &Config,
    ready: &AtomicBool,
    metrics: &Arc<Metrics>,
) {
    loop {
        // A candidate: ready (it serves), waiting for the Lease.
        ready.store(true, Ordering::Relaxed);
        loop {
            match elector.round().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot read or take the Lease"),
            }
            tokio::time::sleep(lease::RETRY).await;
        }
        info!(
            identity = elector.identity(),
            "holding the Lease: summarizing"
        );
        metrics.leading.set(1);
        let mut last_renewed = Instant::now();
        let leading = lead(client.clone(), config.clone(), metrics.clone());
        tokio::pin!(leading);
        loop {
            tokio::select! {
                () = &mut leading => {}
                () = tokio::time::sleep(lease::RENEW) => {}
            }
            match elector.round().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    warn!("another summarizer holds the Lease now; standing by");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "cannot renew the Lease");
                    // Step down before the Lease runs out, so two never write at once.
                    if last_renewed.elapsed() >= lease::DURATION - lease::RETRY {
                        break;
                    }
                }
            }
        }
        metrics.leading.set(0);
    }
}

/// A TraceJob, by namespace and name.
type Key = ObjectRef<TraceJob>;

/// What the summarizer knows of the TraceJobs it writes for.
#[derive(Default)]
struct Book {
    /// TraceJobs to look at again.
    dirty: HashSet<Key>,
    /// When each TraceJob was last written (the debounce).
    written: HashMap<Key, Instant>,
    /// TraceJobs with a write under way.
    in_flight: HashSet<Key>,
    /// When each unclaimed pod-target TraceJob's pod may be looked at next.
    look_after: HashMap<Key, Instant>,
}

/// What the summarizer's writes share: the client, its counters, and its Events.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// `--max-output-bytes` and `--merge-budget-bytes`.
    pub max_output_bytes: u64,
    pub merge_budget_bytes: u64,
}

/// Summarizes until dropped (the Lease was lost).
async fn lead(client: Client, config: Config, metrics: Arc<Metrics>) {
    let reporter = Reporter {
        controller: write::MANAGER.into(),
        instance: config.identity.clone(),
    };
    let ctx = Ctx {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        metrics,
        max_output_bytes: config.max_output_bytes,
        merge_budget_bytes: config.merge_budget_bytes,
    };
    let (jobs_api, parts_api): (Api<TraceJob>, Api<TraceJobNode>) = match &config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (jobs, jobs_writer) = reflector::store();
    let (parts, parts_writer) = reflector::store();
    let job_events = reflector::reflector(
        jobs_writer,
        watcher::watcher(jobs_api, watcher::Config::default()).default_backoff(),
    );
    let part_events = reflector::reflector(
        parts_writer,
        watcher::watcher(parts_api, watcher::Config::default()).default_backoff(),
    );
    tokio::pin!(job_events, part_events);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Key, bool)>();
    let mut book = Book::default();
    let mut listed = (false, false);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            Some(event) = job_events.next() => match event {
                Ok(Event::Apply(tj) | Event::InitApply(tj) | Event::Delete(tj)) => {
                    book.dirty.insert(ObjectRef::from_obj(&tj));
                }
                Ok(Event::InitDone) => listed.0 = true,
                Ok(Event::Init) => {}
                Err(e) => warn!(error = %e, "watching TraceJobs failed; retrying"),
            },
            Some(event) = part_events.next() => match event {
                Ok(Event::Apply(p) | Event::InitApply(p) | Event::Delete(p)) => {
                    book.dirty.insert(owner_key(&p));
                }
                Ok(Event::InitDone) => listed.1 = true,
                Ok(Event::Init) => {}
                Err(e) => warn!(error = %e, "watching TraceJobNodes failed; retrying"),
            },
            Some((key, ok)) = done_rx.recv() => {
                book.in_flight.remove(&key);
                // Looked at again: the write may have failed, or the world moved meanwhile.
                if !ok || book.dirty.contains(&key) {
                    book.dirty.insert(key);
                }
            }
            _ = tick.tick() => {
                if listed == (true, true) {
                    step(&ctx, &config, &jobs, &parts, &mut book, &done_tx);
                }
            }
        }
    }
}

fn owner_key(part: &TraceJobNode) -> Key {
    let key = ObjectRef::new(&part.spec.trace_job);
    match part.namespace() {
        Some(ns) => key.within(&ns),
        None => key,
    }
}

/// Looks at every dirty TraceJob that may be written now, and starts the writes it needs.
fn step(
    ctx: &Ctx,
    config: &Config,
    jobs: &Store<TraceJob>,
    parts: &Store<TraceJobNode>,
    book: &mut Book,
    done: &mpsc::UnboundedSender<(Key, bool)>,
) {
    let now = Instant::now();
    let due: Vec<Key> = book
        .dirty
        .iter()
        .filter(|k| !book.in_flight.contains(*k))
        .filter(|k| book.written.get(*k).is_none_or(|t| now >= *t + DEBOUNCE))
        .filter(|k| book.look_after.get(*k).is_none_or(|t| now >= *t))
        .cloned()
        .collect();
    if due.is_empty() {
        return;
    }
    // The parts, by the TraceJob they name: one pass over the store per step. Which of them
    // count is decided per TraceJob (`status::sort_parts`).
    let all_parts = parts.state();
    let mut by_owner: HashMap<Key, Vec<&TraceJobNode>> = HashMap::new();
    for p in &all_parts {
        by_owner.entry(owner_key(p)).or_default().push(p);
    }
    for key in due {
        book.dirty.remove(&key);
        let Some(job) = jobs.get(&key) else {
            book.written.remove(&key);
            book.look_after.remove(&key);
            continue;
        };
        let work = if job.spec.node_selector.is_some() {
            let named = by_owner.get(&key).cloned().unwrap_or_default();
            let (mine, rejected) = status::sort_parts(&job, &named);
            let now_t = crate::cluster::writer::now();
            let want = status::summary(&job, &mine, now_t.clone());
            let want = status::parts_rejected(want, &rejected, &job, now_t);
            let merge = status::merge_due(&job, &mine);
            if !merge && status::summary_is_current(&job, &want) {
                continue;
            }
            let phase_changed = job.status.as_ref().and_then(|s| s.phase) != want.phase;
            let again_at = book.written.get(&key).map(|t| *t + debounce(mine.len()));
            if again_at.is_some_and(|at| !merge && !phase_changed && now < at) {
                // Progress only: looked at again each tick until a large fan-out's debounce
                // has passed (a phase change meanwhile is written at once).
                book.dirty.insert(key.clone());
                continue;
            }
            let mine: Vec<TraceJobNode> = mine.into_iter().cloned().collect();
            if !rejected.is_empty() {
                report_rejected(ctx, &job, Reason::InvalidParts.as_str(), &rejected);
            }
            let (ctx, job) = (ctx.clone(), (*job).clone());
            futures::future::Either::Left(async move {
                write::fan_out(&ctx, &job, &mine, want, merge).await
            })
        } else if status::unclaimed_target(&job) {
            // The pod's node usually claims it at once: look at its pod only when it did not.
            let waited = crate::decide::job::age_of(&job);
            if waited < UNCLAIMED_LOOK {
                book.dirty.insert(key.clone());
                book.look_after.insert(key, now + (UNCLAIMED_LOOK - waited));
                continue;
            }
            book.look_after.insert(key.clone(), now + UNCLAIMED_LOOK);
            let timeout = Duration::from_secs(config.target_timeout);
            let (client, job) = (ctx.client.clone(), (*job).clone());
            futures::future::Either::Right(
                async move { write::unclaimed(&client, &job, timeout).await },
            )
        } else {
            book.look_after.remove(&key);
            continue;
        };
        book.in_flight.insert(key.clone());
        book.written.insert(key.clone(), now);
        let done = done.clone();
        tokio::spawn(async move {
            let ok = match work.await {
                Ok(write::Outcome::Done) => true,
                // Not over yet (an unscheduled pod): looked at again later.
                Ok(write::Outcome::Again) => false,
                Err(e) => {
                    warn!(namespace = key.namespace.as_deref().unwrap_or_default(), name = %key.name, error = %e, "writing a TraceJob's status failed; trying again");
                    false
                }
            };
            let _ = done.send((key, ok));
        });
    }
}

/// Says that a fan-out's parts or node outputs were not counted or merged (`why` each): a
/// warning in the log, the count on /metrics (tracejob_summarizer_rejected, by reason), and a
/// Warning Event on the TraceJob (best effort, in the background).
pub fn report_rejected(ctx: &Ctx, job: &TraceJob, reason: &str, why: &[String]) {
    let said = status::named(why);
    warn!(namespace = job.namespace().unwrap_or_default(), name = %job.name_any(), reason, rejected = %said, "not counted or merged");
    let n = u64::try_from(why.len()).unwrap_or(u64::MAX);
    ctx.metrics.rejected(reason, n);
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: reason.to_string(),
        note: Some(said.chars().take(1000).collect()),
        action: "Summarize".into(),
        secondary: None,
    };
    let recorder = ctx.recorder.clone();
    let object = job.object_ref(&());
    tokio::spawn(async move {
        match tokio::time::timeout(Duration::from_secs(10), recorder.publish(&event, &object)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not publish event"),
            Err(_) => warn!("could not publish event in 10 s"),
        }
    });
}
