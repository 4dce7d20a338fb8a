//! The agent under test: an `agent::Ctx` as `agent::serve` builds it, but its client talks to the
//! mocked API server (`api`), its state directory is a temporary one, its stores (its Node, the
//! Namespaces, its node's pods) are filled once without watches (`Stores::fixed`), and bpftrace
//! and its shim are `doubles`. Also the TraceJobs and pods the tests give it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use clap::Parser;
use http::Method;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::{ObjectMeta, PartialObjectMetaExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::api::{self, ApiServer};
pub use super::api::{next_version, path_of, NAMESPACE, NODE, PATIENCE};
use super::doubles::{self, MAP};
use crate::agent::Config;
use crate::agent::Metrics;
use crate::agent::{job, Ctx, Facts};
use crate::cluster::stores::Stores;
use crate::host::rundir::StateDir;
use crate::resource::vocabulary::Annotation;
use crate::resource::{Phase, Target, TraceJob, TraceJobSpec};

/// The agent's side of one test: its `Ctx`, the API server its client talks to, and its files.
pub struct Agent {
    pub ctx: Arc<Ctx>,
    pub api: ApiServer,
    /// The state directory, the two scripts and the bpftrace runs' log; gone after the test.
    dir: tempfile::TempDir,
}

impl Agent {
    /// The agent of `NODE`, whose stores hold its Node, the namespace `NAMESPACE` (allowed to
    /// trace it) and `pods`.
    pub fn new(pods: Vec<Pod>) -> Agent {
        logs();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bpftrace = doubles::bpftrace(dir.path());
        let config = config(&dir.path().join("state"), &bpftrace);
        let (client, api) = api::mocked(NAMESPACE);
        let ctx = Ctx::new(
            config.clone(),
            client,
            Metrics::new(),
            Facts {
                bpftrace_version: "v0.0.0-double".into(),
                state: StateDir::open(&config.state_dir).expect("the state directory"),
                exe: doubles::shim(dir.path()),
                stores: Stores::fixed(NODE, vec![node()], vec![namespace()], pods),
                // Its sender gone, this stays false: the agent is never removed from the node.
                removed: watch::channel(false).1,
                trace_metrics: Default::default(),
            },
        );
        Agent {
            ctx: Arc::new(ctx),
            api,
            dir,
        }
    }

    /// Starts the actor of `job`, as the dispatcher does when it first sees it.
    pub fn run(&self, job: TraceJob) -> Actor {
        let (spec, rx) = watch::channel(Some(job.clone()));
        let task = tokio::spawn(job::run(self.ctx.clone(), job, rx));
        Actor { spec, task }
    }

    /// How many times bpftrace was started.
    pub fn bpftrace_runs(&self) -> usize {
        doubles::bpftrace_runs(self.dir.path())
    }

    /// The run directories in the state directory (`STATE_DIR/jobs/RUN_ID`).
    pub fn run_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.ctx.config.state_dir.join("jobs"))
            .expect("the state directory's jobs/")
            .map(|e| e.expect("a directory entry").path())
            .collect()
    }

    /// Expects the end of a trace stopped by spec.stop: Stopping reported as bpftrace gets
    /// SIGINT, the map it then printed stored in a new ConfigMap, and Completed reported with
    /// that ConfigMap. Answers each as the API server would.
    pub async fn expect_collected(&mut self, job: &TraceJob, run_id: &str) {
        let stopping = self.api.next().await;
        stopping.assert_status_write(job);
        assert_eq!(stopping.status().phase, Some(Phase::Stopping));
        assert_eq!(stopping.status().id.as_deref(), Some(run_id));
        let job = stopping.accept_status(job);

        // Written once bpftrace has ended and its output is collected.
        let create = self.api.next().await;
        create.assert_request(Method::POST, &configmaps());
        let output = create.body["data"]["output"].as_str().unwrap_or_default();
        assert!(
            output.contains(MAP),
            "the output ConfigMap: {}",
            create.body
        );
        let created = create.accept_create();
        let configmap = created["metadata"]["name"].as_str().map(String::from);
        assert!(configmap.is_some(), "a named ConfigMap: {created}");

        let completed = self.api.next().await;
        completed.assert_status_write(&job);
        let status = completed.status();
        assert_eq!(status.phase, Some(Phase::Completed), "{status:?}");
        assert_eq!(status.id.as_deref(), Some(run_id));
        assert_eq!(status.output_ref.map(|r| r.name), configmap);
        completed.accept_status(&job);
    }
}

