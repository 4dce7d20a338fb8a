//! The benchmark: `cargo bench --bench tracejob` (as root). Real control plane, real bpftrace, the
//! agent as a release build in its default configuration (live output on). Prints one Markdown
//! table. Run by hand, not in CI.
//!
//! Agent and bare-bpftrace runs are interleaved (one of each in turn), so a slower moment of the
//! machine falls on both; each latency is given as min / median / max.
//! BENCH_RUNS (default 10; 3 for the scale table) sets the runs, BENCH_FOOTPRINT_SECS (default 60)
//! the footprint windows, BENCH_SCALE (default "100,300,1000"; empty for none) the node counts of
//! the scale table (hollow agents: `scale`); BENCH_ONLY=scale runs the scale table alone,
//! BENCH_ONLY=latency the start, collect and API-cost rows alone; BENCH_ONLY=metrics spec.metrics'
//! rows alone (one read of the maps at 10, 1,000 and 100,000 keys; a traced workload's rate with
//! reads every 5 s against without);
//! BENCH_ONLY=faults the fault scenarios during a fan-out (`scale::faults_table`: BENCH_FAULTS_N,
//! BENCH_FAULTS); BENCH_HOLLOW_PROCESSES (default 10) the processes the hollow agents run in;
//! BENCH_SCALE_TIMEOUT_SECS (default 300) bounds each of its waits (a wait that ran out says
//! "> limit"); BENCH_SCALE_POD_TARGET=0 leaves out its pod-target rows.

#[path = "../tests/e2e/support/mod.rs"]
#[allow(unused_imports)]
mod support;

#[path = "tracejob/scale.rs"]
mod scale;

#[path = "tracejob/metrics.rs"]
mod metrics;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::Api;
use support::{bpftrace_double, must, wait_for, Agent, ControlPlane, Env};
use tracejob_agent::resource::{Phase, TraceJob, TraceJobSpec};

const BIOLATENCY: &str = include_str!("../bpf-samples/biolatency.bt");
/// About 800 KB of printf lines a second, whatever else the machine does.
const PRINT_A_MIB: &str = "interval:us:100 { printf(\"%d 0123456789012345678901234567890123456789012345678901234567890123456789\\n\", nsecs); }";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Milliseconds of several runs.
struct Spread(Vec<f64>);

