//! What bpftrace printed, as results, and the output ConfigMap's format both ways: its maps read
//! out of the text (`parse`) into data (`maps`); the whole output fitted into a ConfigMap
//! (`fit`, `collect`: plain, gzip, binaryData, live windows); read back out of one, and several
//! nodes' outputs merged (`read`, `merge`). Nothing outside `output/` knows the keys (`key`).

pub mod collect;
pub mod fit;
pub mod flame;
pub mod maps;
pub mod merge;
pub mod parse;
pub mod prom;
pub mod read;

/// The keys of an output ConfigMap's `data` and `binaryData`.
pub mod key {
    /// The output as bpftrace printed it: text in `data`, or bytes in `binaryData`.
    pub const OUTPUT: &str = "output";
    /// The output gzip-compressed, in `binaryData`.
    pub const OUTPUT_GZ: &str = "output.gz";
    /// The maps as JSON, in `data`.
    pub const MAPS_JSON: &str = "maps.json";
    /// The maps as JSON gzip-compressed, in `binaryData`.
    pub const MAPS_JSON_GZ: &str = "maps.json.gz";
    /// The program as it ran (with a target, its variables filled in), in `data`.
    pub const PROGRAM: &str = "program";
}
