//! A running trace's maps as Prometheus metrics: which maps a program has and what made them
//! (from its text), the probe that has bpftrace print them on demand, and the pure conversion
//! from `Maps` to the text exposition, after Cloudflare's ebpf_exporter for histograms (log2 and
//! linear buckets become cumulative `_bucket{le}` series up to `+Inf`, every bound seen kept).
//!
//! How maps are read while the trace runs: the agent appends one probe to the program,
//! `tracepoint:syscalls:sys_enter_getpgid /args->pid == MAGIC/ { printf(BEGIN); print(@a); ...;
//! printf(END); }`, and the shim calls `getpgid(MAGIC)` every interval (no process has that PID:
//! MAGIC is above the kernel's largest). bpftrace prints the maps between two marker lines, which
//! the shim diverts from the output to a file of their own. SIGUSR1 would need no probe, but
//! only 0.17 prints the maps on it (0.23 and 0.27 ignore it), and `-f json` would change what
//! the trace's output is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::output::maps::{Entry, Maps, Scalar, Value};
use crate::resource::MetricsSpec;

/// The marker line bpftrace prints before a dump of the maps (`\x1e`: a byte no one prints).
pub fn begin_marker(magic: i32) -> String {
    format!("\x1etracejob-metrics {magic} begin")
}

/// The marker line bpftrace prints after a dump of the maps.
pub fn end_marker(magic: i32) -> String {
    format!("\x1etracejob-metrics {magic} end")
}

/// What made a map's values, as the program says: it decides the metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// count() and sum(): only grow (or reset with the trace).
    Counter,
    /// min(), max(), avg() and plain assignments.
    Gauge,
    /// hist() and lhist().
    Histogram,
    /// stats().
    Stats,
}

/// The maps a program uses, by name with their `@`, in order of first use (strings and comments
/// skipped).
pub fn map_names(program: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in uses(program) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// What each map is assigned from: `@x[...] = count()` makes `@x` a counter.
pub fn kinds(program: &str) -> HashMap<String, Kind> {
    let mut kinds = HashMap::new();
    for (name, after) in uses(program) {
        let rest = skip_key(after).trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        if rest.starts_with('=') {
            continue;
        }
        let call: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let kind = match call.as_str() {
            "count" | "sum" => Kind::Counter,
            "hist" | "lhist" => Kind::Histogram,
            "stats" => Kind::Stats,
            _ => Kind::Gauge,
        };
        kinds.entry(name).or_insert(kind);
    }
    kinds
}

/// Every `@name` in the program's code, with the text after it.
fn uses(program: &str) -> Vec<(String, &str)> {
    let bytes = program.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'@' => {
                let start = i;
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                found.push((program[start..i].to_string(), &program[i..]));
            }
            _ => i += 1,
        }
    }
    found
}

/// The text after a map's `[key]`, if it has one.
fn skip_key(after: &str) -> &str {
    let t = after.trim_start();
    if !t.starts_with('[') {
        return t;
    }
    let mut depth = 0usize;
    for (i, c) in t.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &t[i + 1..];
                }
            }
            _ => {}
        }
    }
    ""
}

/// The program with the probe that prints `maps` between the markers when `getpgid(magic)` is
/// called. Its probe is counted in bpftrace's attach line (the agent reports one fewer).
pub fn instrument(program: &str, maps: &[String], magic: i32) -> String {
    let mut probe = format!(
        "\ntracepoint:syscalls:sys_enter_getpgid /args->pid == {magic}/ {{ printf(\"\\x1etracejob-metrics {magic} begin\\n\");"
    );
    for m in maps {
        probe.push_str(&format!(" print({m});"));
    }
    probe.push_str(&format!(
        " printf(\"\\x1etracejob-metrics {magic} end\\n\"); }}\n"
    ));
    format!("{program}{probe}")
}

/// The maps a spec exports from a program: those it names that the program has, or all.
pub fn exported_maps(program: &str, spec: &MetricsSpec) -> Vec<String> {
    let names = map_names(program);
    if spec.maps.is_empty() {
        return names;
    }
    names
        .into_iter()
        .filter(|n| spec.maps.contains(n))
        .collect()
}