impl Spread {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        v[v.len() / 2]
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.sorted();
        write!(
            f,
            "{:.0} / {:.0} / {:.0} ms",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn tracejob(name: &str, node: &str, program: &str) -> TraceJob {
    TraceJob::new(
        name,
        TraceJobSpec {
            node_name: Some(node.into()),
            node_selector: None,
            target: None,
            program: program.into(),
            args: vec![],
            stop: false,
            deadline: 3600,
            deadline_grace_period: 30,
            metrics: None,
        },
    )
}

fn phase_is(p: Phase) -> impl Fn(Option<&TraceJob>) -> bool {
    move |tj| tj.and_then(|t| t.phase()) == Some(p)
}

struct Bench {
    env: Env,
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    rows: Vec<(String, String)>,
}

impl Bench {
    fn api(&self, ns: &str) -> Api<TraceJob> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn row(&mut self, what: &str, value: String) {
        eprintln!("bench: {what}: {value}");
        self.rows.push((what.to_string(), value));
    }

    /// One run through the agent, timed with the Kubernetes API: create until the watch sees
    /// Running; then `until_stop` (given the run's stdout on the node); then the stop patch until
    /// a watch sees Completed (the output ConfigMap is written before it, and is read after).
    /// (start ms, collect ms).
    fn agent_run(
        &self,
        ns: &str,
        agent: &Agent,
        name: &str,
        program: &str,
        until_stop: &dyn Fn(&Path),
    ) -> (f64, f64) {
        let api = self.api(ns);
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        self.rt.block_on(async {
            let t0 = Instant::now();
            must(
                api.create(
                    &PostParams::default(),
                    &tracejob(name, &agent.node, program),
                )
                .await,
                "create",
            );
            let running = must(
                await_condition(api.clone(), name, phase_is(Phase::Running)).await,
                "await Running",
            );
            let start = ms(t0.elapsed());
            let id = running
                .and_then(|t| t.run_id().map(String::from))
                .expect("run id");
            until_stop(&agent.state_dir.join("jobs").join(id).join("stdout"));
            // The benchmark's own client pays about 45 ms to set up a connection after an idle
            // while here: warm it, so the agent is what is timed.
            must(api.get(name).await, "warm the client");
            let t1 = Instant::now();
            let stop = Patch::Merge(serde_json::json!({"spec": {"stop": true}}));
            must(
                api.patch(name, &PatchParams::default(), &stop).await,
                "stop",
            );
            let done = must(
                await_condition(api.clone(), name, phase_is(Phase::Completed)).await,
                "await Completed",
            );
            // The ConfigMap is written before Completed: it is readable now.
            let collect = ms(t1.elapsed());
            let cm = done
                .and_then(|t| t.status)
                .and_then(|s| s.output_ref)
                .map(|r| r.name)
                .expect("outputRef");
            must(cms.get(&cm).await, "ConfigMap readable");
            (start, collect)
        })
    }

    /// Bare bpftrace on the same program, timed to the same events: exec until attached (its
    /// attach line, and waiting for events: the agent's own criterion); then `until_stop` (given
    /// the bytes it has printed so far); then SIGINT until it exited and all it printed was read.
    fn bare_run(program: &str, until_stop: &dyn Fn(&dyn Fn() -> u64)) -> (f64, f64) {
        let dir = must(tempfile::tempdir(), "tempdir");
        let path = dir.path().join("program.bt");
        must(std::fs::write(&path, program), "write program");
        let t0 = Instant::now();
        let mut child = must(
            Command::new("bpftrace")
                .arg("--")
                .arg(&path)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn(),
            "spawn bpftrace",
        );
        let pid = child.id() as i32;
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut attach = String::new();
        must(out.read_line(&mut attach), "read the attach line");
        assert!(attach.starts_with("Attaching"), "{attach}");
        let printed = Arc::new(AtomicU64::new(0));
        // Read from now on: a program that prints at once would otherwise fill the pipe and
        // block before it ever waits for events.
        let reader = {
            let printed = printed.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    printed.fetch_add(n as u64, Ordering::SeqCst);
                }
            })
        };
        // Attached, by the agent's criterion: waiting for events, or printed from a probe. Polled
        // tightly: the measure must not add its own delay.
        while !tracejob_agent::host::process::is_polling(pid) && printed.load(Ordering::SeqCst) == 0
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let start = ms(t0.elapsed());
        until_stop(&|| printed.load(Ordering::SeqCst));
        let t1 = Instant::now();
        // SIGINT, repeated as the agent repeats it: only to a bpftrace still waiting for events
        // (bpftrace 0.17 rarely ignores a single one).
        let mut first = true;
        loop {
            if first || tracejob_agent::host::process::is_polling(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            first = false;
            let again = Instant::now() + tracejob_agent::decide::job::REPEAT_SIGINT;
            while Instant::now() < again {
                if must(child.try_wait(), "wait bpftrace").is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if must(child.try_wait(), "wait bpftrace").is_some() {
                break;
            }
        }
        let _ = reader.join();
        (start, ms(t1.elapsed()))
    }

    /// Resident memory (KiB) now, and CPU seconds used over `window`, of one process.
    fn footprint(pid: i32, window: Duration) -> (u64, f64) {
        let cpu = || -> f64 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            let ticks: f64 = fields
                .get(11)
                .and_then(|u| u.parse::<f64>().ok())
                .unwrap_or(0.0)
                + fields
                    .get(12)
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0);
            ticks / 100.0
        };
        let before = cpu();
        std::thread::sleep(window);
        let used = cpu() - before;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (rss, used)
    }

    fn counts(agent: &Agent) -> BTreeMap<String, f64> {
        let (_, body) = agent.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with("tracejob_api_requests_total"))
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0.0)))
            })
            .collect()
    }
}

