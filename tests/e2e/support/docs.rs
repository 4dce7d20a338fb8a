//! The commands the README and docs/ show, read from the pages when a test runs, so that what
//! a reader copies is what a test ran (docs/testing.md, "Every command shown is run").
//!
//! Each fenced `sh` block is preceded by a marker line: `<!-- run: TEST -->` (the test named runs
//! it) or `<!-- not run: REASON -->`. A test calls [`blocks`] with its own name, takes each of
//! its blocks ([`Blocks::take`]) and runs it with [`bash`]; a test that leaves one of its blocks
//! untaken fails. tests/docs.rs checks the markers without a cluster. Standalone (std only), so
//! tests/docs.rs and tests/cluster.rs include it by path.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a test may put in place of a page's words, and why: the only differences between a
/// block as shown and as run. Each test substitutes only these (checked by [`substitute`]).
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    (
        "my-node",
        "a node: the test's agent's node (also in the copied bpf-samples/*.yaml)",
    ),
    ("pod/web", "a pod: the test's pod"),
    ("pool=db", "a node label: one only the test's nodes carry"),
    (
        "namespace default",
        "the namespace: the test's own (the kubeconfig's context names it too)",
    ),
    (
        "namespace: default",
        "the namespace, in YAML: the test's own",
    ),
    (
        "-n tracejob-system",
        "the install's namespace: the test's own, where its receiver's token is",
    ),
    (
        "127.0.0.1:9471",
        "the trigger receiver's address: the one the test started",
    ),
    (
        "kubectl get nodes -o jsonpath='{.items[0].metadata.name}'",
        "the one node of the try-it cluster: the test's node (the shared API server has others)",
    ),
];

/// The pages: README.md, CHANGELOG.md and docs/*.md, in that order (docs/ by name).
pub fn pages(root: &Path) -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "md"))
                .collect()
        })
        .unwrap_or_default();
    docs.sort();
    let mut all = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    all.extend(docs);
    all
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    None,
    Run(String),
    NotRun(String),
}

/// A fenced block of a page.
#[derive(Clone, Debug)]
pub struct Block {
    /// The page, relative to the repository (`docs/api.md`).
    pub file: String,
    /// The line of its opening fence, from 1.
    pub line: usize,
    /// The fence's info string (`sh`, `text`, `yaml`, ...); empty when it has none.
    pub lang: String,
    /// The marker on the line just above the fence.
    pub marker: Marker,
    /// Its text, without the fences and the indentation of the opening fence.
    pub text: String,
}

/// A marker line's test or reason: `<!-- run: NAME -->`, `<!-- not run: REASON -->`.
pub fn marker(line: &str) -> Marker {
    let line = line.trim();
    let Some(inner) = line
        .strip_prefix("<!--")
        .and_then(|l| l.strip_suffix("-->"))
        .map(str::trim)
    else {
        return Marker::None;
    };
    if let Some(reason) = inner.strip_prefix("not run:") {
        Marker::NotRun(reason.trim().to_string())
    } else if let Some(test) = inner.strip_prefix("run:") {
        Marker::Run(test.trim().to_string())
    } else {
        Marker::None
    }
}

/// Every fenced block of `text` (the page `file`); an unclosed fence is an error.
pub fn parse(file: &str, text: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            let indent = lines[i].len() - trimmed.len();
            let start = i;
            let mut body = Vec::new();
            i += 1;
            loop {
                let Some(l) = lines.get(i) else {
                    return Err(format!(
                        "{file}:{}: a fence that is never closed",
                        start + 1
                    ));
                };
                if l.trim_start().starts_with("```") {
                    break;
                }
                body.push(l.get(indent..).unwrap_or(l.trim_start()));
                i += 1;
            }
            let marker = start
                .checked_sub(1)
                .map_or(Marker::None, |p| marker(lines[p]));
            blocks.push(Block {
                file: file.to_string(),
                line: start + 1,
                lang: info.trim().to_string(),
                marker,
                text: body.join("\n") + "\n",
            });
        }
        i += 1;
    }
    Ok(blocks)
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every block of every page.
pub fn all_blocks(root: &Path) -> Vec<Block> {
    let mut all = Vec::new();
    for page in pages(root) {
        let name = page
            .strip_prefix(root)
            .unwrap_or(&page)
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{name}: {e}"));
        all.extend(parse(&name, &text).unwrap_or_else(|e| panic!("{e}")));
    }
    all
}

/// The blocks a test runs, not yet taken.
pub struct Blocks {
    test: String,
    pending: Vec<Block>,
}

/// The blocks marked `<!-- run: TEST -->`, in page order. Fails when there are none.
pub fn blocks(test: &str) -> Blocks {
    let pending: Vec<Block> = all_blocks(&repo_root())
        .into_iter()
        .filter(|b| b.marker == Marker::Run(test.to_string()))
        .collect();
    assert!(
        !pending.is_empty(),
        "no page has a block marked run: {test}"
    );
    Blocks {
        test: test.to_string(),
        pending,
    }
}

impl Blocks {
    /// The block of `file` that contains `containing`, exactly as the page shows it.
    pub fn take(&mut self, file: &str, containing: &str) -> String {
        let found: Vec<usize> = (0..self.pending.len())
            .filter(|&i| self.pending[i].file == file && self.pending[i].text.contains(containing))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected one block of {file} marked for it containing {containing:?}, not yet run",
            self.test
        );
        self.pending.remove(found[0]).text
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        if !std::thread::panicking() && !self.pending.is_empty() {
            let left: Vec<String> = self
                .pending
                .iter()
                .map(|b| format!("{}:{}", b.file, b.line))
                .collect();
            panic!(
                "{} is marked to run these blocks but did not: {}",
                self.test,
                left.join(", ")
            );
        }
    }
}

/// `text` with placeholders replaced; each must be one of [`PLACEHOLDERS`] and occur in it.
pub fn substitute(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in values {
        assert!(
            PLACEHOLDERS.iter().any(|(p, _)| p == from),
            "{from:?} is not a documented placeholder"
        );
        assert!(out.contains(from), "{from:?} is not in the block:\n{out}");
        out = out.replace(from, to);
    }
    out
}

/// `bash -euo pipefail -c SCRIPT`: a block runs as a reader pastes it, stopping at the first
/// failing command, in the reader's environment: without what cargo sets for a test (a reader's
/// shell has no CARGO_MANIFEST_DIR; ring's build script tracks it, so a `cargo build` in a block
/// would rebuild ring, rustls, kube and the agent, and the next build outside again).
pub fn bash(script: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script]);
    for (name, _) in std::env::vars_os() {
        let set_by_cargo = name.to_str().is_some_and(|n| {
            (n.starts_with("CARGO_") && n != "CARGO_TARGET_DIR" && n != "CARGO_HOME")
                || n == "CARGO"
                || n == "LD_LIBRARY_PATH"
                || n == "RUST_RECURSION_COUNT"
        });
        if set_by_cargo {
            cmd.env_remove(name);
        }
    }
    cmd
}