/// The trace every series is labelled with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Trace {
    pub namespace: String,
    pub name: String,
    pub node: String,
}

/// One metric family's samples (text lines) for one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub type_: &'static str,
    pub help: String,
    pub samples: String,
}

/// One read of a trace's maps, as families to expose.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exposed {
    pub families: Vec<Family>,
    /// Series exported.
    pub series: usize,
    /// Series past `maxSeries`, not exported.
    pub dropped: usize,
}

/// What is remembered between reads: each histogram series' bucket bounds seen so far, so that
/// the set of `le` only grows while the trace runs.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    bounds: HashMap<(String, Option<String>), BTreeSet<i64>>,
}

/// The exposition of one read of `maps`.
pub fn expose(
    maps: &Maps,
    spec: &MetricsSpec,
    kinds: &HashMap<String, Kind>,
    trace: &Trace,
    seen: &mut Seen,
) -> Exposed {
    // Every candidate series, with how many samples it takes and how large it is.
    struct Candidate<'a> {
        map: usize,
        entry: &'a Entry,
        cost: usize,
        weight: u128,
    }
    let mut candidates = Vec::new();
    for (m, map) in maps.maps.iter().enumerate() {
        if !spec.maps.is_empty() && !spec.maps.contains(&map.name) {
            continue;
        }
        for entry in &map.entries {
            let (cost, weight) = match &entry.value {
                Value::Value(Scalar::Int(n)) => (1, u128::from(n.unsigned_abs())),
                Value::Value(Scalar::Text(_)) => continue,
                Value::Stats { count, .. } => (2, u128::from(count.unsigned_abs())),
                Value::Hist(buckets) => {
                    let bounds = seen
                        .bounds
                        .entry((map.name.clone(), entry.key.clone()))
                        .or_default();
                    bounds.extend(buckets.iter().filter_map(|b| b.high));
                    (
                        bounds.len() + 2,
                        buckets.iter().map(|b| u128::from(b.count)).sum(),
                    )
                }
            };
            candidates.push(Candidate {
                map: m,
                entry,
                cost,
                weight,
            });
        }
    }
    // The largest kept, within the cap.
    let cap = usize::try_from(spec.max_series.max(1)).unwrap_or(usize::MAX);
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|a, b| candidates[*b].weight.cmp(&candidates[*a].weight));
    let mut kept = vec![false; candidates.len()];
    let (mut series, mut dropped) = (0usize, 0usize);
    for i in order {
        let cost = candidates[i].cost;
        if series.saturating_add(cost) <= cap {
            series += cost;
            kept[i] = true;
        } else {
            dropped = dropped.saturating_add(cost);
        }
    }
    // In map order, one family per map.
    let mut families: Vec<Family> = Vec::new();
    let mut by_map: BTreeMap<usize, Family> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        if !kept[i] {
            continue;
        }
        let map = &maps.maps[c.map];
        let kind = kinds.get(&map.name).copied();
        let base = metric_name(&map.name);
        let labels = labels(trace, c.entry.key.as_deref(), &spec.labels);
        let family = by_map.entry(c.map).or_insert_with(|| {
            let (name, type_) = match (&c.entry.value, kind) {
                (Value::Hist(_), _) => (
                    match &spec.histogram_unit {
                        Some(unit) if !base.ends_with(unit.as_str()) => format!("{base}_{unit}"),
                        _ => base.clone(),
                    },
                    "histogram",
                ),
                (Value::Stats { .. }, _) => (base.clone(), "summary"),
                (_, Some(Kind::Counter)) => (format!("{base}_total"), "counter"),
                _ => (base.clone(), "gauge"),
            };
            Family {
                help: format!("bpftrace map {} of the trace", map.name),
                name,
                type_,
                samples: String::new(),
            }
        });
        let name = family.name.clone();
        let out = &mut family.samples;
        match &c.entry.value {
            Value::Value(Scalar::Int(n)) => {
                let _ = writeln!(out, "{name}{{{labels}}} {n}");
            }
            Value::Value(Scalar::Text(_)) => {}
            Value::Stats { count, total, .. } => {
                let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
                let _ = writeln!(out, "{name}_sum{{{labels}}} {total}");
            }
            Value::Hist(buckets) => {
                let bounds = seen
                    .bounds
                    .get(&(map.name.clone(), c.entry.key.clone()))
                    .cloned()
                    .unwrap_or_default();
                let scale = spec.histogram_scale.max(1);
                let total: u64 = buckets.iter().map(|b| b.count).fold(0, u64::saturating_add);
                for bound in &bounds {
                    let below: u64 = buckets
                        .iter()
                        .filter(|b| b.high.is_some_and(|h| h <= *bound))
                        .map(|b| b.count)
                        .fold(0, u64::saturating_add);
                    let le = scaled(*bound, scale);
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {below}");
                }
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
                let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
            }
        }
    }
    families.extend(by_map.into_values());
    Exposed {
        families,
        series,
        dropped,
    }
}

