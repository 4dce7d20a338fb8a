//! Fault scenarios of one fan-out, shared by the suite (tests/e2e/faults.rs: 20 agent processes)
//! and the benchmark (`BENCH_ONLY=faults`: 1,000 hollow agents). One TraceJob selects every node
//! of a pool; a fault is injected at its moment; then the verdict: every node's part Completed
//! with its output, the merged output holding every node (its `@c` the sum of theirs), and no
//! trace started twice (the bpftrace double appends its program file to a record file at each
//! start, and each program file lives in its node's state directory). The recovery time is from
//! the end of the fault until the fan-out is where it would have been without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;
use tracejob_agent::resource::vocabulary::Label;
use tracejob_agent::resource::{Phase, TraceJob, TraceJobNode};

use super::{must, Env, Summarizer};

/// The faults, each during a fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// The API server stopped for 10 s as the first node's part appears, then started again.
    ApiDownWhileStarting,
    /// The API server stopped for 10 s right after `spec.stop`, while the nodes store.
    ApiDownWhileStoring,
    /// A tenth of the agents killed (SIGKILL) while running, `spec.stop` sent while they are
    /// down, then started again on their state directories.
    AgentsKilled,
    /// etcd compacted to its current revision and the API server restarted at once: every
    /// watch resumes from a compacted revision and gets 410 Gone, so each client relists.
    WatchesExpired,
    /// The active summarizer paused (SIGSTOP) before the stop, so the merge is pending in it
    /// when it is killed (SIGKILL) once every node has stored; the standby takes over.
    SummarizerKilled,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::ApiDownWhileStarting,
        Fault::ApiDownWhileStoring,
        Fault::AgentsKilled,
        Fault::WatchesExpired,
        Fault::SummarizerKilled,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Fault::ApiDownWhileStarting => "API server down 10 s while the nodes start",
            Fault::ApiDownWhileStoring => "API server down 10 s while the nodes store",
            Fault::AgentsKilled => "10 % of the agents killed and restarted mid-run",
            Fault::WatchesExpired => "watches expired (410 Gone after an etcd compaction)",
            Fault::SummarizerKilled => "the active summarizer killed during the merge",
        }
    }

    /// What the recovery time measures.
    pub fn recovery_from(self) -> &'static str {
        match self {
            Fault::ApiDownWhileStarting => "API server back until every node Running",
            Fault::ApiDownWhileStoring => "API server back until the merged output",
            Fault::AgentsKilled => "agents restarted until the merged output",
            Fault::WatchesExpired => "API server back until the merged output",
            Fault::SummarizerKilled => "the kill until the merged output",
        }
    }
}

/// The agents of a fan-out's nodes, however they run (processes of their own, or hollow agents
/// in a few processes).
pub trait Fleet {
    /// Each node and its agent's state directory.
    fn nodes(&self) -> Vec<(String, PathBuf)>;
    /// Waits until every agent is ready; Err says why not.
    fn wait_ready(&self, limit: Duration) -> Result<(), String>;
    /// Kills (SIGKILL) about a tenth of the agents: their nodes.
    fn kill_tenth(&mut self) -> Vec<String>;
    /// Starts the killed agents again on their state directories.
    fn restart_killed(&mut self);
    /// How many of the agents' log lines contain `needle`.
    fn log_lines(&self, needle: &str) -> usize;
}

/// What a client's log says of a watch that resumed from a compacted revision (410 Gone): the
/// watch cache's "too old resource version", etcd's "... is too old".
pub const EXPIRED: &str = "too old";

/// What one scenario run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub fault: Fault,
    pub nodes: usize,
    /// From the end of the fault until recovered (`Fault::recovery_from`); None: never, in time.
    pub recovery: Option<Duration>,
    /// Nodes whose part is Completed with its outputRef.
    pub stored: usize,
    /// Nodes whose part is not (with its phase).
    pub lost: Vec<String>,
    /// The TraceJob's status.mergedNodes.
    pub merged_nodes: i64,
    /// `@c` of the merged output (each node prints 2).
    pub merged_count: i64,
    /// Nodes whose trace started more than once, and nodes whose trace never started.
    pub twice: Vec<String>,
    pub never: Vec<String>,
    /// Agents' log lines about a watch that expired (410 Gone).
    pub expired_watches: usize,
    /// Something the fault needed did not happen (the test would test nothing).
    pub unmet: Option<String>,
    /// The nodes' parts by phase as the fault began.
    pub at_fault: String,
    pub total: Duration,
}

