//! What the plugin prints: TraceJobs as a table or as JSON/YAML/names, and a trace's output and
//! maps out of its ConfigMap (plain, byte for byte, or gzip-compressed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use super::cli::Format;
use super::Error;
use crate::output::maps::Maps;
pub use crate::output::read::NodesOutput;
use crate::output::read::{self};
use crate::resource::TraceJob;

/// TraceJobs as `kubectl get` prints them (or in `format`).
pub fn tracejobs(jobs: &[TraceJob], format: Option<Format>) -> Result<String, Error> {
    let encode = |e: String| Error::Cluster(e);
    match format {
        Some(Format::Json) if jobs.len() == 1 => serde_json::to_string_pretty(&jobs[0])
            .map(|s| s + "\n")
            .map_err(|e| encode(e.to_string())),
        Some(Format::Json) => serde_json::to_string_pretty(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": jobs
        }))
        .map(|s| s + "\n")
        .map_err(|e| encode(e.to_string())),
        Some(Format::Yaml) if jobs.len() == 1 => {
            serde_saphyr::to_string(&jobs[0]).map_err(|e| encode(e.to_string()))
        }
        Some(Format::Yaml) => serde_saphyr::to_string(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": jobs
        }))
        .map_err(|e| encode(e.to_string())),
        Some(Format::Name) => Ok(jobs
            .iter()
            .map(|j| format!("tracejob.observe.tracejob.dev/{}\n", safe(&j.name_any())))
            .collect()),
        None => Ok(table(jobs)),
    }
}

