//! TraceJobs as a test writes and reads them: manifests, `spec.stop`, and fields of status.

use crate::support::Kubectl;

/// This VM's kernel batches RCU callbacks (CONFIG_RCU_LAZY), and bpftrace 0.17 waits for its
/// probes to detach before printing maps: with several traces ending at once that can outlast the
/// default 30 s grace period. Tests give their traces room, so they test the agent, not the kernel.
pub const TEST_GRACE: &str = "  deadlineGracePeriod: 300\n";

/// A TraceJob for tests, with `TEST_GRACE` unless `extra_spec` sets a grace period.
pub fn tracejob_yaml(name: &str, node: &str, program: &str, extra_spec: &str) -> String {
    let indented: String = program.lines().map(|l| format!("    {l}\n")).collect();
    let grace = if extra_spec.contains("deadlineGracePeriod") {
        ""
    } else {
        TEST_GRACE
    };
    format!(
        "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  program: |\n{indented}{extra_spec}{grace}"
    )
}

/// A sample from bpf-samples/ for `node`, with `TEST_GRACE`.
pub fn sample_yaml(name: &str, node: &str) -> String {
    let yaml = crate::support::must(
        std::fs::read_to_string(
            crate::support::repo_root().join(format!("bpf-samples/{name}.yaml")),
        ),
        "read sample",
    );
    format!(
        "{}{TEST_GRACE}",
        yaml.replace("nodeName: my-node", &format!("nodeName: {node}"))
    )
}

pub const SYSCOUNT: &str = "tracepoint:raw_syscalls:sys_enter { @syscalls[comm] = count(); }";

pub fn stop(k: &Kubectl, ns: &str, name: &str) {
    k.ok(&[
        "patch",
        "-n",
        ns,
        "tj",
        name,
        "--type=merge",
        "-p",
        r#"{"spec":{"stop":true}}"#,
    ]);
}

pub fn field(k: &Kubectl, ns: &str, name: &str, path: &str) -> String {
    k.jsonpath(ns, &format!("tj/{name}"), path)
}

/// A field of the condition of type `kind` (empty when there is none).
pub fn condition(k: &Kubectl, ns: &str, name: &str, kind: &str, what: &str) -> String {
    field(
        k,
        ns,
        name,
        &format!(".status.conditions[?(@.type==\"{kind}\")].{what}"),
    )
}

pub fn message(k: &Kubectl, ns: &str, name: &str) -> String {
    k.jsonpath(ns, &format!("tj/{name}"), ".status.message")
}
