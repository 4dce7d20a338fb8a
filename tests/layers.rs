//! The crate's layers, checked by reading the source as text: a module may refer (`crate::X`,
//! also in `use crate::{X, Y}` groups) only to modules at a lower layer, or to itself; peers (on
//! one layer) never refer to each other. So the layers have no import cycles. Inside a module,
//! no files import each other in a circle either (a file's use of its own folder's `mod.rs`, the
//! folder's face, is not counted). The order is docs/design.md's ("Layers"). And no file of
//! the agent grows past what a newcomer reads alone.

use std::path::{Path, PathBuf};

/// Lowest first. Modules on one line are peers.
const LAYERS: &[&[&str]] = &[
    &["resource"],
    &["serve"],
    &["output"],
    &["decide"],
    &["host"],
    &["cluster"],
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
                Some(to_layer) if to_layer == from_layer && to != from => wrong.push(format!(
                    "{shown}:{line}: {from} -> {to} (peers on one layer use each other)"
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

/// A source file's module path: `src/plugin/show.rs` -> plugin::show, `src/plugin/mod.rs` ->
/// plugin, `src/lib.rs` -> (the crate).
fn module_path(path: &Path, src: &Path) -> Vec<String> {
    let mut parts: Vec<String> = path
        .strip_prefix(src)
        .unwrap()
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The paths a file names (`crate::a::b`, `super::x`, `self::x`, and its own child modules by
/// name), as module paths relative to the crate, each with its line. Comment lines are left out.
fn paths_named(text: &str, me: &[String], is_folder: bool) -> Vec<(usize, Vec<String>)> {
    let code: Vec<&str> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect();
    let children: Vec<String> = code
        .iter()
        .filter_map(|l| {
            let l = l
                .trim_start()
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect();
    // `super` of a folder's mod.rs is the folder's parent; of a file, its folder.
    let folder: Vec<String> = if is_folder {
        me.to_vec()
    } else {
        me[..me.len().saturating_sub(1)].to_vec()
    };
    let parent: Vec<String> = folder[..folder.len().saturating_sub(1)].to_vec();
    let mut found = Vec::new();
    for (n, line) in code.iter().enumerate() {
        let mut rest = *line;
        while let Some(at) = rest.find(|c: char| c.is_alphabetic() || c == '_') {
            let before = rest[..at].chars().next_back();
            rest = &rest[at..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let word = &rest[..end];
            rest = &rest[end..];
            if before.is_some_and(|c| c == '$' || c == '.') || !word.contains("::") {
                continue;
            }
            let segments: Vec<&str> = word.split("::").filter(|s| !s.is_empty()).collect();
            let (base, tail) = match segments.first() {
                Some(&"crate") => (Vec::new(), &segments[1..]),
                Some(&"super") => (
                    if is_folder {
                        parent.clone()
                    } else {
                        folder.clone()
                    },
                    &segments[1..],
                ),
                Some(&"self") => (folder.clone(), &segments[1..]),
                Some(first)
                    if is_folder && children.iter().any(|c| c == first) && word.contains("::") =>
                {
                    (folder.clone(), &segments[..])
                }
                _ => continue,
            };
            let mut path = base;
            path.extend(tail.iter().map(|s| s.to_string()));
            found.push((n + 1, path.clone()));
            // `use super::{a, b}`: the names of the group follow the `::{`.
            if rest.starts_with('{') && word.ends_with("::") {
                let group = rest[1..].split('}').next().unwrap_or("");
                for item in group.split(',') {
                    let item = item.trim().split("::").next().unwrap_or("").trim();
                    if !item.is_empty() && item != "self" && item != "*" {
                        let mut p = path.clone();
                        p.push(item.to_string());
                        found.push((n + 1, p));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.ends_with("src/bin/kubectl-tracejob.rs"));
    files.sort();
    let modules: Vec<Vec<String>> = files.iter().map(|f| module_path(f, &src)).collect();
    // The file a path lands in: the longest module path that is a file.
    let file_of = |path: &[String]| -> Option<usize> {
        (0..=path.len())
            .rev()
            .find_map(|n| modules.iter().position(|m| m.as_slice() == &path[..n]))
    };
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); files.len()];
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).unwrap();
        let is_folder =
            file.ends_with("mod.rs") || file.ends_with("lib.rs") || file.ends_with("main.rs");
        for (_, path) in paths_named(&text, &modules[i], is_folder) {
            let Some(j) = file_of(&path) else { continue };
            // A file's own folder (or any folder above it) is its face, not a peer.
            if j == i || modules[i].starts_with(&modules[j]) {
                continue;
            }
            if !edges[i].contains(&j) {
                edges[i].push(j);
            }
        }
    }
    // A circle: a file that reaches itself.
    let mut circles = Vec::new();
    for start in 0..files.len() {
        let mut seen = vec![false; files.len()];
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(start, vec![start])];
        while let Some((at, trail)) = stack.pop() {
            for &next in &edges[at] {
                if next == start {
                    let names: Vec<String> = trail
                        .iter()
                        .chain([&start])
                        .map(|&k| modules[k].join("::"))
                        .collect();
                    circles.push(names.join(" -> "));
                } else if !seen[next] && next > start {
                    seen[next] = true;
                    let mut t = trail.clone();
                    t.push(next);
                    stack.push((next, t));
                }
            }
        }
    }
    assert!(files.len() > 10, "found no sources under {}", src.display());
    assert!(
        circles.is_empty(),
        "files that import each other:\n{}",
        circles.join("\n")
    );
}

#[test]
fn paths_are_resolved_from_where_they_are_named() {
    let me: Vec<String> = ["plugin", "show"].iter().map(|s| s.to_string()).collect();
    let text = "use super::cli::Format;\nuse super::{Error, other};\n// super::x\nuse crate::output::merge;\nself.x; $crate::y;";
    let found: Vec<String> = paths_named(text, &me, false)
        .into_iter()
        .map(|(_, p)| p.join("::"))
        .collect();
    let want = [
        "plugin::cli::Format",
        "plugin",
        "plugin::Error",
        "plugin::other",
        "output::merge",
    ];
    assert_eq!(found, want);
}

/// The end-to-end tests are grouped by feature in files a reader can take in whole: when one
/// grows past this, split it by feature (a folder, as tests/e2e/security/ is).
const E2E_FILE_LINES: usize = 800;

#[test]
fn no_end_to_end_test_file_is_over_800_lines() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e"),
        &mut files,
    );
    assert!(
        files.iter().any(|f| f.ends_with("tests/e2e/main.rs")),
        "no end-to-end test files found"
    );
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > E2E_FILE_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "end-to-end test files over {E2E_FILE_LINES} lines, split them by feature: {long:?}"
    );
}
