//! Reading outputs back out of their ConfigMaps (plain, byte for byte, or gzip expanded up to a
//! limit the caller gives), and merging several nodes' outputs one node at a time under a
//! budget: what the plugin shows and what the summarizer stores as a fan-out's merged output.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use k8s_openapi::api::core::v1::ConfigMap;

use super::key;
use super::maps::{Map, Maps, Value};
use super::merge::{self, Kind, Merged};
use super::parse;

/// What a reader expands from gzip at most by default (the plugin's and the summarizer's
/// `--max-output-bytes`): twice the agent's default output limit.
pub const DEFAULT_EXPANDED_LIMIT: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the stored output is not gzip: {0}")]
    NotGzip(std::io::Error),
    #[error("the stored output expands to more than {0} bytes; not expanding it")]
    TooLarge(u64),
    #[error("maps.json: {0}")]
    Maps(serde_json::Error),
    #[error("the stored output cannot be read: {0}")]
    Read(std::io::Error),
}

/// Expands gzip, reading at most `limit` bytes: a ConfigMap anyone with `edit` may write could
/// hold a gzip bomb.
pub fn gunzip(bytes: &[u8], limit: u64) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(Error::NotGzip)?;
    if out.len() as u64 > limit {
        return Err(Error::TooLarge(limit));
    }
    Ok(out)
}

/// The output bytes a ConfigMap holds: `data.output`, `binaryData.output`, or the gzip in
/// `binaryData.output.gz` expanded (at most `limit` bytes).
pub fn output_bytes(cm: &ConfigMap, limit: u64) -> Result<Vec<u8>, Error> {
    if let Some(text) = cm.data.as_ref().and_then(|d| d.get(key::OUTPUT)) {
        return Ok(text.as_bytes().to_vec());
    }
    let binary = cm.binary_data.as_ref();
    if let Some(bytes) = binary.and_then(|b| b.get(key::OUTPUT)) {
        return Ok(bytes.0.clone());
    }
    match binary.and_then(|b| b.get(key::OUTPUT_GZ)) {
        Some(gz) => gunzip(&gz.0, limit),
        None => Ok(Vec::new()),
    }
}

/// The maps a ConfigMap holds (maps.json, plain or gzip, at most `limit` bytes), or, where
/// maps.json was left out for size, read again from the output.
pub fn maps_of(cm: &ConfigMap, limit: u64) -> Result<Maps, Error> {
    let json = match cm.data.as_ref().and_then(|d| d.get(key::MAPS_JSON)) {
        Some(text) => Some(text.as_bytes().to_vec()),
        None => cm
            .binary_data
            .as_ref()
            .and_then(|b| b.get(key::MAPS_JSON_GZ))
            .map(|gz| gunzip(&gz.0, limit))
            .transpose()?,
    };
    match json {
        Some(j) => serde_json::from_slice(&j).map_err(Error::Maps),
        None => Ok(parse::parse(&String::from_utf8_lossy(&output_bytes(
            cm, limit,
        )?))),
    }
}

/// The outputs of a TraceJob's nodes, merged: each node's printf lines, and the maps.
pub struct NodesOutput {
    pub bpftrace: Option<String>,
    /// Each node and its printf lines (what it printed before its maps).
    pub printed: Vec<(String, String)>,
    pub merged: Merged,
    /// Nodes whose output is not in it, and why (over the budget, or unreadable).
    pub left_out: Vec<(String, String)>,
}

impl NodesOutput {
    /// As bpftrace would print it: each node's printf lines under its name, then the merged
    /// maps, then the maps that cannot be merged, under their node's name.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for (node, lines) in &self.printed {
            if !lines.trim().is_empty() {
                text += &format!("==> node {node} <==\n{}\n", lines.trim_end());
            }
        }
        text += &merge::render(&self.merged.maps, self.bpftrace.as_deref());
        for (node, map) in &self.merged.apart {
            text += &format!(
                "==> {} of node {node}, not merged <==\n{}",
                map.name,
                merge::render(std::slice::from_ref(map), self.bpftrace.as_deref())
            );
        }
        text
    }

    pub fn json(&self) -> serde_json::Value {
        let apart: Vec<serde_json::Value> = self
            .merged
            .apart
            .iter()
            .map(|(node, map)| serde_json::json!({"node": node, "map": map}))
            .collect();
        serde_json::json!({
            "bpftrace": self.bpftrace,
            "nodes": self.printed.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "maps": self.merged.maps,
            "apart": apart,
        })
    }
}

