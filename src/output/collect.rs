//! Turning a run's files into the contents of its ConfigMap: one pass to read the maps, then the
//! fitting. Blocking file I/O and CPU work, with memory bounded whatever the output's size: the
//! agent runs it on its blocking threads, a few at a time.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::output::fit::{self, Contents, Output, Stored};
use crate::output::maps::{self, Maps};
use crate::output::parse;

/// Bytes of map text read into maps.json at most: larger maps could not fit a ConfigMap anyway,
/// and reading them would take memory in proportion.
pub const MAPS_TEXT_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub struct Collected {
    pub contents: Contents,
    pub stored: Stored,
}

/// Reads the output at `stdout` (missing: empty) and fits it into `budget` bytes. `bpftrace` is
/// the release that printed it, recorded in maps.json.
pub fn collect(
    stdout: &Path,
    dropped_on_node: u64,
    bpftrace: &str,
    budget: u64,
) -> io::Result<Collected> {
    if !stdout.exists() {
        File::create(stdout)?;
    }
    let parsed = parse::parse_reader(BufReader::new(File::open(stdout)?), MAPS_TEXT_LIMIT)?;
    let frames = parsed.maps.as_ref().map(maps::frames).unwrap_or_default();
    let maps_json = parsed
        .maps
        .map(|m| {
            serde_json::to_vec(&Maps {
                bpftrace: Some(bpftrace.to_string()),
                ..m
            })
        })
        .transpose()
        .map_err(io::Error::other)?;
    let out = Output {
        path: stdout,
        len: parsed.len,
        maps_start: parsed.maps_start,
        utf8: parsed.utf8,
        maps_json: maps_json.as_deref(),
        dropped_on_node,
    };
    let (contents, mut stored) = fit::fit(&out, budget)?;
    stored.frames = frames;
    Ok(Collected { contents, stored })
}

/// The newest output of a running trace for its live copy: at most `window` bytes, from a line
/// start, none of it before byte `from` (its attach line). With the offset it starts at, so a
/// reader can tell what is new since the last copy.
pub fn live_window(stdout: &Path, from: u64, window: u64) -> io::Result<(u64, Vec<u8>)> {
    let mut file = File::open(stdout)?;
    let len = file.metadata()?.len();
    let mut start = len.saturating_sub(window).max(from);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(len - start).read_to_end(&mut bytes)?;
    if start > from {
        // Begin after the first newline: the line it cuts was not copied whole.
        let cut = bytes.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
        bytes.drain(..cut);
        start += cut as u64;
    }
    Ok((start, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_maps_with_the_release_that_printed_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout");
        std::fs::write(&path, "Attaching 1 probe...\nhi\n\n@c[x]: 3\n").expect("write");
        let c = collect(&path, 0, "v0.23.2", fit::CONFIGMAP_BUDGET).expect("collect");
        let maps: Maps = serde_json::from_str(&c.contents.data["maps.json"]).expect("json");
        assert_eq!(maps.bpftrace.as_deref(), Some("v0.23.2"));
        assert_eq!(maps.maps[0].name, "@c");
        assert!(c.contents.data["output"].contains("hi\n"));
    }

    #[test]
    fn a_missing_output_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = collect(&dir.path().join("stdout"), 0, "v0.17.0", 1000).expect("collect");
        assert_eq!(c.contents.data["output"], "");
    }

    #[test]
    fn maps_too_large_to_read_are_said_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout");
        let text: String = (0..400_000).map(|i| format!("@m[{i}]: 1\n")).collect();
        std::fs::write(&path, &text).expect("write");
        let c = collect(&path, 0, "v0.17.0", fit::CONFIGMAP_BUDGET).expect("collect");
        assert!(c.stored.maps_too_large);
        assert!(!c.contents.binary.contains_key("maps.json.gz"));
        let (_, message) = c.stored.describe("cm");
        assert!(message.contains("too large to read"), "{message}");
    }

    #[test]
    fn the_live_window_starts_on_a_line_after_the_attach_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout");
        let attach = "Attaching 1 probe...\n";
        std::fs::write(&path, format!("{attach}one\ntwo\nthree\n")).expect("write");
        let from = attach.len() as u64;
        assert_eq!(
            live_window(&path, from, 1000).expect("window"),
            (from, b"one\ntwo\nthree\n".to_vec())
        );
        let (at, bytes) = live_window(&path, from, 9).expect("window");
        assert_eq!(bytes, b"three\n");
        assert_eq!(at, from + 8);
    }
}
