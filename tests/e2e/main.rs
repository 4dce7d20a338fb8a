//! End-to-end tests: the agent binary against a real kube-apiserver and real bpftrace, driven
//! through kubectl as a user would.

mod api;
mod deploy;
mod hostile;
mod lifecycle;
mod native;
mod releases;
mod reliability;
mod support;

use support::{ControlPlane, Env, Test};

fn main() -> std::process::ExitCode {
    support::require_bpftrace_environment();
    let cp = ControlPlane::start();
    let env = Env::new(cp);
    env.install_crd();
    let mut tests: Vec<Test> = Vec::new();
    tests.extend(api::tests());
    tests.extend(lifecycle::tests());
    tests.extend(reliability::tests());
    tests.extend(hostile::tests());
    tests.extend(native::tests());
    tests.extend(deploy::tests());
    tests.extend(releases::tests());
    let parallel = std::env::var("E2E_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    support::run(tests, env, parallel)
}