/// Merges nodes' outputs one at a time: each is read (expanded up to `per_node` bytes),
/// parsed, merged into the running result and let go, so memory holds the running result and
/// one node's output, never every node's at once. A node whose printf lines and maps would take
/// the running result over `budget` bytes (as estimated) is left out, and said to be.
pub struct Merger {
    kinds: BTreeMap<String, Kind>,
    per_node: u64,
    budget: u64,
    used: u64,
    /// The nodes each merged map holds so far (to name them if it must be kept apart later).
    sources: BTreeMap<String, Vec<String>>,
    /// Maps kept apart: every later node's map of that name is too.
    apart_names: BTreeSet<String>,
    out: NodesOutput,
}

impl Merger {
    /// A merge of the outputs of a TraceJob with `program` (which says how each map merges).
    pub fn new(program: &str, per_node: u64, budget: u64) -> Merger {
        Merger {
            kinds: merge::kinds(program),
            per_node,
            budget,
            used: 0,
            sources: BTreeMap::new(),
            apart_names: BTreeSet::new(),
            out: NodesOutput {
                bpftrace: None,
                printed: Vec::new(),
                merged: Merged {
                    maps: Vec::new(),
                    apart: Vec::new(),
                },
                left_out: Vec::new(),
            },
        }
    }

    /// Adds `node`'s output ConfigMap. A node that cannot be read or is over the budget is
    /// left out (`NodesOutput::left_out`); it never fails the whole merge.
    pub fn add(&mut self, node: &str, cm: &ConfigMap) {
        let read = || -> Result<(Maps, String), Error> {
            let maps = maps_of(cm, self.per_node)?;
            let bytes = output_bytes(cm, self.per_node)?;
            let parsed = parse::parse_reader(&bytes[..], 0).map_err(Error::Read)?;
            let head = &bytes[..usize::try_from(parsed.maps_start)
                .unwrap_or(bytes.len())
                .min(bytes.len())];
            // bpftrace's attach line is not the program's output.
            let lines: String = String::from_utf8_lossy(head)
                .lines()
                .filter(|l| !attach_line(l))
                .map(|l| format!("{l}\n"))
                .collect();
            Ok((maps, lines))
        };
        let (maps, lines) = match read() {
            Ok(r) => r,
            Err(e) => {
                self.out.left_out.push((node.to_string(), e.to_string()));
                return;
            }
        };
        let cost = (lines.len() as u64).saturating_add(size_of_maps(&maps.maps));
        if self.used.saturating_add(cost) > self.budget {
            self.out.left_out.push((
                node.to_string(),
                format!(
                    "over the merge budget of {} bytes (--merge-budget-bytes)",
                    self.budget
                ),
            ));
            return;
        }
        self.out.bpftrace = self.out.bpftrace.take().or(maps.bpftrace.clone());
        self.out.printed.push((node.to_string(), lines));
        self.fold(node, maps.maps);
        let printed: u64 = self.out.printed.iter().map(|(_, l)| l.len() as u64).sum();
        self.used = printed.saturating_add(size_of_maps(&self.out.merged.maps));
    }

    /// Merges one node's maps into the running result.
    fn fold(&mut self, node: &str, maps: Vec<Map>) {
        const SO_FAR: &str = "\u{0}merged so far";
        let mut fresh = Vec::new();
        for map in maps {
            if self.apart_names.contains(&map.name) {
                self.out.merged.apart.push((node.to_string(), map));
            } else {
                fresh.push(map);
            }
        }
        let names: Vec<String> = fresh.iter().map(|m| m.name.clone()).collect();
        let running = std::mem::take(&mut self.out.merged.maps);
        let both = [
            (
                SO_FAR.to_string(),
                Maps {
                    bpftrace: None,
                    maps: running,
                },
            ),
            (
                node.to_string(),
                Maps {
                    bpftrace: None,
                    maps: fresh,
                },
            ),
        ];
        let merged = merge::merge(&both, &self.kinds);
        drop(both);
        for name in names {
            self.sources.entry(name).or_default().push(node.to_string());
        }
        for (who, map) in merged.apart {
            let who = if who == SO_FAR {
                let mut nodes = self.sources.get(&map.name).cloned().unwrap_or_default();
                // This node's map of that name is apart on its own.
                nodes.retain(|n| n != node);
                nodes.join(", ")
            } else {
                who
            };
            self.apart_names.insert(map.name.clone());
            self.out.merged.apart.push((who, map));
        }
        self.out.merged.maps = merged.maps;
    }

    /// The merged output of every node added and not left out.
    pub fn finish(self) -> NodesOutput {
        self.out
    }
}

