//! The trigger receiver (`tracejob-agent trigger-receiver`): a small component that Alertmanager's
//! webhook calls. For every firing alert that a `TraceTrigger` matches it creates a TraceJob on
//! the node or pod the alert names, within the trigger's cooldown and limits; for a resolved
//! alert it stops that TraceJob early (its maps are collected as for any stop). It needs no
//! host access and grants nothing: the TraceJobs it creates are ordinary ones, in the trigger's
//! namespace, and the namespace's node scope decides where they may run.
//!
//! Flow: `server` (authenticate, parse, queue; answered at once) -> the worker here (one
//! notification at a time: `matcher`, `decide`, create or stop) -> the trigger's status (by
//! server-side apply, at most once a second per trigger).

pub mod decide;
pub mod matcher;
pub mod metrics;
pub mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::resource::trigger::{TraceTrigger, TraceTriggerStatus};
use crate::resource::vocabulary::{Annotation, Label};
use crate::resource::TraceJob;
use crate::serve;
use decide::{Alert, Decision, Made, Suppress, Triggered};
use metrics::Metrics;
use server::Queued;

/// The field manager of the triggers' status.
pub const MANAGER: &str = "tracejob-trigger-receiver";
/// How long a TraceJob created here but not yet seen in the watch counts as running.
const UNSEEN_RUNNING: i64 = 60;
/// Notifications waiting for the worker before the webhook answers 503.
const QUEUE: usize = 1024;
/// TraceJobs per page of the watch's list: each may be near etcd's 1.5 MB object limit (a
/// tenant chooses its args and annotations), and a page is held whole while it is decoded.
const LIST_PAGE: u32 = 10;

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address of POST /alerts, /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:9471")]
    pub listen: SocketAddr,

    /// File holding the bearer token Alertmanager sends (a mounted Secret; read on every call).
    #[arg(
        long,
        env = "TOKEN_FILE",
        default_value = "/var/run/secrets/tracejob-trigger/token"
    )]
    pub token_file: PathBuf,

    /// Answer the TraceTriggers of this namespace only (default: every namespace).
    #[arg(long)]
    pub namespace: Option<String>,

    /// The largest notification body read, in bytes (Alertmanager's are a few KiB per alert):
    /// refused from its Content-Length, and a streamed body cut there.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Connections served at once; more wait until one closes.
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,

    /// How long a request's headers, and then its body, may take to arrive; a keep-alive
    /// connection idle that long is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,

    #[command(flatten)]
    pub logs: crate::serve::Logs,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the receiver keeps of one trigger (by UID) between notifications.
struct Kept {
    namespace: String,
    name: String,
    generation: Option<i64>,
    status: TraceTriggerStatus,
    /// TraceJobs created by this process (the watch may not have them yet, or they were deleted
    /// and still count for the hour).
    made: Vec<Made>,
    /// Suppressions counted, by alert (fingerprint and start) and reason: a repeated
    /// notification is decided again (a slot may have freed) but not counted again.
    counted: std::collections::HashSet<String>,
    dirty: bool,
}

