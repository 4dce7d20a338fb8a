//! User space inside a pod's container: uprobes, uretprobes and USDT probes on the container's
//! own binary through `$container_root`, its user stacks named, the samples, and a restart of the
//! container ending the trace with `TargetRestarted`. The container is the harness's own
//! (tests/userspace/contain.c: a cgroup, a mount namespace and a root of its own, as runc makes
//! them), running tests/userspace/app.c; the pod is an object whose status says it runs, as the
//! kubelet would write it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::outputs::output;
use crate::support::pods::patch_status;
use crate::support::tracejobs::{sample_yaml, stop};
use crate::support::wait::wait_phase;
use crate::support::{must, repo_root, wait_for, Agent, Env, Kubectl, Proc, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "userspace_plugin_run_pod_uprobe_usdt_ustack_in_the_container",
            run: through_the_plugin,
        },
        Test {
            name: "userspace_release_0_23_uprobe_usdt_ustack_in_the_container",
            run: |env| on_release(env, "0.23", "trixie"),
        },
        Test {
            name: "userspace_release_0_27_uprobe_usdt_ustack_in_the_container",
            run: |env| on_release(env, "0.27", "sid"),
        },
        Test {
            name: "userspace_target_restarted_keeps_the_maps_so_far",
            run: restarted,
        },
        Test {
            name: "userspace_samples_podfunclatency_and_podprofile",
            run: samples,
        },
    ]
}

/// How long each call of app's work() sleeps (WORK_MS in app.c), in microseconds.
const WORK_US: i64 = 18_000;

/// app and contain, built with gcc into `dir`.
struct Built {
    dir: PathBuf,
    app: PathBuf,
    contain: PathBuf,
}

impl Built {
    fn new(ns: &str) -> Built {
        let dir = std::env::temp_dir().join(format!("tracejob-e2e-{ns}"));
        let _ = std::fs::remove_dir_all(&dir);
        must(std::fs::create_dir_all(&dir), "mkdir the test's directory");
        let src = repo_root().join("tests/userspace");
        let app = dir.join("app");
        let contain = dir.join("contain");
        for (out, args) in [
            (
                &app,
                vec!["-O2", "-fno-omit-frame-pointer", "-static", "app.c"],
            ),
            (&contain, vec!["-O2", "contain.c"]),
        ] {
            let built = must(
                Command::new("gcc")
                    .current_dir(&src)
                    .args(&args)
                    .arg("-o")
                    .arg(out)
                    .output(),
                "run gcc (and systemtap-sdt-dev's sys/sdt.h)",
            );
            assert!(
                built.status.success(),
                "gcc {args:?}: {}",
                String::from_utf8_lossy(&built.stderr)
            );
        }
        Built { dir, app, contain }
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The path of the app inside the container, and on the node for the copy that must not count.
fn app_path(ns: &str) -> String {
    format!("/opt/tracejob-e2e-{ns}/app")
}

/// app running in a container of its own: a cgroup named by its ID (as a runtime names it), a
/// mount namespace and a root directory holding only the app. Killed (and gone) when dropped.
struct Container {
    id: String,
    cgroup: PathBuf,
    root: PathBuf,
    out: PathBuf,
    contain: Option<Proc>,
}

impl Container {
    fn start(built: &Built, seed: &str, path: &str) -> Container {
        let mut id = String::new();
        for i in 0..4u64 {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (seed, std::process::id(), i).hash(&mut h);
            id.push_str(&format!("{:016x}", h.finish()));
        }
        let v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && !p.join("tasks").exists())
            .expect("a cgroup v2 hierarchy (pure or hybrid)");
        let cgroup = v2.join(format!("tracejob-e2e-{id}"));
        must(
            std::fs::create_dir_all(&cgroup),
            "mkdir the container's cgroup",
        );
        let root = built.dir.join(format!("root-{}", &id[..12]));
        let inside = root.join(path.trim_start_matches('/'));
        must(
            std::fs::create_dir_all(inside.parent().expect("a directory")),
            "mkdir in the root",
        );
        must(std::fs::create_dir_all(root.join("tmp")), "mkdir /tmp");
        must(
            std::fs::copy(&built.app, &inside),
            "copy the app into the root",
        );
        let out = built.dir.join(format!("out-{}", &id[..12]));
        let stdout = must(std::fs::File::create(&out), "the container's stdout");
        let contain = Proc::spawn(
            "container",
            Command::new(&built.contain)
                .arg(&cgroup)
                .arg(&root)
                .arg(path)
                .arg("/tmp/cmd")
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(Stdio::inherit()),
        );
        let c = Container {
            id,
            cgroup,
            root,
            out,
            contain: Some(contain),
        };
        wait_for(
            Duration::from_secs(30),
            "the container's app to start",
            || c.said().contains("ready").then_some(()),
        );
        c
    }

    fn said(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Has the app call work() `n` times; returns its total of calls, as it reports it.
    fn call(&self, n: u32) -> u64 {
        let before = self.said().matches("done ").count();
        must(
            std::fs::write(self.root.join("tmp/cmd"), format!("{n}\n")),
            "write to the app's FIFO",
        );
        wait_for(Duration::from_secs(60), "the app's calls", || {
            let said = self.said();
            (said.matches("done ").count() > before).then(|| {
                said.lines()
                    .filter_map(|l| l.strip_prefix("done "))
                    .next_back()
                    .and_then(|n| n.trim().parse().ok())
                    .expect("a count")
            })
        })
    }

    /// Has the app burn the CPU in spin() for `ms` milliseconds.
    fn spin(&self, ms: u32) {
        let before = self.said().matches("spun").count();
        must(
            std::fs::write(self.root.join("tmp/cmd"), format!("s{ms}\n")),
            "write to the app's FIFO",
        );
        wait_for(Duration::from_secs(120), "the app's spin", || {
            (self.said().matches("spun").count() > before).then_some(())
        });
    }

    /// Ends every process of the container.
    fn kill(&mut self) {
        for _ in 0..50 {
            let procs =
                std::fs::read_to_string(self.cgroup.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                break;
            }
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(mut p) = self.contain.take() {
            p.wait_exit(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Pod `web` with container `app` on `node`, running as container `id` (`restarts` times
/// restarted), as the kubelet would report it.
fn pod_runs(k: &Kubectl, ns: &str, node: &str, id: &str, restarts: u32) {
    if restarts == 0 {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "localhost/none:1"}]},
        });
        k.apply(ns, &pod.to_string());
    }
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": "app", "ready": true, "restartCount": restarts,
            "image": "localhost/none:1", "imageID": "",
            "containerID": format!("containerd://{id}"),
            "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
        }],
    }});
    patch_status(k, ns, "web", &status);
}

