//! Flame graphs from maps keyed by stacks (`@[kstack] = count()`, `@[comm, ustack]`, ...):
//! folded stacks (`root;...;leaf count`, what Brendan Gregg's stackcollapse scripts make), drawn
//! by the `inferno` crate. Several nodes' maps are added up stack by stack.

use std::collections::BTreeMap;

use crate::output::maps::{Maps, Scalar, Value};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no map keyed by a stack (kstack or ustack) with counts in the output: nothing to draw"
    )]
    NoStacks,
    #[error("drawing the flame graph: {0}")]
    Draw(#[from] std::io::Error),
}

/// The frame of samples taken without a stack (`@[]: N`: kstack in user mode).
pub const NO_STACK: &str = "[no stack]";

/// The name of the first map whose keys hold stacks, in any of `maps`.
pub fn stack_map(maps: &[Maps]) -> Option<String> {
    maps.iter()
        .flat_map(|m| &m.maps)
        .find(|m| {
            m.entries.iter().any(|e| {
                e.key.as_deref().is_some_and(|k| k.contains('\n'))
                    && matches!(e.value, Value::Value(Scalar::Int(_)))
            })
        })
        .map(|m| m.name.clone())
}

/// Folded stacks of map `name` over every `maps` (each node's), summed, sorted.
pub fn folded(maps: &[Maps], name: &str) -> Vec<String> {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for m in maps.iter().flat_map(|m| &m.maps).filter(|m| m.name == name) {
        for e in &m.entries {
            let (Some(key), Value::Value(Scalar::Int(n))) = (&e.key, &e.value) else {
                continue;
            };
            let Ok(n) = u64::try_from(*n) else { continue };
            if n == 0 {
                continue;
            }
            // A sample without a stack (a kernel stack taken in user mode): one frame saying so,
            // so the graph's total is the map's.
            let mut stack = frames(key);
            if stack.is_empty() {
                stack.push(NO_STACK.to_string());
            }
            let line = stack.join(";");
            let slot = stacks.entry(line).or_default();
            *slot = slot.saturating_add(n);
        }
    }
    stacks
        .into_iter()
        .map(|(stack, n)| format!("{stack} {n}"))
        .collect()
}

/// A key's frames, root first: its other parts (`comm`, ...) as the roots, then the stack from
/// its outermost call to its innermost (bpftrace prints the innermost first).
fn frames(key: &str) -> Vec<String> {
    let (mut roots, mut stack) = (Vec::new(), Vec::new());
    for line in key.lines() {
        let line = line.trim();
        if let Some(part) = line.strip_suffix(',') {
            roots.extend(part.split(", ").map(frame_text));
        } else if let Some(part) = line.strip_prefix(", ") {
            roots.extend(part.split(", ").map(frame_text));
        } else if !line.is_empty() && line != "0" {
            // `0` ends a user stack in bpftrace 0.27.
            stack.push(frame_text(symbol(line)));
        }
    }
    stack.reverse();
    roots.extend(stack);
    roots
}

/// `vfs_read+36` -> `vfs_read`; `func+12 (/lib/x.so)` -> `func`; addresses stay.
fn symbol(frame: &str) -> &str {
    let frame = frame.split(" (").next().unwrap_or(frame);
    match frame.rsplit_once('+') {
        Some((name, offset))
            if !name.is_empty() && offset.chars().all(|c| c.is_ascii_hexdigit() || c == 'x') =>
        {
            name
        }
        _ => frame,
    }
}

/// A frame as folded stacks can hold it: no `;` (the separator) and no line breaks.
fn frame_text(s: &str) -> String {
    s.trim().replace([';', '\n'], "_")
}

/// The flame graph of `folded` stacks as SVG.
pub fn svg(folded: &[String], title: &str) -> Result<Vec<u8>, Error> {
    if folded.is_empty() {
        return Err(Error::NoStacks);
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "samples".to_string();
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut options, folded.iter().map(String::as_str), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::parse::parse;

    #[test]
    fn kernel_stacks_fold_root_first_without_offsets() {
        let out = "@[\n    vfs_read+36\n    ksys_read+101\n    do_syscall_64+91\n]: 5\n@[\n    vfs_read+40\n    ksys_read+101\n    do_syscall_64+91\n]: 2\n@[\n    schedule+9\n]: 1\n";
        let maps = [parse(out)];
        assert_eq!(stack_map(&maps).as_deref(), Some("@"));
        assert_eq!(
            folded(&maps, "@"),
            ["do_syscall_64;ksys_read;vfs_read 7", "schedule 1"]
        );
    }

    #[test]
    fn other_key_parts_are_roots_before_or_after_the_stack() {
        // As bpftrace 0.17 and 0.27 print `@c[comm, kstack]` and `@u[ustack, comm]`.
        let out = "@c[bash, \n    b+1\n    a+2\n]: 3\n@u[\n        0x55e3ac17efcf\n        main+12\n        0\n, rustc]: 4\n";
        let maps = [parse(out)];
        assert_eq!(folded(&maps, "@c"), ["bash;a;b 3"]);
        assert_eq!(folded(&maps, "@u"), ["rustc;main;0x55e3ac17efcf 4"]);
    }

    #[test]
    fn nodes_add_up_stack_by_stack() {
        let a = parse("@[\n    f+1\n    g+2\n]: 3\n");
        let b = parse("@[\n    f+9\n    g+2\n]: 4\n@[\n    h+1\n]: 1\n@[]: 6\n");
        assert_eq!(folded(&[a, b], "@"), ["[no stack] 6", "g;f 7", "h 1"]);
    }

    #[test]
    fn the_svg_has_each_frame_with_its_samples() {
        let folded = vec!["g;f 7".to_string(), "h 1".to_string()];
        let svg = String::from_utf8(svg(&folded, "t").expect("svg")).expect("utf8");
        assert!(svg.starts_with("<?xml"), "{svg}");
        assert!(
            svg.contains("<title>f (7 samples, 87.50%)</title>"),
            "{svg}"
        );
        assert!(
            svg.contains("<title>h (1 samples, 12.50%)</title>"),
            "{svg}"
        );
        assert!(matches!(super::svg(&[], "t"), Err(Error::NoStacks)));
    }
}