type Book = Arc<Mutex<HashMap<String, Kept>>>;

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel(QUEUE);
    let listener = serve::bind(config.listen).await?;
    let shared = server::Shared {
        token_file: config.token_file.clone(),
        queue: tx,
        metrics: metrics.clone(),
        ready: ready.clone(),
        max_body: config.max_body_bytes,
        read_timeout: config.read_timeout,
    };
    let limits = serve::Limits {
        max_connections: config.max_connections,
        read_timeout: config.read_timeout,
        ..serve::Limits::default()
    };
    tokio::spawn(async move {
        tracing::info!(listen = %config.listen, "serving POST /alerts, /healthz, /readyz and /metrics");
        if let Err(e) = serve::serve(listener, server::router(shared), limits).await {
            warn!(error = %e, "the webhook endpoint stopped");
        }
    });
    let client = crate::cluster::client::connect(metrics.traffic.clone()).await?;
    let (triggers_api, jobs_api): (Api<TraceTrigger>, Api<TraceJob>) = match &config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (triggers, triggers_writer) = reflector::store();
    // Kept whole but for what the receiver never reads (kubectl's last-applied copy of the
    // object among it); listed a few at a time, as each may hold a 64 KiB program and 256 KiB of
    // args.
    let trigger_events = reflector::reflector(
        triggers_writer,
        watcher::watcher(
            triggers_api,
            watcher::Config::default().page_size(LIST_PAGE),
        )
        .default_backoff()
        .modify(|t: &mut TraceTrigger| {
            t.metadata.managed_fields = None;
            t.metadata.annotations = None;
        }),
    );
    tokio::spawn(trigger_events.for_each(|e| async move {
        if let Err(e) = e {
            warn!(error = %e, "watching TraceTriggers failed; retrying");
        }
    }));
    // Namespaces, for their alert-namespaces annotation: that annotation alone is kept.
    let (namespaces, namespaces_writer) = reflector::store();
    let namespaces_config = match &config.namespace {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let namespace_events = reflector::reflector(
        namespaces_writer,
        watcher::watcher(Api::<Namespace>::all(client.clone()), namespaces_config)
            .default_backoff()
            .modify(|ns: &mut Namespace| {
                let kept = ns
                    .annotations()
                    .get(Annotation::AlertNamespaces.as_str())
                    .cloned();
                ns.spec = None;
                ns.status = None;
                ns.metadata.managed_fields = None;
                ns.metadata.labels = None;
                ns.metadata.annotations =
                    kept.map(|v| [(Annotation::AlertNamespaces.as_str().to_string(), v)].into());
            }),
    );
    tokio::spawn(namespace_events.for_each(|e| async move {
        if let Err(e) = e {
            warn!(error = %e, "watching Namespaces failed; retrying");
        }
    }));
    // Only the TraceJobs a trigger controls, and of them only what the limits need.
    let jobs = Jobs::default();
    tokio::spawn(keep_triggered(jobs_api, jobs.clone()));
    info!(listen = %config.listen, namespace = config.namespace.as_deref().unwrap_or("(all)"), "tracejob trigger receiver starting");
    let book: Book = Arc::default();
    let worker = Worker {
        client: client.clone(),
        triggers,
        namespaces,
        jobs,
        book: book.clone(),
        metrics,
        matchers: matcher::Compiled::default(),
    };
    let flusher = flush_statuses(client, book);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = worker.run(rx, ready) => {}
        () = flusher => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// The TraceJobs TraceTriggers control, as the receiver keeps them (`Triggered`), by namespace
/// and name; listed once when `listed` turns true.
#[derive(Clone)]
struct Jobs {
    kept: Arc<RwLock<HashMap<(String, String), Triggered>>>,
    listed: tokio::sync::watch::Sender<bool>,
}

impl Default for Jobs {
    fn default() -> Jobs {
        Jobs {
            kept: Arc::default(),
            listed: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Jobs {
    fn state(&self) -> Vec<Triggered> {
        let kept = self.kept.read().unwrap_or_else(|p| p.into_inner());
        kept.values().cloned().collect()
    }

    async fn wait_until_listed(&self) {
        let mut rx = self.listed.subscribe();
        let _ = rx.wait_for(|listed| *listed).await;
    }
}

fn key(job: &TraceJob) -> (String, String) {
    (job.namespace().unwrap_or_default(), job.name_any())
}

/// Keeps `jobs` up to date from a watch of the TraceJobs with the trigger label (anyone may set
/// it: those no TraceTrigger controls are dropped, the rest cut to `Triggered`).
async fn keep_triggered(api: Api<TraceJob>, jobs: Jobs) {
    let config = watcher::Config::default()
        .labels(Label::Trigger.as_str())
        .page_size(LIST_PAGE);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut fresh: HashMap<(String, String), Triggered> = HashMap::new();
    while let Some(event) = events.next().await {
        let kept = || jobs.kept.write().unwrap_or_else(|p| p.into_inner());
        match event {
            Ok(watcher::Event::Apply(j)) => match Triggered::of(&j) {
                Some(t) => {
                    kept().insert(key(&j), t);
                }
                None => {
                    kept().remove(&key(&j));
                }
            },
            Ok(watcher::Event::Delete(j)) => {
                kept().remove(&key(&j));
            }
            Ok(watcher::Event::Init) => fresh.clear(),
            Ok(watcher::Event::InitApply(j)) => {
                if let Some(t) = Triggered::of(&j) {
                    fresh.insert(key(&j), t);
                }
            }
            Ok(watcher::Event::InitDone) => {
                *kept() = std::mem::take(&mut fresh);
                jobs.listed.send_replace(true);
            }
            Err(e) => warn!(error = %e, "watching triggered TraceJobs failed; retrying"),
        }
    }
}

struct Worker {
    client: Client,
    triggers: Store<TraceTrigger>,
    /// Namespaces, with their alert-namespaces annotation only.
    namespaces: Store<Namespace>,
    jobs: Jobs,
    book: Book,
    metrics: Arc<Metrics>,
    /// Each trigger's parsed matchers, pruned of triggers gone at every notification.
    matchers: matcher::Compiled,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>, ready: Arc<AtomicBool>) {
        let (a, b, c) = (
            self.triggers.clone(),
            self.namespaces.clone(),
            self.jobs.clone(),
        );
        let _ = tokio::join!(
            a.wait_until_ready(),
            b.wait_until_ready(),
            c.wait_until_listed()
        );
        ready.store(true, Ordering::Relaxed);
        info!("TraceTriggers, Namespaces and triggered TraceJobs listed: answering alerts");
        while let Some(q) = rx.recv().await {
            let triggers = self.triggers.state();
            let exists = |uid: &str| triggers.iter().any(|t| t.uid().as_deref() == Some(uid));
            self.matchers.prune(exists);
            // What was kept of triggers gone (their TraceJobs go with them).
            self.book
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|uid, _| exists(uid));
            for alert in &q.notification.alerts {
                for trigger in &triggers {
                    if !self.matches(trigger, alert) {
                        continue;
                    }
                    if alert.firing() {
                        self.fire(trigger, alert, &q).await;
                    } else {
                        self.resolve(trigger, alert).await;
                    }
                }
            }
        }
    }

    /// Whether the trigger's matchers take the alert; an invalid matcher is the trigger's error.
    fn matches(&mut self, trigger: &TraceTrigger, alert: &Alert) -> bool {
        let parsed = self.matchers.get(
            &trigger.uid().unwrap_or_default(),
            trigger.metadata.generation.unwrap_or(0),
            &trigger.spec.matchers,
        );
        match parsed {
            Ok(ms) => matcher::matches_all(ms, &alert.labels),
            Err(e) => {
                let e = e.clone();
                self.with(trigger, |k| {
                    if k.status.last_error.as_deref() != Some(e.as_str()) {
                        k.status.last_error = Some(e);
                        k.dirty = true;
                    }
                });
                false
            }
        }
    }

    /// Runs `f` on what is kept of `trigger` (made from its status the first time).
    fn with<T>(&self, trigger: &TraceTrigger, f: impl FnOnce(&mut Kept) -> T) -> T {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let kept = book
            .entry(trigger.uid().unwrap_or_default())
            .or_insert_with(|| Kept {
                namespace: trigger.namespace().unwrap_or_default(),
                name: trigger.name_any(),
                generation: trigger.metadata.generation,
                status: trigger.status.clone().unwrap_or_default(),
                made: Vec::new(),
                counted: Default::default(),
                dirty: false,
            });
        kept.generation = trigger.metadata.generation;
        f(kept)
    }

    /// What the trigger made, as the decisions see it: its TraceJobs in the watch, and those
    /// this process created that the watch has not shown (yet, or any more).
    fn made(&self, trigger: &TraceTrigger, kept: &mut Kept, now: Timestamp) -> Vec<Made> {
        let uid = trigger.uid().unwrap_or_default();
        let ns = trigger.namespace();
        let mut made: Vec<Made> = self
            .jobs
            .state()
            .iter()
            .filter(|j| Some(&j.namespace) == ns.as_ref())
            .filter_map(|j| j.made_by(&uid))
            .collect();
        let horizon = trigger.spec.limits.cooldown_seconds.max(3600);
        kept.made
            .retain(|m| (now - m.created).get_seconds() <= horizon);
        for m in &kept.made {
            if !made.iter().any(|w| w.name == m.name) {
                let mut m = m.clone();
                m.ended = (now - m.created).get_seconds() > UNSEEN_RUNNING;
                made.push(m);
            }
        }
        made
    }

    /// Where the alert's trace runs for this trigger (its namespace's annotation applied).
    fn target(&self, trigger: &TraceTrigger, alert: &Alert) -> Result<decide::Where, Suppress> {
        let ns = trigger.namespace().unwrap_or_default();
        let namespace = self.namespaces.get(&ObjectRef::new(&ns));
        let widened = namespace
            .as_ref()
            .and_then(|n| n.annotations().get(Annotation::AlertNamespaces.as_str()));
        decide::target(
            &trigger.spec.target,
            &ns,
            widened.map(String::as_str),
            &alert.labels,
        )
    }

    async fn fire(&self, trigger: &TraceTrigger, alert: &Alert, q: &Queued) {
        let now = Timestamp::now();
        let ns = trigger.namespace().unwrap_or_default();
        let on = self.target(trigger, alert);
        let decision = self.with(trigger, |k| {
            k.status.last_fired = Some(Time(now));
            k.dirty = true;
            let on = match &on {
                Ok(on) => on,
                Err(reason) => return Err(*reason),
            };
            let name = decide::job_name(
                &trigger.name_any(),
                &alert.fingerprint,
                &alert.starts_at,
                &on.key(),
            );
            let made = self.made(trigger, k, now);
            let d = decide::decide(&trigger.spec.limits, &name, &on.key(), now, &made);
            if d == Decision::Create {
                // Counted at once: the next alert of a burst sees it.
                k.made.push(Made {
                    name: name.clone(),
                    target: on.key(),
                    created: now,
                    ended: false,
                });
            }
            Ok(d)
        });
        let on = match (decision, on) {
            (Err(reason), _) | (Ok(Decision::Suppress(reason)), _) => {
                return self.suppress(trigger, alert, reason);
            }
            (Ok(Decision::Repeat), _) => return,
            (Ok(Decision::Create), Ok(on)) => on,
            (Ok(Decision::Create), Err(reason)) => return self.suppress(trigger, alert, reason),
        };
        let job = decide::tracejob(trigger, alert, &on);
        let name = job.name_any();
        let api: Api<TraceJob> = Api::namespaced(self.client.clone(), &ns);
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => {
                self.metrics.created.inc();
                self.metrics
                    .create_latency
                    .observe(q.received.elapsed().as_secs_f64());
                info!(namespace = %ns, trigger = %trigger.name_any(), name = %name, target = %on.key(), fingerprint = %alert.fingerprint, "created a TraceJob for an alert");
                self.with(trigger, |k| {
                    k.status.traces_created += 1;
                    k.status.last_trace = Some(name.clone());
                    k.dirty = true;
                });
            }
            // Made already (by this receiver before a restart): the same alert on the same
            // target.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                self.metrics.errors.inc();
                warn!(namespace = %ns, trigger = %trigger.name_any(), name = %name, error = %e, "creating a TraceJob failed");
                self.with(trigger, |k| {
                    k.made.retain(|m| m.name != name);
                    k.status.last_error = Some(format!("creating TraceJob {name}: {e}"));
                    k.dirty = true;
                });
            }
        }
    }

    fn suppress(&self, trigger: &TraceTrigger, alert: &Alert, reason: Suppress) {
        let key = format!(
            "{}/{}/{}",
            alert.fingerprint,
            alert.starts_at,
            reason.as_str()
        );
        let first = self.with(trigger, |k| {
            if k.counted.len() >= 10_000 {
                k.counted.clear();
            }
            k.counted.insert(key)
        });
        if !first {
            return;
        }
        self.metrics.suppressed(reason.as_str());
        info!(namespace = trigger.namespace().unwrap_or_default(), trigger = %trigger.name_any(), fingerprint = %alert.fingerprint, reason = reason.as_str(), "an alert started no trace");
        self.with(trigger, |k| {
            *k.status
                .suppressed
                .entry(reason.as_str().to_string())
                .or_default() += 1;
            k.dirty = true;
        });
    }

    /// Stops the trace of a resolved alert early (its maps are collected as for any stop): the
    /// TraceJob its firing made (by name, so one the watch has not shown yet is stopped too),
    /// and any other of the trigger's for the same alert still running.
    async fn resolve(&self, trigger: &TraceTrigger, alert: &Alert) {
        let ns = trigger.namespace().unwrap_or_default();
        let uid = trigger.uid().unwrap_or_default();
        let fingerprint = decide::fingerprint_label(&alert.fingerprint);
        let mut names: Vec<String> = Vec::new();
        if let Ok(on) = self.target(trigger, alert) {
            names.push(decide::job_name(
                &trigger.name_any(),
                &alert.fingerprint,
                &alert.starts_at,
                &on.key(),
            ));
        }
        for j in self.jobs.state() {
            if j.namespace == ns
                && j.fingerprint == fingerprint
                && j.trigger_uid == uid
                && !names.contains(&j.name)
            {
                names.push(j.name);
            }
        }
        let api: Api<TraceJob> = Api::namespaced(self.client.clone(), &ns);
        for name in names {
            let seen = self
                .jobs
                .state()
                .into_iter()
                .find(|j| j.name == name && j.namespace == ns);
            if seen.is_some_and(|j| j.stopping || j.ended) {
                continue;
            }
            let patch = json!({"spec": {"stop": true}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.metrics.stopped.inc();
                    info!(namespace = %ns, name = %name, fingerprint = %alert.fingerprint, "the alert resolved: stopping its trace");
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    self.metrics.errors.inc();
                    warn!(namespace = %ns, name = %name, error = %e, "stopping a TraceJob failed");
                }
            }
        }
    }
}