fn main() {
    // This binary run again as the scale table's hollow agents.
    if std::env::var_os(scale::HOLLOW).is_some() {
        scale::hollow_main();
        return;
    }
    support::require_bpftrace_environment();
    // BENCH_ONLY=metrics: spec.metrics' rows alone (real bpftrace, no cluster).
    if std::env::var("BENCH_ONLY").as_deref() == Ok("metrics") {
        println!("| what | min / median / max |\n|---|---|");
        for (what, value) in metrics::rows(env_num("BENCH_RUNS", 10)) {
            println!("| {what} | {value} |");
        }
        return;
    }
    scale::raise_open_files();
    let runs = env_num("BENCH_RUNS", 10);
    let window = Duration::from_secs(env_num("BENCH_FOOTPRINT_SECS", 60));
    let env = Env::new(ControlPlane::start());
    env.install_crd();
    let rt = must(tokio::runtime::Runtime::new(), "runtime");
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
    let mut b = Bench {
        env,
        rt,
        client,
        rows: Vec::new(),
    };
    let version = String::from_utf8_lossy(
        &must(
            Command::new("bpftrace").arg("--version").output(),
            "bpftrace",
        )
        .stdout,
    )
    .trim()
    .to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(String::from))
        .unwrap_or_default();
    b.row(
        "machine",
        format!(
            "{} cores ({cpu}), kernel {}, {version}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            String::from_utf8_lossy(
                &must(Command::new("uname").arg("-r").output(), "uname").stdout
            )
            .trim()
        ),
    );

    // BENCH_ONLY=faults: the fault scenarios during a fan-out (BENCH_FAULTS_N hollow agents).
    if std::env::var("BENCH_ONLY").as_deref() == Ok("faults") {
        scale::faults_table(&b);
        return;
    }
    // BENCH_ONLY=scale: the scale table alone (it takes most of the time).
    if std::env::var("BENCH_ONLY").as_deref() == Ok("scale") {
        scale::table(&b);
        return;
    }

    // Latency and API cost: one agent, its default configuration.
    let ns = b.env.namespace("bench");
    let agent = Agent::start_with(&b.env, "bench-node", &b.env.cp.kubeconfig, &[], &[]);
    wait_for(Duration::from_secs(30), "agent ready", || {
        (agent.get("/readyz").0 == 200).then_some(())
    });
    // A fresh API server takes about 2 s over its first TraceJob create (the CRD's storage and
    // validation set up once): not the agent's cost, so pay it before timing.
    b.rt.block_on(async {
        let warm = tracejob("warm-up", "no-such-node", BIOLATENCY);
        must(
            b.api(&ns).create(&PostParams::default(), &warm).await,
            "warm-up create",
        );
    });
    let before = Bench::counts(&agent);
    let (mut start, mut bare_start, mut collect, mut bare_collect) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let run_a_while = |_: &Path| std::thread::sleep(Duration::from_millis(300));
    // Which goes first alternates, so neither always meets a machine the other just warmed.
    for i in 0..runs {
        for agent_turn in [i % 2 == 1, i % 2 == 0] {
            if agent_turn {
                let (s, c) =
                    b.agent_run(&ns, &agent, &format!("lat-{i}"), BIOLATENCY, &run_a_while);
                eprintln!("bench: run {i}: agent start {s:.0} ms, collect {c:.0} ms");
                start.push(s);
                collect.push(c);
            } else {
                let (s, c) = Bench::bare_run(BIOLATENCY, &|_| {
                    std::thread::sleep(Duration::from_millis(300))
                });
                eprintln!("bench: run {i}: bare start {s:.0} ms, collect {c:.0} ms");
                bare_start.push(s);
                bare_collect.push(c);
            }
        }
    }
    let after = Bench::counts(&agent);
    let (start, bare_start, collect, bare_collect) = (
        Spread(start),
        Spread(bare_start),
        Spread(collect),
        Spread(bare_collect),
    );
    b.row(
        "start latency, biolatency (agent / bare bpftrace), min / median / max",
        format!(
            "{start} / {bare_start}: median ratio {:.2}, goal <= 1.25 x bare + 100 ms = {:.0} ms",
            start.median() / bare_start.median(),
            1.25 * bare_start.median() + 100.0
        ),
    );
    b.row(
        "collect latency, biolatency (agent / bare bpftrace), min / median / max",
        format!(
            "{collect} / {bare_collect}: goal <= bare + 100 ms = {:.0} ms",
            bare_collect.median() + 100.0
        ),
    );
    let delta = |filter: &dyn Fn(&str) -> bool| -> f64 {
        after
            .iter()
            .filter(|(k, _)| filter(k))
            .map(|(k, v)| v - before.get(k).copied().unwrap_or(0.0))
            .sum::<f64>()
            / runs as f64
    };
    let writes = delta(&|k| {
        (k.contains("\"POST\"") || k.contains("\"PUT\"") || k.contains("\"PATCH\""))
            && !k.contains("events")
    });
    let all = delta(&|k| !k.contains("WATCH"));
    let events = delta(&|k| k.contains("events"));
    let reads = delta(&|k| k.contains("\"GET\""));
    b.row("API requests per lifecycle (counted by the agent)", format!("{all:.1} in all: {writes:.1} writes of status and ConfigMaps (goal <= 5), {events:.1} for Events, {reads:.1} reads (its scope comes from watches)"));
    // BENCH_ONLY=latency: the start and collect rows alone (a few minutes, for a quick comparison).
    if std::env::var("BENCH_ONLY").as_deref() == Ok("latency") {
        return;
    }

    // Collect latency of a 1 MiB output: printf lines until a MiB is printed, then the stop.
    let (mut big, mut bare_big) = (Vec::new(), Vec::new());
    let mib = 1024 * 1024;
    for i in 0..runs {
        for agent_turn in [i % 2 == 1, i % 2 == 0] {
            if agent_turn {
                let (_, c) = b.agent_run(
                    &ns,
                    &agent,
                    &format!("mib-{i}"),
                    PRINT_A_MIB,
                    &|stdout: &Path| {
                        while std::fs::metadata(stdout).map_or(0, |m| m.len()) < mib {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    },
                );
                eprintln!("bench: run {i}: agent collect of a MiB {c:.0} ms");
                big.push(c);
            } else {
                let (_, c) = Bench::bare_run(PRINT_A_MIB, &|printed: &dyn Fn() -> u64| {
                    while printed() < mib {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                });
                eprintln!("bench: run {i}: bare collect of a MiB {c:.0} ms");
                bare_big.push(c);
            }
        }
    }
    let (big, bare_big) = (Spread(big), Spread(bare_big));
    b.row(
        "collect latency, 1 MiB of output (agent / bare bpftrace), min / median / max",
        format!(
            "{big} / {bare_big}: goal <= bare exit + 100 ms = {:.0} ms",
            bare_big.median() + 100.0
        ),
    );

    // 20 runs of 32 MiB of output each (the default per-job limit), collected at once: the
    // agent's memory and /healthz meanwhile. The output comes from the test double (a flood of
    // printf lines until SIGINT), which prints it faster and more evenly than a probe can.
    let flood_ns = b.env.namespace("flood");
    let double = bpftrace_double().to_string_lossy().into_owned();
    let flooder = Agent::start_with(
        &b.env,
        "flood-node",
        &b.env.cp.kubeconfig,
        &["--bpftrace", &double],
        &[],
    );
    wait_for(Duration::from_secs(30), "flood agent ready", || {
        (flooder.get("/readyz").0 == 200).then_some(())
    });
    let probe = flooder.probe_healthz();
    let api = b.api(&flood_ns);
    let t0 = Instant::now();
    b.rt.block_on(async {
        for i in 0..20 {
            must(
                api.create(
                    &PostParams::default(),
                    &tracejob(
                        &format!("f-{i}"),
                        "flood-node",
                        "// double: flood\nBEGIN {}",
                    ),
                )
                .await,
                "create",
            );
        }
        for i in 0..20 {
            must(
                await_condition(api.clone(), &format!("f-{i}"), phase_is(Phase::Completed)).await,
                "Completed",
            );
        }
    });
    let took = t0.elapsed();
    let slowest = ms(probe.finish());
    let pid = flooder.proc.as_ref().map(|p| p.pid()).unwrap_or(0);
    let peak = support::host::peak_rss(pid) / 1024;
    b.row(
        "20 runs of 32 MiB output each, collected at once",
        format!(
            "all 20 Completed in {:.1} s; agent peak RSS {:.1} MiB (goal < 100); slowest /healthz {slowest:.0} ms (goal < 1000)",
            took.as_secs_f64(),
            peak as f64 / 1024.0
        ),
    );
    drop(flooder);

    // 3: footprint.
    let idle = Agent::start_with(&b.env, "idle-node", &b.env.cp.kubeconfig, &[], &[]);
    wait_for(Duration::from_secs(30), "idle agent ready", || {
        (idle.get("/readyz").0 == 200).then_some(())
    });
    let idle_pid = idle.proc.as_ref().map(|p| p.pid()).unwrap_or(0);
    let (rss, cpu_s) = Bench::footprint(idle_pid, window);
    b.row(
        "idle agent, no jobs",
        format!(
            "{:.1} MiB resident, {:.2}% of a core over {}s (goals < 20 MiB, < 1%)",
            rss as f64 / 1024.0,
            cpu_s / window.as_secs_f64() * 100.0,
            window.as_secs()
        ),
    );
    let busy_ns = b.env.namespace("busy");
    for i in 0..20 {
        b.env.kubectl.apply(&busy_ns, &format!("apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: busy-{i}}}\nspec: {{nodeName: idle-node, program: 'tracepoint:raw_syscalls:sys_enter {{ @[comm] = count(); }}'}}\n"));
    }
    let api = b.api(&busy_ns);
    b.rt.block_on(async {
        for i in 0..20 {
            must(
                await_condition(api.clone(), &format!("busy-{i}"), phase_is(Phase::Running)).await,
                "busy Running",
            );
        }
    });
    let (rss20, cpu20) = Bench::footprint(idle_pid, window);
    b.row(
        "agent with 20 running traces (the agent alone)",
        format!(
            "{:.1} MiB resident, {:.2}% of a core over {}s",
            rss20 as f64 / 1024.0,
            cpu20 / window.as_secs_f64() * 100.0,
            window.as_secs()
        ),
    );
    for i in 0..20 {
        b.env.kubectl.ok(&[
            "patch",
            "-n",
            &busy_ns,
            "tj",
            &format!("busy-{i}"),
            "--type=merge",
            "-p",
            r#"{"spec":{"stop":true}}"#,
        ]);
    }
    drop(idle);

    // 4: scale on one node (as many traces as a node runs at once by default), and many agents
    // on one API server.
    const ONE_NODE: usize = 32;
    let scale_ns = b.env.namespace("scale");
    let fifty = Agent::start_with(&b.env, "scale-node", &b.env.cp.kubeconfig, &[], &[]);
    let api = b.api(&scale_ns);
    let cms: Api<ConfigMap> = Api::namespaced(b.client.clone(), &scale_ns);
    let (running, landed) = b.rt.block_on(async {
        let t0 = Instant::now();
        for i in 0..ONE_NODE {
            must(
                api.create(
                    &PostParams::default(),
                    &tracejob(
                        &format!("s-{i}"),
                        "scale-node",
                        "tracepoint:raw_syscalls:sys_enter { @[comm] = count(); }",
                    ),
                )
                .await,
                "create",
            );
        }
        for i in 0..ONE_NODE {
            must(
                await_condition(api.clone(), &format!("s-{i}"), phase_is(Phase::Running)).await,
                "Running",
            );
        }
        let running = t0.elapsed();
        let t1 = Instant::now();
        let stop = Patch::Merge(serde_json::json!({"spec": {"stop": true}}));
        for i in 0..ONE_NODE {
            must(
                api.patch(&format!("s-{i}"), &PatchParams::default(), &stop)
                    .await,
                "stop",
            );
        }
        for i in 0..ONE_NODE {
            must(
                await_condition(api.clone(), &format!("s-{i}"), phase_is(Phase::Completed)).await,
                "Completed",
            );
        }
        let n = must(cms.list(&Default::default()).await, "list ConfigMaps")
            .items
            .iter()
            .filter(|c| {
                c.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.contains("-output-"))
            })
            .count();
        assert_eq!(n, ONE_NODE);
        (running, t1.elapsed())
    });
    b.row(
        &format!("{ONE_NODE} TraceJobs on one node (the default --max-running-traces)"),
        format!(
            "all Running after {:.1} s; all {ONE_NODE} ConfigMaps {:.1} s after the stops",
            running.as_secs_f64(),
            landed.as_secs_f64()
        ),
    );
    drop(fifty);

    let many_ns = b.env.namespace("many");
    let agents: Vec<Agent> = (0..20)
        .map(|i| Agent::start_with(&b.env, &format!("many-{i}"), &b.env.cp.kubeconfig, &[], &[]))
        .collect();
    let api = b.api(&many_ns);
    let elapsed = b.rt.block_on(async {
        let t0 = Instant::now();
        for (i, a) in agents.iter().enumerate() {
            for j in 0..5 {
                must(
                    api.create(
                        &PostParams::default(),
                        &tracejob(
                            &format!("m-{i}-{j}"),
                            &a.node,
                            "BEGIN { printf(\"hi\\n\"); exit(); }",
                        ),
                    )
                    .await,
                    "create",
                );
            }
        }
        for i in 0..20 {
            for j in 0..5 {
                must(
                    await_condition(
                        api.clone(),
                        &format!("m-{i}-{j}"),
                        phase_is(Phase::Completed),
                    )
                    .await,
                    "Completed",
                );
            }
        }
        t0.elapsed()
    });
    let mut exactly_once = true;
    for a in &agents {
        let started = a.logs().matches("trace started under its shim").count();
        exactly_once &= started == 5;
    }
    let labels = b.env.kubectl.ok(&["get", "configmap", "-n", &many_ns, "-l", "observe.tracejob.dev/tracejob", "-o", "jsonpath={range .items[*]}{.metadata.labels.observe\\.tracejob\\.dev/tracejob} {.metadata.labels.observe\\.tracejob\\.dev/node}{\"\\n\"}{end}"]);
    let right_agent = labels.lines().filter(|l| !l.is_empty()).all(|l| {
        let (job, node) = l.split_once(' ').unwrap_or_default();
        job.strip_prefix("m-")
            .and_then(|r| r.split('-').next())
            .map(|i| format!("many-{i}"))
            == Some(node.to_string())
    });
    b.row("20 agents x 5 jobs on one API server", format!("all 100 Completed in {:.1} s; each job run exactly once: {exactly_once}; by the right agent: {right_agent} ({} ConfigMaps)", elapsed.as_secs_f64(), labels.lines().filter(|l| !l.is_empty()).count()));
    drop(agents);
    drop(agent);

    println!("\n| measure | result |\n|---|---|");
    for (what, value) in &b.rows {
        println!("| {what} | {value} |");
    }

    scale::table(&b);
}
