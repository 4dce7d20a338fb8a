//! Fitting a run's output into one ConfigMap (at most 1 MiB) without cutting anything silently:
//! plain text when it fits; gzip in `binaryData` when that fits; otherwise the oldest printf lines
//! are dropped, the maps kept, and the result compressed. The caller reports which.

use std::collections::BTreeMap;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

/// Bytes of data for one ConfigMap: under the API server's 1 MiB limit on data plus binaryData,
/// leaving room for metadata.
pub const CONFIGMAP_BUDGET: usize = 1000 * 1024;

/// How the output was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Plain,
    /// Gzip in `binaryData` (`output.gz`, and `maps.json.gz` unless it did not fit too).
    Compressed {
        raw: usize,
        maps_json: bool,
    },
    /// Compressed, without `maps.json.gz`, and with bytes left out: first the oldest printf lines,
    /// and only if the maps alone do not fit, the end of the maps.
    Truncated {
        raw: usize,
        printf_dropped: usize,
        maps_dropped: usize,
    },
}

impl Stored {
    /// The condition reason and a message for the status.
    pub fn describe(&self, configmap: &str) -> (&'static str, String) {
        let read = format!(
            "read it with: kubectl get configmap {configmap} -o jsonpath='{{.binaryData.output\\.gz}}' | base64 -d | gunzip"
        );
        match self {
            Stored::Plain => ("Stored", "output stored in data.output and data.maps.json".to_string()),
            Stored::Compressed { raw, maps_json: true } => (
                "Compressed",
                format!("output is {raw} bytes, over the ConfigMap limit: stored gzip-compressed in binaryData output.gz and maps.json.gz; {read}"),
            ),
            Stored::Compressed { raw, maps_json: false } => (
                "Compressed",
                format!("output is {raw} bytes, over the ConfigMap limit: stored gzip-compressed in binaryData output.gz; maps.json was left out for size (it is derived from output); {read}"),
            ),
            Stored::Truncated { raw, printf_dropped, maps_dropped } => (
                "Truncated",
                format!("output is {raw} bytes and does not fit one ConfigMap even compressed: left out {printf_dropped} bytes of the oldest printf output and {maps_dropped} bytes at the end of the maps, and maps.json; the rest is stored gzip-compressed in binaryData output.gz; {read}"),
            ),
        }
    }
}

/// The ConfigMap's `data` and `binaryData` for an output.
#[derive(Debug, Default)]
pub struct Contents {
    pub data: BTreeMap<String, String>,
    pub binary: BTreeMap<String, Vec<u8>>,
}

