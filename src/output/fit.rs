//! Fitting a run's output into one ConfigMap (at most 1 MiB) without cutting anything silently,
//! reading it from disk with bounded memory: the output as it is when it fits (as text in `data`,
//! or byte for byte in `binaryData` when it is not UTF-8); gzip in `binaryData` when that fits;
//! otherwise the oldest printf lines are left out, the maps kept, and the rest compressed. Every
//! attempt reads at most the output once, and there are at most a few. `Stored` says which.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::output::maps::Frames;
use crate::resource::vocabulary::Reason;
use flate2::write::GzEncoder;
use flate2::Compression;
use k8s_openapi::ByteString;

use super::key;

/// Bytes of data for one ConfigMap: under the API server's 1 MiB limit on data plus binaryData,
/// leaving room for metadata.
pub const CONFIGMAP_BUDGET: u64 = 1000 * 1024;

/// How many times the kept part is re-estimated before giving up on keeping more.
const ATTEMPTS: usize = 8;

/// One output on disk, as the parser found it.
#[derive(Debug, Clone)]
pub struct Output<'a> {
    pub path: &'a Path,
    pub len: u64,
    /// Where the block of maps printed at the end begins.
    pub maps_start: u64,
    pub utf8: bool,
    /// `maps.json`, unless the maps were too large to read (see `maps_json_too_large`).
    pub maps_json: Option<&'a [u8]>,
    /// Bytes bpftrace printed that the node never kept (over `--max-output-bytes`).
    pub dropped_on_node: u64,
}

/// How the output was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// As it is: `data.output` (or `binaryData.output` when not UTF-8) and `data.maps.json`.
    Plain,
    /// Gzip in `binaryData`: `output.gz`, and `maps.json.gz` when it fits too.
    Compressed,
    /// Gzip in `binaryData.output.gz`, with parts left out (the counts say which).
    Truncated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub how: How,
    /// Bytes of output on the node.
    pub raw: u64,
    /// The output is UTF-8 text.
    pub utf8: bool,
    /// maps.json is in the ConfigMap.
    pub maps_json: bool,
    /// maps.json was not made: the maps were too large to read.
    pub maps_too_large: bool,
    /// Left out to fit the ConfigMap: the oldest printf lines, then the end of the maps.
    pub printf_dropped: u64,
    pub maps_dropped: u64,
    pub dropped_on_node: u64,
    /// Stack frames in the maps' keys, and those bpftrace could not name.
    pub frames: Frames,
}

impl Stored {
    /// The `OutputStored` condition's reason and a message for the status.
    pub fn describe(&self, configmap: &str) -> (&'static str, String) {
        let read = format!(
            "read it with: kubectl get configmap {configmap} -o jsonpath='{{.binaryData.output\\.gz}}' | base64 -d | gunzip"
        );
        let output = if self.utf8 {
            "data.output"
        } else {
            "binaryData.output (it is not UTF-8 text, so it is kept byte for byte)"
        };
        let maps = match (self.maps_json, self.maps_too_large) {
            (true, _) => "",
            (false, true) => "; maps.json was not made: the maps are too large to read",
            (false, false) => "; maps.json was left out for size (it is derived from output)",
        };
        let (reason, mut message) = match self.how {
            How::Plain => (Reason::Stored.as_str(), format!("output stored in {output}{}{maps}", if self.maps_json { " and data.maps.json" } else { "" })),
            How::Compressed => (
                Reason::Compressed.as_str(),
                format!(
                    "output is {} bytes, over the ConfigMap limit: stored gzip-compressed in binaryData output.gz{}{maps}; {read}",
                    self.raw,
                    if self.maps_json { " and maps.json.gz" } else { "" }
                ),
            ),
            How::Truncated => (
                Reason::Truncated.as_str(),
                format!(
                    "output is {} bytes and does not fit one ConfigMap even compressed: left out {} bytes of the oldest printf output and {} bytes at the end of the maps{maps}; the rest is stored gzip-compressed in binaryData output.gz; {read}",
                    self.raw, self.printf_dropped, self.maps_dropped
                ),
            ),
        };
        if self.frames.bare > 0 {
            message.push_str(&format!(
                "; {} of {} stack frames could not be symbolized and are shown as bare addresses: no symbol covers them in the file they ran from (stripped, generated code, or the end of a frame-pointer walk), or their process had exited before bpftrace printed the maps (a user stack is symbolized through its process's /proc/PID/root while it lives)",
                self.frames.bare, self.frames.frames
            ));
        }
        if self.dropped_on_node == 0 {
            return (reason, message);
        }
        message.push_str(&format!(
            "; {} bytes printed after the per-job limit (--max-output-bytes) were never kept on the node",
            self.dropped_on_node
        ));
        (Reason::Truncated.as_str(), message)
    }
}

