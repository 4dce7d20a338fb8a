//! The benchmark: `cargo bench --bench tracejob` (as root). Real control plane, real bpftrace, the
//! agent as a release build. Prints one Markdown table. Run by hand, not in CI.
//!
//! BENCH_RUNS (default 10) sets the latency runs, BENCH_FOOTPRINT_SECS (default 60) the footprint
//! windows.

#[path = "../tests/e2e/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::Api;
use support::{must, wait_for, Agent, ControlPlane, Env};
use tracejob_agent::resource::{Phase, TraceJob, TraceJobSpec};

const BIOLATENCY: &str = include_str!("../bpf-samples/biolatency.bt");

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn tracejob(name: &str, node: &str, program: &str) -> TraceJob {
    TraceJob::new(
        name,
        TraceJobSpec {
            node_name: node.into(),
            program: program.into(),
            args: vec![],
            stop: false,
            deadline: 3600,
            deadline_grace_period: 30,
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

    /// Create until Running, and stop until the ConfigMap is readable, through the API.
    fn agent_latency(&self, ns: &str, node: &str, runs: u64) -> (Vec<f64>, Vec<f64>) {
        let (mut start, mut collect) = (Vec::new(), Vec::new());
        let api = self.api(ns);
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        for i in 0..runs {
            let name = format!("lat-{i}");
            self.rt.block_on(async {
                let t0 = Instant::now();
                must(
                    api.create(&PostParams::default(), &tracejob(&name, node, BIOLATENCY))
                        .await,
                    "create",
                );
                must(
                    await_condition(api.clone(), &name, phase_is(Phase::Running)).await,
                    "await Running",
                );
                start.push(ms(t0.elapsed()));
                tokio::time::sleep(Duration::from_millis(300)).await;
                let t1 = Instant::now();
                let stop = Patch::Merge(serde_json::json!({"spec": {"stop": true}}));
                must(
                    api.patch(&name, &PatchParams::default(), &stop).await,
                    "stop",
                );
                let done = must(
                    await_condition(api.clone(), &name, phase_is(Phase::Completed)).await,
                    "await Completed",
                );
                let cm = done
                    .and_then(|t| t.status)
                    .and_then(|s| s.output_ref)
                    .map(|r| r.name)
                    .expect("outputRef");
                must(cms.get(&cm).await, "ConfigMap readable");
                collect.push(ms(t1.elapsed()));
            });
        }
        (start, collect)
    }

    /// Bare bpftrace on the same program: exec until attached (its attach line, and waiting for
    /// events: the agent's own criterion), and SIGINT until it exited with its maps printed.
    fn bare_latency(&self, runs: u64) -> (Vec<f64>, Vec<f64>) {
        let dir = must(tempfile::tempdir(), "tempdir");
        let program = dir.path().join("biolatency.bt");
        must(std::fs::write(&program, BIOLATENCY), "write program");
        let (mut start, mut collect) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let t0 = Instant::now();
            let mut child = must(
                Command::new("bpftrace")
                    .arg("--")
                    .arg(&program)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn(),
                "spawn bpftrace",
            );
            let pid = child.id() as i32;
            let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            let attach = lines.next().and_then(Result::ok).unwrap_or_default();
            assert!(attach.starts_with("Attaching"), "{attach}");
            // Polled tightly: the measure must not add its own delay.
            while !tracejob_agent::host::process::is_polling(pid) {
                std::thread::sleep(Duration::from_millis(1));
            }
            start.push(ms(t0.elapsed()));
            std::thread::sleep(Duration::from_millis(300));
            let t1 = Instant::now();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
            let printed: Vec<String> = lines.map_while(Result::ok).collect();
            must(child.wait(), "wait bpftrace");
            collect.push(ms(t1.elapsed()));
            assert!(
                printed.iter().any(|l| l.starts_with("@usecs"))
                    || printed.iter().all(|l| l.is_empty())
            );
        }
        (start, collect)
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
    support::require_bpftrace_environment();
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

    // 1, 2 and 5: latency and API cost, one agent without live output.
    let ns = b.env.namespace("bench");
    let agent = Agent::start_with(
        &b.env,
        "bench-node",
        &b.env.cp.kubeconfig,
        &["--live-interval", "0"],
        &[],
    );
    wait_for(Duration::from_secs(30), "agent ready", || {
        (agent.get("/readyz").0 == 200).then_some(())
    });
    let before = Bench::counts(&agent);
    let (start, collect) = b.agent_latency(&ns, &agent.node, runs);
    let after = Bench::counts(&agent);
    let (bare_start, bare_collect) = b.bare_latency(runs);
    let (s, bs, c, bc) = (
        median(start),
        median(bare_start),
        median(collect),
        median(bare_collect),
    );
    b.row(
        "start latency, median of runs (agent / bare bpftrace)",
        format!(
            "{s:.0} ms / {bs:.0} ms: ratio {:.2}, goal <= 1.25 x bare + 100 ms = {:.0} ms",
            s / bs,
            1.25 * bs + 100.0
        ),
    );
    b.row(
        "collect latency, median (agent / bare bpftrace)",
        format!(
            "{c:.0} ms / {bc:.0} ms: ratio {:.2}, goal <= bare + 100 ms = {:.0} ms",
            c / bc,
            bc + 100.0
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
    b.row("API requests per lifecycle (counted by the agent)", format!("{all:.1} in all: {writes:.1} writes of status and ConfigMaps (goal <= 5), {events:.1} for Events"));

    // 3: footprint.
    let idle = Agent::start_with(
        &b.env,
        "idle-node",
        &b.env.cp.kubeconfig,
        &["--live-interval", "0"],
        &[],
    );
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

    // 4: scale on one node, and many agents on one API server.
    let scale_ns = b.env.namespace("scale");
    let fifty = Agent::start_with(
        &b.env,
        "scale-node",
        &b.env.cp.kubeconfig,
        &["--live-interval", "0"],
        &[],
    );
    let api = b.api(&scale_ns);
    let cms: Api<ConfigMap> = Api::namespaced(b.client.clone(), &scale_ns);
    let (running, landed) = b.rt.block_on(async {
        let t0 = Instant::now();
        for i in 0..50 {
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
        for i in 0..50 {
            must(
                await_condition(api.clone(), &format!("s-{i}"), phase_is(Phase::Running)).await,
                "Running",
            );
        }
        let running = t0.elapsed();
        let t1 = Instant::now();
        let stop = Patch::Merge(serde_json::json!({"spec": {"stop": true}}));
        for i in 0..50 {
            must(
                api.patch(&format!("s-{i}"), &PatchParams::default(), &stop)
                    .await,
                "stop",
            );
        }
        for i in 0..50 {
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
        assert_eq!(n, 50);
        (running, t1.elapsed())
    });
    b.row(
        "50 TraceJobs on one node",
        format!(
            "all Running after {:.1} s; all 50 ConfigMaps {:.1} s after the stops",
            running.as_secs_f64(),
            landed.as_secs_f64()
        ),
    );
    drop(fifty);

    let many_ns = b.env.namespace("many");
    let agents: Vec<Agent> = (0..20)
        .map(|i| {
            Agent::start_with(
                &b.env,
                &format!("many-{i}"),
                &b.env.cp.kubeconfig,
                &["--live-interval", "0"],
                &[],
            )
        })
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
        let started = a.logs().matches("bpftrace started").count();
        exactly_once &= started == 5;
    }
    let labels = b.env.kubectl.ok(&["get", "configmap", "-n", &many_ns, "-o", "jsonpath={range .items[*]}{.metadata.labels.observe\\.tracejob\\.dev/tracejob} {.metadata.labels.observe\\.tracejob\\.dev/node}{\"\\n\"}{end}"]);
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
}
