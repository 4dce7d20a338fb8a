//! Never lose a result, never strand a job, always stop a trace: the cases of the reliability
//! issue, each against the real API server, with real bpftrace or, where real bpftrace cannot be
//! made to misbehave on demand, the test double (tests/double/bpftrace.c).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;

use crate::api::tracejob_yaml;
use crate::lifecycle::{assert_no_bpftrace, output, stop, wait_phase, SYSCOUNT};
use crate::support::{bpftrace_double, must, wait_for, Agent, ControlPlane, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "robust_output_that_is_not_utf8_is_kept_byte_for_byte",
            run: output_that_is_not_utf8,
        },
        Test {
            name: "robust_deadline_and_grace_are_capped_by_the_server",
            run: deadline_and_grace_capped,
        },
        Test {
            name: "robust_tracejobs_labelled_while_being_claimed_all_run",
            run: labelled_while_claimed,
        },
        Test {
            name: "robust_fast_printers_stay_within_the_output_limit",
            run: fast_printers_within_limit,
        },
        Test {
            name: "robust_decisions_go_on_while_the_api_server_is_down",
            run: decisions_while_api_down,
        },
        Test {
            name: "robust_collection_has_bounded_memory_and_healthz_answers",
            run: collection_bounded,
        },
        Test {
            name: "robust_stderr_is_bounded",
            run: stderr_bounded,
        },
        Test {
            name: "robust_live_output_keeps_to_its_window_and_budget",
            run: live_window_and_budget,
        },
        Test {
            name: "robust_a_full_disk_after_the_claim_fails_the_job",
            run: full_disk_after_claim,
        },
        Test {
            name: "robust_a_refused_status_stops_the_trace_and_the_outcome_waits_on_the_node",
            run: refused_status,
        },
        Test {
            name: "robust_an_exit_while_no_agent_watches_is_reported_as_it_was",
            run: exit_while_no_agent,
        },
        Test {
            name: "robust_a_trace_that_never_attaches_fails_at_the_start_timeout",
            run: never_attaches,
        },
        Test {
            name: "robust_an_include_of_a_fifo_fails_at_the_start_timeout",
            run: include_of_a_fifo,
        },
        Test {
            name: "robust_sigkill_comes_exactly_after_the_grace_period",
            run: sigkill_after_grace,
        },
        Test {
            name: "robust_sigint_is_repeated_until_bpftrace_ends",
            run: sigint_repeated,
        },
    ]
}

fn message(k: &Kubectl, ns: &str, name: &str) -> String {
    k.jsonpath(ns, &format!("tj/{name}"), ".status.message")
}

fn condition(k: &Kubectl, ns: &str, name: &str, kind: &str, field: &str) -> String {
    k.jsonpath(
        ns,
        &format!("tj/{name}"),
        &format!(".status.conditions[?(@.type==\"{kind}\")].{field}"),
    )
}

/// An agent running the bpftrace double, with `extra` flags.
fn double_agent(env: &Env, node: &str, extra: &[&str]) -> Agent {
    let double = bpftrace_double().to_string_lossy().into_owned();
    let mut args = vec!["--bpftrace", double.as_str()];
    args.extend_from_slice(extra);
    Agent::start_with(env, node, &env.cp.kubeconfig, &args, &[])
}

/// A program for the double: its behaviour, one `// double:` line each.
fn double_program(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| format!("// double: {l}\n"))
        .collect::<String>()
        + "BEGIN {}"
}