/// One job's actor, and the watch's side of its channel.
pub struct Actor {
    spec: watch::Sender<Option<TraceJob>>,
    task: JoinHandle<()>,
}

impl Actor {
    /// A newer version of the TraceJob, as the watch brings it.
    pub fn update(&self, job: &TraceJob) {
        self.spec.send_replace(Some(job.clone()));
    }

    /// The TraceJob was deleted (as the dispatcher says it: None).
    pub fn delete(&self) {
        self.spec.send_replace(None);
    }

    /// Whether the actor has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the actor to end (a closed channel would tell it the agent exits: it stays open
    /// until then).
    pub async fn ended(self) {
        let Actor { spec: _open, task } = self;
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the actor ends")
            .expect("the actor does not panic");
    }
}

/// A TraceJob on node `NODE`, as created (no status yet), at resourceVersion 1.
pub fn tracejob(name: &str) -> TraceJob {
    let mut job = TraceJob::new(
        name,
        TraceJobSpec {
            node_name: Some(NODE.into()),
            node_selector: None,
            target: None,
            program: "BEGIN { @x = 1; }".into(),
            args: vec![],
            stop: false,
            deadline: 3600,
            deadline_grace_period: 30,
            metrics: None,
        },
    );
    job.metadata.namespace = Some(NAMESPACE.into());
    job.metadata.uid = Some(format!("uid-{name}"));
    job.metadata.resource_version = Some("1".into());
    job.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    job
}

/// A TraceJob about pod `pod` (in `NAMESPACE`) with no node named: every agent sees it, and the
/// one whose node runs the pod claims it.
pub fn unassigned(name: &str, pod: &str) -> TraceJob {
    let mut job = tracejob(name);
    job.spec.node_name = None;
    job.spec.target = Some(Target {
        pod: pod.into(),
        container: None,
    });
    job
}

/// The TraceJob with spec.stop set, at its next resourceVersion.
pub fn stopped(job: &TraceJob) -> TraceJob {
    let mut stopped = next_version(job);
    stopped.spec.stop = true;
    stopped
}

/// A pod of `NAMESPACE` on `NODE`.
pub fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(NODE.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where ConfigMaps of `NAMESPACE` are created.
pub fn configmaps() -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/configmaps")
}

/// The agent's Node, metadata only (as its store keeps it).
fn node() -> kube::core::PartialObjectMeta<Node> {
    ObjectMeta {
        name: Some(NODE.into()),
        labels: Some(BTreeMap::from([(
            "kubernetes.io/hostname".to_string(),
            NODE.to_string(),
        )])),
        ..Default::default()
    }
    .into_response_partial()
}

/// `NAMESPACE`, whose annotation lets it trace every node but protected ones (the README's quick start).
fn namespace() -> kube::core::PartialObjectMeta<Namespace> {
    ObjectMeta {
        name: Some(NAMESPACE.into()),
        annotations: Some(BTreeMap::from([(
            Annotation::NodeSelector.as_str().to_string(),
            "!observe.tracejob.dev/untraceable".to_string(),
        )])),
        ..Default::default()
    }
    .into_response_partial()
}

/// The agent's flags: its defaults, but for its node, its state directory, bpftrace, and no
/// live output (a copy in the middle of a test would be a request it does not expect).
fn config(state_dir: &Path, bpftrace: &Path) -> Config {
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        config: Config,
    }
    let (state_dir, bpftrace) = (
        state_dir.display().to_string(),
        bpftrace.display().to_string(),
    );
    Flags::parse_from([
        "tracejob-agent",
        "--node-name",
        NODE,
        "--state-dir",
        &state_dir,
        "--bpftrace",
        &bpftrace,
        "--live-interval",
        "0",
    ])
    .config
}

/// The agent's logs, shown with a failed test's output (RUST_LOG sets the level).
fn logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tracejob_agent=debug"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    });
}