impl Outcome {
    /// The verdict: Ok, or what went wrong.
    pub fn verdict(&self) -> Result<(), String> {
        let mut wrong = Vec::new();
        if let Some(u) = &self.unmet {
            wrong.push(format!("the fault did not happen as meant: {u}"));
        }
        if self.recovery.is_none() {
            wrong.push("never recovered in time".to_string());
        }
        if self.stored != self.nodes {
            wrong.push(format!(
                "{} of {} parts stored; lost: {:?}",
                self.stored,
                self.nodes,
                self.lost.iter().take(10).collect::<Vec<_>>()
            ));
        }
        if self.merged_nodes != self.nodes as i64 || self.merged_count != 2 * self.nodes as i64 {
            wrong.push(format!(
                "the merged output holds {} nodes and @c {} (want {} and {})",
                self.merged_nodes,
                self.merged_count,
                self.nodes,
                2 * self.nodes
            ));
        }
        if !self.twice.is_empty() {
            wrong.push(format!("traces started twice on {:?}", self.twice));
        }
        if !self.never.is_empty() {
            wrong.push(format!("traces never started on {:?}", self.never));
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} at N={}: parts at the fault {}; recovery ({}) {}; {} / {} parts stored; merged output {} nodes, @c {}; started twice {}, never {}; {} expired-watch log lines; {:.1} s in all; verdict {}",
            self.fault.describe(),
            self.nodes,
            self.at_fault,
            self.fault.recovery_from(),
            self.recovery
                .map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            self.stored,
            self.nodes,
            self.merged_nodes,
            self.merged_count,
            self.twice.len(),
            self.never.len(),
            self.expired_watches,
            self.total.as_secs_f64(),
            match self.verdict() {
                Ok(()) => "pass".to_string(),
                Err(e) => format!("FAIL ({e})"),
            }
        )
    }
}

/// The program each node runs: the double, idle until stopped, then (after `exit_delay_ms`)
/// printing `@c: 2`, and recording each start in `record`.
fn program(record: &Path, exit_delay_ms: u64, attach_delay_ms: u64) -> String {
    format!(
        "// double: idle-ms=1000\n// double: record={}\n// double: exit-delay-ms={exit_delay_ms}\n// double: attach-delay-ms={attach_delay_ms}\n// double: maps=@c: 2\nBEGIN {{ @c = count(); @c = count(); }}\n",
        record.display()
    )
}

