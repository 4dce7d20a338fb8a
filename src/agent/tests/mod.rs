//! Unit tests of the job actor (`job::run`) and the dispatcher, against a mocked API server and
//! a bpftrace double: what only the end-to-end tests covered before (a claim under conflict, a
//! stop before the start, a deletion while the output is stored, a takeover, a relist that
//! misses a deletion), each in a few hundred milliseconds.
//!
//! `fixture` builds the agent (`Agent`: a `Ctx` around a client whose requests reach the test,
//! `api`) and the objects, `doubles` the programs it starts; `actor` and `dispatcher` hold one
//! test per behaviour.

mod actor;
mod api;
mod dispatcher;
mod doubles;
mod fixture;
