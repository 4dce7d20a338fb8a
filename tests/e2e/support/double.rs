//! The bpftrace test double (tests/double/bpftrace.c), built once per test run with gcc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{must, repo_root, Agent, Env};

/// The double's path: pass it to an agent with `--bpftrace`. Its program's `// double:` lines
/// say what it does (see the source).
pub fn bpftrace_double() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = repo_root().join("target/tracejob-double");
            must(
                std::fs::create_dir_all(&dir),
                "mkdir target/tracejob-double",
            );
            let out = dir.join("bpftrace");
            build_double(&out);
            out
        })
        .clone()
}

/// Builds the double at `out` with gcc.
pub fn build_double(out: &Path) {
    let built = must(
        Command::new("gcc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(out)
            .arg(repo_root().join("tests/double/bpftrace.c"))
            .output(),
        "run gcc (apt-get install gcc)",
    );
    assert!(
        built.status.success(),
        "building the bpftrace double failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// An agent running the bpftrace double, with `extra` flags.
pub fn double_agent(env: &Env, node: &str, extra: &[&str]) -> Agent {
    let double = bpftrace_double().to_string_lossy().into_owned();
    let mut args = vec!["--bpftrace", double.as_str()];
    args.extend_from_slice(extra);
    Agent::start_with(env, node, &env.cp.kubeconfig, &args, &[])
}

/// A program for the double: its behaviour, one `// double:` line each.
pub fn double_program(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| format!("// double: {l}\n"))
        .collect::<String>()
        + "BEGIN {}"
}
