//! The node's side of a run: the shim that supervises bpftrace, what bpftrace prints, processes
//! by identity, the host cgroup traces live in, and the run directory on disk.

pub mod bpftrace;
pub mod cgroup;
pub mod container;
pub mod dump;
pub mod process;
pub mod progress;
pub mod record;
pub mod rundir;
pub mod shim;
