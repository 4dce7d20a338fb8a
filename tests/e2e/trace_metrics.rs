//! spec.metrics: a running trace's maps as Prometheus metrics, scraped by the real Prometheus the
//! trigger tests build (every second, on loopback), with real bpftrace; and the series cap.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::outputs::output;
use crate::support::tracejobs::stop;
use crate::support::wait::wait_phase;
use crate::support::{
    control_plane::free_port, must, pool, wait_for, Agent, Env, Proc, Summarizer, Test,
};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "metrics_biolatency_in_prometheus_while_it_runs",
            run: biolatency_in_prometheus,
        },
        Test {
            name: "metrics_fanout_sum_by_le_equals_the_merged_histogram",
            run: fanout_sum_by_le,
        },
        Test {
            name: "metrics_100000_keys_capped_counted_and_bounded",
            run: capped,
        },
    ]
}

/// Prometheus scraping `ports` (the agents' --trace-metrics-listen) every second.
struct Prometheus {
    port: u16,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(ports: &[u16]) -> Prometheus {
        let bin = crate::trigger::binaries();
        let dir = must(
            tempfile::Builder::new().prefix("tracejob-prom-").tempdir(),
            "tempdir",
        );
        let d = dir.path();
        let targets: Vec<String> = ports.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: traces\n    static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        must(
            std::fs::write(d.join("prometheus.yml"), config),
            "prometheus.yml",
        );
        let port = free_port();
        let log = must(std::fs::File::create(d.join("prometheus.log")), "log");
        let err = must(log.try_clone(), "log");
        let proc = Proc::spawn(
            "prometheus",
            Command::new(bin.join("prometheus"))
                .arg(format!(
                    "--config.file={}",
                    d.join("prometheus.yml").display()
                ))
                .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err),
        );
        let p = Prometheus {
            port,
            _proc: proc,
            _dir: dir,
        };
        wait_for(Duration::from_secs(60), "Prometheus ready", || {
            curl(&[&format!("http://127.0.0.1:{port}/-/ready")])
                .contains("Ready")
                .then_some(())
        });
        p
    }

    /// An instant query through the HTTP API: each series' labels and value.
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let body = curl(&[
            "-G",
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
            "--data-urlencode",
            &format!("query={promql}"),
        ]);
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus answered {body:?} to {promql}: {e}"));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("{promql}: no value in {r}"));
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// One series' value, once it is present.
    fn one(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        assert!(r.len() <= 1, "{promql}: {r:?}");
        r.first().map(|(_, v)| *v)
    }
}