/// Container `id` of pod web exited (killed), as the kubelet reports it before starting it again.
fn pod_exited(k: &Kubectl, ns: &str, id: &str) {
    let status = serde_json::json!({"status": {
        "containerStatuses": [{
            "name": "app", "ready": false, "restartCount": 0,
            "image": "localhost/none:1", "imageID": "",
            "containerID": format!("containerd://{id}"),
            "state": {"terminated": {"exitCode": 137, "reason": "Error",
                "startedAt": "2025-01-01T00:00:00Z", "finishedAt": "2025-01-01T00:01:00Z"}},
        }],
    }});
    patch_status(k, ns, "web", &status);
}

/// The app at the same path on the node, outside the container: `n` calls, which no probe on
/// the container's file may count. Removed after.
fn calls_on_the_node(built: &Built, path: &str, n: u32) {
    let dir = Path::new(path).parent().expect("a directory");
    must(std::fs::create_dir_all(dir), "mkdir on the node");
    must(std::fs::copy(&built.app, path), "copy the app to the node");
    let out = must(
        Command::new(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(format!("{n}\n").as_bytes())?;
                c.wait_with_output()
            }),
        "run the app on the node",
    );
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("done {n}")),
        "the node's copy did not make its calls"
    );
}

/// Every probe on the container's app: calls, stacks, latency, both USDT probes.
fn program(path: &str) -> String {
    format!(
        "uprobe:$container_root{path}:work {{ @calls = count(); @stacks[ustack] = count(); @start[tid] = nsecs; }}\n\
         uretprobe:$container_root{path}:work /@start[tid]/ {{ @usecs = hist((nsecs - @start[tid]) / 1000); delete(@start[tid]); }}\n\
         usdt:$container_root{path}:tracejob:work {{ @arg[arg0] = count(); }}\n\
         usdt:$container_root{path}:tracejob:guarded {{ @guarded[arg0] = count(); }}\n\
         END {{ clear(@start); }}\n"
    )
}

/// Map `name` of maps.json.
fn map<'a>(maps: &'a Value, name: &str) -> &'a Vec<Value> {
    maps["maps"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == name))
        .and_then(|m| m["entries"].as_array())
        .unwrap_or_else(|| panic!("no map {name} in {maps}"))
}

