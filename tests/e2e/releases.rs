//! The same behaviours against each bpftrace release users run: Debian bookworm's 0.17 (the
//! host's), trixie's 0.23 and sid's 0.27 (debootstrapped once by tests/harness/build-bpftrace.sh).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::host::{assert_no_bpftrace, disk_io};
use crate::support::outputs::{histogram_counts, output};
use crate::support::tracejobs::tracejob_yaml;
use crate::support::tracejobs::{stop, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{must, repo_root, Agent, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "release_0_17_behaves",
            run: |env| behaves(env, "0.17", None),
        },
        Test {
            name: "release_0_23_behaves",
            run: |env| behaves(env, "0.23", Some("trixie")),
        },
        Test {
            name: "release_0_27_behaves",
            run: |env| behaves(env, "0.27", Some("sid")),
        },
    ]
}

/// The bpftrace command for a Debian suite, built (once) by the harness script.
pub(crate) fn bpftrace_of(suite: &str) -> PathBuf {
    let out = must(
        Command::new("bash")
            .arg(repo_root().join("tests/harness/build-bpftrace.sh"))
            .arg(suite)
            .stderr(Stdio::inherit())
            .output(),
        "build-bpftrace.sh",
    );
    assert!(
        out.status.success(),
        "bpftrace from {suite} could not be made available"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn behaves(env: &Env, release: &str, suite: Option<&str>) {
    let command = suite
        .map(bpftrace_of)
        .unwrap_or_else(|| PathBuf::from("bpftrace"));
    let ns = env.namespace(&format!("release-{}", release.replace('.', "-")));
    let flag = command.to_string_lossy().to_string();
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--bpftrace", &flag],
        &[],
    );
    let k = &env.kubectl;
    let version = wait_for_version(&agent);
    assert!(
        version.starts_with(&format!("v{release}")),
        "{command:?} is {version}, not {release}"
    );

    let bio = crate::support::tracejobs::sample_yaml("biolatency", &agent.node);
    let jobs = [
        ("hist", bio.clone()),
        ("counts", tracejob_yaml("counts", &agent.node, SYSCOUNT, "")),
        (
            "deadline",
            tracejob_yaml("deadline", &agent.node, SYSCOUNT, "  deadline: 2\n"),
        ),
        (
            "printf",
            tracejob_yaml(
                "printf",
                &agent.node,
                "BEGIN { printf(\"hello %d\\n\", 42); exit(); }",
                "",
            ),
        ),
        (
            "syntax",
            tracejob_yaml("syntax", &agent.node, "BEGIN { @x = count( }", ""),
        ),
        (
            "notp",
            tracejob_yaml(
                "notp",
                &agent.node,
                "tracepoint:nosuch:thing { @x = count(); }",
                "",
            ),
        ),
        (
            "unsafe",
            tracejob_yaml(
                "unsafe",
                &agent.node,
                "BEGIN { system(\"true\"); exit(); }",
                "",
            ),
        ),
    ];
    for (_, yaml) in &jobs {
        k.apply(&ns, yaml);
    }
    let long = Duration::from_secs(60);
    wait_phase(k, &ns, "biolatency", "Running", long);
    wait_phase(k, &ns, "counts", "Running", long);
    disk_io();
    stop(k, &ns, "biolatency");
    stop(k, &ns, "counts");

    wait_phase(k, &ns, "biolatency", "Completed", long);
    let text = output(k, &ns, "biolatency", "output");
    let counts = histogram_counts(&text);
    assert!(
        counts.iter().sum::<u64>() > 0,
        "{release}: empty histogram:\n{text}"
    );
    let maps: tracejob_agent::output::maps::Maps = must(
        serde_json::from_str(&output(k, &ns, "biolatency", "maps.json")),
        "maps.json",
    );
    let json_counts: Vec<u64> = maps
        .maps
        .iter()
        .flat_map(|m| &m.entries)
        .filter_map(|e| match &e.value {
            tracejob_agent::output::maps::Value::Hist(b) => {
                Some(b.iter().map(|b| b.count).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        json_counts, counts,
        "{release}: maps.json differs from the text"
    );

    wait_phase(k, &ns, "counts", "Completed", long);
    assert!(
        output(k, &ns, "counts", "output").contains("@syscalls["),
        "{release}: count map"
    );
    wait_phase(k, &ns, "deadline", "Completed", long);
    assert!(
        k.jsonpath(&ns, "tj/deadline", ".status.message")
            .contains("deadline"),
        "{release}"
    );
    wait_phase(k, &ns, "printf", "Completed", long);
    assert!(
        output(k, &ns, "printf", "output").contains("hello 42"),
        "{release}: printf"
    );

    for (name, expected) in [
        ("syntax", "ERROR: syntax"),
        ("notp", "nosuch:thing"),
        ("unsafe", "unsafe"),
    ] {
        wait_phase(k, &ns, name, "Failed", long);
        let message = k.jsonpath(&ns, &format!("tj/{name}"), ".status.message");
        assert!(message.contains(expected), "{release} {name}: {message}");
    }
    assert_no_bpftrace(&agent);
}

fn wait_for_version(agent: &Agent) -> String {
    crate::support::wait_for(
        Duration::from_secs(20),
        "the agent to report its bpftrace",
        || {
            let (_, body) = agent.get("/metrics");
            body.lines()
                .find_map(|l| l.strip_prefix("tracejob_bpftrace_info{version=\""))
                .and_then(|r| r.split('"').next())
                .map(String::from)
        },
    )
}