/// The ConfigMap's `data` and `binaryData` for an output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Contents {
    pub data: BTreeMap<String, String>,
    pub binary: BTreeMap<String, Vec<u8>>,
}

impl Contents {
    pub fn size(&self) -> usize {
        self.data.values().map(String::len).sum::<usize>()
            + self.binary.values().map(Vec::len).sum::<usize>()
    }
}

pub fn fit(out: &Output, budget: u64) -> io::Result<(Contents, Stored)> {
    let mut file = File::open(out.path)?;
    let maps_json = out.maps_json.unwrap_or_default();
    let mut stored = Stored {
        how: How::Plain,
        raw: out.len,
        utf8: out.utf8,
        maps_json: out.maps_json.is_some(),
        maps_too_large: out.maps_json.is_none(),
        printf_dropped: 0,
        maps_dropped: 0,
        dropped_on_node: out.dropped_on_node,
        frames: Frames::default(),
    };
    if out.len.saturating_add(maps_json.len() as u64) <= budget {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut contents = Contents::default();
        match String::from_utf8(bytes) {
            Ok(text) => {
                contents.data.insert(key::OUTPUT.into(), text);
            }
            Err(e) => {
                stored.utf8 = false;
                contents.binary.insert(key::OUTPUT.into(), e.into_bytes());
            }
        }
        if let Some(m) = out.maps_json {
            contents.data.insert(
                key::MAPS_JSON.into(),
                String::from_utf8_lossy(m).into_owned(),
            );
        }
        return Ok((contents, stored));
    }
    let whole = gzip(&mut file, 0, out.len, budget)?;
    if let Some(output_gz) = whole.bytes {
        stored.how = How::Compressed;
        let room = budget.saturating_sub(output_gz.len() as u64);
        let maps_gz = out
            .maps_json
            .map(|m| gzip(&mut io::Cursor::new(m), 0, m.len() as u64, room))
            .transpose()?
            .and_then(|g| g.bytes);
        stored.maps_json = maps_gz.is_some();
        return Ok((compressed(output_gz, maps_gz), stored));
    }
    // Keep the maps block at the end, and as many of the newest printf lines as fit.
    stored.how = How::Truncated;
    stored.maps_json = false;
    // How well this output compresses, from the whole-output attempt.
    let ratio = whole.written as f64 / whole.read.max(1) as f64;
    let maps = gzip(&mut file, out.maps_start, out.len, budget)?;
    let (from, to) = match maps.bytes {
        Some(maps_gz) => {
            let room = budget.saturating_sub(maps_gz.len() as u64) as f64;
            let mut keep = (room / ratio.max(1e-3) * 0.9) as u64;
            let mut chosen = (out.maps_start, out.len, maps_gz);
            for _ in 0..ATTEMPTS {
                let from = line_start_after(&mut file, out.maps_start.saturating_sub(keep))?;
                if from >= out.maps_start {
                    break;
                }
                let attempt = gzip(&mut file, from, out.len, budget)?;
                match attempt.bytes {
                    Some(gz) => {
                        chosen = (from, out.len, gz);
                        break;
                    }
                    None => keep = shrink(keep, attempt.written, budget),
                }
            }
            let (from, to, gz) = chosen;
            return Ok(truncated(gz, from, to, out, stored));
        }
        None => (out.maps_start, out.len),
    };
    // The maps alone do not fit: keep their beginning, on line boundaries.
    let mut keep = ((budget as f64 / ratio.max(1e-3)) * 0.9) as u64;
    for _ in 0..ATTEMPTS {
        let end = line_end_before(&mut file, from.saturating_add(keep).min(to), from)?;
        let attempt = gzip(&mut file, from, end, budget)?;
        if let Some(gz) = attempt.bytes {
            return Ok(truncated(gz, from, end, out, stored));
        }
        keep = shrink(keep, attempt.written, budget);
    }
    Ok(truncated(gzip_empty()?, from, from, out, stored))
}