fn table(jobs: &[TraceJob]) -> String {
    let rows: Vec<[String; 5]> = jobs
        .iter()
        .map(|j| {
            let s = j.status.clone().unwrap_or_default();
            [
                j.name_any(),
                match (
                    &s.progress,
                    s.node_name.clone().or_else(|| j.spec.node_name.clone()),
                ) {
                    (Some(p), _) => format!("{p} nodes"),
                    (None, Some(n)) => n,
                    (None, None) => "<none>".into(),
                },
                s.phase.map_or("<none>".into(), |p| p.to_string()),
                s.probes.map_or("<none>".into(), |p| p.to_string()),
                match (&s.output_ref, s.node_counts.is_none()) {
                    (Some(r), _) => r.name.clone(),
                    (None, false) => "<per node>".into(),
                    (None, true) => "<none>".into(),
                },
            ]
            .map(|cell| safe(&cell))
        })
        .collect();
    let header = ["NAME", "NODE", "PHASE", "PROBES", "OUTPUT"];
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| -> String {
        let mut l: String = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}   "))
            .collect();
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut out = line(header.to_vec());
    for r in &rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

/// The output bytes a ConfigMap holds (`output::read::output_bytes`), expanded at most to the
/// limit in force.
pub fn output_bytes(cm: &ConfigMap) -> Result<Vec<u8>, Error> {
    read::output_bytes(cm, limit()).map_err(read_error)
}

/// The maps a ConfigMap holds (`output::read::maps_of`), expanded at most to the limit in force.
pub fn maps_of(cm: &ConfigMap) -> Result<Maps, Error> {
    read::maps_of(cm, limit()).map_err(read_error)
}

/// Merges the output ConfigMaps of a TraceJob's nodes (`program`: its program, which says how
/// each map merges), each expanded at most to the limit in force.
pub fn merged(nodes: &[(String, ConfigMap)], program: &str) -> Result<NodesOutput, Error> {
    read::merged(nodes, program, limit()).map_err(read_error)
}

fn limit() -> u64 {
    MAX_EXPANDED_BYTES.load(Ordering::Relaxed)
}

fn read_error(e: read::Error) -> Error {
    match e {
        read::Error::TooLarge(_) => {
            Error::Cluster(format!("{e} (--max-output-bytes raises the limit)"))
        }
        e => Error::Cluster(e.to_string()),
    }
}

/// The limit in force (`--max-output-bytes`), set once at start.
static MAX_EXPANDED_BYTES: AtomicU64 = AtomicU64::new(crate::output::read::DEFAULT_EXPANDED_LIMIT);

/// Whether text from a trace or the cluster is escaped when written (`escape_controls`): always,
/// unless `--raw`. Not only for a terminal: a pipe often ends in one (`| less -R`, `| tee`), and
/// stderr is one whatever stdout is.
static ESCAPE: AtomicBool = AtomicBool::new(true);

/// Sets, once at start, the expansion limit and whether output is escaped (unless `--raw`).
pub fn configure(max_expanded_bytes: u64, raw: bool) {
    MAX_EXPANDED_BYTES.store(max_expanded_bytes, Ordering::Relaxed);
    ESCAPE.store(!raw, Ordering::Relaxed);
}

/// Text from the cluster or a trace (a name, a status message, bpftrace's error, a table cell),
/// escaped as `write_output` escapes (unless `--raw`), for stdout or stderr.
pub fn safe(text: &str) -> String {
    if ESCAPE.load(Ordering::Relaxed) {
        String::from_utf8_lossy(&escape_controls(text.as_bytes())).into_owned()
    } else {
        text.to_string()
    }
}

/// Writes what a trace printed: escaped unless `--raw` (see `configure`).
pub fn write_output(out: &mut impl std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
    if ESCAPE.load(Ordering::Relaxed) {
        out.write_all(&escape_controls(bytes))
    } else {
        out.write_all(bytes)
    }
}

/// Bytes made safe for a terminal: control characters other than newline and tab, and bytes
/// that are not UTF-8, shown as `\xNN` (`\u{NN}` for C1 controls), so what a traced process
/// printed cannot move the cursor, retitle the window or worse.
pub fn escape_controls(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\n' && c != '\t' {
                let code = u32::from(c);
                if code < 0x80 {
                    out.extend_from_slice(format!("\\x{code:02x}").as_bytes());
                } else {
                    out.extend_from_slice(format!("\\u{{{code:x}}}").as_bytes());
                }
            } else {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
        for b in chunk.invalid() {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
    }
    out
}

/// Whether `cm` is owned by `job` (by UID): the plugin shows only output its TraceJob owns, not
/// a look-alike somebody else put under that name.
pub fn owned_by(cm: &ConfigMap, job: &TraceJob) -> bool {
    let uid = job.metadata.uid.as_deref();
    uid.is_some()
        && cm
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| Some(o.uid.as_str()) == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_are_escaped_for_a_terminal() {
        assert_eq!(escape_controls(b"@x[bash]: 1\n\tok"), b"@x[bash]: 1\n\tok");
        assert_eq!(escape_controls(b"\x1b]0;owned\x07"), br"\x1b]0;owned\x07");
        assert_eq!(escape_controls(b"a\rb\x7f"), br"a\x0db\x7f");
        assert_eq!(
            escape_controls("\u{9b}31m é".as_bytes()),
            r"\u{9b}31m é".as_bytes()
        );
        assert_eq!(escape_controls(b"\xff\xfe"), br"\xff\xfe");
    }

    #[test]
    fn cluster_text_and_table_cells_are_escaped_by_default() {
        // Nothing in the tests calls `configure`: the default is the plugin's without --raw.
        assert_eq!(safe("bad\x1b[2J\nline"), "bad\\x1b[2J\nline");
        let mut job = TraceJob::new(
            "j",
            serde_json::from_value(serde_json::json!({"program": "BEGIN {}"})).expect("spec"),
        );
        job.spec.node_name = Some("node\x1b]0;x\x07".into());
        let shown = table(&[job]);
        assert!(!shown.contains('\x1b'), "{shown:?}");
        assert!(shown.contains("node\\x1b]0;x\\x07"), "{shown:?}");
    }

    #[test]
    fn output_is_shown_only_from_its_owner() {
        let mut job = crate::resource::example();
        job.metadata.uid = Some("u1".into());
        let mut cm = ConfigMap::default();
        assert!(!owned_by(&cm, &job));
        cm.metadata.owner_references = Some(vec![crate::resource::node::controller(&job)]);
        assert!(owned_by(&cm, &job));
        job.metadata.uid = Some("u2".into());
        assert!(
            !owned_by(&cm, &job),
            "a TraceJob made again under the same name"
        );
    }
}
