//! Flame graphs: `kubectl tracejob output NAME --flamegraph` of a `profile` trace's kernel stacks
//! (one node, and a fan-out's nodes added), checked frame by frame against what bpftrace printed
//! and loaded in headless chromium.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::tracejobs::stop;
use crate::support::wait::wait_phase;
use crate::support::{must, pool, wait_for, Agent, Env, Summarizer, Test};
use crate::trace_metrics::{entries, maps_json};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "flamegraph_profile_draws_the_kernel_stacks_bpftrace_printed",
            run: flamegraph_profile,
        },
        Test {
            name: "flamegraph_fanout_adds_the_nodes_stacks",
            run: flamegraph_fanout,
        },
    ]
}

use crate::support::plugin_stdout as plugin;

/// Keeps a CPU busy in the kernel (reads of /dev/zero) until dropped, so there are stacks.
struct Busy(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Option<std::thread::JoinHandle<()>>,
);

impl Busy {
    fn start() -> Busy {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            use std::io::Read;
            let mut f = must(std::fs::File::open("/dev/zero"), "/dev/zero");
            let mut buf = vec![0u8; 1 << 16];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = f.read(&mut buf);
            }
        });
        Busy(stop, Some(t))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

/// The frames a flame graph must have, from maps.json's `@` map(s): each path from the root
/// (outermost call first, offsets cut) with the samples through it, as (function, samples).
fn expected_frames(
    all: &[serde_json::Value],
) -> (u64, std::collections::HashMap<Vec<String>, u64>) {
    let mut paths = std::collections::HashMap::new();
    let mut total = 0;
    for maps in all {
        for e in entries(maps, "@") {
            let key = e["key"].as_str().expect("a stack key");
            let n = e["value"].as_u64().expect("a count");
            total += n;
            let mut frames: Vec<String> = key
                .lines()
                .map(|l| {
                    let l = l.trim();
                    l.rsplit_once('+').map_or(l, |(f, _)| f).to_string()
                })
                .collect();
            frames.reverse();
            if frames.is_empty() {
                // Sampled in user mode: no kernel stack.
                frames.push("[no stack]".into());
            }
            for depth in 1..=frames.len() {
                *paths.entry(frames[..depth].to_vec()).or_insert(0) += n;
            }
        }
    }
    (total, paths)
}

/// The frames of an SVG flame graph: (function, samples) of each titled frame, `all` apart.
fn svg_frames(svg: &[u8]) -> (u64, Vec<(String, u64)>) {
    let mut reader = quick_xml::Reader::from_reader(svg);
    let (mut in_title, mut titles, mut buf) = (false, Vec::new(), Vec::new());
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(quick_xml::events::Event::Start(e)) if e.name().as_ref() == b"title" => {
                in_title = true
            }
            Ok(quick_xml::events::Event::End(e)) if e.name().as_ref() == b"title" => {
                in_title = false
            }
            Ok(quick_xml::events::Event::Text(t)) if in_title => {
                titles.push(String::from_utf8_lossy(&t.into_inner()).into_owned())
            }
            Ok(quick_xml::events::Event::Eof) => break,
            Err(e) => panic!("the SVG is not XML: {e}"),
            _ => {}
        }
        buf.clear();
    }
    let mut all = 0;
    let mut frames = Vec::new();
    for t in titles {
        // `vfs_read (1,234 samples, 5.67%)`
        let Some((name, rest)) = t.rsplit_once(" (") else {
            continue;
        };
        let Some(n) = rest.split(' ').next() else {
            continue;
        };
        let Ok(n) = n.replace(',', "").parse::<u64>() else {
            continue;
        };
        if name == "all" {
            all = n;
        } else {
            frames.push((name.to_string(), n));
        }
    }
    (all, frames)
}

