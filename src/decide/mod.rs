//! Every decision the agent makes, as pure functions with unit tests: one job's lifecycle
//! (`job`), the status that reports it (`status`) and the node's live-output budget (`budget`).
//! No I/O here.

pub mod budget;
pub mod job;
pub mod status;
