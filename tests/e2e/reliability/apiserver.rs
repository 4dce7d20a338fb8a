//! The API server down, restarted or refusing a write: decisions go on, outputs are kept, each run
//! happens once, and nothing is left behind.

use std::time::{Duration, Instant};

use crate::support::host::assert_no_bpftrace;
use crate::support::outputs::output;
use crate::support::tracejobs::{field, message, stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{
    bpftrace_double, double_agent, double_program, must, wait_for, Agent, ControlPlane, Env,
    Kubectl, Test,
};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "robust_decisions_go_on_while_the_api_server_is_down",
            run: decisions_while_api_down,
        },
        Test {
            name: "robust_a_refused_status_stops_the_trace_and_the_outcome_waits_on_the_node",
            run: refused_status,
        },
        Test {
            name: "hostile_output_kept_while_apiserver_down",
            run: output_kept_while_apiserver_down,
        },
        Test {
            name: "lifecycle_apiserver_restart_runs_once",
            run: apiserver_restart_runs_once,
        },
        Test {
            name: "core_a_tracejob_deleted_while_its_output_is_retried_leaves_no_run_directory",
            run: deleted_mid_store_leaves_no_run_directory,
        },
    ]
}

/// A validating webhook on ConfigMap writes in one namespace that nobody serves: the API server
/// answers every such write with 500 "failed calling webhook" (a transient error, retried).
/// Removed when dropped (the API server is shared by the tests).
struct FailingConfigMapWebhook {
    k: Kubectl,
    name: String,
}

impl FailingConfigMapWebhook {
    fn install(env: &Env, ns: &str) -> FailingConfigMapWebhook {
        let ca = must(std::fs::read(env.cp.ca_file()), "read the API server's CA");
        let name = format!("{ns}-configmaps-fail");
        let webhook = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "configmaps-fail.tracejob.test",
                "clientConfig": {
                    "url": "https://127.0.0.1:1/x",
                    // Any CA: nothing answers there. (A ByteString serializes as base64.)
                    "caBundle": k8s_openapi::ByteString(ca),
                },
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"],
                }],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 2,
            }]
        });
        let k = env.kubectl.clone();
        let r = k.run_with_stdin(&["create", "-f", "-"], &webhook.to_string());
        assert!(r.ok, "creating the webhook configuration: {}", r.stderr);
        let guard = FailingConfigMapWebhook { k, name };
        // In force once a ConfigMap of the namespace is refused as the agent's would be.
        wait_for(
            Duration::from_secs(30),
            "the webhook to refuse ConfigMap writes",
            || {
                let r = guard
                    .k
                    .run(&["create", "configmap", "-n", ns, "webhook-probe"]);
                if r.ok {
                    guard
                        .k
                        .ok(&["delete", "configmap", "-n", ns, "webhook-probe"]);
                    return None;
                }
                assert!(
                    r.stderr.contains("failed calling webhook"),
                    "the probe ConfigMap was refused otherwise: {}",
                    r.stderr
                );
                Some(())
            },
        );
        guard
    }
}

impl Drop for FailingConfigMapWebhook {
    fn drop(&mut self) {
        let _ = self.k.run(&[
            "delete",
            "validatingwebhookconfiguration",
            &self.name,
            "--ignore-not-found",
        ]);
    }
}

/// Bullet: status writes used to block the job's decisions while the API server was down.
fn decisions_while_api_down(_env: &Env) {
    let own = Env::new(ControlPlane::start());
    own.install_crd();
    let k = &own.kubectl;
    let agent = double_agent(&own, "down-node", &[]);
    own.create_namespace("down");
    let program = double_program(&["sigint=ignore"]);
    k.apply(
        "down",
        &tracejob_yaml(
            "d",
            &agent.node,
            &program,
            "  deadline: 8\n  deadlineGracePeriod: 3\n",
        ),
    );
    wait_phase(k, "down", "d", "Running", Duration::from_secs(30));
    let running = Instant::now();
    own.cp.stop_apiserver();
    assert!(
        !agent.bpftraces().is_empty(),
        "the trace ended before the API server was down: the test tests nothing"
    );
    // The deadline, the SIGINT and the SIGKILL after the grace period, all without the API.
    wait_for(Duration::from_secs(30), "the double to be killed", || {
        agent.bpftraces().is_empty().then_some(())
    });
    assert!(
        running.elapsed() >= Duration::from_secs(10),
        "killed before its deadline and grace period: {:?}",
        running.elapsed()
    );
    own.cp.start_apiserver();
    wait_phase(k, "down", "d", "Failed", Duration::from_secs(90));
    assert!(message(k, "down", "d").contains("deadlineGracePeriod"));
    drop(agent);
    drop(own);
}

