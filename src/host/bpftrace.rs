//! What bpftrace prints, as the agent reads it: the attach line, its errors, its version.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::decide::job::AttachLine;

/// bpftrace's attach line in its output, if printed yet (`decide::job::tracing` judges it).
pub fn attach_line(stdout: &str) -> Option<AttachLine> {
    let mut offset = 0;
    for line in stdout.split_inclusive('\n') {
        offset += line.len();
        let text = line.trim();
        let (rest, done) = if let Some(r) = text.strip_prefix("Attaching ") {
            (r, false)
        } else if let Some(r) = text.strip_prefix("Attached ") {
            (r, true)
        } else {
            continue;
        };
        if let Some(probes) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
            return Some(AttachLine {
                probes,
                done,
                end: offset,
            });
        }
    }
    None
}

/// The first `max` bytes of a file, as text.
pub fn head(path: &Path, max: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(f) = File::open(path) {
        let _ = f.take(max).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// bpftrace's error text from its stderr, without the RLIMIT_MEMLOCK notice it prints on every
/// start when it lacks CAP_SYS_RESOURCE (it works regardless), and bounded in size.
pub fn error_text(stderr: &str) -> String {
    const MAX: usize = 4096;
    let text: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("couldn't set RLIMIT_MEMLOCK"))
        .collect();
    let text = text.join("\n");
    if text.len() <= MAX {
        return text;
    }
    let mut start = text.len() - MAX;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// `bpftrace --version`, e.g. "v0.17.0".
pub fn version(command: &Path) -> Option<String> {
    let out = std::process::Command::new(command)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().last().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_attach_lines_of_each_release() {
        let line = |probes, done, end| Some(AttachLine { probes, done, end });
        assert_eq!(attach_line("Attaching 2 probes...\n"), line(2, false, 22));
        assert_eq!(
            attach_line("Attaching 1 probe...\nhi\n"),
            line(1, false, 21)
        );
        assert_eq!(attach_line("Attached 3 probes\n"), line(3, true, 18));
        assert_eq!(attach_line("hello\n"), None);
    }

    #[test]
    fn error_text_drops_the_memlock_notice() {
        let stderr = "ERROR: Unknown error -1: couldn't set RLIMIT_MEMLOCK for bpftrace. If ...\nx.bt:1:1: ERROR: syntax error\n";
        assert_eq!(error_text(stderr), "x.bt:1:1: ERROR: syntax error");
        assert!(error_text(&"é".repeat(5000)).len() <= 4100);
    }
}
