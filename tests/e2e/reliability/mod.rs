//! Results are never lost and no job is stranded: the agent restarted or taken over, the API
//! server down or refusing, a full, failing or slow disk, bad flags.

mod apiserver;
mod disk;
mod flags;
mod restarts;
mod slowdisk;

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::tracejobs::sample_yaml;
use crate::support::{must, Agent, Env, Proc, Test};

pub fn tests() -> Vec<Test> {
    let mut tests = restarts::tests();
    tests.extend(apiserver::tests());
    tests.extend(disk::tests());
    tests.extend(flags::tests());
    tests.extend(slowdisk::tests());
    tests
}

fn biolatency(node: &str) -> String {
    sample_yaml("biolatency", node)
}

fn kill_agent(agent: &mut Agent, signal: Signal) {
    let proc = agent.proc.as_mut().expect("agent running");
    proc.signal(signal);
    let status = proc.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "agent did not exit on {signal:?}");
}

/// `tracejob-agent run ARGS` as a process of its own, which must exit within `within`: its exit
/// status and everything it printed (stdout and stderr).
fn agent_that_exits(
    env: &Env,
    args: &[&str],
    within: Duration,
) -> (std::process::ExitStatus, String) {
    let tmp = must(tempfile::tempdir(), "tempdir");
    let log = tmp.path().join("out");
    let out = must(std::fs::File::create(&log), "log");
    let err = must(out.try_clone(), "log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tracejob-agent"));
    cmd.arg("run")
        .args(args)
        .env("KUBECONFIG", &env.cp.kubeconfig)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut proc = Proc::spawn("agent-that-exits", &mut cmd);
    let status = proc.wait_exit(within);
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("still running after {within:?}:\n{printed}"));
    (status, printed)
}