/// Bytes of a ConfigMap key, from `data` or `binaryData`, exactly.
fn configmap_bytes(k: &Kubectl, ns: &str, cm: &str, key: &str) -> Vec<u8> {
    let json = k.ok(&["get", "configmap", "-n", ns, cm, "-o", "json"]);
    let cm: ConfigMap = must(serde_json::from_str(&json), "configmap json");
    if let Some(text) = cm.data.as_ref().and_then(|d| d.get(key)) {
        return text.as_bytes().to_vec();
    }
    cm.binary_data
        .as_ref()
        .and_then(|b| b.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_else(|| panic!("{key} is in neither data nor binaryData of {cm:?}"))
}

/// The run directories under an agent's state directory.
fn run_dirs(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state.join("jobs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Samples, every 20 ms until stopped, the largest size on disk of each run's stdout (with its
/// ring) and stderr (with its ring).
struct DiskWatch {
    stop: Arc<AtomicBool>,
    largest: Arc<Mutex<HashMap<PathBuf, (u64, u64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskWatch {
    fn start(state: &Path) -> DiskWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let largest = Arc::new(Mutex::new(HashMap::new()));
        let (s, l, state) = (stop.clone(), largest.clone(), state.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for dir in run_dirs(&state) {
                    let out = size(&dir.join("stdout")) + size(&dir.join("stdout.ring"));
                    let err = size(&dir.join("stderr")) + size(&dir.join("stderr.ring"));
                    if let Ok(mut l) = l.lock() {
                        let e = l.entry(dir).or_insert((0, 0));
                        *e = (e.0.max(out), e.1.max(err));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        DiskWatch {
            stop,
            largest,
            thread: Some(thread),
        }
    }

    /// The largest sizes seen: (stdout, stderr) per run.
    fn finish(mut self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let largest = self.largest.lock().map(|l| l.clone()).unwrap_or_default();
        largest.into_values().collect()
    }
}

/// Peak resident memory of a process, in bytes (VmHWM).
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no VmHWM for {pid}"))
}

/// Case 1: bytes that are not UTF-8 (bpftrace's printf of \xff) used to empty the whole output.
fn output_that_is_not_utf8(env: &Env) {
    let ns = env.namespace("binary");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    let program = r#"BEGIN { printf("before\n\xff\xfe not text \x80\n"); @x = 42; exit(); }"#;
    k.apply(&ns, &tracejob_yaml("bin", &agent.node, program, ""));
    wait_phase(k, &ns, "bin", "Completed", Duration::from_secs(30));
    let cm = k.jsonpath(&ns, "tj/bin", ".status.outputRef.name");
    let bytes = configmap_bytes(k, &ns, &cm, "output");
    let expected: &[u8] = b"before\n\xff\xfe not text \x80\n";
    assert!(
        bytes.windows(expected.len()).any(|w| w == expected),
        "the bytes were not kept: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(String::from_utf8_lossy(&bytes).contains("@x: 42"));
    let maps = String::from_utf8(configmap_bytes(k, &ns, &cm, "maps.json")).expect("json");
    assert!(maps.contains("\"@x\"") && maps.contains("42"), "{maps}");
    let stored = condition(k, &ns, "bin", "OutputStored", "message");
    assert!(stored.contains("binaryData.output"), "{stored}");
}

/// Case 2: a deadline or grace period near the 64-bit maximum used to panic the job's task.
fn deadline_and_grace_capped(env: &Env) {
    let ns = env.namespace("caps");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    for (field, value) in [
        ("deadline", i64::MAX.to_string()),
        ("deadlineGracePeriod", "9223372036854775000".to_string()),
        ("deadline", "2592001".to_string()),
        ("deadlineGracePeriod", "3601".to_string()),
    ] {
        let yaml = tracejob_yaml(
            "huge",
            &agent.node,
            SYSCOUNT,
            &format!("  {field}: {value}\n"),
        );
        let r = k.run_with_stdin(&["apply", "--validate=false", "-n", &ns, "-f", "-"], &yaml);
        assert!(!r.ok, "{field}: {value} was accepted");
        assert!(r.stderr.contains(&format!("spec.{field}")), "{}", r.stderr);
    }
    // The largest values accepted run, stop and are deleted like any other.
    k.apply(
        &ns,
        &tracejob_yaml(
            "longest",
            &agent.node,
            SYSCOUNT,
            "  deadline: 2592000\n  deadlineGracePeriod: 3600\n",
        ),
    );
    wait_phase(k, &ns, "longest", "Running", Duration::from_secs(30));
    stop(k, &ns, "longest");
    wait_phase(k, &ns, "longest", "Completed", Duration::from_secs(60));
    assert!(output(k, &ns, "longest", "output").contains("@syscalls["));
    assert_no_bpftrace(&agent);
}

/// Case 3: TraceJobs whose metadata is written while the agent claims them were never run.
fn labelled_while_claimed(env: &Env) {
    let ns = env.namespace("labelled");
    let node = format!("{ns}-node");
    let k = &env.kubectl;
    let program = double_program(&["exit-after-ms=200"]);
    let names: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
    let all: Vec<String> = names
        .iter()
        .map(|n| tracejob_yaml(n, &node, &program, ""))
        .collect();
    k.apply(&ns, &all.join("---\n"));
    // Labelling controllers write every TraceJob's metadata over and over, from before the agent
    // lists them until they are done.
    let done = Arc::new(AtomicBool::new(false));
    let labellers: Vec<_> = (0..4)
        .map(|t| {
            let (k, ns, done) = (k.clone(), ns.clone(), done.clone());
            std::thread::spawn(move || {
                let mut round = 0;
                while !done.load(Ordering::SeqCst) {
                    round += 1;
                    k.run(&[
                        "label",
                        "-n",
                        &ns,
                        "tj",
                        "--all",
                        &format!("labeller-{t}={round}"),
                        "--overwrite",
                    ]);
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(30), "the labellers at work", || {
        (!k.jsonpath(&ns, "tj/l39", ".metadata.labels.labeller-3")
            .is_empty())
        .then_some(())
    });
    let agent = double_agent(env, &node, &[]);
    for name in &names {
        wait_phase(k, &ns, name, "Completed", Duration::from_secs(120));
    }
    done.store(true, Ordering::SeqCst);
    for l in labellers {
        let _ = l.join();
    }
    assert!(
        agent.logs().contains("changed while it was claimed"),
        "no claim met a concurrent write: the test did not test it"
    );
}

/// Case 4: fast printers stopped by the per-job limit went far past it on disk.
fn fast_printers_within_limit(env: &Env) {
    let ns = env.namespace("printers");
    let limit: u64 = 4_000_000;
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--max-output-bytes", &limit.to_string()],
        &[],
    );
    let k = &env.kubectl;
    let disk = DiskWatch::start(&agent.state_dir);
    let program = "tracepoint:raw_syscalls:sys_enter { printf(\"%s %d %d\\n\", comm, nsecs, rand); @calls = count(); }";
    for i in 0..4 {
        k.apply(
            &ns,
            &tracejob_yaml(&format!("p{i}"), &agent.node, program, ""),
        );
    }
    for i in 0..4 {
        let name = format!("p{i}");
        wait_phase(k, &ns, &name, "Completed", Duration::from_secs(120));
        let m = message(k, &ns, &name);
        assert!(m.contains("per-job limit"), "{m}");
        let cm = k.jsonpath(&ns, &format!("tj/{name}"), ".status.outputRef.name");
        let gz = configmap_bytes(k, &ns, &cm, "output.gz");
        let mut text = String::new();
        use std::io::Read;
        must(
            flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text),
            "gunzip",
        );
        assert!(text.contains("@calls: "), "{name}: the maps did not land");
        let reason = condition(k, &ns, &name, "OutputStored", "reason");
        assert!(reason == "Compressed" || reason == "Truncated", "{reason}");
    }
    let largest = disk.finish();
    assert_eq!(largest.len(), 4, "the runs were not seen on disk");
    for (stdout, _) in largest {
        assert!(
            stdout <= limit,
            "{stdout} bytes of output on disk, over the limit of {limit}"
        );
    }
    assert_no_bpftrace(&agent);
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

/// Bullet: collection read whole outputs into memory on the async threads, all at once.
fn collection_bounded(env: &Env) {
    let ns = env.namespace("collect");
    let agent = double_agent(env, &format!("{ns}-node"), &[]);
    let k = &env.kubectl;
    let pid = agent.proc.as_ref().map(|p| p.pid()).expect("agent pid");
    let program = double_program(&["flood"]);
    // Each prints until the default limit (32 MiB) stops it.
    for i in 0..6 {
        k.apply(
            &ns,
            &tracejob_yaml(&format!("c{i}"), &agent.node, &program, ""),
        );
    }
    let probe = agent.probe_healthz();
    for i in 0..6 {
        wait_phase(
            k,
            &ns,
            &format!("c{i}"),
            "Completed",
            Duration::from_secs(180),
        );
    }
    let slowest = probe.finish();
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz took {slowest:?} during the collections"
    );
    let rss = peak_rss(pid);
    assert!(
        rss < 100 << 20,
        "the agent's memory peaked at {} MiB",
        rss >> 20
    );
    assert_eq!(agent.metric("tracejob_collections_total"), 6.0);
}

/// Bullet: stderr had no bound at all.
fn stderr_bounded(env: &Env) {
    let ns = env.namespace("stderr");
    let agent = double_agent(env, &format!("{ns}-node"), &[]);
    let k = &env.kubectl;
    let disk = DiskWatch::start(&agent.state_dir);
    k.apply(
        &ns,
        &tracejob_yaml("noisy", &agent.node, &double_program(&["flood-stderr"]), ""),
    );
    wait_phase(k, &ns, "noisy", "Running", Duration::from_secs(30));
    // Seconds of a warning flood: far more than the bound.
    std::thread::sleep(Duration::from_secs(3));
    stop(k, &ns, "noisy");
    wait_phase(k, &ns, "noisy", "Completed", Duration::from_secs(60));
    let largest = disk.finish();
    assert_eq!(largest.len(), 1);
    let (_, stderr) = largest[0];
    assert!(
        stderr > 512 * 1024,
        "the flood was too small to test: {stderr}"
    );
    assert!(stderr <= 1024 * 1024, "{stderr} bytes of stderr on disk");
}

/// Bullet: live output rewrote up to 1 MiB every few seconds per job.
fn live_window_and_budget(env: &Env) {
    let ns = env.namespace("livebudget");
    let (window, budget) = (4096u64, 30_000u64);
    let agent = double_agent(
        env,
        &format!("{ns}-node"),
        &[
            "--live-interval",
            "1",
            "--live-window-bytes",
            &window.to_string(),
            "--live-budget-bytes-per-minute",
            &budget.to_string(),
        ],
    );
    let k = &env.kubectl;
    let started = Instant::now();
    let program = double_program(&["print-every-ms=1"]);
    for i in 0..3 {
        k.apply(
            &ns,
            &tracejob_yaml(&format!("v{i}"), &agent.node, &program, ""),
        );
    }
    let mut copies = 0;
    wait_for(Duration::from_secs(30), "live copies of every job", || {
        copies = 0;
        for i in 0..3 {
            let cm = k.jsonpath(&ns, &format!("tj/v{i}"), ".status.outputRef.name");
            if !cm.is_empty() {
                copies += 1;
                let live = configmap_bytes(k, &ns, &cm, "output");
                assert!(
                    live.len() as u64 <= window,
                    "a live copy of {} bytes",
                    live.len()
                );
            }
        }
        (copies == 3).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let written = agent.metric("tracejob_live_output_bytes_total");
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let allowed = budget as f64 * (1.0 + minutes);
    assert!(
        written <= allowed,
        "{written} bytes of live output in {:.0} s; the budget allows {allowed}",
        minutes * 60.0
    );
    assert!(
        agent.metric("tracejob_live_output_skipped_total") > 0.0,
        "three flooding jobs never met the budget"
    );
    for i in 0..3 {
        stop(k, &ns, &format!("v{i}"));
    }
    for i in 0..3 {
        wait_phase(
            k,
            &ns,
            &format!("v{i}"),
            "Completed",
            Duration::from_secs(120),
        );
    }
}

/// Bullet: a failure after the claim (here: the node's disk is full) left the job Pending.
fn full_disk_after_claim(env: &Env) {
    let ns = env.namespace("diskfull");
    let agent = Agent::start(env, &format!("{ns}-node"));
    wait_for(Duration::from_secs(30), "the agent to be ready", || {
        (agent.get("/readyz").0 == 200).then_some(())
    });
    // The node's disk, as the agent's runs see it, is nearly full.
    let jobs = agent.state_dir.join("jobs");
    let mounted = must(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tracejob-full"])
            .arg(&jobs)
            .status(),
        "mount tmpfs",
    );
    assert!(mounted.success(), "mounting a small tmpfs failed");
    let unmount = Unmount(jobs);
    let k = &env.kubectl;
    // A program larger than the room left on the node.
    let comment = format!("// {}\n", "x".repeat(63 * 1024));
    let program = format!("{comment}{SYSCOUNT}");
    let tj = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "big"}, "spec": {"nodeName": agent.node, "program": program}
    });
    k.apply(&ns, &tj.to_string());
    wait_phase(k, &ns, "big", "Failed", Duration::from_secs(30));
    let m = message(k, &ns, "big");
    assert!(m.contains("could not store the run"), "{m}");
    assert!(agent.bpftraces().is_empty());
    drop(agent);
    drop(unmount);
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
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

/// Bullet: an exit seen by no agent was reported as a failure ("ended while no agent was
/// watching"); the shim now records bpftrace's exit status durably.
fn exit_while_no_agent(env: &Env) {
    let ns = env.namespace("unwatched");
    let mut agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml(
            "e",
            &agent.node,
            "tracepoint:raw_syscalls:sys_enter { @n = count(); }\ninterval:s:3 { exit(); }",
            "",
        ),
    );
    wait_phase(k, &ns, "e", "Running", Duration::from_secs(30));
    let proc = agent.proc.as_mut().expect("agent");
    proc.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(proc.wait_exit(Duration::from_secs(10)).is_some());
    wait_for(
        Duration::from_secs(30),
        "bpftrace to exit on its own",
        || agent.bpftraces().is_empty().then_some(()),
    );
    agent.restart(&[]);
    wait_phase(k, &ns, "e", "Completed", Duration::from_secs(30));
    assert_eq!(k.jsonpath(&ns, "tj/e", ".status.exitCode"), "0");
    assert!(output(k, &ns, "e", "output").contains("@n: "));
}

/// Bullet: a bpftrace that never attached never met its deadline.
fn never_attaches(env: &Env) {
    let ns = env.namespace("noattach2");
    let agent = double_agent(env, &format!("{ns}-node"), &["--start-timeout", "2"]);
    let k = &env.kubectl;
    let t0 = Instant::now();
    k.apply(
        &ns,
        &tracejob_yaml("stuck", &agent.node, &double_program(&["attach=never"]), ""),
    );
    wait_phase(k, &ns, "stuck", "Failed", Duration::from_secs(30));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(
        condition(k, &ns, "stuck", "Failed", "reason"),
        "StartTimeout"
    );
    let m = message(k, &ns, "stuck");
    assert!(m.contains("still compiling"), "bpftrace's stderr: {m}");
    assert_eq!(k.jsonpath(&ns, "tj/stuck", ".status.startTime"), "");
}

/// Real bpftrace blocked before it attaches: the program includes a FIFO nobody writes.
fn include_of_a_fifo(env: &Env) {
    let ns = env.namespace("fifo");
    let dir = must(tempfile::tempdir(), "tempdir");
    let fifo = dir.path().join("header.h");
    must(
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)),
        "mkfifo",
    );
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--start-timeout", "3"],
        &[],
    );
    let k = &env.kubectl;
    let program = format!("#include \"{}\"\n{SYSCOUNT}", fifo.display());
    k.apply(&ns, &tracejob_yaml("inc", &agent.node, &program, ""));
    wait_phase(k, &ns, "inc", "Failed", Duration::from_secs(60));
    assert_eq!(condition(k, &ns, "inc", "Failed", "reason"), "StartTimeout");
    assert_no_bpftrace(&agent);
}

/// The grace period, exactly: a bpftrace that ignores SIGINT is killed when it ends.
fn sigkill_after_grace(env: &Env) {
    let ns = env.namespace("graceful");
    let agent = double_agent(env, &format!("{ns}-node"), &[]);
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml(
            "deaf",
            &agent.node,
            &double_program(&["sigint=ignore"]),
            "  deadlineGracePeriod: 3\n",
        ),
    );
    wait_phase(k, &ns, "deaf", "Running", Duration::from_secs(30));
    let t0 = Instant::now();
    stop(k, &ns, "deaf");
    wait_for(Duration::from_secs(20), "the double to be killed", || {
        agent.bpftraces().is_empty().then_some(())
    });
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "killed {took:?} after the stop; the grace period is 3 s"
    );
    wait_phase(k, &ns, "deaf", "Failed", Duration::from_secs(30));
    assert_eq!(
        condition(k, &ns, "deaf", "Failed", "reason"),
        "GracePeriodExceeded"
    );
}

/// The repeated SIGINT: a bpftrace that acts only on the second one ends cleanly with its maps.
fn sigint_repeated(env: &Env) {
    let ns = env.namespace("again");
    let agent = double_agent(env, &format!("{ns}-node"), &[]);
    let k = &env.kubectl;
    k.apply(
        &ns,
        &tracejob_yaml(
            "slow",
            &agent.node,
            &double_program(&["sigint=second", "maps=@after: 2"]),
            "  deadlineGracePeriod: 60\n",
        ),
    );
    wait_phase(k, &ns, "slow", "Running", Duration::from_secs(30));
    let t0 = Instant::now();
    stop(k, &ns, "slow");
    wait_phase(k, &ns, "slow", "Completed", Duration::from_secs(60));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "ended {took:?} after the stop; the second SIGINT is due after 2 s"
    );
    assert!(output(k, &ns, "slow", "output").contains("@after: 2"));
    assert!(agent.logs().contains("sending SIGINT again"));
}