fn curl(args: &[&str]) -> String {
    let out = must(
        Command::new("curl")
            .args(["-s", "-m", "10"])
            .args(args)
            .output(),
        "curl",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dd` under a name of the test's own (its comm), so that the programs count only its writes.
fn named_dd(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    must(std::fs::copy("/usr/bin/dd", &path), "copy dd");
    path
}

fn run_dd(dd: &Path, args: &[&str]) {
    let out = must(Command::new(dd).args(args).output(), "run dd");
    assert!(
        out.status.success(),
        "dd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `f` gives the same value twice, `apart` apart (what a read and a scrape
/// more would change has landed).
fn settled(what: &str, apart: Duration, mut f: impl FnMut() -> Option<f64>) -> f64 {
    let mut last = None;
    wait_for(Duration::from_secs(90), what, || {
        let now = f();
        let same = now.is_some() && now == last;
        last = now;
        if !same {
            std::thread::sleep(apart);
        }
        same.then_some(now).flatten()
    })
}

pub(crate) fn maps_json(k: &crate::support::Kubectl, ns: &str, name: &str) -> serde_json::Value {
    must(
        serde_json::from_str(&output(k, ns, name, "maps.json")),
        "maps.json",
    )
}

/// The entries of `map` in maps.json.
pub(crate) fn entries(maps: &serde_json::Value, map: &str) -> Vec<serde_json::Value> {
    maps["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == map))
        .and_then(|m| m["entries"].as_array())
        .cloned()
        .unwrap_or_else(|| panic!("no {map} in {maps}"))
}

/// (low, high, count) of a histogram entry; high None for `[N, ...)`.
fn buckets(entry: &serde_json::Value) -> Vec<(i64, Option<i64>, u64)> {
    entry["hist"]
        .as_array()
        .unwrap_or_else(|| panic!("not a histogram: {entry}"))
        .iter()
        .map(|b| {
            (
                b["low"].as_i64().unwrap_or(i64::MIN),
                b["high"].as_i64(),
                b["count"].as_u64().expect("a count"),
            )
        })
        .collect()
}

fn biolatency_in_prometheus(env: &Env) {
    let ns = env.namespace("metrics-bio");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let prom = Prometheus::start(&[agent.metrics_port]);
    let k = &env.kubectl;
    let tmp = must(tempfile::tempdir_in("/var/tmp"), "tempdir");
    let dd = named_dd(tmp.path(), "tjmetricsdd");
    let biolatency = must(
        std::fs::read_to_string(crate::support::repo_root().join("bpf-samples/biolatency.bt")),
        "biolatency.bt",
    );
    let program = format!(
        "{biolatency}\ntracepoint:syscalls:sys_enter_write /comm == \"tjmetricsdd\"/ {{ @writes[comm] = count(); }}\n"
    );
    let job = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "bio"},
        "spec": {
            "nodeName": agent.node, "program": program, "deadlineGracePeriod": 300,
            "metrics": {
                "maps": ["@usecs", "@writes"], "intervalSeconds": 1, "labels": ["comm"],
                "histogramUnit": "seconds", "histogramScale": 1000000
            }
        }
    });
    k.apply(&ns, &job.to_string());
    wait_phase(k, &ns, "bio", "Running", Duration::from_secs(60));
    assert_eq!(
        k.jsonpath(&ns, "tj/bio", ".status.probes"),
        "4",
        "the probe that reads the maps is not counted as the program's"
    );
    run_dd(
        &dd,
        &[
            "if=/dev/zero",
            "bs=64k",
            "count=200",
            "oflag=direct,sync",
            &format!("of={}", tmp.path().join("io").display()),
        ],
    );
    let sel = format!("tracejob_namespace=\"{ns}\",tracejob=\"bio\"");
    let writes = settled(
        "the writes counted in Prometheus",
        Duration::from_secs(3),
        || {
            prom.one(&format!(
                "bpftrace_writes_total{{{sel},comm=\"tjmetricsdd\"}}"
            ))
        },
    );
    assert!(writes >= 200.0, "{writes} writes of dd's 200");
    let running = prom
        .one(&format!(
            "histogram_quantile(0.5, bpftrace_usecs_seconds_bucket{{{sel}}})"
        ))
        .expect("a median while it runs");
    assert!(running > 0.0 && running < 10.0, "a median of {running} s");
    let buckets_in_prometheus = prom.query(&format!("bpftrace_usecs_seconds_bucket{{{sel}}}"));
    assert!(
        buckets_in_prometheus
            .iter()
            .all(|(m, _)| m["node"] == agent.node.as_str()),
        "{buckets_in_prometheus:?}"
    );
    stop(k, &ns, "bio");
    wait_phase(k, &ns, "bio", "Completed", Duration::from_secs(60));
    let completed = Instant::now();

    // The output is what the program printed: no dump of the maps, no marker.
    let text = output(k, &ns, "bio", "output");
    assert!(!text.contains("tracejob-metrics"), "{text}");
    assert_eq!(text.matches("@usecs:").count(), 1, "{text}");
    // Gone within two scrapes of its end (the trace ended before Completed).
    wait_for(Duration::from_secs(30), "the series gone", || {
        prom.query(&format!("bpftrace_usecs_seconds_count{{{sel}}}"))
            .is_empty()
            .then_some(())
    });
    assert!(
        completed.elapsed() < Duration::from_secs(10),
        "the series stayed {:?} after the trace completed",
        completed.elapsed()
    );
    assert!(
        !curl(&[&format!("http://127.0.0.1:{}/metrics", agent.metrics_port)])
            .contains("tracejob=\"bio\"")
    );
    let maps = maps_json(k, &ns, "bio");
    let final_writes = entries(&maps, "@writes")
        .iter()
        .find(|e| e["key"] == "tjmetricsdd")
        .and_then(|e| e["value"].as_i64())
        .expect("dd's writes in the final map");
    assert_eq!(
        final_writes as f64, writes,
        "the counter in Prometheus while it ran is the final map's (dd wrote nothing since)"
    );
    let usecs = buckets(&entries(&maps, "@usecs")[0]);
    let total: u64 = usecs.iter().map(|b| b.2).sum();
    let mut below = 0;
    let (low, high) = usecs
        .iter()
        .find_map(|(low, high, count)| {
            below += count;
            (below * 2 >= total).then_some((*low, *high))
        })
        .expect("a median bucket");
    // The last values Prometheus scraped: the maps bpftrace printed as it ended.
    let median = prom
        .one(&format!(
            "histogram_quantile(0.5, last_over_time(bpftrace_usecs_seconds_bucket{{{sel}}}[10m]))"
        ))
        .expect("the last median");
    let median_us = median * 1e6;
    assert!(
        median_us > low as f64 - 1e-6 && high.is_none_or(|h| median_us <= h as f64 + 1e-6),
        "histogram_quantile(0.5) = {median_us} us, bpftrace's median bucket [{low}, {high:?}): {usecs:?}"
    );
}

fn fanout_sum_by_le(env: &Env) {
    let ns = env.namespace("metrics-fan");
    let k = &env.kubectl;
    let (_, agents) = pool(env, &ns, 3);
    let _summarizer = Summarizer::of(env, &ns);
    let ports: Vec<u16> = agents.iter().map(|a| a.metrics_port).collect();
    let prom = Prometheus::start(&ports);
    let tmp = must(tempfile::tempdir(), "tempdir");
    let dd = named_dd(tmp.path(), "tjfanoutdd");
    let job = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "wide"},
        "spec": {
            "nodeSelector": {"matchLabels": {"pool": ns}}, "deadlineGracePeriod": 300,
            "program": "tracepoint:syscalls:sys_enter_write /comm == \"tjfanoutdd\"/ { @bytes = hist(args->count); }",
            "metrics": {"intervalSeconds": 1}
        }
    });
    k.apply(&ns, &job.to_string());
    wait_for(Duration::from_secs(120), "Running on three nodes", || {
        (k.jsonpath(&ns, "tj/wide", ".status.phase} {.status.progress") == "Running 0/3")
            .then_some(())
    });
    for (bs, count) in [("1", "10"), ("100", "20"), ("5000", "30")] {
        run_dd(
            &dd,
            &[
                "if=/dev/zero",
                "of=/dev/null",
                &format!("bs={bs}"),
                &format!("count={count}"),
            ],
        );
    }
    let sel = format!("tracejob_namespace=\"{ns}\",tracejob=\"wide\"");
    settled(
        "the three nodes' counts in Prometheus",
        Duration::from_secs(3),
        || {
            let r = prom.query(&format!("bpftrace_bytes_count{{{sel}}}"));
            (r.len() == 3 && r.iter().all(|(_, v)| *v >= 60.0))
                .then(|| r.iter().map(|(_, v)| v).sum())
        },
    );
    let summed = prom.query(&format!("sum by (le) (bpftrace_bytes_bucket{{{sel}}})"));
    stop(k, &ns, "wide");
    wait_for(Duration::from_secs(120), "the merged output", || {
        (k.jsonpath(&ns, "tj/wide", ".status.phase} {.status.mergedNodes") == "Completed 3")
            .then_some(())
    });
    let merged = buckets(&entries(&maps_json(k, &ns, "wide"), "@bytes")[0]);
    let total: u64 = merged.iter().map(|b| b.2).sum();
    let mut want: Vec<(String, u64)> = Vec::new();
    for (_, high, _) in &merged {
        if let Some(h) = high {
            let below = merged
                .iter()
                .filter(|b| b.1.is_some_and(|x| x <= *h))
                .map(|b| b.2)
                .sum();
            want.push((h.to_string(), below));
        }
    }
    want.push(("+Inf".into(), total));
    // Prometheus 3 writes `le` as a float (`2.0`): compared as numbers.
    let le = |s: &str| s.parse::<f64>().unwrap_or(f64::INFINITY).to_string();
    for w in want.iter_mut() {
        w.0 = le(&w.0);
    }
    let mut got: Vec<(String, u64)> = summed
        .iter()
        .map(|(m, v)| (le(m["le"].as_str().unwrap_or("?")), *v as u64))
        .collect();
    // Bounds the merged histogram has; Prometheus may hold more below (bounds seen earlier),
    // which must then hold nothing more than the bound below them.
    got.retain(|(le, _)| want.iter().any(|(w, _)| w == le));
    let order = |v: &mut Vec<(String, u64)>| {
        v.sort_by(|a, b| {
            let f = |s: &str| s.parse::<f64>().unwrap_or(f64::INFINITY);
            f(&a.0).total_cmp(&f(&b.0))
        })
    };
    order(&mut got);
    order(&mut want);
    assert_eq!(
        got, want,
        "sum by (le) in Prometheus against the merged ConfigMap's histogram {merged:?}"
    );
    assert!(
        total >= 180,
        "three nodes saw dd's 60 writes each: {merged:?}"
    );
}

fn capped(env: &Env) {
    let ns = env.namespace("metrics-cap");
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &[],
        &[("BPFTRACE_MAP_KEYS_MAX", "200000")],
    );
    let k = &env.kubectl;
    // 100,000 keys standing for PIDs, filled in by the machine's syscalls (the increments race
    // across CPUs, so some numbers are skipped the first time round, none for long).
    let program = "tracepoint:raw_syscalls:sys_enter { @pid[@n % 100000] = count(); @n = @n + 1; }";
    let job = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "many"},
        "spec": {
            "nodeName": agent.node, "program": program, "deadlineGracePeriod": 300,
            "metrics": {"maps": ["@pid"], "intervalSeconds": 2, "labels": ["pid"]}
        }
    });
    let pid = agent.proc.as_ref().expect("agent").pid();
    let rss = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .expect("the agent's VmRSS")
    };
    let rss0 = rss();
    let mut peak = rss0;
    k.apply(&ns, &job.to_string());
    wait_phase(k, &ns, "many", "Running", Duration::from_secs(60));
    let endpoint = format!("http://127.0.0.1:{}/metrics", agent.metrics_port);
    let sel = format!(
        "tracejob_namespace=\"{ns}\",tracejob=\"many\",node=\"{}\"",
        agent.node
    );
    // Wait for a read with every key: dropped + exported = 100,000.
    let mut text = String::new();
    wait_for(
        Duration::from_secs(300),
        "a read of the 100,000 keys",
        || {
            peak = peak.max(rss());
            std::thread::sleep(Duration::from_millis(200));
            text = curl(&[&endpoint]);
            let dropped = sample(
                &text,
                &format!("tracejob_trace_metrics_dropped_series{{{sel}}}"),
            )?;
            let series = sample(&text, &format!("tracejob_trace_metrics_series{{{sel}}}"))?;
            (dropped + series == 100_000.0).then_some(())
        },
    );
    let exported = text
        .lines()
        .filter(|l| l.starts_with("bpftrace_pid_total{"))
        .count();
    assert_eq!(exported, 1000, "the default cap");
    assert_eq!(
        sample(
            &text,
            &format!("tracejob_trace_metrics_dropped_series{{{sel}}}")
        ),
        Some(99_000.0)
    );
    let condition = wait_for(
        Duration::from_secs(60),
        "the MetricsCapped condition",
        || {
            let c = k.jsonpath(
            &ns,
            "tj/many",
            ".status.conditions[?(@.type==\"MetricsCapped\")].status} {.status.conditions[?(@.type==\"MetricsCapped\")].message",
        );
            c.starts_with("True ").then_some(c)
        },
    );
    // Said when the cap was first reached (the map was still filling then).
    assert!(
        condition.contains("(1000): 1000 exported (the largest), ")
            && condition.contains(" dropped"),
        "{condition}"
    );
    // Reads go on; memory stays bounded through several.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        peak = peak.max(rss());
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "agent RSS: {} KiB at start, peak {peak} KiB while running",
        rss0
    );
    stop(k, &ns, "many");
    wait_phase(k, &ns, "many", "Completed", Duration::from_secs(120));
    peak = peak.max(rss());
    assert!(peak < 100 * 1024, "the agent's RSS peaked at {peak} KiB");
}

/// A sample's value in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}
