//! The bpftrace test double (tests/double/bpftrace.c), built once per test run with gcc.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::{must, repo_root};

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
            let built = must(
                Command::new("gcc")
                    .args(["-O2", "-Wall", "-Werror", "-o"])
                    .arg(&out)
                    .arg(repo_root().join("tests/double/bpftrace.c"))
                    .output(),
                "run gcc (apt-get install gcc)",
            );
            assert!(
                built.status.success(),
                "building the bpftrace double failed: {}",
                String::from_utf8_lossy(&built.stderr)
            );
            out
        })
        .clone()
}
