//! The pages (README.md, CHANGELOG.md, docs/*.md), checked without a cluster: every command
//! block names the test that runs it (and that test reads it), the README stays a front door,
//! every page is linked from it, and every relative link resolves.

#[path = "e2e/support/docs.rs"]
mod docs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use docs::{Block, Marker};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The test functions by name, with the text of the file that declares each: the end-to-end
/// tests (`name: "..."` in tests/e2e/) and the plain `#[test]`s of tests/*.rs.
fn tests_by_name() -> BTreeMap<String, (String, String)> {
    let mut found = BTreeMap::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["tests", "tests/e2e"] {
        for e in std::fs::read_dir(root().join(dir))
            .expect("tests/")
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "rs") {
                files.push(e.path());
            }
        }
    }
    for f in files {
        let text = read(&f);
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if let Some(name) = t.strip_prefix("name: \"").and_then(|r| r.split('"').next()) {
                found.insert(name.to_string(), (rel(&f), text.clone()));
            }
            if t == "#[test]" {
                let next = text.lines().nth(i + 1).unwrap_or_default().trim();
                if let Some(name) = next.strip_prefix("fn ").and_then(|r| r.split('(').next()) {
                    found.insert(name.to_string(), (rel(&f), text.clone()));
                }
            }
        }
    }
    found
}

fn all_blocks() -> Vec<Block> {
    docs::all_blocks(&root())
}

#[test]
fn every_command_block_names_the_test_that_runs_it() {
    let tests = tests_by_name();
    let mut errors = Vec::new();
    for b in all_blocks() {
        let at = format!("{}:{}", b.file, b.line);
        if b.lang.is_empty() {
            errors.push(format!(
                "{at}: a fence without a language (sh, text, yaml, json)"
            ));
        }
        // Commands are `sh` and nothing else, so none escapes the markers under another name.
        if ["bash", "shell", "console", "shell-session", "zsh"].contains(&b.lang.as_str()) {
            errors.push(format!("{at}: commands are fenced as sh, not {}", b.lang));
        }
        match (&b.marker, b.lang == "sh") {
            (Marker::None, true) => errors.push(format!(
                "{at}: a sh block without <!-- run: TEST --> or <!-- not run: REASON --> above it"
            )),
            (Marker::None, false) => {}
            (_, false) => errors.push(format!("{at}: a marker above a {} block", b.lang)),
            (Marker::NotRun(reason), true) => {
                if reason.len() < 20 {
                    errors.push(format!(
                        "{at}: say why it is not run, and what runs instead"
                    ));
                }
            }
            (Marker::Run(test), true) => match tests.get(test) {
                None => errors.push(format!("{at}: run: {test}, but no test has that name")),
                Some((file, text)) => {
                    if !text.contains(&format!("docs::blocks(\"{test}\")")) {
                        errors.push(format!(
                            "{at}: {test} ({file}) does not read its blocks (docs::blocks(\"{test}\"))"
                        ));
                    }
                }
            },
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn no_marker_stands_apart_from_its_block() {
    let mut errors = Vec::new();
    for page in docs::pages(&root()) {
        let text = read(&page);
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if docs::marker(l) != Marker::None
                && !lines
                    .get(i + 1)
                    .is_some_and(|n| n.trim_start().starts_with("```"))
            {
                errors.push(format!(
                    "{}:{}: a marker not right above a fence",
                    rel(&page),
                    i + 1
                ));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Indented code blocks (four spaces after a blank line, outside a list) would escape the
/// markers: every block is fenced.
#[test]
fn no_indented_code_blocks() {
    let mut errors = Vec::new();
    for page in docs::pages(&root()) {
        let text = read(&page);
        let mut in_fence = false;
        let mut prev = "";
        let mut prev_text = "";
        for (i, l) in text.lines().enumerate() {
            if l.trim_start().starts_with("```") {
                in_fence = !in_fence;
            } else if !in_fence
                && prev.trim().is_empty()
                && l.starts_with("    ")
                && !l.trim().is_empty()
            {
                let in_list = prev_text.starts_with("- ")
                    || prev_text.starts_with("  ")
                    || prev_text
                        .split_once(". ")
                        .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
                if !in_list {
                    errors.push(format!(
                        "{}:{}: an indented code block: fence it",
                        rel(&page),
                        i + 1
                    ));
                }
            }
            if !l.trim().is_empty() {
                prev_text = l;
            }
            prev = l;
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_readme_is_a_front_door_linking_every_page() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(lines <= 350, "README.md has {lines} lines (at most 350)");
    for page in docs::pages(&root()).into_iter().skip(1) {
        let name = rel(&page);
        assert!(
            readme.contains(&format!("]({name})")),
            "README.md does not link {name}"
        );
    }
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut out = Vec::new();
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && l.starts_with('#') {
            out.push(anchor(l.trim_start_matches('#')));
        }
    }
    out
}

/// The targets of the markdown links `](target)` of `text`, outside fences and inline code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Inline code never holds a link.
        let plain: String = l.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_string());
            }
        }
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut errors = Vec::new();
    for page in docs::pages(&root()) {
        let text = read(&page);
        let dir = page.parent().expect("a page is in a directory");
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                dir.join(path)
            };
            if !file.exists() {
                errors.push(format!("{}: {target}: no such file", rel(&page)));
                continue;
            }
            if !fragment.is_empty()
                && file.extension().is_some_and(|x| x == "md")
                && !anchors(&read(&file)).iter().any(|a| a == fragment)
            {
                errors.push(format!("{}: {target}: no such heading", rel(&page)));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The API's words (`src/resource/vocabulary.rs`: every label, annotation, condition type and
/// reason) are the contract other tools select on: each is documented in docs/.
#[test]
fn every_word_of_the_api_is_documented() {
    let vocabulary = read(&root().join("src/resource/vocabulary.rs"));
    let docs: String = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| read(&e.expect("an entry").path()))
        .collect();
    let words: Vec<&str> = vocabulary
        .lines()
        .filter_map(|l| l.trim().split_once(" = \""))
        .filter_map(|(_, rest)| rest.strip_suffix("\","))
        .collect();
    assert!(words.len() > 40, "read {} words only", words.len());
    let missing: Vec<&&str> = words
        .iter()
        .filter(|w| !docs.contains(&format!("`{w}")))
        .collect();
    assert!(missing.is_empty(), "not in docs/: {missing:?}");
}
