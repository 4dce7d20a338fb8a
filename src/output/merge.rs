//! Maps from several nodes merged into one, and maps rendered as bpftrace prints them.
//!
//! How a map merges depends on the function that filled it, read from the program: count() and
//! sum() add; min() and max() take the least and the greatest; stats() add count and total and
//! compute the average again; hist() and lhist() add bucket by bucket. avg() and plain
//! assignments cannot be merged from what bpftrace prints: they are kept apart, per node.

use std::collections::BTreeMap;

use crate::output::maps::{render_hist, Bucket, Entry, Map, Maps, Scalar, Value};

/// The function that fills a map, as the program says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Stats,
    Hist,
    Lhist,
}

/// The function each map is assigned from in `program` (`@name = count()`,
/// `@name[key] = hist(x)`, ...). A map assigned from several, or only plainly, is left out.
pub fn kinds(program: &str) -> BTreeMap<String, Kind> {
    let mut found: BTreeMap<String, Option<Kind>> = BTreeMap::new();
    let bytes = program.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'@' {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let name = &program[start..i];
        let mut j = i;
        if bytes.get(j) == Some(&b'[') {
            let mut depth = 0;
            while j < bytes.len() {
                match bytes[j] {
                    b'[' => depth += 1,
                    b']' => {
                        depth -= 1;
                        if depth == 0 {
                            j += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        let rest = program[j..].trim_start();
        let Some(rhs) = rest.strip_prefix('=').filter(|r| !r.starts_with('=')) else {
            continue;
        };
        let rhs = rhs.trim_start();
        let func: String = rhs
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let kind = match (
            func.as_str(),
            rhs[func.len()..].trim_start().starts_with('('),
        ) {
            ("count", true) => Some(Kind::Count),
            ("sum", true) => Some(Kind::Sum),
            ("min", true) => Some(Kind::Min),
            ("max", true) => Some(Kind::Max),
            ("avg", true) => Some(Kind::Avg),
            ("stats", true) => Some(Kind::Stats),
            ("hist", true) => Some(Kind::Hist),
            ("lhist", true) => Some(Kind::Lhist),
            _ => None,
        };
        let entry = found.entry(name.to_string()).or_insert(kind);
        if *entry != kind {
            *entry = None;
        }
    }
    found
        .into_iter()
        .filter_map(|(name, kind)| kind.map(|k| (name, k)))
        .collect()
}

/// Maps merged across nodes, and those that cannot be.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub maps: Vec<Map>,
    /// Maps kept per node: (node, map).
    pub apart: Vec<(String, Map)>,
}

/// Merges each node's maps (`nodes`: node name and its maps) by the maps' kinds.
pub fn merge(nodes: &[(String, Maps)], kinds: &BTreeMap<String, Kind>) -> Merged {
    let mut by_name: BTreeMap<String, Vec<(String, Map)>> = BTreeMap::new();
    for (node, maps) in nodes {
        for map in &maps.maps {
            by_name
                .entry(map.name.clone())
                .or_default()
                .push((node.clone(), map.clone()));
        }
    }
    let mut merged = Merged {
        maps: Vec::new(),
        apart: Vec::new(),
    };
    for (name, per_node) in by_name {
        let kind = kinds.get(&name).copied();
        let mergeable = per_node.len() == 1 || matches!(kind, Some(k) if k != Kind::Avg);
        if !mergeable {
            merged.apart.extend(per_node);
            continue;
        }
        let mut entries: BTreeMap<Option<String>, Value> = BTreeMap::new();
        let mut ok = true;
        for (_, map) in &per_node {
            for e in &map.entries {
                let value = match entries.remove(&e.key) {
                    None => Some(e.value.clone()),
                    Some(had) => combine(&had, &e.value, kind),
                };
                match value {
                    Some(v) => {
                        entries.insert(e.key.clone(), v);
                    }
                    None => ok = false,
                }
            }
        }
        if !ok {
            merged.apart.extend(per_node);
            continue;
        }
        merged.maps.push(Map {
            name,
            entries: entries
                .into_iter()
                .map(|(key, value)| Entry { key, value })
                .collect(),
        });
    }
    merged
}

fn combine(a: &Value, b: &Value, kind: Option<Kind>) -> Option<Value> {
    match (a, b, kind) {
        (Value::Value(Scalar::Int(x)), Value::Value(Scalar::Int(y)), Some(k)) => {
            Some(Value::Value(Scalar::Int(match k {
                Kind::Count | Kind::Sum => x.saturating_add(*y),
                Kind::Min => *x.min(y),
                Kind::Max => *x.max(y),
                _ => return None,
            })))
        }
        (
            Value::Stats {
                count: c1,
                total: t1,
                ..
            },
            Value::Stats {
                count: c2,
                total: t2,
                ..
            },
            _,
        ) => {
            let (count, total) = (c1.saturating_add(*c2), t1.saturating_add(*t2));
            Some(Value::Stats {
                count,
                average: if count == 0 { 0 } else { total / count },
                total,
            })
        }
        (Value::Hist(x), Value::Hist(y), _) => Some(Value::Hist(add_buckets(x, y))),
        _ => None,
    }
}

/// Two histograms added bucket by bucket; buckets one lacks count 0 (and a gap between the two
/// is filled with the empty buckets bpftrace prints there).
fn add_buckets(a: &[Bucket], b: &[Bucket]) -> Vec<Bucket> {
    let mut sum: BTreeMap<(Option<i64>, Option<i64>), u64> = BTreeMap::new();
    for bucket in a.iter().chain(b) {
        *sum.entry((bucket.low, bucket.high)).or_default() += bucket.count;
    }
    let mut buckets: Vec<Bucket> = sum
        .into_iter()
        .map(|((low, high), count)| Bucket { low, high, count })
        .collect();
    // (..., N) first, [N, ...) last.
    buckets.sort_by_key(|b| (b.low.is_some(), b.low, b.high.is_none()));
    fill_gaps(buckets)
}

fn fill_gaps(buckets: Vec<Bucket>) -> Vec<Bucket> {
    // A linear histogram's buckets share one width; a log2 one's double.
    let step = buckets.iter().find_map(|b| match (b.low, b.high) {
        (Some(l), Some(h)) if h - l > 1 && h != 2 * l => Some(h - l),
        _ => None,
    });
    let mut out: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for b in buckets {
        if let (Some(prev), Some(low)) = (out.last().and_then(|p: &Bucket| p.high), b.low) {
            let mut at = prev;
            while at < low {
                let high = match step {
                    Some(s) => at.saturating_add(s),
                    None if at <= 1 => at + 1,
                    None => at.saturating_mul(2),
                };
                out.push(Bucket {
                    low: Some(at),
                    high: Some(high.min(low)),
                    count: 0,
                });
                at = high;
            }
        }
        out.push(b);
    }
    out
}

/// Maps as bpftrace prints them on exit (release `bpftrace`, as `Maps::bpftrace` holds it):
/// by name; count-like entries by value, keyed histograms by their total; a blank line after
/// each histogram.
pub fn render(maps: &[Map], bpftrace: Option<&str>) -> String {
    let release = bpftrace.and_then(release).unwrap_or((99, 0));
    let mut sorted: Vec<&Map> = maps.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = String::new();
    for map in sorted {
        let mut entries: Vec<&Entry> = map.entries.iter().collect();
        entries.sort_by(|a, b| {
            order_key(&a.value)
                .cmp(&order_key(&b.value))
                .then_with(|| a.key.cmp(&b.key))
        });
        for e in entries {
            let head = match &e.key {
                Some(k) if k.contains('\n') => format!(
                    "{}[\n{}\n]",
                    map.name,
                    k.lines()
                        .map(|l| format!("    {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
                Some(k) => format!("{}[{k}]", map.name),
                None => map.name.clone(),
            };
            match &e.value {
                Value::Value(Scalar::Int(n)) => text += &format!("{head}: {n}\n"),
                Value::Value(Scalar::Text(t)) => text += &format!("{head}: {t}\n"),
                Value::Stats {
                    count,
                    average,
                    total,
                } if release >= (0, 27) => {
                    text += &format!(
                        "{head}: {{ .count = {count}, .average = {average}, .total = {total} }}\n"
                    )
                }
                Value::Stats {
                    count,
                    average,
                    total,
                } => text += &format!("{head}: count {count}, average {average}, total {total}\n"),
                Value::Hist(buckets) => {
                    let space = if release <= (0, 17) { " " } else { "" };
                    text += &format!("{head}:{space}\n{}\n", render_hist(buckets, bpftrace));
                }
            }
        }
    }
    text
}

/// How bpftrace orders a map's entries: by value (a histogram by its total).
fn order_key(v: &Value) -> i128 {
    match v {
        Value::Value(Scalar::Int(n)) => i128::from(*n),
        Value::Value(Scalar::Text(_)) => 0,
        Value::Stats { total, .. } => i128::from(*total),
        Value::Hist(b) => b.iter().map(|b| i128::from(b.count)).sum(),
    }
}

fn release(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::parse::parse;

    fn fixture(path: &str) -> String {
        let p = format!("{}/tests/fixtures/merge/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// Lines of a maps block, each map's entries of equal value in a fixed order: bpftrace does
    /// not fix the order of ties (0.17 and 0.23 differ).
    fn normalized(text: &str) -> Vec<String> {
        let mut lines: Vec<String> = text
            .trim_matches('\n')
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect();
        let mut i = 0;
        while i < lines.len() {
            let value = |l: &str| l.rsplit_once("]: ").map(|(_, v)| v.to_string());
            let mut j = i;
            while j + 1 < lines.len()
                && value(&lines[i]).is_some()
                && value(&lines[j + 1]) == value(&lines[i])
                && lines[j + 1].split('[').next() == lines[i].split('[').next()
            {
                j += 1;
            }
            lines[i..=j].sort();
            i = j + 1;
        }
        lines
    }

    #[test]
    fn reads_the_kind_of_each_map_from_the_program() {
        let k = kinds(&fixture("union.bt"));
        assert_eq!(k["@c"], Kind::Count);
        assert_eq!(k["@st"], Kind::Stats);
        assert_eq!(k["@kh"], Kind::Hist);
        assert_eq!(k["@l"], Kind::Lhist);
        assert_eq!(k["@mi"], Kind::Min);
        let mixed = kinds("BEGIN { @x = count(); @x = sum(1); @y = 5; @z == 3; }");
        assert!(mixed.is_empty(), "{mixed:?}");
    }

    #[test]
    fn merged_maps_render_as_bpftrace_prints_the_union_in_each_release() {
        let k = kinds(&fixture("union.bt"));
        for release in ["bpftrace-0.17", "bpftrace-0.23", "bpftrace-0.27"] {
            let version = fixture(&format!("{release}/VERSION"));
            let version = version.split_whitespace().last();
            let nodes = vec![
                (
                    "a".to_string(),
                    parse(&fixture(&format!("{release}/a.out"))),
                ),
                (
                    "b".to_string(),
                    parse(&fixture(&format!("{release}/b.out"))),
                ),
            ];
            let merged = merge(&nodes, &k);
            assert!(merged.apart.is_empty(), "{release}: {:?}", merged.apart);
            let rendered = render(&merged.maps, version);
            assert_eq!(
                normalized(&rendered),
                normalized(&fixture(&format!("{release}/union.out"))),
                "{release}:\n{rendered}"
            );
        }
    }

    #[test]
    fn averages_and_unknown_maps_stay_per_node() {
        let a = parse("@avg: 4\n@x: 1\n@only: 7\n");
        let b = parse("@avg: 6\n@x: 2\n");
        let mut k = BTreeMap::new();
        k.insert("@avg".to_string(), Kind::Avg);
        let m = merge(&[("a".into(), a), ("b".into(), b)], &k);
        let apart: Vec<(&str, &str)> = m
            .apart
            .iter()
            .map(|(n, map)| (n.as_str(), map.name.as_str()))
            .collect();
        assert_eq!(
            apart,
            [("a", "@avg"), ("b", "@avg"), ("a", "@x"), ("b", "@x")]
        );
        // A map only one node printed is that node's, merged or not.
        assert_eq!(m.maps.len(), 1);
        assert_eq!(m.maps[0].name, "@only");
    }
}