/// Merges the output ConfigMaps of a TraceJob's nodes (`program`: its program), each expanded
/// up to `per_node` bytes, under no budget but that: the plugin's view of one fan-out.
pub fn merged(
    nodes: &[(String, ConfigMap)],
    program: &str,
    per_node: u64,
) -> Result<NodesOutput, Error> {
    let mut merger = Merger::new(program, per_node, u64::MAX);
    for (node, cm) in nodes {
        // The plugin fails on an output it cannot read, as it always has.
        maps_of(cm, per_node)?;
        output_bytes(cm, per_node)?;
        merger.add(node, cm);
    }
    Ok(merger.finish())
}

/// Whether a line is bpftrace's "Attaching N probes..." (or "Attached N probes") line.
fn attach_line(line: &str) -> bool {
    let text = line.trim();
    let rest = text
        .strip_prefix("Attaching ")
        .or_else(|| text.strip_prefix("Attached "));
    rest.and_then(|r| r.split_whitespace().next())
        .is_some_and(|n| n.parse::<u64>().is_ok())
}

/// Roughly what maps take in memory: their keys and values and a fixed cost per entry and
/// bucket (the allocator's and the collections' overhead).
fn size_of_maps(maps: &[Map]) -> u64 {
    let mut size = 0u64;
    for map in maps {
        size = size.saturating_add(64 + map.name.len() as u64);
        for e in &map.entries {
            let key = e.key.as_ref().map_or(0, |k| k.len() as u64);
            let value = match &e.value {
                Value::Hist(buckets) => 32 * buckets.len() as u64,
                _ => 32,
            };
            size = size.saturating_add(96 + key + value);
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    }

    fn text(output: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([("output".into(), output.into())])),
            ..Default::default()
        }
    }

    #[test]
    fn output_comes_from_data_binary_data_or_gzip() {
        assert_eq!(
            output_bytes(&text("@x: 1\n"), 10).expect("plain"),
            b"@x: 1\n"
        );
        let bytes = ConfigMap {
            binary_data: Some(BTreeMap::from([(
                "output".into(),
                ByteString(b"\xff\n@x: 1\n".to_vec()),
            )])),
            ..Default::default()
        };
        assert_eq!(output_bytes(&bytes, 10).expect("bytes"), b"\xff\n@x: 1\n");
        let gz = ConfigMap {
            binary_data: Some(BTreeMap::from([(
                "output.gz".into(),
                ByteString(gzip(b"@x: 2\n")),
            )])),
            ..Default::default()
        };
        assert_eq!(output_bytes(&gz, 100).expect("gz"), b"@x: 2\n");
        // A gzip bomb: refused past the limit, with a clear error.
        let bomb = gzip(&vec![0u8; 4 * 1024 * 1024]);
        assert!(bomb.len() < 10 * 1024);
        let err = gunzip(&bomb, 1024 * 1024).expect_err("over the limit");
        assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
        assert_eq!(
            gunzip(&bomb, 4 * 1024 * 1024).expect("at the limit").len(),
            4 * 1024 * 1024
        );
        // maps.json left out for size: read from the output.
        assert_eq!(maps_of(&gz, 100).expect("maps").maps[0].name, "@x");
    }

    #[test]
    fn nodes_merge_one_at_a_time_as_all_at_once() {
        let program = "k:f { @c = count(); @s[comm] = sum(1); @a = avg(1); }";
        let outputs = [
            ("n1", "hello\n@c: 1\n@s[a]: 2\n@a: 3\n"),
            ("n2", "@c: 4\n@s[a]: 5\n@s[b]: 6\n@a: 7\n"),
            ("n3", "@c: 10\n@a: 1\n"),
        ];
        let nodes: Vec<(String, ConfigMap)> = outputs
            .iter()
            .map(|(n, o)| (n.to_string(), text(o)))
            .collect();
        let one_by_one = merged(&nodes, program, 1 << 20).expect("merged");
        let parsed: Vec<(String, Maps)> = outputs
            .iter()
            .map(|(n, o)| (n.to_string(), parse::parse(o)))
            .collect();
        let at_once = merge::merge(&parsed, &merge::kinds(program));
        assert_eq!(one_by_one.merged.maps, at_once.maps);
        let mut apart = one_by_one.merged.apart.clone();
        apart.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(apart, at_once.apart);
        assert_eq!(one_by_one.printed[0], ("n1".into(), "hello\n".into()));
    }

    #[test]
    fn a_node_over_the_budget_is_left_out_and_named() {
        let mut merger = Merger::new("k:f { @c = count(); }", 1 << 20, 1000);
        merger.add("n1", &text("@c: 1\n"));
        merger.add("n2", &text(&"x\n".repeat(1000)));
        merger.add("n3", &text("@c: 2\n"));
        let out = merger.finish();
        let left: Vec<&str> = out.left_out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(left, ["n2"]);
        assert!(out.left_out[0].1.contains("budget"), "{:?}", out.left_out);
        assert!(out.text().contains("@c: 3"), "{}", out.text());
    }
}
