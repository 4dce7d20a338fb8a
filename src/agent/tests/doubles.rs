//! The programs the agent starts, as the tests run them.
//!
//! - **bpftrace** is a shell script that says its probe is attached, waits for SIGINT, prints a
//!   map (`MAP`) and exits 0; each run appends a line to a file, so a test can count the runs.
//! - **The shim** is the real one (`host::shim::run`). The agent starts its own executable as
//!   `EXE shim ARGS...`; in a unit test its executable is this test binary, whose `main` is
//!   libtest's. So `Ctx::exe` is a script that runs this test binary with only `shim_process`
//!   selected and ARGS in an environment variable, and that test runs the shim as
//!   `tracejob-agent shim` does (src/main.rs). (Only integration tests get the built
//!   `tracejob-agent`, `CARGO_BIN_EXE_*`, and only unit tests reach the private dispatcher and
//!   a `#[cfg(test)]` seam: this way every test is in one place and the seams are test-only.)

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::host::shim::ShimArgs;

/// The map the bpftrace double prints when it is interrupted.
pub const MAP: &str = "@x: 1";

/// The file in which each run of the bpftrace double leaves a line.
const RUNS: &str = "bpftrace-runs";

/// Writes the bpftrace double into `dir`.
pub fn bpftrace(dir: &Path) -> PathBuf {
    let runs = dir.join(RUNS).display().to_string();
    script(dir, "bpftrace", &BPFTRACE.replace("RUNS", &runs))
}

/// How many times the bpftrace double in `dir` was started.
pub fn bpftrace_runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(RUNS)).map_or(0, |runs| runs.lines().count())
}

/// Writes the shim's script into `dir`.
pub fn shim(dir: &Path) -> PathBuf {
    script(dir, "shim", &shim_script())
}

/// bpftrace's double, run as the shim runs bpftrace (`bpftrace -- PROGRAM ARGS...`). It says
/// its probe is attached as bpftrace 0.27 does, on stderr: after the older "Attaching 1 probe..."
/// on stdout the agent looks for bpftrace waiting in poll(2), which a shell never does. Its
/// `sleep` is short because the shell runs the trap only once the sleep ends. Never stopped (a
/// test failed), it exits 3 after about 30 s, so that nothing is left running for long.
const BPFTRACE: &str = r#"#!/bin/sh
echo $$ >> 'RUNS'
trap 'printf "\n\n@x: 1\n"; exit 0' INT
echo "Attached 1 probe" >&2
i=0
while [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
exit 3
"#;

/// The variable that hands the shim's arguments to `shim_process`, one a line.
const SHIM_ARGS: &str = "TRACEJOB_TEST_SHIM_ARGS";

/// The script the agent starts as its shim (`Ctx::exe`): `EXE shim ARGS...` runs this test
/// binary's `shim_process` with ARGS.
fn shim_script() -> String {
    let exe = std::env::current_exe().expect("the test binary");
    // Under emulation (tests/run runs the aarch64 unit tests through qemu-user, as cargo's
    // runner), the test binary is run again the same way.
    let runner = if cfg!(target_arch = "aarch64") {
        std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER").unwrap_or_default()
    } else {
        String::new()
    };
    // libtest names a test by its path without the crate's name.
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, m)| m);
    format!(
        r#"#!/bin/sh
[ "$1" = shim ] || {{ echo "usage: $0 shim ARGS..." >&2; exit 2; }}
shift
{SHIM_ARGS}=$(printf '%s\n' "$@")
export {SHIM_ARGS}
# The shim starts with SIGINT ignored, as when the agent is a shell's background job: it must
# still reach bpftrace (here a shell that traps it, which an inherited ignore would defeat).
trap '' INT
exec {runner} '{}' --exact '{module}::shim_process' --ignored --nocapture --test-threads=1 --quiet
"#,
        exe.display()
    )
}

/// The shim's process in these tests (see the module's comment): runs `host::shim::run` with the
/// arguments the agent gave, as `tracejob-agent shim` does, and exits with its status. Without
/// them (a run of the ignored tests) it does nothing.
#[test]
#[ignore = "the shim process of the agent's tests, which start it"]
fn shim_process() {
    let Ok(args) = std::env::var(SHIM_ARGS) else {
        return;
    };
    #[derive(Parser)]
    struct Shim {
        #[command(flatten)]
        args: ShimArgs,
    }
    let shim = Shim::parse_from(std::iter::once("shim").chain(args.split('\n')));
    let ended = crate::host::shim::run(shim.args);
    std::process::exit(if ended == ExitCode::SUCCESS { 0 } else { 1 });
}

/// Writes an executable script. By a child process, not this one: a file this process holds open
/// for writing is inherited by whatever another test forks meanwhile, and exec of the script
/// then fails with ETXTBSY ("Text file busy") until that child has exec'd, which made these
/// tests fail under load. The child's descriptor is gone when it exits.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let path = dir.join(name);
    let mut writer = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh writes the script");
    writer
        .stdin
        .take()
        .expect("its stdin")
        .write_all(text.as_bytes())
        .expect("the script's text");
    let status = writer.wait().expect("sh ends");
    assert!(
        status.success(),
        "writing {} failed: {status}",
        path.display()
    );
    path
}