/// Bullet: a rejected write after the claim left a job stranded. Here an admission policy refuses
/// the agent's final statuses: the trace still ends, its outcome and output wait on the node, and
/// an agent started after the policy is gone reports them without collecting again.
fn refused_status(_env: &Env) {
    let own = Env::new(ControlPlane::start());
    own.install_crd();
    let k = &own.kubectl;
    own.create_namespace("refused");
    let policy = r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: refuse-final-status}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: ["observe.tracejob.dev"]
        apiVersions: ["v1alpha1"]
        operations: ["UPDATE"]
        resources: ["tracejobs/status"]
  validations:
    - expression: "!has(object.status.phase) || !(object.status.phase in ['Completed', 'Failed'])"
      message: "final statuses are refused by this test's policy"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: refuse-final-status}
spec:
  policyName: refuse-final-status
  validationActions: ["Deny"]
"#;
    k.run_with_stdin(&["apply", "-f", "-"], policy);
    wait_for(Duration::from_secs(30), "the policy to be enforced", || {
        let probe = k.run_with_stdin(
            &["apply", "-n", "refused", "-f", "-"],
            &tracejob_yaml("probe", "nowhere", SYSCOUNT, ""),
        );
        assert!(probe.ok, "{}", probe.stderr);
        let r = k.run(&[
            "patch",
            "-n",
            "refused",
            "tj/probe",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Completed"}}"#,
        ]);
        (!r.ok && r.stderr.contains("refused by this test's policy")).then_some(())
    });
    let mut agent = Agent::start(&own, "refused-node");
    k.apply(
        "refused",
        &tracejob_yaml("r", &agent.node, SYSCOUNT, "  deadline: 2\n"),
    );
    wait_phase(k, "refused", "r", "Running", Duration::from_secs(30));
    wait_for(
        Duration::from_secs(60),
        "the final status to be refused again and again",
        || {
            agent
                .logs()
                .contains("refuses every status of this TraceJob")
                .then_some(())
        },
    );
    assert!(agent.bpftraces().is_empty(), "the trace did not end");
    assert_eq!(k.jsonpath("refused", "tj/r", ".status.phase"), "Stopping");
    let cm = k.jsonpath("refused", "tj/r", ".status.outputRef.name");
    assert!(cm.is_empty(), "{cm}");
    let landed = k.ok(&[
        "get",
        "configmap",
        "-n",
        "refused",
        "-l",
        "observe.tracejob.dev/tracejob=r",
        "-o",
        "name",
    ]);
    assert_eq!(landed.lines().count(), 1, "the output landed: {landed}");
    // The agent dies; the policy goes; the next agent reports what the first one decided.
    let proc = agent.proc.as_mut().expect("agent");
    proc.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(proc.wait_exit(Duration::from_secs(10)).is_some());
    k.ok(&[
        "delete",
        "validatingadmissionpolicybinding",
        "refuse-final-status",
    ]);
    k.ok(&["delete", "validatingadmissionpolicy", "refuse-final-status"]);
    // The API server drops a deleted policy from its cache a moment later: the next agent starts
    // once a final status is accepted again (else its first write is refused for good).
    wait_for(Duration::from_secs(30), "the policy to be gone", || {
        let r = k.run(&[
            "patch",
            "-n",
            "refused",
            "tj/probe",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Failed"}}"#,
        ]);
        r.ok.then_some(())
    });
    agent.restart(&[]);
    wait_phase(k, "refused", "r", "Completed", Duration::from_secs(60));
    assert!(output(k, "refused", "r", "output").contains("@syscalls["));
    assert_eq!(
        agent.metric("tracejob_collections_total"),
        0.0,
        "the next agent collected the output again"
    );
    drop(agent);
    drop(own);
}

