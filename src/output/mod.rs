//! What bpftrace printed, as results: its maps read out of the text (`parse`) into data
//! (`maps`), and the whole output fitted into a ConfigMap (`fit`, `collect`).

pub mod collect;
pub mod fit;
pub mod flame;
pub mod maps;
pub mod merge;
pub mod parse;
pub mod prom;
