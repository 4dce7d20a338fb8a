//! The agent's side of the API server: its client, the watch of its node's TraceJobs, what it
//! looks up (namespaces, its node), every write (status, output ConfigMaps, Events), and the
//! question asked on exit (is there a successor?).

pub mod client;
pub mod handover;
pub mod lookup;
pub mod watch;
pub mod writer;
