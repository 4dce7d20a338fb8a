//! Bad flags end the agent at once, before it touches its state directory.

use std::time::Duration;

use super::agent_that_exits;
use crate::support::{must, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![Test {
        name: "reliability_bad_flags_end_the_agent_at_once",
        run: bad_flags_end_the_agent_at_once,
    }]
}

/// Flags that cannot work end the agent before it does anything, with a usage error naming the
/// flag (exit status 2, as clap's), instead of failing every trace later.
fn bad_flags_end_the_agent_at_once(env: &Env) {
    let tmp = must(tempfile::tempdir(), "tempdir");
    let state = tmp.path().join("state");
    let state = state.to_string_lossy();
    let base = ["--node-name", "bad-flags", "--state-dir", &state];
    for (extra, expected) in [
        (
            &["--max-output-bytes", "0"][..],
            &["--max-output-bytes", "0 is not in 65536..="][..],
        ),
        (
            &["--live-window-bytes", "2097152"],
            &["--live-window-bytes", "not in 1024..=1024000"],
        ),
        (
            &[
                "--max-output-bytes",
                "65536",
                "--live-window-bytes",
                "131072",
            ],
            &["--live-window-bytes 131072 is more than --max-output-bytes 65536"],
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let started = std::time::Instant::now();
        let (status, printed) = agent_that_exits(env, &args, Duration::from_secs(5));
        assert_eq!(status.code(), Some(2), "{extra:?}:\n{printed}");
        for e in expected {
            assert!(printed.contains(e), "{extra:?}: no {e:?} in:\n{printed}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{extra:?} took {:?}",
            started.elapsed()
        );
        assert!(
            !tmp.path().join("state").exists(),
            "{extra:?}: the agent started on its state directory"
        );
    }
}
