//! Telling the maps printed for spec.metrics apart from the trace's output, in the shim, line by
//! line: what bpftrace prints between the markers of `output::prom::instrument`'s probe is a
//! dump of the maps, and goes to a file of its own; everything else is the output, unchanged.
//!
//! The probe's events come in order, but events of probes on other CPUs may come between them
//! (bpftrace's per-CPU buffers before 0.2x, its ring buffer after). A map's printing is itself
//! one block, so a line inside a dump that cannot be part of a printed map (it does not start
//! with `@`, `[`, `(`, `]`, a space or `, `, and is not empty) is the program's and stays in the output.
//! A dump not ended when bpftrace ends (it printed the begin marker and was stopped before the
//! end one) goes back into the output whole: the maps printed at exit may be in it.

/// Longest dump kept: past it the rest of the dump is dropped (a dump of 100,000 keys is about
/// 3 MB).
pub const MAX_DUMP_BYTES: usize = 256 * 1024 * 1024;
/// A line longer than this without a newline is passed on as it is (it cannot be a marker).
const MAX_PARTIAL: usize = 64 * 1024;

pub struct Demux {
    begin: Vec<u8>,
    end: Vec<u8>,
    partial: Vec<u8>,
    /// The dump being printed, if one is.
    dump: Option<Vec<u8>>,
}

impl Demux {
    pub fn new(magic: i32) -> Demux {
        Demux {
            begin: crate::output::prom::begin_marker(magic).into_bytes(),
            end: crate::output::prom::end_marker(magic).into_bytes(),
            partial: Vec::new(),
            dump: None,
        }
    }

    /// Takes bytes as bpftrace printed them: the output's bytes are appended to `out`; each
    /// dump completed is returned.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) -> Vec<Vec<u8>> {
        let mut done = Vec::new();
        while let Some(i) = bytes.iter().position(|b| *b == b'\n') {
            let (line, rest) = bytes.split_at(i + 1);
            bytes = rest;
            if self.partial.is_empty() {
                self.line(line, out, &mut done);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole, out, &mut done);
            }
        }
        self.partial.extend_from_slice(bytes);
        if self.partial.len() > MAX_PARTIAL {
            let long = std::mem::take(&mut self.partial);
            match self.dump.as_mut() {
                Some(d) => push_bounded(d, &long),
                None => out.extend_from_slice(&long),
            }
        }
        done
    }

    /// bpftrace has ended: what is held back is output.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(d) = self.dump.take() {
            out.extend_from_slice(&self.begin);
            out.push(b'\n');
            out.extend_from_slice(&d);
        }
        out.append(&mut self.partial);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>, done: &mut Vec<Vec<u8>>) {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match self.dump.as_mut() {
            None if text == self.begin.as_slice() => self.dump = Some(Vec::new()),
            None => out.extend_from_slice(line),
            Some(_) if text == self.end.as_slice() => done.extend(self.dump.take()),
            // A dump that never ended (its end event lost): the newer one replaces it.
            Some(d) if text == self.begin.as_slice() => d.clear(),
            Some(d) if mapish(text) => push_bounded(d, line),
            Some(_) => out.extend_from_slice(line),
        }
    }
}

fn mapish(text: &[u8]) -> bool {
    text.is_empty()
        || matches!(text[0], b'@' | b'[' | b'(' | b']' | b' ')
        || text.starts_with(b", ")
}

fn push_bounded(dump: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_DUMP_BYTES.saturating_sub(dump.len());
    dump.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(magic: i32, pieces: &[&[u8]]) -> (String, Vec<String>) {
        let mut d = Demux::new(magic);
        let (mut out, mut dumps) = (Vec::new(), Vec::new());
        for p in pieces {
            dumps.extend(d.feed(p, &mut out));
        }
        d.finish(&mut out);
        (
            String::from_utf8(out).expect("utf8"),
            dumps
                .into_iter()
                .map(|d| String::from_utf8(d).expect("utf8"))
                .collect(),
        )
    }

    #[test]
    fn a_dump_goes_apart_and_the_output_stays_as_printed() {
        let all = "Attaching 2 probes...\ntick 1\n\x1etracejob-metrics 5 begin\n@c[bash]: 3\n@h:\n[1]   1 |@@|\n\ntick 2\n\x1etracejob-metrics 5 end\ntick 3\n\n\n@c[bash]: 4\n";
        // In every split: pipes cut lines anywhere.
        for cut in 0..all.len() {
            let (a, b) = all.as_bytes().split_at(cut);
            let (out, dumps) = run(5, &[a, b]);
            assert_eq!(
                out, "Attaching 2 probes...\ntick 1\ntick 2\ntick 3\n\n\n@c[bash]: 4\n",
                "cut at {cut}"
            );
            assert_eq!(
                dumps,
                ["@c[bash]: 3\n@h:\n[1]   1 |@@|\n\n"],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn another_trace_s_markers_are_output() {
        let (out, dumps) = run(5, &[b"\x1etracejob-metrics 6 begin\n@a: 1\n"]);
        assert_eq!(out, "\x1etracejob-metrics 6 begin\n@a: 1\n");
        assert!(dumps.is_empty());
    }

    #[test]
    fn an_unended_dump_goes_back_into_the_output() {
        let (out, dumps) = run(
            5,
            &[b"x\n\x1etracejob-metrics 5 begin\n@a: 1\n\n\n@a: 2\npartial"],
        );
        assert_eq!(
            out,
            "x\n\x1etracejob-metrics 5 begin\n@a: 1\n\n\n@a: 2\npartial"
        );
        assert!(dumps.is_empty());
    }
}
