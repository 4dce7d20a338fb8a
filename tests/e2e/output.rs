//! The output ConfigMap: kept byte for byte, live before stop, within its limits whatever
//! bpftrace prints, maps.json that renders back to bpftrace's text, and never someone else's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;

use crate::support::host::{assert_no_bpftrace, disk_io, peak_rss};
use crate::support::outputs::output;
use crate::support::tracejobs::{condition, message, sample_yaml, stop, tracejob_yaml, SYSCOUNT};
use crate::support::wait::wait_phase;
use crate::support::{double_agent, double_program, must, wait_for, Agent, Env, Kubectl, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "native_live_output_before_stop",
            run: live_output_before_stop,
        },
        Test {
            name: "native_maps_json_renders_back_to_bpftrace_text",
            run: maps_json_renders_back,
        },
        Test {
            name: "robust_output_that_is_not_utf8_is_kept_byte_for_byte",
            run: output_that_is_not_utf8,
        },
        Test {
            name: "robust_fast_printers_stay_within_the_output_limit",
            run: fast_printers_within_limit,
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
            name: "hostile_foreign_configmap_is_never_overwritten",
            run: foreign_configmap_untouched,
        },
        Test {
            name: "hostile_map_of_100k_keys_lands_complete",
            run: map_of_100k_keys,
        },
        Test {
            name: "hostile_hot_printf_is_bounded_and_reported",
            run: hot_printf_is_bounded,
        },
    ]
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

fn gunzip_binary(k: &Kubectl, ns: &str, cm: &str, key: &str) -> String {
    let path = format!("jsonpath={{.binaryData.{}}}", key.replace('.', "\\."));
    let b64 = k.ok(&["get", "configmap", "-n", ns, cm, "-o", &path]);
    let file = must(tempfile::NamedTempFile::new(), "tempfile");
    must(std::fs::write(file.path(), b64), "write");
    let script = format!("base64 -d {} | gunzip", file.path().display());
    let out = must(
        Command::new("bash").arg("-c").arg(script).output(),
        "base64 | gunzip",
    );
    assert!(out.status.success(), "{key} is not base64 gzip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn live_output_before_stop(env: &Env) {
    let ns = env.namespace("live");
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--live-interval", "1"],
        &[],
    );
    let k = &env.kubectl;
    let program = "interval:ms:300 { @ticks = count(); printf(\"tick\\n\"); }\ninterval:s:1 { print(@ticks); }";
    k.apply(&ns, &tracejob_yaml("l", &agent.node, program, ""));
    wait_phase(k, &ns, "l", "Running", Duration::from_secs(30));
    let live = wait_for(
        Duration::from_secs(20),
        "live output in the ConfigMap",
        || {
            let cm = k.jsonpath(&ns, "tj/l", ".status.outputRef.name");
            if cm.is_empty() {
                return None;
            }
            let text = output(k, &ns, "l", "output");
            (text.contains("tick") && text.contains("@ticks: ")).then_some(text)
        },
    );
    assert_eq!(
        k.jsonpath(&ns, "tj/l", ".status.phase"),
        "Running",
        "output was visible only after the stop"
    );
    assert!(live.lines().filter(|l| *l == "tick").count() >= 1, "{live}");
    // The live copy is the newest part of the output; its annotation says where it begins.
    let cm = k.jsonpath(&ns, "tj/l", ".status.outputRef.name");
    let annotation = |name: &str| {
        k.jsonpath(
            &ns,
            &format!("configmap/{cm}"),
            &format!(".metadata.annotations.{}", name.replace('.', "\\.")),
        )
    };
    let offset: usize = must(
        annotation("observe.tracejob.dev/live-offset").parse(),
        "live-offset",
    );
    stop(k, &ns, "l");
    wait_phase(k, &ns, "l", "Completed", Duration::from_secs(30));
    let last = output(k, &ns, "l", "output");
    assert!(
        last.get(offset..)
            .is_some_and(|rest| rest.starts_with(&live)),
        "the live copy is not the output from its offset {offset}:\n{live}\n--- final ---\n{last}"
    );
    assert_eq!(
        annotation("observe.tracejob.dev/live"),
        "",
        "the final output is not marked live"
    );
}

fn maps_json_renders_back(env: &Env) {
    let ns = env.namespace("render");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &sample_yaml("rwsize", &agent.node));
    wait_phase(k, &ns, "rwsize", "Running", Duration::from_secs(30));
    disk_io();
    stop(k, &ns, "rwsize");
    wait_phase(k, &ns, "rwsize", "Completed", Duration::from_secs(30));
    let text = output(k, &ns, "rwsize", "output");
    let maps: tracejob_agent::output::maps::Maps = must(
        serde_json::from_str(&output(k, &ns, "rwsize", "maps.json")),
        "maps.json",
    );
    let mut histograms = 0;
    for map in &maps.maps {
        for entry in &map.entries {
            if let tracejob_agent::output::maps::Value::Hist(buckets) = &entry.value {
                let header = format!(
                    "{}[{}]: \n",
                    map.name,
                    entry.key.as_deref().unwrap_or_default()
                );
                let rendered = format!(
                    "{header}{}",
                    tracejob_agent::output::maps::render_hist(buckets, maps.bpftrace.as_deref())
                );
                assert!(text.contains(&rendered), "maps.json renders differently from bpftrace:\n{rendered}\n--- bpftrace printed ---\n{text}");
                histograms += 1;
            }
        }
    }
    assert!(
        histograms >= 2,
        "too few histograms to compare: {histograms}"
    );
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

