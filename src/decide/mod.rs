//! Every decision the agent makes, as pure functions with unit tests: one job's lifecycle
//! (`job`), the status that reports it (`status`), the node's live-output budget (`budget`) and
//! which namespaces may trace this node (`scope`), and a TraceJob's target pod (`target`).
//! No I/O here.

pub mod budget;
pub mod job;
pub mod scope;
pub mod status;
pub mod target;
