//! The agent's side of the API server: its client, the watch of its node's TraceJobs, the stores
//! of what else it reads (its node, the namespaces, its node's pods), the one lookup left (a
//! target pod not on this node), every write (status, output ConfigMaps, Events), and the
//! question asked on exit (is there a successor?).

pub mod client;
pub mod handover;
pub mod lookup;
pub mod parts;
pub mod stores;
pub mod traffic;
pub mod watch;
pub mod writer;
