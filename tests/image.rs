//! The Dockerfile, built for real with buildah (no Docker engine or registry here) by
//! tests/harness/build-agent-image.sh: its runtime stage, on a base image made from Debian trixie
//! (the release the Dockerfile pins), with the agent built on the host (AGENT_STAGE=prebuilt);
//! and for linux/arm64, under qemu-user-static, around the agent cross-built for aarch64.
//! Needs root, buildah, and `cargo build --release` first (tests/run does both).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put the release binaries: CARGO_TARGET_DIR (the test command builds in the cache)
/// or the checkout's target/.
fn release_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    root().join(target).join("release")
}

/// buildah with its own storage under `storage`, so the test leaves nothing behind.
fn buildah(storage: &Path, args: &[&str]) -> String {
    let out = Command::new("buildah")
        .arg("--storage-driver=vfs")
        .arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("run"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("buildah is not installed (apt-get install buildah): {e}"));
    assert!(
        out.status.success(),
        "buildah {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The `FROM` image of the Dockerfile's runtime stage.
fn runtime_base() -> String {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    dockerfile
        .lines()
        .find_map(|l| {
            l.strip_prefix("FROM ")
                .filter(|r| r.ends_with(" AS runtime"))
        })
        .and_then(|r| r.split_whitespace().next())
        .expect("a runtime stage")
        .to_string()
}

/// The Dockerfile is for linux/amd64 and linux/arm64 (the arm64 runtime stage is built for real
/// by `the_image_builds_for_arm64`; its Rust stage needs a registry): the Rust stage runs on the
/// builder's platform and cross-compiles for TARGETARCH, the runtime stage's base is published for
/// both.
#[test]
fn dockerfile_builds_for_amd64_and_arm64() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let build = dockerfile
        .lines()
        .find(|l| l.starts_with("FROM ") && l.ends_with(" AS build"))
        .expect("a build stage");
    assert!(
        build.starts_with("FROM --platform=$BUILDPLATFORM "),
        "{build}"
    );
    for needed in [
        "ARG TARGETARCH",
        "amd64) triple=x86_64-unknown-linux-gnu",
        "arm64) triple=aarch64-unknown-linux-gnu",
        "rustup target add \"$triple\"",
        "--target \"$triple\"",
    ] {
        assert!(
            dockerfile.contains(needed),
            "the Dockerfile lacks {needed:?}"
        );
    }
    // Debian's official image, published for both.
    assert!(
        runtime_base().starts_with("docker.io/library/debian:"),
        "{}",
        runtime_base()
    );
}

#[test]
fn runtime_stage_builds_and_runs_the_agent_with_bpftrace() {
    let binary = release_dir().join("tracejob-agent");
    assert!(
        binary.exists(),
        "build the agent first: cargo build --release --locked"
    );
    let storage = tempfile::Builder::new()
        .prefix("tracejob-image-")
        .tempdir()
        .expect("tempdir");
    let s = storage.path();
    let built = Command::new("bash")
        .arg(root().join("tests/harness/build-agent-image.sh"))
        .arg(s)
        .arg("localhost/tracejob-agent:test")
        .status()
        .expect("build-agent-image.sh");
    assert!(built.success(), "building the image failed");
    // The base has no bpftrace: the image's bpftrace comes from the Dockerfile's own step.
    let base = buildah(s, &["from", &runtime_base()]);
    let in_base = Command::new("buildah")
        .arg("--storage-driver=vfs")
        .arg("--root")
        .arg(s.join("root"))
        .arg("--runroot")
        .arg(s.join("run"))
        .args(["run", &base, "--", "sh", "-c", "command -v bpftrace"])
        .output()
        .expect("buildah run");
    assert!(
        !in_base.status.success(),
        "the base image already has bpftrace: {}",
        String::from_utf8_lossy(&in_base.stdout)
    );
    let config = buildah(
        s,
        &[
            "inspect",
            "--format",
            "{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}",
            "localhost/tracejob-agent:test",
        ],
    );
    assert_eq!(config, "[/usr/local/bin/tracejob-agent] [run]");
    let c = buildah(s, &["from", "localhost/tracejob-agent:test"]);
    let version = buildah(
        s,
        &[
            "run",
            &c,
            "--",
            "/usr/local/bin/tracejob-agent",
            "--version",
        ],
    );
    assert_eq!(
        version,
        format!("tracejob-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let bpftrace = buildah(s, &["run", &c, "--", "bpftrace", "--version"]);
    assert!(
        bpftrace.starts_with("bpftrace v0.23"),
        "the image ships {bpftrace}"
    );
    let crd = buildah(
        s,
        &["run", &c, "--", "/usr/local/bin/tracejob-agent", "crd"],
    );
    assert_eq!(
        format!("{crd}\n"),
        std::fs::read_to_string(root().join("daemonset/crd.yaml")).expect("crd.yaml")
    );
    buildah(s, &["rm", "--all"]);
    buildah(s, &["rmi", "--all", "--force"]);
}

/// The cache the test scripts share (`$TRACEJOB_CACHE`, else `~/.cache/tracejob-agent`).
fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRACEJOB_CACHE") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"))
        .join("tracejob-agent")
}

