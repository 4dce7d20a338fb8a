//! The maps bpftrace prints, as data (what `maps.json` holds), and histograms rendered back to
//! bpftrace's own text.

use serde::{Deserialize, Serialize};

/// Every map bpftrace printed, in the order printed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Maps {
    /// The bpftrace release that printed them (`v0.17.0`), when known: releases label some
    /// histogram buckets differently (see `render_hist`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpftrace: Option<String>,
    pub maps: Vec<Map>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Map {
    /// The name as bpftrace prints it, with its `@`.
    pub name: String,
    pub entries: Vec<Entry>,
}

/// One element of a map: its key (absent for a map without keys) and its value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: Option<String>,
    #[serde(flatten)]
    pub value: Value,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    /// count(), sum(), min(), max(), avg() or a plain assignment: an integer where it is one.
    Value(Scalar),
    /// stats(): `count N, average N, total N`.
    Stats {
        count: i64,
        average: i64,
        total: i64,
    },
    /// hist() and lhist(): buckets in printed order.
    Hist(Vec<Bucket>),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Text(String),
}

/// A histogram bucket covering `[low, high)`; `low` is absent for `(..., N)` and `high` for
/// `[N, ...)`. `[N]` is the one-value bucket `[N, N+1)`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Bucket {
    pub low: Option<i64>,
    pub high: Option<i64>,
    pub count: u64,
}

/// Frames of the stacks in map keys (`kstack`, `ustack`), and how many of them are bare
/// addresses: frames bpftrace could not name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Frames {
    pub frames: u64,
    pub bare: u64,
}

/// Counts the frames of every stack in the maps' keys. A stack is a key printed over several
/// lines, one frame a line: `work+0`, `work+0 (/usr/bin/app)`, or, unnamed, `0x401750` (with
/// its module in parentheses when bpftrace shows it). Other lines of a key (`2961, `) are not
/// frames.
pub fn frames(maps: &Maps) -> Frames {
    let mut count = Frames::default();
    let keys = maps
        .maps
        .iter()
        .flat_map(|m| &m.entries)
        .filter_map(|e| e.key.as_deref())
        .filter(|k| k.contains('\n'));
    for key in keys {
        for line in key.lines().map(str::trim) {
            let word = line.split_whitespace().next().unwrap_or_default();
            if let Some(hex) = word.strip_prefix("0x") {
                if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    count.frames = count.frames.saturating_add(1);
                    count.bare = count.bare.saturating_add(1);
                }
            } else if word.contains('+') && !word.ends_with(',') {
                count.frames = count.frames.saturating_add(1);
            }
        }
    }
    count
}

/// Renders histogram buckets exactly as bpftrace prints them: a label padded to 16 columns, the
/// count right-aligned in 8, and a bar of up to 52 `@` scaled to the largest count.
///
/// Buckets one value wide print as `[N]` in 0.27 (seen: 0.27.1). Up to 0.23 (seen: 0.17.0,
/// 0.23.2) only hist()'s buckets for 0 and 1 do, and lhist()'s print `[0, 1)`; hist and lhist are
/// then told apart by shape (hist() bounds double), so a two-bucket lhist with step 1 from 0
/// renders as hist() would. `bpftrace` is the release (`Maps::bpftrace`); unknown means current.
pub fn render_hist(buckets: &[Bucket], bpftrace: Option<&str>) -> String {
    let single_for_any_width_one = bpftrace.and_then(release).is_none_or(|r| r > (0, 23));
    let log2 = buckets.iter().all(|b| match (b.low, b.high) {
        (Some(lo), Some(hi)) => (lo <= 1 && hi == lo + 1) || hi == lo.saturating_mul(2),
        _ => true,
    });
    let single = |lo: i64, hi: i64| hi == lo + 1 && (single_for_any_width_one || (log2 && lo <= 1));
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0);
    let mut text = String::new();
    for b in buckets {
        let label = match (b.low, b.high) {
            (Some(lo), Some(hi)) if single(lo, hi) => format!("[{lo}]"),
            (Some(lo), Some(hi)) => format!("[{}, {})", bound(lo), bound(hi)),
            (Some(lo), None) => format!("[{}, ...)", bound(lo)),
            (None, Some(hi)) => format!("(..., {})", bound(hi)),
            (None, None) => "(..., ...)".to_string(),
        };
        let width = if max == 0 {
            0
        } else {
            (u128::from(b.count) * 52 / u128::from(max)) as usize
        };
        text.push_str(&format!(
            "{label:<16}{:>8} |{:<52}|\n",
            b.count,
            "@".repeat(width)
        ));
    }
    text
}

/// `v0.23.2` -> (0, 23).
fn release(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `1024` -> `1K`, `3072` -> `3K`, `2097152` -> `2M`: bpftrace's power-of-1024 suffixes.
fn bound(n: i64) -> String {
    let units = ["", "K", "M", "G", "T", "P", "E"];
    let (mut v, mut unit) = (n, 0);
    while v != 0 && v % 1024 == 0 && unit + 1 < units.len() {
        v /= 1024;
        unit += 1;
    }
    format!("{v}{}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack_map(keys: &[&str]) -> Maps {
        Maps {
            bpftrace: None,
            maps: vec![Map {
                name: "@".into(),
                entries: keys
                    .iter()
                    .map(|k| Entry {
                        key: Some(k.to_string()),
                        value: Value::Value(Scalar::Int(1)),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn bare_addresses_in_stacks_are_counted_as_frames_not_named() {
        // As 0.17 printed a container's stack after its process had exited, and while it lived.
        let maps = stack_map(&[
            "0x401750\n0x4017eb\n0x401601",
            "2961, \nwork+0\nserve+107\nmain+113\n0x4016d0",
            "work+0 (/opt/tj/app)\n0x4016d0 (/opt/tj/app)",
        ]);
        assert_eq!(frames(&maps), Frames { frames: 9, bare: 5 });
        // Keys that are not stacks have no frames, whatever they look like.
        let plain = stack_map(&["0x10", "sshd", "1, 0x2"]);
        assert_eq!(frames(&plain), Frames::default());
    }
}
