//! A fan-out to 20 nodes that survives faults: the API server down while the nodes start and
//! while they store, a tenth of the agents killed mid-run, watches expired (410 Gone after an
//! etcd compaction), the active summarizer killed during the merge. The same scenarios as the
//! benchmark runs at 1,000 hollow agents (`BENCH_ONLY=faults`, support/faults.rs), here with 20
//! agent processes (`tracejob-agent run` with the bpftrace double): each a real process, so a
//! killed agent is a SIGKILL of its process and its traces outlive it as on a real node, and
//! 20 of them start in seconds. The tests that stop the API server or compact etcd have a
//! control plane of their own, so the tests running alongside see no fault.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::faults::{self, Fault, Fleet};
use crate::support::{bpftrace_double, wait_for, Agent, ControlPlane, Env, Summarizer, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "faults_api_server_down_while_nodes_start",
            run: |_| own_control_plane(Fault::ApiDownWhileStarting),
        },
        Test {
            name: "faults_api_server_down_while_nodes_store",
            run: |_| own_control_plane(Fault::ApiDownWhileStoring),
        },
        Test {
            name: "faults_watches_expire_after_compaction",
            run: |_| own_control_plane(Fault::WatchesExpired),
        },
        Test {
            name: "faults_tenth_of_agents_killed_mid_run",
            run: |env| scenario(env, "faults-kill", Fault::AgentsKilled),
        },
        Test {
            name: "faults_summarizer_killed_during_merge",
            run: |env| scenario(env, "faults-summ", Fault::SummarizerKilled),
        },
    ]
}

const NODES: usize = 20;

/// The agent processes of a test's nodes.
struct Agents {
    agents: Vec<Agent>,
    killed: Vec<usize>,
}

impl Fleet for Agents {
    fn nodes(&self) -> Vec<(String, PathBuf)> {
        self.agents
            .iter()
            .map(|a| (a.node.clone(), a.state_dir.clone()))
            .collect()
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        for a in &self.agents {
            let t = std::time::Instant::now();
            while a.get("/readyz").0 != 200 {
                if t.elapsed() > limit {
                    return Err(format!("{} not ready after {limit:?}", a.node));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    fn kill_tenth(&mut self) -> Vec<String> {
        self.killed = (0..self.agents.len().div_ceil(10)).collect();
        for &i in &self.killed {
            if let Some(p) = self.agents[i].proc.as_mut() {
                p.signal(Signal::SIGKILL);
                p.wait_exit(Duration::from_secs(10));
            }
        }
        self.killed
            .iter()
            .map(|&i| self.agents[i].node.clone())
            .collect()
    }

    fn restart_killed(&mut self) {
        let double = bpftrace_double();
        let double = double.to_string_lossy();
        for i in std::mem::take(&mut self.killed) {
            self.agents[i].restart(&["--bpftrace", &double]);
        }
    }

    fn log_lines(&self, needle: &str) -> usize {
        self.agents
            .iter()
            .map(|a| a.logs().lines().filter(|l| l.contains(needle)).count())
            .sum()
    }
}

/// Registers the nodes `{ns}-0`.. labelled `pool={ns}` in one request, and starts their agents.
fn start_agents(env: &Env, ns: &str) -> Agents {
    let items: Vec<serde_json::Value> = (0..NODES)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("{ns}-{i}"), "labels": {"pool": ns}}
            })
        })
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let r = env
        .kubectl
        .run_with_stdin(&["create", "-f", "-"], &list.to_string());
    assert!(r.ok, "registering the nodes: {}", r.stderr);
    let double = bpftrace_double();
    let double = double.to_string_lossy();
    let agents = (0..NODES)
        .map(|i| {
            Agent::start_registered(
                &format!("{ns}-{i}"),
                &env.cp.kubeconfig,
                &["--bpftrace", &double],
                &[],
            )
        })
        .collect();
    Agents {
        agents,
        killed: Vec::new(),
    }
}

/// Waits until `summarizer` holds its namespace's Lease.
fn leading(env: &Env, ns: &str, summarizer: &Summarizer) {
    wait_for(Duration::from_secs(60), "the summarizer to lead", || {
        let r = env.kubectl.run(&[
            "get",
            "-n",
            ns,
            &format!("lease/{}", summarizer.lease),
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        (r.ok && r.stdout.trim() == summarizer.identity).then_some(())
    });
}

fn scenario(env: &Env, stem: &str, fault: Fault) {
    let ns = env.namespace(stem);
    let mut fleet = start_agents(env, &ns);
    let mut active = Summarizer::of(env, &ns);
    leading(env, &ns, &active);
    let _standby = (fault == Fault::SummarizerKilled)
        .then(|| Summarizer::start(env, &ns, &active.lease, &format!("{ns}-standby")));
    let limit = Duration::from_secs(120);
    if let Err(why) = fleet.wait_ready(limit) {
        panic!("the agents: {why}");
    }
    let outcome = faults::run(env, &ns, &ns, &mut fleet, &mut active, fault, limit);
    eprintln!("{}", outcome.summary());
    if let Err(why) = outcome.verdict() {
        panic!("{}: {why}", fault.describe());
    }
}

fn own_control_plane(fault: Fault) {
    let own = Env::new(ControlPlane::start());
    own.install_crd();
    let stem = match fault {
        Fault::ApiDownWhileStarting => "faults-start",
        Fault::ApiDownWhileStoring => "faults-store",
        _ => "faults-expire",
    };
    scenario(&own, stem, fault);
}