/// `@usecs` -> `bpftrace_usecs`; the map without a name (`@`) -> `bpftrace`.
pub fn metric_name(map: &str) -> String {
    let name = map.trim_start_matches('@');
    if name.is_empty() {
        "bpftrace".to_string()
    } else {
        format!("bpftrace_{name}")
    }
}

/// A bound divided by the scale, as Prometheus reads a float.
fn scaled(bound: i64, scale: i64) -> String {
    if scale == 1 {
        return bound.to_string();
    }
    let v = bound as f64 / scale as f64;
    format!("{v}")
}

/// The labels of a series: the trace's, then the key's parts under the names given.
fn labels(trace: &Trace, key: Option<&str>, names: &[String]) -> String {
    let mut out = format!(
        "tracejob_namespace=\"{}\",tracejob=\"{}\",node=\"{}\"",
        escape(&trace.namespace),
        escape(&trace.name),
        escape(&trace.node)
    );
    let Some(key) = key else { return out };
    let parts: Vec<&str> = key.split(", ").collect();
    if names.len() > 1 && parts.len() == names.len() {
        for (n, v) in names.iter().zip(parts) {
            let _ = write!(out, ",{n}=\"{}\"", escape(v));
        }
    } else {
        let n = names.first().map_or("key", String::as_str);
        let _ = write!(out, ",{n}=\"{}\"", escape(key));
    }
    out
}