/// etcd's current revision and a compaction to it, through its JSON gateway; the revision.
pub fn compact_etcd(etcd_url: &str) -> Result<i64, String> {
    let post = |path: &str, body: &str| -> Result<serde_json::Value, String> {
        let out = Command::new("curl")
            .args(["-sf", "-m", "30", "-X", "POST", "-d", body])
            .arg(format!("{etcd_url}{path}"))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "POST {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    };
    // Any key: the header carries the store's revision (an int64, as a string in JSON).
    let range = post("/v3/kv/range", r#"{"key":"AA=="}"#)?;
    let revision: i64 = range["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| format!("no revision in {range}"))?;
    post(
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    )?;
    Ok(revision)
}

/// Runs `fault` during one fan-out over every node of `fleet` (all labelled `pool=POOL`) in
/// namespace `ns`, with the active summarizer `summarizer` (started by the caller, leading) and,
/// for `SummarizerKilled`, a standby the caller started after it. Every wait is bounded by
/// `limit`.
pub fn run(
    env: &Env,
    ns: &str,
    pool: &str,
    fleet: &mut dyn Fleet,
    summarizer: &mut Summarizer,
    fault: Fault,
    limit: Duration,
) -> Outcome {
    let started = Instant::now();
    let nodes = fleet.nodes();
    let n = nodes.len();
    let records = must(
        tempfile::Builder::new()
            .prefix("tracejob-faults-")
            .tempdir(),
        "tempdir",
    );
    let record = records.path().join("starts");
    let rt = must(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        "runtime",
    );
    let client = rt.block_on(async {
        let kubeconfig = must(
            kube::config::Kubeconfig::read_from(&env.cp.kubeconfig),
            "kubeconfig",
        );
        let config = must(
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await,
            "config",
        );
        must(kube::Client::try_from(config), "client")
    });
    let tjs: Api<TraceJob> = Api::namespaced(client.clone(), ns);
    let parts: Api<TraceJobNode> = Api::namespaced(client.clone(), ns);
    // The nodes' parts as `kubectl get tjn -l ... -w` has them, through the outage too.
    let (store, writer) = reflector::store::<TraceJobNode>();
    let selector = format!("{}=wide", Label::TraceJob);
    let watch = rt.spawn(
        reflector::reflector(
            writer,
            watcher::watcher(parts, watcher::Config::default().labels(&selector)).default_backoff(),
        )
        .for_each(|_| std::future::ready(())),
    );
    let count = |phase: Option<Phase>, stored: bool| {
        store
            .state()
            .iter()
            .filter(|p| {
                let s = p.status.as_ref();
                phase.is_none()
                    || s.is_some_and(|s| s.phase == phase && (!stored || s.output_ref.is_some()))
            })
            .count()
    };
    let until = |what: &dyn Fn() -> bool| -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if what() {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    };
    let merged = |tjs: &Api<TraceJob>| -> bool {
        rt.block_on(tjs.get_opt("wide"))
            .ok()
            .flatten()
            .and_then(|j| j.status)
            .is_some_and(|s| s.output_ref.is_some() && s.merged_nodes == Some(n as i64))
    };
    let all_running = || count(Some(Phase::Running), false) >= n;
    let all_stored = || count(Some(Phase::Completed), true) >= n;
    let stop = |tjs: &Api<TraceJob>| {
        let patch = Patch::Merge(serde_json::json!({"spec": {"stop": true}}));
        // A transient failure right after a restart is retried.
        let t0 = Instant::now();
        loop {
            match rt.block_on(tjs.patch("wide", &PatchParams::default(), &patch)) {
                Ok(_) => return,
                Err(e) if t0.elapsed() > limit => panic!("the stop: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    };
    let job: TraceJob = must(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
            "metadata": {"name": "wide"},
            "spec": {
                "nodeSelector": {"matchLabels": {"pool": pool}},
                // While they store: each node's bpftrace takes 5 s to end after its SIGINT (as
                // bpftrace 0.17 can), so the API server is down before any node stores.
                // While they start: each takes 3 s to attach, so parts appear (Pending) before any
                // node runs, and the API server goes down between the two.
                "program": program(
                    &record,
                    if fault == Fault::ApiDownWhileStoring { 5000 } else { 0 },
                    if fault == Fault::ApiDownWhileStarting { 3000 } else { 0 },
                ),
                "deadlineGracePeriod": 300,
            },
        })),
        "TraceJob",
    );
    let down = Duration::from_secs(10);
    let mut unmet = None;
    let phases = || {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for p in store.state() {
            let ph = p.status.as_ref().and_then(|s| s.phase);
            *m.entry(ph.map_or("none".into(), |p| p.to_string()))
                .or_default() += 1;
        }
        format!("{m:?}")
    };
    let at_fault;
    must(
        rt.block_on(tjs.create(&PostParams::default(), &job)),
        "create the TraceJob",
    );
    let recovery = match fault {
        Fault::ApiDownWhileStarting => {
            if until(&|| count(None, false) > 0).is_none() {
                unmet = Some("no node's part appeared".into());
            }
            at_fault = phases();
            env.cp.stop_apiserver();
            let running_at_stop = count(Some(Phase::Running), false);
            if running_at_stop >= n {
                unmet = Some("every node ran before the API server went down".into());
            }
            std::thread::sleep(down);
            env.cp.start_apiserver();
            let r = until(&all_running);
            stop(&tjs);
            until(&all_stored);
            until(&|| merged(&tjs));
            r
        }
        Fault::ApiDownWhileStoring => {
            until(&all_running);
            stop(&tjs);
            at_fault = phases();
            env.cp.stop_apiserver();
            if all_stored() {
                unmet = Some("every node stored before the API server went down".into());
            }
            std::thread::sleep(down);
            env.cp.start_apiserver();
            let t = Instant::now();
            until(&all_stored);
            until(&|| merged(&tjs)).map(|_| t.elapsed())
        }
        Fault::AgentsKilled => {
            until(&all_running);
            at_fault = phases();
            let killed = fleet.kill_tenth();
            if killed.is_empty() {
                unmet = Some("no agent was killed".into());
            }
            stop(&tjs);
            std::thread::sleep(Duration::from_secs(2));
            fleet.restart_killed();
            let t = Instant::now();
            until(&all_stored);
            until(&|| merged(&tjs)).map(|_| t.elapsed())
        }
        Fault::WatchesExpired => {
            until(&all_running);
            at_fault = phases();
            let before = fleet.log_lines(EXPIRED);
            match compact_etcd(&env.cp.etcd_url()) {
                Ok(_) => {}
                Err(e) => unmet = Some(format!("compacting etcd: {e}")),
            }
            env.cp.stop_apiserver();
            env.cp.start_apiserver();
            let t = Instant::now();
            stop(&tjs);
            until(&all_stored);
            let r = until(&|| merged(&tjs)).map(|_| t.elapsed());
            if fleet.log_lines(EXPIRED) <= before {
                unmet = Some("no agent's watch expired (no 410 in their logs)".into());
            }
            r
        }
        Fault::SummarizerKilled => {
            until(&all_running);
            at_fault = phases();
            summarizer.pause();
            stop(&tjs);
            until(&all_stored);
            if merged(&tjs) {
                unmet = Some("the merged output was stored before the kill".into());
            }
            summarizer.kill();
            let t = Instant::now();
            until(&|| merged(&tjs)).map(|_| t.elapsed())
        }
    };
    // The final state.
    let state = store.state();
    let mut lost: Vec<String> = Vec::new();
    let mut stored = 0;
    let by_node: BTreeMap<String, String> = state
        .iter()
        .map(|p| {
            let phase = p.status.as_ref().and_then(|s| {
                s.phase.map(|ph| {
                    format!(
                        "{ph}{}",
                        if s.output_ref.is_some() {
                            "+output"
                        } else {
                            ""
                        }
                    )
                })
            });
            (
                p.spec.node_name.clone(),
                phase.unwrap_or_else(|| "none".into()),
            )
        })
        .collect();
    for (node, _) in &nodes {
        match by_node.get(node).map(String::as_str) {
            Some("Completed+output") => stored += 1,
            other => lost.push(format!("{node}: {}", other.unwrap_or("no part"))),
        }
    }
    let tj = rt.block_on(tjs.get_opt("wide")).ok().flatten();
    let merged_nodes = tj
        .as_ref()
        .and_then(|j| j.status.as_ref())
        .and_then(|s| s.merged_nodes)
        .unwrap_or(0);
    let merged_count = tj
        .as_ref()
        .and_then(|j| j.status.as_ref())
        .and_then(|s| s.output_ref.as_ref())
        .and_then(|r| {
            let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(client.clone(), ns);
            rt.block_on(cms.get_opt(&r.name)).ok().flatten()
        })
        .and_then(|cm| cm.data?.get("maps.json").cloned())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|maps| {
            maps["maps"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == "@c")
                .and_then(|m| m["entries"][0]["value"].as_i64())
        })
        .unwrap_or(-1);
    let starts = std::fs::read_to_string(&record).unwrap_or_default();
    let (mut twice, mut never) = (Vec::new(), Vec::new());
    for (node, dir) in &nodes {
        let dir = format!("{}/", dir.display());
        let k = starts.lines().filter(|l| l.starts_with(&dir)).count();
        if k > 1 {
            twice.push(format!("{node} ({k} starts)"));
        } else if k == 0 {
            never.push(node.clone());
        }
    }
    watch.abort();
    Outcome {
        fault,
        nodes: n,
        recovery,
        stored,
        lost,
        merged_nodes,
        merged_count,
        twice,
        never,
        expired_watches: fleet.log_lines(EXPIRED),
        unmet,
        at_fault,
        total: started.elapsed(),
    }
}