fn truncated(
    gz: Vec<u8>,
    from: u64,
    to: u64,
    out: &Output,
    mut stored: Stored,
) -> (Contents, Stored) {
    stored.printf_dropped = from.min(out.maps_start);
    stored.maps_dropped = out.len.saturating_sub(to);
    (compressed(gz, None), stored)
}

/// A smaller amount to keep, after keeping `keep` compressed to more than `budget`.
fn shrink(keep: u64, compressed: u64, budget: u64) -> u64 {
    let scale = budget as f64 / compressed.max(1) as f64;
    (keep as f64 * scale * 0.9) as u64
}

fn compressed(output_gz: Vec<u8>, maps_gz: Option<Vec<u8>>) -> Contents {
    let mut binary = BTreeMap::from([(key::OUTPUT_GZ.to_string(), output_gz)]);
    if let Some(maps_gz) = maps_gz {
        binary.insert(key::MAPS_JSON_GZ.to_string(), maps_gz);
    }
    Contents {
        data: BTreeMap::new(),
        binary,
    }
}

/// One compression attempt: its result if it fits, and how far it got.
struct Gzipped {
    bytes: Option<Vec<u8>>,
    /// Input bytes read, and compressed bytes written by then.
    read: u64,
    written: u64,
}

/// Gzips bytes `from..to` of `input`, giving up once the result is over `cap`.
fn gzip<R: Read + Seek>(input: &mut R, from: u64, to: u64, cap: u64) -> io::Result<Gzipped> {
    input.seek(SeekFrom::Start(from))?;
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    let mut chunk = input.take(to.saturating_sub(from));
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        let n = chunk.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        enc.write_all(&buf[..n])?;
        if enc.get_ref().len() as u64 > cap {
            return Ok(Gzipped {
                bytes: None,
                read,
                written: enc.get_ref().len() as u64,
            });
        }
    }
    let bytes = enc.finish()?;
    let written = bytes.len() as u64;
    Ok(Gzipped {
        bytes: (written <= cap).then_some(bytes),
        read,
        written,
    })
}

fn gzip_empty() -> io::Result<Vec<u8>> {
    GzEncoder::new(Vec::new(), Compression::default()).finish()
}

/// The first line start at or after `pos` (looking at most 64 KiB ahead; `pos` if none).
fn line_start_after(file: &mut File, pos: u64) -> io::Result<u64> {
    if pos == 0 {
        return Ok(0);
    }
    file.seek(SeekFrom::Start(pos - 1))?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = file.read(&mut buf)?;
    Ok(match buf[..n].iter().position(|b| *b == b'\n') {
        Some(i) => pos + i as u64,
        None => pos,
    })
}

/// The last line end (just past a newline) at or before `pos` and after `floor`.
fn line_end_before(file: &mut File, pos: u64, floor: u64) -> io::Result<u64> {
    let back = (pos - floor).min(64 * 1024);
    file.seek(SeekFrom::Start(pos - back))?;
    let mut buf = vec![0u8; back as usize];
    file.read_exact(&mut buf)?;
    Ok(match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => pos - back + i as u64 + 1,
        None => floor,
    })
}

impl Contents {
    /// A live copy's contents: the output as text, or byte for byte when it is not UTF-8.
    pub fn live(bytes: Vec<u8>) -> Contents {
        let mut contents = Contents::default();
        match String::from_utf8(bytes) {
            Ok(text) => {
                contents.data.insert(key::OUTPUT.into(), text);
            }
            Err(e) => {
                contents.binary.insert(key::OUTPUT.into(), e.into_bytes());
            }
        }
        contents
    }

    /// Keeps the program as it ran beside the output.
    pub fn with_program(mut self, program: String) -> Contents {
        self.data.insert(key::PROGRAM.into(), program);
        self
    }

    /// The ConfigMap's `data` and `binaryData`.
    pub fn configmap_data(&self) -> (BTreeMap<String, String>, BTreeMap<String, ByteString>) {
        let binary = self
            .binary
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone())))
            .collect();
        (self.data.clone(), binary)
    }
}