pub fn fit(stdout: &str, maps_json: &str, budget: usize) -> (Contents, Stored) {
    let raw = stdout.len() + maps_json.len();
    if raw <= budget {
        let data = BTreeMap::from([
            ("output".to_string(), stdout.to_string()),
            ("maps.json".to_string(), maps_json.to_string()),
        ]);
        return (
            Contents {
                data,
                binary: BTreeMap::new(),
            },
            Stored::Plain,
        );
    }
    let output_gz = gzip(stdout.as_bytes());
    let maps_gz = gzip(maps_json.as_bytes());
    if output_gz.len() + maps_gz.len() <= budget {
        return (
            compressed(output_gz, Some(maps_gz)),
            Stored::Compressed {
                raw,
                maps_json: true,
            },
        );
    }
    if output_gz.len() <= budget {
        return (
            compressed(output_gz, None),
            Stored::Compressed {
                raw,
                maps_json: false,
            },
        );
    }
    // Keep the maps block at the end, and as many of the most recent printf lines as fit.
    let (printf, maps_text) = stdout.split_at(maps_start(stdout));
    let fits = |text: &str| gzip(text.as_bytes()).len() <= budget;
    let (mut lo, mut hi) = (0usize, printf.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(&format!("{}{maps_text}", tail_lines(printf, mid))) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let kept_printf = tail_lines(printf, lo);
    let mut maps_kept = maps_text.len();
    // The maps alone may not fit: then keep their beginning, on line boundaries.
    while maps_kept > 0 && !fits(&format!("{kept_printf}{}", &maps_text[..maps_kept])) {
        maps_kept = maps_text[..floor_char_boundary(maps_text, maps_kept * 9 / 10)]
            .rfind('\n')
            .map_or(0, |i| i + 1);
    }
    let kept = format!("{kept_printf}{}", &maps_text[..maps_kept]);
    let stored = Stored::Truncated {
        raw,
        printf_dropped: printf.len() - kept_printf.len(),
        maps_dropped: maps_text.len() - maps_kept,
    };
    (compressed(gzip(kept.as_bytes()), None), stored)
}

fn compressed(output_gz: Vec<u8>, maps_gz: Option<Vec<u8>>) -> Contents {
    let mut binary = BTreeMap::from([("output.gz".to_string(), output_gz)]);
    if let Some(maps_gz) = maps_gz {
        binary.insert("maps.json.gz".to_string(), maps_gz);
    }
    Contents {
        data: BTreeMap::new(),
        binary,
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// Where the block of maps bpftrace prints on exit begins: after the last line that is neither
/// part of a map (`@...`, buckets, stack frames, `]: n`) nor blank.
pub fn maps_start(stdout: &str) -> usize {
    let mut start = stdout.len();
    let mut end = stdout.len();
    let lines: Vec<&str> = stdout.split_inclusive('\n').collect();
    for line in lines.iter().rev() {
        let t = line.trim_end_matches('\n');
        let mapish = t.is_empty() || t.starts_with(['@', '[', '(', ']', ' ']);
        if !mapish {
            break;
        }
        end -= line.len();
        if t.starts_with('@') {
            start = end;
        }
    }
    start
}

/// The last `bytes` bytes of `text`, from a line start.
fn tail_lines(text: &str, bytes: usize) -> &str {
    if bytes >= text.len() {
        return text;
    }
    let from = text.len() - bytes;
    match text[from..].find('\n') {
        Some(i) if from > 0 && !text[..from].ends_with('\n') => &text[from + i + 1..],
        _ => &text[from..],
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn gunzip(b: &[u8]) -> String {
        let mut s = String::new();
        GzDecoder::new(b).read_to_string(&mut s).expect("gzip");
        s
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

    #[test]
    fn small_output_is_plain() {
        let (c, how) = fit("Attaching 1 probe...\n\n@x: 1\n", "{}", CONFIGMAP_BUDGET);
        assert_eq!(how, Stored::Plain);
        assert_eq!(c.data["output"], "Attaching 1 probe...\n\n@x: 1\n");
    }

    #[test]
    fn large_compressible_output_is_compressed_whole() {
        let out = "tick\n".repeat(400_000) + "\n\n@x: 1\n";
        let (c, how) = fit(&out, "{}", CONFIGMAP_BUDGET);
        assert_eq!(
            how,
            Stored::Compressed {
                raw: out.len() + 2,
                maps_json: true
            }
        );
        assert_eq!(gunzip(&c.binary["output.gz"]), out);
        assert!(c.data.is_empty());
    }

    #[test]
    fn incompressible_output_drops_oldest_printf_lines_and_keeps_maps() {
        // Pseudo-random printf lines do not compress much.
        let mut out = String::from("Attaching 2 probes...\n");
        out.extend(random_numbers(0x2545F4914F6CDD1D, 200_000).map(|x| format!("line {x:x}\n")));
        let maps = "\n\n@count[bash]: 3\n@h: \n[1]   1 |@@@@|\n";
        out.push_str(maps);
        let (c, how) = fit(&out, "{\"maps\":[]}", 200 * 1024);
        let Stored::Truncated {
            printf_dropped,
            maps_dropped,
            ..
        } = how
        else {
            panic!("{how:?}")
        };
        let kept = gunzip(&c.binary["output.gz"]);
        assert!(kept.ends_with(maps), "the maps are kept");
        assert_eq!(maps_dropped, 0);
        assert_eq!(kept.len() + printf_dropped, out.len());
        assert!(c.binary["output.gz"].len() <= 200 * 1024);
        let last = out.lines().rev().nth(5).expect("line");
        assert!(kept.contains(last), "the newest printf lines are kept");
    }

    #[test]
    fn maps_too_big_for_one_configmap_are_cut_on_line_boundaries_and_reported() {
        let mut out = String::from("Attaching 1 probe...\n\n\n");
        out.extend(random_numbers(88172645463325252, 100_000).map(|x| format!("@m[{x}]: 1\n")));
        let (c, how) = fit(&out, "{}", 300 * 1024);
        let Stored::Truncated {
            printf_dropped,
            maps_dropped,
            ..
        } = how
        else {
            panic!("{how:?}")
        };
        let kept = gunzip(&c.binary["output.gz"]);
        assert_eq!(
            printf_dropped,
            "Attaching 1 probe...\n\n\n".len(),
            "printf lines go first"
        );
        assert!(maps_dropped > 0 && kept.ends_with('\n') && kept.starts_with("@m["));
        assert_eq!(kept.len() + printf_dropped + maps_dropped, out.len());
        assert!(!c.binary.contains_key("maps.json.gz"));
    }

    #[test]
    fn maps_block_is_found_after_printf_lines() {
        let out =
            "Attaching 1 probe...\nhello\n\n\n@a[x]: 1\n@h: \n[0, 1)  1 |@|\n@s[\n    f+1\n]: 2\n";
        assert_eq!(
            &out[maps_start(out)..],
            "@a[x]: 1\n@h: \n[0, 1)  1 |@|\n@s[\n    f+1\n]: 2\n"
        );
        assert_eq!(maps_start("no maps\n"), "no maps\n".len());
    }
}
