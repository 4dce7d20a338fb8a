//! What every job actor shares, made in one place (`Ctx::new`) for the agent and its tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{watch, Semaphore};

use crate::cluster::stores::Stores;
use crate::cluster::writer::Writer;
use crate::decide::budget::Budget;
use crate::host::rundir::StateDir;

use super::{trace_metrics, Config, Metrics};

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
    /// Its Node, the Namespaces and its node's pods, as their watches have them.
    pub stores: Stores,
    /// A permit per trace running (`--max-running-traces`).
    pub slots: Arc<Semaphore>,
    /// Each namespace's permits (`--max-running-traces-per-namespace`), while it runs or waits.
    pub namespace_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// The traces' metrics (spec.metrics), served on `--trace-metrics-listen`.
    pub trace_metrics: Arc<trace_metrics::Registry>,
}

/// What the agent learnt at start, beside its configuration, client and metrics: what `Ctx::new`
/// cannot derive from them.
pub struct Facts {
    /// `bpftrace --version`.
    pub bpftrace_version: String,
    /// The state directory, locked for this agent.
    pub state: StateDir,
    /// This binary, which runs as each trace's shim.
    pub exe: PathBuf,
    /// Its Node, the Namespaces and its node's pods (watched, or fixed in tests).
    pub stores: Stores,
    /// Becomes true when the agent exits and no agent will take the traces over.
    pub removed: watch::Receiver<bool>,
    /// Where the traces' metrics go (served on `--trace-metrics-listen` by the agent).
    pub trace_metrics: Arc<trace_metrics::Registry>,
}

impl Ctx {
    /// The one way to make a `Ctx`: the agent and its tests both use it, so what is derived from
    /// the configuration (the writer, the slots, the collections, the live budget) is derived
    /// once, the same way.
    pub fn new(config: Config, client: kube::Client, metrics: Arc<Metrics>, facts: Facts) -> Ctx {
        let node = config.node_name.clone();
        Ctx {
            slots: Arc::new(Semaphore::new(
                usize::try_from(config.max_running_traces).unwrap_or(usize::MAX),
            )),
            namespace_slots: Mutex::default(),
            writer: Writer::new(client.clone(), &node, &facts.bpftrace_version),
            collections: Semaphore::new(usize::from(config.max_concurrent_collections)),
            live_budget: Mutex::new(Budget::new(
                config.live_budget_bytes_per_minute,
                Instant::now(),
            )),
            client,
            metrics,
            bpftrace_version: facts.bpftrace_version,
            state: facts.state,
            exe: facts.exe,
            stores: facts.stores,
            removed: facts.removed,
            trace_metrics: facts.trace_metrics,
            config,
        }
    }
}