/// Its own control plane: the API server goes away while the trace ends.
fn output_kept_while_apiserver_down(_env: &Env) {
    let own = Env::new(ControlPlane::start());
    own.install_crd();
    let k = &own.kubectl;
    let agent = Agent::start(&own, "outage-node");
    own.create_namespace("outage");
    k.apply(
        "outage",
        &tracejob_yaml("o", &agent.node, SYSCOUNT, "  deadline: 3\n"),
    );
    wait_phase(k, "outage", "o", "Running", Duration::from_secs(30));
    own.cp.stop_apiserver();
    // The deadline passes and bpftrace exits while the API server is down.
    wait_for(Duration::from_secs(20), "bpftrace to end", || {
        agent.bpftraces().is_empty().then_some(())
    });
    std::thread::sleep(Duration::from_secs(10));
    own.cp.start_apiserver();
    wait_phase(k, "outage", "o", "Completed", Duration::from_secs(90));
    assert!(output(k, "outage", "o", "output").contains("@syscalls["));
    wait_for(
        Duration::from_secs(10),
        "the run's files removed once landed",
        || {
            let left = std::fs::read_dir(agent.state_dir.join("jobs"))
                .map(|d| d.count())
                .unwrap_or(0);
            (left == 0).then_some(())
        },
    );
    drop(agent);
    drop(own);
}

/// Its own control plane, since it restarts the API server.
fn apiserver_restart_runs_once(_env: &Env) {
    let own = Env::new(ControlPlane::start());
    own.install_crd();
    let k = &own.kubectl;
    let agent = Agent::start(&own, "restart-node");
    own.create_namespace("restart");
    k.apply("restart", &tracejob_yaml("r", &agent.node, SYSCOUNT, ""));
    wait_phase(k, "restart", "r", "Running", Duration::from_secs(30));
    let pids = agent.bpftraces();
    let id = k.jsonpath("restart", "tj/r", ".status.id");
    let watches = |a: &Agent| {
        a.metric("tracejob_api_requests_total{method=\"WATCH\",resource=\"tracejobs\"}")
    };
    let before = watches(&agent);
    own.cp.stop_apiserver();
    own.cp.start_apiserver();
    wait_for(
        Duration::from_secs(60),
        "the agent to watch TraceJobs again",
        || (watches(&agent) > before).then_some(()),
    );
    // A change the agent must see through its new watch: metadata, as a labelling tool writes.
    let events = agent.metric(r#"tracejob_watch_events_total{watch="node"}"#);
    k.ok(&["label", "-n", "restart", "tj", "r", "seen=again"]);
    wait_for(
        Duration::from_secs(30),
        "the agent to see the change",
        || (agent.metric(r#"tracejob_watch_events_total{watch="node"}"#) > events).then_some(()),
    );
    assert_eq!(
        agent.bpftraces(),
        pids,
        "a second bpftrace was started after the API server restart"
    );
    assert_eq!(
        k.jsonpath("restart", "tj/r", ".status.id"),
        id,
        "the run id changed"
    );
    stop(k, "restart", "r");
    wait_phase(k, "restart", "r", "Completed", Duration::from_secs(60));
    assert!(output(k, "restart", "r", "output").contains("@syscalls["));
    drop(agent);
    drop(own);
}

/// Issue #24: a run's directory goes with its TraceJob on every path, also when the
/// TraceJob is deleted while the agent retries storing its output (which used to return from the
/// run's end without removing anything).
fn deleted_mid_store_leaves_no_run_directory(env: &Env) {
    let ns = env.namespace("core-midstore");
    let k = &env.kubectl;
    let _webhook = FailingConfigMapWebhook::install(env, &ns);
    let double = bpftrace_double().to_string_lossy().into_owned();
    // No live copies: the first ConfigMap write is the final store's.
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--bpftrace", &double, "--live-interval", "0"],
        &[],
    );
    k.apply(&ns, &tracejob_yaml("s", &agent.node, "BEGIN {}", ""));
    wait_phase(k, &ns, "s", "Running", Duration::from_secs(30));
    let id = field(k, &ns, "s", ".status.id");
    assert!(!id.is_empty(), "tj/s is Running without a status.id");
    let dir = agent.state_dir.join("jobs").join(&id);
    assert!(dir.is_dir(), "no run directory {}", dir.display());
    stop(k, &ns, "s");
    // The agent stores the output, and is refused for now: it retries.
    let line = wait_for(
        Duration::from_secs(30),
        "the agent to retry writing the output ConfigMap",
        || {
            agent
                .logs()
                .lines()
                .find(|l| l.contains("writing the output ConfigMap failed"))
                .map(str::to_string)
        },
    );
    assert!(line.contains("failed calling webhook"), "{line}");
    assert!(dir.is_dir(), "the run's directory went before its end");
    k.ok(&["delete", "-n", &ns, "tj", "s"]);
    wait_for(
        Duration::from_secs(10),
        "the deleted TraceJob's run directory to be removed",
        || (!dir.exists()).then_some(()),
    );
    assert_no_bpftrace(&agent);
}