/// The output of TraceJob `name`: the probes saw exactly the container's `calls`, the latency in
/// the bucket of work()'s sleep, each USDT probe with its argument, stacks named.
fn saw_exactly(k: &Kubectl, ns: &str, name: &str, calls: u64) -> String {
    let text = output(k, ns, name, "output");
    let maps: Value = must(
        serde_json::from_str(&output(k, ns, name, "maps.json")),
        "maps.json",
    );
    assert_eq!(
        map(&maps, "@calls")[0]["value"].as_u64(),
        Some(calls),
        "uprobe calls:\n{text}"
    );
    for usdt in ["@arg", "@guarded"] {
        let mut args: Vec<u64> = map(&maps, usdt)
            .iter()
            .map(|e| {
                assert_eq!(e["value"].as_u64(), Some(1), "{usdt}: {e}");
                e["key"]
                    .as_str()
                    .and_then(|k| k.parse().ok())
                    .expect("a number")
            })
            .collect();
        args.sort();
        assert_eq!(args, (1..=calls).collect::<Vec<_>>(), "{usdt}:\n{text}");
    }
    let buckets = map(&maps, "@usecs")[0]["hist"]
        .as_array()
        .cloned()
        .expect("a histogram");
    let counted: Vec<(i64, u64)> = buckets
        .iter()
        .filter(|b| b["count"].as_u64() > Some(0))
        .map(|b| {
            (
                b["low"].as_i64().unwrap_or(0),
                b["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        counted.iter().map(|c| c.1).sum::<u64>(),
        calls,
        "uretprobe:\n{text}"
    );
    // The sleep is a lower bound (a loaded machine only lengthens it): no call below its bucket,
    // and most in it.
    assert!(
        counted.iter().all(|c| c.0 >= 16_384),
        "a call shorter than {WORK_US} us:\n{text}"
    );
    let most = counted.iter().max_by_key(|c| c.1).expect("a bucket");
    assert_eq!(most.0, 16_384, "work() sleeps {WORK_US} us:\n{text}");
    let stacks = map(&maps, "@stacks");
    for e in stacks {
        let key = e["key"].as_str().unwrap_or_default();
        let frames: Vec<&str> = key.lines().collect();
        assert!(
            frames.first().is_some_and(|f| f.starts_with("work+0"))
                && frames.iter().any(|f| f.starts_with("serve+"))
                && frames.iter().any(|f| f.starts_with("main+")),
            "an unnamed stack:\n{text}"
        );
    }
    text
}

/// Starts the container and its pod, for an agent on `node`.
fn container_and_pod(env: &Env, ns: &str, built: &Built, node: &str) -> Container {
    let c = Container::start(built, ns, &app_path(ns));
    pod_runs(&env.kubectl, ns, node, &c.id, 0);
    c
}

fn through_the_plugin(env: &Env) {
    let ns = env.namespace("userspace-plugin");
    let built = Built::new(&ns);
    let agent = Agent::start(env, &format!("{ns}-node"));
    let container = container_and_pod(env, &ns, &built, &agent.node);
    let path = app_path(&ns);
    // As a user types it: the program single-quoted, so the shell leaves $container_root be.
    let line = format!(
        "exec kubectl tracejob -n {ns} run pod/web --name ut --grace 5m -e '{}'",
        program(&path).replace('\n', " ")
    );
    let child = must(
        Command::new("sh")
            .args(["-c", &line])
            .env("KUBECONFIG", &env.kubectl.kubeconfig)
            .env(
                "PATH",
                format!(
                    "{}:{}:{}",
                    crate::plugin::plugin_dir().display(),
                    env.kubectl
                        .path
                        .parent()
                        .expect("kubectl's directory")
                        .display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn(),
        "spawn kubectl tracejob",
    );
    crate::plugin::wait_created(env, &ns, "ut", "Running");
    let spec = env.kubectl.jsonpath(&ns, "tj/ut", ".spec.program");
    assert!(spec.contains("uprobe:$container_root/opt/"), "{spec}");
    let calls = container.call(5);
    calls_on_the_node(&built, &path, 3);
    crate::plugin::interrupt(&child);
    let (code, out, err) = crate::plugin::finish(child);
    assert_eq!(code, Some(0), "exit code; stderr:\n{err}");
    assert!(out.contains(&format!("@calls: {calls}")), "{out}");
    assert_eq!(calls, 5);
    wait_phase(
        &env.kubectl,
        &ns,
        "ut",
        "Completed",
        Duration::from_secs(60),
    );
    saw_exactly(&env.kubectl, &ns, "ut", calls);
    // The program as it ran: the container's root through its main process.
    let ran = output(&env.kubectl, &ns, "ut", "program");
    assert!(
        ran.contains("uprobe:/proc/") && ran.contains(&format!("/root{path}:work")),
        "{ran}"
    );
    assert!(!ran.contains("$container_root"), "{ran}");
}

fn on_release(env: &Env, release: &str, suite: &str) {
    let bpftrace = crate::releases::bpftrace_of(suite);
    let ns = env.namespace(&format!("userspace-{}", release.replace('.', "-")));
    let built = Built::new(&ns);
    let flag = bpftrace.to_string_lossy().to_string();
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--bpftrace", &flag],
        &[],
    );
    let container = container_and_pod(env, &ns, &built, &agent.node);
    let k = &env.kubectl;
    k.apply(&ns, &tracejob(&program(&app_path(&ns))));
    wait_phase(k, &ns, "ut", "Running", Duration::from_secs(60));
    let calls = container.call(4);
    calls_on_the_node(&built, &app_path(&ns), 2);
    stop(k, &ns, "ut");
    wait_phase(k, &ns, "ut", "Completed", Duration::from_secs(60));
    saw_exactly(k, &ns, "ut", calls);
}

/// TraceJob `ut` on pod web.
fn tracejob(program: &str) -> String {
    serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "ut"},
        "spec": {"target": {"pod": "web"}, "program": program, "deadlineGracePeriod": 300},
    })
    .to_string()
}

fn restarted(env: &Env) {
    let ns = env.namespace("userspace-restart");
    let built = Built::new(&ns);
    let agent = Agent::start(env, &format!("{ns}-node"));
    let mut first = container_and_pod(env, &ns, &built, &agent.node);
    let k = &env.kubectl;
    let path = app_path(&ns);
    k.apply(
        &ns,
        &tracejob(&format!(
            "uprobe:$container_root{path}:work {{ @calls = count(); @stacks[ustack] = count(); }}"
        )),
    );
    wait_phase(k, &ns, "ut", "Running", Duration::from_secs(60));
    let calls = first.call(3);
    // The container restarts: its process ends (the kubelet says so), a new one runs in a new
    // root.
    first.kill();
    pod_exited(k, &ns, &first.id);
    let second = Container::start(&built, &format!("{ns}-again"), &path);
    pod_runs(k, &ns, &agent.node, &second.id, 1);
    wait_phase(k, &ns, "ut", "Completed", Duration::from_secs(60));
    let reason = k.jsonpath(
        &ns,
        "tj/ut",
        ".status.conditions[?(@.type==\"Completed\")].reason",
    );
    let message = k.jsonpath(&ns, "tj/ut", ".status.message");
    assert_eq!(reason, "TargetRestarted", "{message}");
    assert!(
        message.contains("container app of pod web") && message.contains("restart"),
        "{message}"
    );
    // The maps so far.
    let text = output(k, &ns, "ut", "output");
    assert!(text.contains(&format!("@calls: {calls}")), "{text}");
    // Its process gone before bpftrace printed, the stack could not be named: the output says so.
    let stored = k.jsonpath(
        &ns,
        "tj/ut",
        ".status.conditions[?(@.type==\"OutputStored\")].message",
    );
    assert!(
        text.contains("0x") && stored.contains("could not be symbolized"),
        "stored: {stored}\n{text}"
    );
    drop(second);
}

fn samples(env: &Env) {
    let ns = env.namespace("userspace-samples");
    let built = Built::new(&ns);
    let agent = Agent::start(env, &format!("{ns}-node"));
    let container = container_and_pod(env, &ns, &built, &agent.node);
    let k = &env.kubectl;
    let path = app_path(&ns);
    for name in ["podfunclatency", "podprofile"] {
        let yaml = sample_yaml(name, &agent.node)
            .replace("pod: my-pod", "pod: web")
            .replace("/usr/local/bin/app:handle_request", &format!("{path}:work"));
        k.apply(&ns, &yaml);
    }
    for name in ["podfunclatency", "podprofile"] {
        wait_phase(k, &ns, name, "Running", Duration::from_secs(60));
    }
    let calls = container.call(3);
    container.spin(3000);
    // The node's copy, outside the container's cgroup (and its file), is not counted.
    calls_on_the_node(&built, &path, 2);
    for name in ["podfunclatency", "podprofile"] {
        stop(k, &ns, name);
    }
    for name in ["podfunclatency", "podprofile"] {
        wait_phase(k, &ns, name, "Completed", Duration::from_secs(60));
    }
    let maps: Value = must(
        serde_json::from_str(&output(k, &ns, "podfunclatency", "maps.json")),
        "maps.json",
    );
    let hist = map(&maps, "@usecs")[0]["hist"]
        .as_array()
        .cloned()
        .expect("hist");
    let total: u64 = hist.iter().filter_map(|b| b["count"].as_u64()).sum();
    assert_eq!(total, calls, "{maps}");
    let profile = output(k, &ns, "podprofile", "output");
    assert!(
        profile.contains("spin+") && profile.contains("@user["),
        "no sample in spin():\n{profile}"
    );
}