/// Checks a flame graph against the stacks bpftrace printed, then loads it in a browser.
fn check_flame_graph(svg: &[u8], all: &[serde_json::Value]) {
    let (total, paths) = expected_frames(all);
    assert!(total > 0, "no stacks sampled");
    let (drawn_total, drawn) = svg_frames(svg);
    assert_eq!(
        drawn_total, total,
        "the flame graph's samples are the map's"
    );
    assert!(!drawn.is_empty(), "no frames drawn");
    let mut wanted: Vec<(String, u64)> = paths
        .iter()
        .map(|(p, n)| (p.last().cloned().unwrap_or_default(), *n))
        .collect();
    for f in &drawn {
        let i = wanted
            .iter()
            .position(|w| w == f)
            .unwrap_or_else(|| panic!("frame {f:?} is not a stack bpftrace printed"));
        wanted.swap_remove(i);
    }
    // Frames too narrow to draw are left out; every frame of at least 1 % is there.
    let wide: Vec<_> = wanted.iter().filter(|(_, n)| n * 100 >= total).collect();
    assert!(wide.is_empty(), "frames of the stacks not drawn: {wide:?}");
    in_browser(svg, &drawn);
}

/// Debian's chromium, headless, loads the SVG and its frames are in the page's DOM.
fn in_browser(svg: &[u8], frames: &[(String, u64)]) {
    // A missing browser fails the test: tests/setup.sh installs it.
    let chromium =
        which("chromium").expect("chromium is not installed (tests/setup.sh installs it)");
    let dir = must(tempfile::tempdir(), "tempdir");
    let file = dir.path().join("flame.svg");
    must(std::fs::write(&file, svg), "write the svg");
    let out = must(
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg("--dump-dom")
            .arg(format!("file://{}", file.display()))
            .output(),
        "run chromium",
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<svg"),
        "chromium loaded no SVG ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let widest = frames.iter().max_by_key(|f| f.1).expect("a frame");
    for (name, _) in [widest, &frames[0]] {
        assert!(
            dom.contains(&format!("<title>{name} (")),
            "{name} is not in the page's DOM"
        );
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

fn flamegraph_profile(env: &Env) {
    let ns = env.namespace("flame");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    k.apply(
        &ns,
        &crate::support::tracejobs::sample_yaml("profile", &agent.node),
    );
    wait_phase(k, &ns, "profile", "Running", Duration::from_secs(60));
    {
        let _busy = Busy::start();
        std::thread::sleep(Duration::from_secs(3));
    }
    stop(k, &ns, "profile");
    wait_phase(k, &ns, "profile", "Completed", Duration::from_secs(60));
    let svg = plugin(env, &ns, &["output", "profile", "--flamegraph"]);
    check_flame_graph(&svg, &[maps_json(k, &ns, "profile")]);
}

fn flamegraph_fanout(env: &Env) {
    let ns = env.namespace("flame-fan");
    let k = &env.kubectl;
    let (_, _agents) = pool(env, &ns, 2);
    let _summarizer = Summarizer::of(env, &ns);
    let job = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "wide"},
        "spec": {
            "nodeSelector": {"matchLabels": {"pool": ns}}, "deadlineGracePeriod": 300,
            "program": "profile:hz:99 { @[kstack] = count(); }"
        }
    });
    k.apply(&ns, &job.to_string());
    wait_for(Duration::from_secs(120), "Running on two nodes", || {
        (k.jsonpath(&ns, "tj/wide", ".status.phase} {.status.progress") == "Running 0/2")
            .then_some(())
    });
    {
        let _busy = Busy::start();
        std::thread::sleep(Duration::from_secs(3));
    }
    stop(k, &ns, "wide");
    wait_for(Duration::from_secs(120), "both nodes done", || {
        (k.jsonpath(&ns, "tj/wide", ".status.phase} {.status.progress") == "Completed 2/2")
            .then_some(())
    });
    // Each node's own output, as stored: the flame graph adds them up.
    let list = k.ok(&[
        "get",
        "configmap",
        "-n",
        &ns,
        "-l",
        "observe.tracejob.dev/tracejob=wide,observe.tracejob.dev/node",
        "-o",
        "json",
    ]);
    let list: serde_json::Value = must(serde_json::from_str(&list), "ConfigMap list");
    let nodes: Vec<serde_json::Value> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|cm| {
            must(
                serde_json::from_str(cm["data"]["maps.json"].as_str().expect("maps.json")),
                "maps.json",
            )
        })
        .collect();
    assert_eq!(nodes.len(), 2, "each node's output");
    let svg = plugin(env, &ns, &["output", "wide", "--flamegraph"]);
    check_flame_graph(&svg, &nodes);
}