/// A fan-out's merged output (its text, its maps as JSON, and the program) in a ConfigMap's
/// budget: as text when it fits, else gzip; maps.json kept while it fits. With how it was
/// stored, for the status.
pub fn merged(text: String, maps_json: String, program: &str) -> (Contents, &'static str) {
    let budget = usize::try_from(CONFIGMAP_BUDGET).unwrap_or(usize::MAX);
    let mut contents = Contents::default().with_program(program.to_string());
    if text.len() + maps_json.len() + program.len() <= budget {
        contents.data.insert(key::OUTPUT.into(), text);
        contents.data.insert(key::MAPS_JSON.into(), maps_json);
        return (contents, "as text");
    }
    let output = gzip_bytes(text.as_bytes());
    let maps = gzip_bytes(maps_json.as_bytes());
    let mut room = budget.saturating_sub(program.len());
    if output.len() <= room {
        room -= output.len();
        contents.binary.insert(key::OUTPUT_GZ.into(), output);
        if maps.len() <= room {
            contents.binary.insert(key::MAPS_JSON_GZ.into(), maps);
        }
        return (contents, "compressed");
    }
    if maps.len() <= room {
        contents.binary.insert(key::MAPS_JSON_GZ.into(), maps);
    }
    contents.data.insert(
        key::OUTPUT.into(),
        "the merged output is larger than a ConfigMap holds: see each node's output (kubectl tracejob output NAME --per-node)\n".into(),
    );
    (contents, "too large; maps.json only")
}

fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::parse::parse_reader;
    use flate2::read::GzDecoder;

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(b).read_to_end(&mut out).expect("gzip");
        out
    }

    /// `n` pseudo-random numbers (xorshift), the same for the same seed: output that does not
    /// compress much.
    fn random_numbers(seed: u64, n: usize) -> impl Iterator<Item = u64> {
        (0..n).scan(seed, |x, _| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            Some(*x)
        })
    }

    /// Fits `text` as the collector does: written to a file, parsed, then fitted.
    fn fit_text(text: &[u8], maps_json: Option<&[u8]>, budget: u64) -> (Contents, Stored) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout");
        std::fs::write(&path, text).expect("write");
        let parsed = parse_reader(text, usize::MAX).expect("parse");
        let out = Output {
            path: &path,
            len: parsed.len,
            maps_start: parsed.maps_start,
            utf8: parsed.utf8,
            maps_json,
            dropped_on_node: 0,
        };
        fit(&out, budget).expect("fit")
    }

    #[test]
    fn small_output_is_plain() {
        let text = b"Attaching 1 probe...\n\n@x: 1\n";
        let (c, how) = fit_text(text, Some(b"{}"), CONFIGMAP_BUDGET);
        assert_eq!(how.how, How::Plain);
        assert_eq!(c.data["output"].as_bytes(), text);
        assert_eq!(c.data["maps.json"], "{}");
        assert_eq!(how.describe("cm").0, "Stored");
    }

    #[test]
    fn output_that_is_not_utf8_is_kept_byte_for_byte() {
        let text = b"Attaching 1 probe...\n\xff\xfe binary \x80\n@x: 1\n";
        let (c, how) = fit_text(text, Some(b"{}"), CONFIGMAP_BUDGET);
        assert!(!how.utf8);
        assert_eq!(c.binary["output"], text);
        assert!(!c.data.contains_key("output"));
        let (reason, message) = how.describe("cm");
        assert_eq!(reason, "Stored");
        assert!(message.contains("binaryData.output"), "{message}");
    }

    #[test]
    fn large_compressible_output_is_compressed_whole() {
        let out = "tick\n".repeat(400_000) + "\n\n@x: 1\n";
        let (c, how) = fit_text(out.as_bytes(), Some(b"{}"), CONFIGMAP_BUDGET);
        assert_eq!(how.how, How::Compressed);
        assert!(how.maps_json);
        assert_eq!(gunzip(&c.binary["output.gz"]), out.as_bytes());
        assert_eq!(gunzip(&c.binary["maps.json.gz"]), b"{}");
        assert!(c.data.is_empty());
    }

    #[test]
    fn incompressible_output_drops_oldest_printf_lines_and_keeps_maps() {
        // Pseudo-random printf lines do not compress much.
        let mut out = String::from("Attaching 2 probes...\n");
        out.extend(random_numbers(0x2545F4914F6CDD1D, 200_000).map(|x| format!("line {x:x}\n")));
        let maps = "\n\n@count[bash]: 3\n@h: \n[1]   1 |@@@@|\n";
        out.push_str(maps);
        let budget = 200 * 1024;
        let (c, how) = fit_text(out.as_bytes(), Some(b"{\"maps\":[]}"), budget);
        assert_eq!(how.how, How::Truncated);
        let kept = String::from_utf8(gunzip(&c.binary["output.gz"])).expect("text");
        assert!(kept.ends_with(maps), "the maps are kept");
        assert_eq!(how.maps_dropped, 0);
        assert_eq!(kept.len() as u64 + how.printf_dropped, out.len() as u64);
        assert!(c.size() as u64 <= budget);
        assert!(
            kept.len() > 100 * 1024,
            "most of the room is used: {}",
            kept.len()
        );
        let last = out.lines().rev().nth(5).expect("line");
        assert!(kept.contains(last), "the newest printf lines are kept");
        assert!(kept.starts_with("line "), "from a line start");
    }

    #[test]
    fn maps_too_big_for_one_configmap_are_cut_on_line_boundaries_and_reported() {
        let mut out = String::from("Attaching 1 probe...\n\n\n");
        out.extend(random_numbers(88172645463325252, 100_000).map(|x| format!("@m[{x}]: 1\n")));
        let budget = 300 * 1024;
        let (c, how) = fit_text(out.as_bytes(), Some(b"{}"), budget);
        let kept = String::from_utf8(gunzip(&c.binary["output.gz"])).expect("text");
        assert_eq!(
            how.printf_dropped,
            "Attaching 1 probe...\n\n\n".len() as u64,
            "printf lines go first"
        );
        assert!(how.maps_dropped > 0 && kept.ends_with('\n') && kept.starts_with("@m["));
        assert_eq!(
            kept.len() as u64 + how.printf_dropped + how.maps_dropped,
            out.len() as u64
        );
        assert!(!c.binary.contains_key("maps.json.gz"));
        assert!(c.size() as u64 <= budget);
    }

    #[test]
    fn bytes_dropped_on_the_node_make_it_truncated() {
        let stored = Stored {
            how: How::Plain,
            raw: 10,
            utf8: true,
            maps_json: true,
            maps_too_large: false,
            printf_dropped: 0,
            maps_dropped: 0,
            dropped_on_node: 1234,
            frames: Frames::default(),
        };
        let (reason, message) = stored.describe("cm");
        assert_eq!(reason, "Truncated");
        assert!(message.contains("1234 bytes"), "{message}");
        // Bare stack frames are explained, whatever the reason.
        let bare = Stored {
            dropped_on_node: 0,
            frames: Frames { frames: 6, bare: 2 },
            ..stored
        };
        let (reason, message) = bare.describe("cm");
        assert_eq!(reason, "Stored");
        assert!(
            message.contains("2 of 6 stack frames could not be symbolized"),
            "{message}"
        );
        let named = Stored {
            frames: Frames { frames: 6, bare: 0 },
            ..bare
        };
        assert!(!named.describe("cm").1.contains("symbolized"));
    }

    #[test]
    fn merged_output_fits_a_configmap() {
        let (c, how) = merged("@c: 1\n".into(), "{}".into(), "BEGIN {}");
        assert_eq!((c.data[key::OUTPUT].as_str(), how), ("@c: 1\n", "as text"));
        assert_eq!(c.data[key::PROGRAM], "BEGIN {}");
        assert!(c.binary.is_empty());
        // Large but compressible: gzip.
        let big = "@c[x]: 1\n".repeat(200_000);
        let (c, how) = merged(big.clone(), "{}".into(), "BEGIN {}");
        assert_eq!(how, "compressed");
        assert!(!c.data.contains_key(key::OUTPUT));
        assert_eq!(gunzip(&c.binary[key::OUTPUT_GZ]), big.as_bytes());
    }

    #[test]
    fn live_output_is_text_or_bytes() {
        assert_eq!(Contents::live(b"hi\n".to_vec()).data[key::OUTPUT], "hi\n");
        assert_eq!(
            Contents::live(b"\xff".to_vec()).binary[key::OUTPUT],
            b"\xff"
        );
    }
}