/// Writes each changed trigger's status (server-side apply), at most once a second each.
async fn flush_statuses(client: Client, book: Book) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let due: Vec<(String, String, String, TraceTriggerStatus)> = {
            let mut book = book.lock().unwrap_or_else(|p| p.into_inner());
            book.iter_mut()
                .filter(|(_, k)| k.dirty)
                .map(|(uid, k)| {
                    k.dirty = false;
                    let mut status = k.status.clone();
                    status.suppressed_total = status.suppressed.values().sum();
                    status.observed_generation = k.generation;
                    (uid.clone(), k.namespace.clone(), k.name.clone(), status)
                })
                .collect()
        };
        for (uid, ns, name, status) in due {
            let api: Api<TraceTrigger> = Api::namespaced(client.clone(), &ns);
            let object = json!({
                "apiVersion": TraceTrigger::api_version(&()),
                "kind": TraceTrigger::kind(&()),
                "metadata": {"name": name},
                "status": status,
            });
            match api
                .patch_status(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(object),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    book.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
                }
                Err(e) => {
                    warn!(namespace = %ns, trigger = %name, error = %e, "writing a TraceTrigger's status failed; trying again");
                    if let Some(k) = book.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&uid) {
                        k.dirty = true;
                    }
                }
            }
        }
    }
}