fn foreign_configmap_untouched(env: &Env) {
    let ns = env.namespace("foreign");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(&ns, &tracejob_yaml("f", &agent.node, SYSCOUNT, ""));
    wait_phase(k, &ns, "f", "Running", Duration::from_secs(30));
    let id = k.jsonpath(&ns, "tj/f", ".status.id");
    let intended = format!("f-output-{}", id.split('-').next().unwrap_or_default());
    k.ok(&[
        "create",
        "configmap",
        "-n",
        &ns,
        &intended,
        "--from-literal=owner=someone-else",
    ]);
    stop(k, &ns, "f");
    wait_phase(k, &ns, "f", "Completed", Duration::from_secs(30));
    let used = k.jsonpath(&ns, "tj/f", ".status.outputRef.name");
    assert_ne!(
        used, intended,
        "the agent wrote into a ConfigMap that is not its own"
    );
    assert_eq!(
        k.jsonpath(&ns, &format!("configmap/{intended}"), ".data"),
        r#"{"owner":"someone-else"}"#
    );
    assert!(output(k, &ns, "f", "output").contains("@syscalls["));
}

fn map_of_100k_keys(env: &Env) {
    let ns = env.namespace("bigmap");
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &[],
        &[("BPFTRACE_MAP_KEYS_MAX", "150000")],
    );
    let k = &env.kubectl;
    // One new key per system call of dd: 0, 1, 2, ...
    let program = "tracepoint:raw_syscalls:sys_enter /comm == \"dd\"/ { @m[@i] = 1; @i = @i + 1; }";
    k.apply(
        &ns,
        &tracejob_yaml("keys", &agent.node, program, "  deadlineGracePeriod: 120\n"),
    );
    wait_phase(k, &ns, "keys", "Running", Duration::from_secs(30));
    let st = must(
        Command::new("dd")
            .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=80000"])
            .output(),
        "dd",
    );
    assert!(st.status.success());
    stop(k, &ns, "keys");
    wait_phase(k, &ns, "keys", "Completed", Duration::from_secs(180));
    let cm = k.jsonpath(&ns, "tj/keys", ".status.outputRef.name");
    let reason = k.jsonpath(
        &ns,
        "tj/keys",
        ".status.conditions[?(@.type==\"OutputStored\")].reason",
    );
    assert_eq!(reason, "Compressed", "{}", message(k, &ns, "keys"));
    let text = gunzip_binary(k, &ns, &cm, "output.gz");
    let keys = text.lines().filter(|l| l.starts_with("@m[")).count();
    assert!(keys >= 100_000, "only {keys} keys landed");
    assert!(
        text.len() > 1024 * 1024,
        "the output is over a MiB: {}",
        text.len()
    );
    let maps = gunzip_binary(k, &ns, &cm, "maps.json.gz");
    let parsed: serde_json::Value = must(serde_json::from_str(&maps), "maps.json");
    let m = parsed["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["name"] == "@m"));
    let entries = m.and_then(|m| m["entries"].as_array()).map(|e| e.len());
    assert_eq!(entries, Some(keys), "maps.json holds every key");
}

fn hot_printf_is_bounded(env: &Env) {
    let ns = env.namespace("hotprintf");
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--max-output-bytes", "3000000"],
        &[],
    );
    let k = &env.kubectl;
    let program = "tracepoint:raw_syscalls:sys_enter { printf(\"%s %d %d\\n\", comm, nsecs, rand); @calls = count(); }";
    k.apply(&ns, &tracejob_yaml("hot", &agent.node, program, ""));
    wait_phase(k, &ns, "hot", "Completed", Duration::from_secs(120));
    let started = k.jsonpath(&ns, "tj/hot", ".status.startTime");
    assert!(!started.is_empty(), "a busy trace is reported Running too");
    let m = message(k, &ns, "hot");
    assert!(m.contains("per-job limit"), "{m}");
    let reason = k.jsonpath(
        &ns,
        "tj/hot",
        ".status.conditions[?(@.type==\"OutputStored\")].reason",
    );
    assert!(
        reason == "Truncated" || reason == "Compressed",
        "{reason}: {m}"
    );
    let cm = k.jsonpath(&ns, "tj/hot", ".status.outputRef.name");
    let text = gunzip_binary(k, &ns, &cm, "output.gz");
    assert!(text.contains("@calls: "), "the maps are kept");
    assert_no_bpftrace(&agent);
}