/// The same runtime stage for linux/arm64 (`buildah bud --platform linux/arm64`): a base made
/// from Debian trixie debootstrapped for arm64, the Dockerfile's apt step run under
/// qemu-user-static (binfmt_misc, registered by tests/setup.sh), around the agent cross-built for
/// aarch64 (tests/run). Its storage is kept in the cache, so the base and the emulated apt layer
/// are built once; a rebuild only copies in the new agent. Without its prerequisites the test is
/// skipped, except with CI=true, where that is a failure.
#[test]
fn the_image_builds_for_arm64() {
    let agent = std::env::var_os("AGENT_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // The test command's own aarch64 build (a debug build: a release one would add
            // minutes to every run), stripped into the image by build-agent-image.sh.
            cache_root().join("target-aarch64/aarch64-unknown-linux-gnu/debug/tracejob-agent")
        });
    let mut missing = Vec::new();
    if !agent.exists() {
        missing.push(format!(
            "the aarch64 agent at {} (tests/run: cargo build --target \
             aarch64-unknown-linux-gnu)",
            agent.display()
        ));
    }
    let binfmt =
        std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_default();
    if !binfmt
        .lines()
        .any(|l| l.starts_with("flags: ") && l.contains('F'))
    {
        missing.push("qemu-aarch64 in binfmt_misc with the F flag (tests/setup.sh)".to_string());
    }
    if !missing.is_empty() {
        // Missing parts fail the test: tests/setup.sh and tests/run provide them.
        panic!("the arm64 image needs {}", missing.join(", and "));
    }
    let storage = cache_root().join("images-arm64");
    let s = storage.as_path();
    let image = "localhost/tracejob-agent:test-arm64";
    let built = Command::new("bash")
        .arg(root().join("tests/harness/build-agent-image.sh"))
        .arg(s)
        .arg(image)
        .arg("arm64")
        .env("AGENT_BINARY", &agent)
        .status()
        .expect("build-agent-image.sh");
    assert!(built.success(), "building the arm64 image failed");
    let config = buildah(
        s,
        &[
            "inspect",
            "--format",
            "{{.OCIv1.OS}}/{{.OCIv1.Architecture}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}",
            image,
        ],
    );
    assert_eq!(config, "linux/arm64 [/usr/local/bin/tracejob-agent] [run]");
    // The base has no bpftrace: the image's bpftrace comes from the Dockerfile's own step.
    let base = buildah(s, &["from", "--arch", "arm64", &runtime_base()]);
    let c = buildah(s, &["from", "--arch", "arm64", image]);
    let run = |container: &str, cmd: &[&str]| {
        let mut args = vec!["run", container, "--"];
        args.extend_from_slice(cmd);
        buildah(s, &args)
    };
    let in_base = Command::new("buildah")
        .arg("--storage-driver=vfs")
        .arg("--root")
        .arg(s.join("root"))
        .arg("--runroot")
        .arg(s.join("run"))
        .args(["run", &base, "--", "sh", "-c", "command -v bpftrace"])
        .output()
        .expect("buildah run");
    // Everything in the image is arm64, run under emulation.
    let checks = || {
        assert!(
            !in_base.status.success(),
            "the base image already has bpftrace: {}",
            String::from_utf8_lossy(&in_base.stdout)
        );
        assert_eq!(run(&c, &["uname", "-m"]), "aarch64");
        assert_eq!(run(&c, &["dpkg", "--print-architecture"]), "arm64");
        assert_eq!(
            run(&c, &["/usr/local/bin/tracejob-agent", "--version"]),
            format!("tracejob-agent {}", env!("CARGO_PKG_VERSION"))
        );
        let bpftrace = run(&c, &["bpftrace", "--version"]);
        assert!(
            bpftrace.starts_with("bpftrace v0.23"),
            "the image ships {bpftrace}"
        );
        assert_eq!(
            run(
                &c,
                &["dpkg-query", "-W", "-f", "${Architecture}", "bpftrace"]
            ),
            "arm64"
        );
        assert_eq!(
            format!("{}\n", run(&c, &["/usr/local/bin/tracejob-agent", "crd"])),
            std::fs::read_to_string(root().join("daemonset/crd.yaml")).expect("crd.yaml")
        );
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks));
    // Only the containers: the images stay cached for the next run.
    buildah(s, &["rm", &c, &base]);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