/// A label value as the text format escapes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The families of several traces (and the agent's own per-trace figures) as one exposition:
/// each family's samples together under one TYPE line.
pub fn render(exposed: &[(&Trace, &Exposed)]) -> String {
    let mut families: BTreeMap<&str, (&str, &str, String)> = BTreeMap::new();
    for (_, e) in exposed {
        for f in &e.families {
            let slot = families.entry(f.name.as_str()).or_insert((
                f.type_,
                f.help.as_str(),
                String::new(),
            ));
            // A name made by two traces with different types: the first type's samples only.
            if slot.0 == f.type_ {
                slot.2.push_str(&f.samples);
            }
        }
    }
    let mut out = String::new();
    for (name, (type_, help, samples)) in &families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {type_}");
        out.push_str(samples);
    }
    if !exposed.is_empty() {
        for (what, help) in [
            ("series", "Series the trace exports."),
            (
                "dropped_series",
                "Series of the trace not exported: past spec.metrics.maxSeries.",
            ),
        ] {
            let _ = writeln!(out, "# HELP tracejob_trace_metrics_{what} {help}");
            let _ = writeln!(out, "# TYPE tracejob_trace_metrics_{what} gauge");
            for (t, e) in exposed {
                let n = if what == "series" {
                    e.series
                } else {
                    e.dropped
                };
                let _ = writeln!(
                    out,
                    "tracejob_trace_metrics_{what}{{{}}} {n}",
                    labels(t, None, &[])
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::parse::parse;

    fn trace() -> Trace {
        Trace {
            namespace: "ns".into(),
            name: "t".into(),
            node: "n1".into(),
        }
    }

    fn exposition(program: &str, out: &str, spec: &MetricsSpec) -> (String, Exposed) {
        let mut seen = Seen::default();
        let e = expose(&parse(out), spec, &kinds(program), &trace(), &mut seen);
        let text = render(&[(&trace(), &e)]);
        (text, e)
    }

    #[test]
    fn map_names_and_kinds_come_from_the_code_not_strings_or_comments() {
        let program = r#"
// @commented = count();
tracepoint:block:block_rq_issue { @start[args->dev] = nsecs; printf("@not %d\n", 1); }
tracepoint:block:block_rq_complete /@start[args->dev]/ {
  @usecs = hist((nsecs - @start[args->dev]) / 1000); /* @neither */
  @c[comm, pid] = count(); @s = stats(3); @ = sum(2); @m = max(5);
  delete(@start[args->dev]);
}"#;
        assert_eq!(
            map_names(program),
            ["@start", "@usecs", "@c", "@s", "@", "@m"]
        );
        let k = kinds(program);
        assert_eq!(k["@usecs"], Kind::Histogram);
        assert_eq!(k["@c"], Kind::Counter);
        assert_eq!(k["@"], Kind::Counter);
        assert_eq!(k["@s"], Kind::Stats);
        assert_eq!(k["@m"], Kind::Gauge);
        assert_eq!(k["@start"], Kind::Gauge);
    }

    #[test]
    fn the_probe_prints_the_maps_between_markers() {
        let p = instrument("BEGIN { @a = 1; }", &["@a".into(), "@b".into()], 1234567890);
        assert!(p.starts_with("BEGIN { @a = 1; }\ntracepoint:syscalls:sys_enter_getpgid /args->pid == 1234567890/ { printf(\"\\x1etracejob-metrics 1234567890 begin\\n\"); print(@a); print(@b); printf(\"\\x1etracejob-metrics 1234567890 end\\n\"); }"), "{p}");
        assert_eq!(begin_marker(7), "\u{1e}tracejob-metrics 7 begin");
    }

    #[test]
    fn a_log2_histogram_is_cumulative_with_every_bound_and_inf() {
        let program = "x { @usecs = hist(1); }";
        let out = "@usecs:\n[0]                    1 |@@@@    |\n[1]                    0 |        |\n[2, 4)                 2 |@@@@@@@@|\n[4, 8)                 3 |@@@@@@@@|\n\n";
        let spec = MetricsSpec {
            histogram_unit: Some("seconds".into()),
            histogram_scale: 1_000_000,
            ..Default::default()
        };
        let (text, e) = exposition(program, out, &spec);
        let l = r#"tracejob_namespace="ns",tracejob="t",node="n1""#;
        let want = format!(
            "# HELP bpftrace_usecs_seconds bpftrace map @usecs of the trace\n# TYPE bpftrace_usecs_seconds histogram\n\
bpftrace_usecs_seconds_bucket{{{l},le=\"0.000001\"}} 1\n\
bpftrace_usecs_seconds_bucket{{{l},le=\"0.000002\"}} 1\n\
bpftrace_usecs_seconds_bucket{{{l},le=\"0.000004\"}} 3\n\
bpftrace_usecs_seconds_bucket{{{l},le=\"0.000008\"}} 6\n\
bpftrace_usecs_seconds_bucket{{{l},le=\"+Inf\"}} 6\n\
bpftrace_usecs_seconds_count{{{l}}} 6\n"
        );
        assert!(text.starts_with(&want), "{text}");
        assert_eq!((e.series, e.dropped), (6, 0));
        assert!(text.contains(&format!("tracejob_trace_metrics_dropped_series{{{l}}} 0\n")));
    }

    #[test]
    fn bounds_seen_once_stay_between_reads() {
        let spec = MetricsSpec::default();
        let k = kinds("x { @h = hist(1); }");
        let mut seen = Seen::default();
        let first = parse(
            "@h:\n[4, 8)                 3 |@@@@@@@@|\n[8, 16)                1 |@@      |\n\n",
        );
        let second = parse("@h:\n[8, 16)                2 |@@@@@@@@|\n\n");
        expose(&first, &spec, &k, &trace(), &mut seen);
        let e = expose(&second, &spec, &k, &trace(), &mut seen);
        let s = &e.families[0].samples;
        assert!(s.contains(",le=\"8\"} 0\n"), "{s}");
        assert!(s.contains(",le=\"16\"} 2\n"), "{s}");
        assert!(s.contains(",le=\"+Inf\"} 2\n"), "{s}");
    }

    #[test]
    fn counters_gauges_and_stats_with_named_key_parts() {
        let program =
            "x { @c[comm, pid] = count(); @m = max(3); @s[comm] = stats(2); @t = \"x\"; }";
        let out =
            "@c[bash, 12]: 5\n@c[sh, 7]: 2\n@m: 3\n@s[bash]: count 2, average 2, total 4\n@t: x\n";
        let spec = MetricsSpec {
            labels: vec!["comm".into(), "pid".into()],
            ..Default::default()
        };
        let (text, e) = exposition(program, out, &spec);
        let l = r#"tracejob_namespace="ns",tracejob="t",node="n1""#;
        assert!(text.contains("# TYPE bpftrace_c_total counter\n"), "{text}");
        assert!(text.contains(&format!(
            "bpftrace_c_total{{{l},comm=\"bash\",pid=\"12\"}} 5\n"
        )));
        assert!(text.contains(&format!("bpftrace_m{{{l}}} 3\n")), "{text}");
        assert!(text.contains("# TYPE bpftrace_s summary\n"));
        // One part, two names: the whole key in the first.
        assert!(
            text.contains(&format!("bpftrace_s_count{{{l},comm=\"bash\"}} 2\n")),
            "{text}"
        );
        assert!(text.contains(&format!("bpftrace_s_sum{{{l},comm=\"bash\"}} 4\n")));
        assert!(
            !text.contains("bpftrace_t"),
            "text values are not numbers: {text}"
        );
        assert_eq!(e.series, 5);
    }

    #[test]
    fn the_default_label_is_key_and_values_are_escaped() {
        let out = "@[a\"b\\c]: 1\n";
        let (text, _) = exposition("x { @[comm] = count(); }", out, &MetricsSpec::default());
        assert!(
            text.contains(
                r#"bpftrace_total{tracejob_namespace="ns",tracejob="t",node="n1",key="a\"b\\c"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn past_the_cap_the_largest_are_kept_and_the_rest_counted() {
        let out: String = (1..=100).map(|i| format!("@p[{i}]: {i}\n")).collect();
        let spec = MetricsSpec {
            max_series: 10,
            ..Default::default()
        };
        let (text, e) = exposition("x { @p[pid] = count(); }", &out, &spec);
        assert_eq!((e.series, e.dropped), (10, 90));
        assert!(text.contains("key=\"100\"} 100\n") && text.contains("key=\"91\"} 91\n"));
        assert!(!text.contains("key=\"90\"}"), "{text}");
        assert!(text.contains("tracejob_trace_metrics_dropped_series{tracejob_namespace=\"ns\",tracejob=\"t\",node=\"n1\"} 90\n"));
    }

    #[test]
    fn only_the_maps_asked_for() {
        let spec = MetricsSpec {
            maps: vec!["@b".into()],
            ..Default::default()
        };
        let (text, _) = exposition("x { @a = count(); @b = count(); }", "@a: 1\n@b: 2\n", &spec);
        assert!(
            text.contains("bpftrace_b_total{") && !text.contains("bpftrace_a"),
            "{text}"
        );
        assert_eq!(
            exported_maps("x { @a = count(); @b = count(); }", &spec),
            ["@b"]
        );
    }

    #[test]
    fn two_traces_share_one_type_line_per_family() {
        let spec = MetricsSpec::default();
        let k = kinds("x { @c = count(); }");
        let maps = parse("@c: 1\n");
        let (a, b) = (
            trace(),
            Trace {
                name: "u".into(),
                ..trace()
            },
        );
        let ea = expose(&maps, &spec, &k, &a, &mut Seen::default());
        let eb = expose(&maps, &spec, &k, &b, &mut Seen::default());
        let text = render(&[(&a, &ea), (&b, &eb)]);
        assert_eq!(
            text.matches("# TYPE bpftrace_c_total counter").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("bpftrace_c_total{").count(), 2, "{text}");
    }
}
