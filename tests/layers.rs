//! The crate's layers, checked by reading the source as text: a module may refer (`crate::X`,
//! also in `use crate::{X, Y}` groups) only to modules at its own layer or a lower one, so the
//! layers have no import cycles. The order is the README's ("Design"). And no file of the agent
//! grows past what a newcomer reads alone.

use std::path::{Path, PathBuf};

/// Lowest first. Modules on one line are peers.
const LAYERS: &[&[&str]] = &[
    &["resource"],
    &["metrics"],
    &["output"],
    &["decide"],
    &["host"],
    &["cluster", "serve"],
    &["config"],
    &["agent"],
    &["summarize", "trigger", "plugin"],
    &["lib", "main", "bin"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a source file belongs to: `src/host/rundir.rs` -> `host`.
fn module_of(path: &Path, src: &Path) -> String {
    let first = path.strip_prefix(src).unwrap().components().next().unwrap();
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Every top-level module named after `crate::` in `text`, with its line number. Comment lines
/// are left out (a doc comment may mention any module).
fn references(text: &str) -> Vec<(usize, String)> {
    let code: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        let s = s.trim_start();
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        s[..end].to_string()
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        // `$crate::` (macros) or `my_crate::` is not this crate's path.
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            found.push((line, ident(rest)));
            continue;
        };
        // `crate::{a::b, c::{d, e}}`: the first name of each item at the group's top level.
        let (mut depth, mut start) = (0, 0);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    found.push((line, ident(&group[start..i])));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    found.push((line, ident(&group[start..i])));
                    start = i + 1;
                }
                _ => {}
            }
        }
    }
    found.retain(|(_, m)| !m.is_empty() && m != "self");
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn lower_layers_never_refer_to_higher_ones() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let from = module_of(file, &src);
        let shown = file.strip_prefix(&root).unwrap().display();
        let Some(from_layer) = layer(&from) else {
            wrong.push(format!(
                "{shown}: module `{from}` is in no layer (add it to LAYERS)"
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, to) in references(&text) {
            match layer(&to) {
                None => wrong.push(format!("{shown}:{line}: `crate::{to}` is in no layer")),
                Some(to_layer) if to_layer > from_layer => wrong.push(format!(
                    "{shown}:{line}: {from} -> {to} (a lower layer uses a higher one)"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(files.len() > 10, "found no sources under {}", src.display());
    assert!(
        wrong.is_empty(),
        "layer order broken:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn references_are_found_in_paths_and_groups() {
    let text = "use crate::host::rundir;
// crate::agent in a comment
use crate::{
    decide::{job, status},
    self, output,
};
let x = $crate::cluster::y; my_crate::z(); crate::metrics::Metrics::new();";
    let want = [(1, "host"), (3, "decide"), (3, "output"), (7, "metrics")];
    assert_eq!(references(text), want.map(|(l, m)| (l, m.to_string())));
}

/// The agent's files stay small enough to read alone: the job actor is a file per phase.
#[test]
fn agent_files_are_readable_alone() {
    const MAX_LINES: usize = 420;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/agent"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{}: {lines} lines", f.display()))
        })
        .collect();
    assert!(files.len() > 5, "found no agent sources");
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}
