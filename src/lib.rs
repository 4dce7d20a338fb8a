//! tracejob-agent: runs the bpftrace programs of TraceJobs that name this node.
//!
//! Data flows one way: `watch` (TraceJobs of this node) -> `lifecycle` (pure decisions) ->
//! `bpftrace` and `state` (the process and its files) -> `report` (status, ConfigMap, Events).
//! `agent` wires them together, one task per job.

pub mod agent;
pub mod api;
pub mod bpftrace;
pub mod cgroup;
pub mod crd;
pub mod handover;
pub mod lifecycle;
pub mod metrics;
pub mod output;
pub mod report;
pub mod server;
pub mod state;
pub mod storage;
pub mod watch;
