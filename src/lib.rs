//! tracejob-agent: runs the bpftrace programs of TraceJobs that name this node.

pub mod api;
pub mod crd;
