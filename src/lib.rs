//! tracejob-agent: runs the bpftrace programs of TraceJobs that name this node.
//!
//! Data flows one way: `cluster::watch` (this node's TraceJobs) -> `agent` (one actor per job)
//! -> `decide` (pure decisions) -> `host` (the shim, bpftrace, the run directory) and `output`
//! (maps read, output fitted) -> `cluster::writer` (status, ConfigMap, Events).

pub mod agent;
pub mod cluster;
pub mod config;
pub mod decide;
pub mod host;
pub mod metrics;
pub mod output;
pub mod plugin;
pub mod resource;
pub mod serve;
pub mod summarize;
pub mod trigger;
