//! The commands of the README and docs/, run as the pages show them (read from the pages at
//! test time: support/docs.rs), against the test API server, agents and real bpftrace, each in
//! a namespace of its own; only the documented placeholders are substituted. Each test then
//! checks what the page promises.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::control_plane::free_port;
use crate::support::docs::{self, bash, substitute};
use crate::support::host::disk_io;
use crate::support::pods::{report_running, FakeContainer};
use crate::support::{must, pool, repo_root, wait_for, Agent, Env, Proc, Summarizer, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "docs_quick_start_with_the_plugin",
            run: quick_start_with_the_plugin,
        },
        Test {
            name: "docs_quick_start_with_plain_kubectl",
            run: quick_start_with_plain_kubectl,
        },
        Test {
            name: "docs_trigger_quick_start",
            run: trigger_quick_start,
        },
        Test {
            name: "docs_fan_out_commands",
            run: fan_out_commands,
        },
    ]
}

/// A reader's shell: a working directory with the repository's samples (their `my-node` set to
/// the test's node, as the quick start tells the reader to), a kubeconfig whose context is the
/// test's namespace, and kubectl and the plugin on PATH.
struct Reader {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    path: String,
}

impl Reader {
    fn new(env: &Env, ns: &str, node: &str) -> Reader {
        let dir = must(
            tempfile::Builder::new().prefix("tracejob-docs-").tempdir(),
            "tempdir",
        );
        let samples = dir.path().join("bpf-samples");
        must(std::fs::create_dir(&samples), "mkdir bpf-samples");
        for e in must(
            std::fs::read_dir(repo_root().join("bpf-samples")),
            "bpf-samples",
        )
        .flatten()
        {
            let text = must(std::fs::read_to_string(e.path()), "a sample");
            must(
                std::fs::write(samples.join(e.file_name()), text.replace("my-node", node)),
                "copy a sample",
            );
        }
        let kubeconfig = dir.path().join("kubeconfig");
        must(
            std::fs::copy(&env.cp.kubeconfig, &kubeconfig),
            "copy kubeconfig",
        );
        env.kubectl.with_kubeconfig(&kubeconfig).ok(&[
            "config",
            "set-context",
            "--current",
            &format!("--namespace={ns}"),
        ]);
        let bin_dir = |p: &std::path::Path| p.parent().expect("a directory").display().to_string();
        let path = format!(
            "{}:{}:{}",
            bin_dir(std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-tracejob"))),
            bin_dir(&env.kubectl.path),
            std::env::var("PATH").unwrap_or_default()
        );
        Reader {
            dir,
            kubeconfig,
            path,
        }
    }

    /// The block as a reader runs it, in a process group of its own (for Ctrl-C).
    fn command(&self, script: &str) -> Command {
        let mut cmd = bash(script);
        cmd.current_dir(self.dir.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", &self.path)
            .stdin(Stdio::null())
            .process_group(0);
        cmd
    }

    /// Runs a block to its end: its stdout; a failing command fails the test.
    fn run(&self, script: &str) -> String {
        let out = must(self.command(script).output(), "run a block");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the block failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs a block that traces until Ctrl-C: once `running` holds, SIGINT to its process group,
    /// as a terminal sends it; then its stdout. Disk I/O meanwhile, for biolatency's histogram.
    fn run_until_ctrl_c(&self, script: &str, running: impl Fn() -> bool) -> String {
        let out_file = self.dir.path().join("stdout");
        let err_file = self.dir.path().join("stderr");
        let mut cmd = self.command(script);
        cmd.stdout(must(std::fs::File::create(&out_file), "stdout file"))
            .stderr(must(std::fs::File::create(&err_file), "stderr file"));
        let mut proc = Proc::spawn("a docs block", &mut cmd);
        let read = |f: &std::path::Path| std::fs::read_to_string(f).unwrap_or_default();
        wait_for(Duration::from_secs(90), "the block's trace to run", || {
            if let Ok(Some(st)) = proc.child.try_wait() {
                panic!(
                    "the block ended ({st}) before its trace ran:\n{}",
                    read(&err_file)
                );
            }
            running().then_some(())
        });
        let io = IoLoop::start();
        std::thread::sleep(Duration::from_secs(2));
        let pgid = nix::unistd::Pid::from_raw(proc.pid());
        must(
            nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT),
            "Ctrl-C",
        );
        let status = proc.wait_exit(Duration::from_secs(180));
        drop(io);
        assert!(
            matches!(status, Some(s) if s.success()),
            "the block did not end well after Ctrl-C ({status:?}):\n{script}\nstdout:\n{}\nstderr:\n{}",
            read(&out_file),
            read(&err_file)
        );
        read(&out_file)
    }
}

/// Disk I/O in a thread until dropped.
struct IoLoop {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IoLoop {
    fn start() -> IoLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                disk_io();
            }
        });
        IoLoop {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for IoLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The names of the namespace's TraceJobs in `phase`.
fn in_phase(env: &Env, ns: &str, phase: &str) -> Vec<String> {
    let out = env.kubectl.ok(&[
        "get",
        "tj",
        "-n",
        ns,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.phase}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, p)| *p == phase)
        .map(|(n, _)| n.to_string())
        .collect()
}

/// The quick start with the plugin: the namespace annotated as shown, then a node, a pod's
/// container and every node of a pool traced until Ctrl-C, each printing its output.
fn quick_start_with_the_plugin(env: &Env) {
    let mut blocks = docs::blocks("docs_quick_start_with_the_plugin");
    let ns = env.namespace("docs-plugin");
    let k = &env.kubectl;
    // Unannotated, as a fresh namespace is: the block annotates it.
    k.ok(&[
        "annotate",
        "namespace",
        &ns,
        "observe.tracejob.dev/node-selector-",
    ]);
    let (nodes, _agents) = pool(env, &ns, 2);
    let _summarizer = Summarizer::of(env, &ns);
    let reader = Reader::new(env, &ns, &nodes[0]);

    let annotate = blocks.take("README.md", "kubectl annotate namespace default");
    reader.run(&substitute(
        &annotate,
        &[("namespace default", &format!("namespace {ns}"))],
    ));
    assert_eq!(
        k.jsonpath(
            "",
            &format!("namespace/{ns}"),
            ".metadata.annotations.observe\\.tracejob\\.dev/node-selector"
        ),
        "!observe.tracejob.dev/untraceable"
    );

    let node = blocks.take("README.md", "run node/my-node");
    let out = reader.run_until_ctrl_c(&substitute(&node, &[("my-node", &nodes[0])]), || {
        in_phase(env, &ns, "Running").len() == 1
    });
    assert!(out.contains("@usecs:"), "no histogram printed:\n{out}");
    assert!(
        out.lines().any(|l| l.starts_with('[') && l.contains("|@")),
        "no bucket counted:\n{out}"
    );

    // The pod `web`, its container a process (in a cgroup of its own) that makes system calls.
    let container = FakeContainer::start(&ns);
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"nodeName": nodes[0], "containers": [{"name": "app", "image": "localhost/none:1"}]}
    });
    k.apply(&ns, &pod.to_string());
    report_running(k, &ns, "web", "app", &container.id);
    let busy = Busy::start(&container.id);
    let on_pod = blocks.take("README.md", "run pod/web");
    let out = reader.run_until_ctrl_c(&on_pod, || in_phase(env, &ns, "Running").len() == 1);
    assert!(
        out.contains(&format!("@[{}]:", busy.comm)),
        "the container's system calls, by command, not printed:\n{out}"
    );
    drop(busy);

    let pool = blocks.take("README.md", "run nodes -l pool=db");
    let out = reader.run_until_ctrl_c(
        &substitute(&pool, &[("pool=db", &format!("pool={ns}"))]),
        || {
            let wide = in_phase(env, &ns, "Running");
            wide.len() == 1
                && k.jsonpath(
                    &ns,
                    &format!("tj/{}", wide[0]),
                    ".status.nodeCounts.running",
                ) == "2"
        },
    );
    assert!(
        out.contains("@usecs:"),
        "no merged histogram printed:\n{out}"
    );
    let wide = in_phase(env, &ns, "Completed")
        .into_iter()
        .find(|n| {
            !k.jsonpath(&ns, &format!("tj/{n}"), ".spec.nodeSelector")
                .is_empty()
        })
        .expect("the trace on the pool completed");
    assert_eq!(
        k.jsonpath(&ns, &format!("tj/{wide}"), ".status.mergedNodes"),
        "2",
        "both nodes merged"
    );
    let done = in_phase(env, &ns, "Completed");
    assert_eq!(done.len(), 3, "three traces ran and completed: {done:?}");
}

/// A process in the fake container's cgroup that makes a system call every 100 ms (a read that
/// times out on a FIFO no one writes), with no children, so the cgroup empties when it ends.
struct Busy {
    comm: String,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

impl Busy {
    fn start(container_id: &str) -> Busy {
        let dir = must(
            tempfile::Builder::new().prefix("tracejob-busy-").tempdir(),
            "tempdir",
        );
        let fifo = dir.path().join("fifo");
        must(
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)),
            "mkfifo",
        );
        let proc = Proc::spawn(
            "busy",
            Command::new("bash").arg("-c").arg(format!(
                "exec 3<>{}; while :; do read -t 0.1 -u 3 || true; done",
                fifo.display()
            )),
        );
        let cgroup = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(|p| PathBuf::from(p).join(format!("tracejob-e2e-{container_id}")))
            .find(|p| p.exists())
            .expect("the fake container's cgroup");
        must(
            std::fs::write(cgroup.join("cgroup.procs"), proc.pid().to_string()),
            "move into the container's cgroup",
        );
        Busy {
            comm: "bash".to_string(),
            _dir: dir,
            _proc: proc,
        }
    }
}

/// The quick start with plain kubectl: apply the sample, stop it, read its ConfigMap.
fn quick_start_with_plain_kubectl(env: &Env) {
    let mut blocks = docs::blocks("docs_quick_start_with_plain_kubectl");
    let ns = env.namespace("docs-kubectl");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let reader = Reader::new(env, &ns, &agent.node);
    let block = blocks.take("README.md", "kubectl apply -f bpf-samples/biolatency.yaml");
    let io = IoLoop::start();
    let out = reader.run(&block);
    drop(io);
    assert!(out.contains("@usecs:"), "no histogram printed:\n{out}");
    assert_eq!(
        env.kubectl
            .jsonpath(&ns, "tj/biolatency", ".status.nodeName"),
        agent.node
    );
}

/// The trigger quick start against a receiver the test starts (what `kubectl apply -k
/// tests/cluster/trigger` starts on the try-it cluster, which tests/cluster.rs runs): the
/// token, the trigger, the alert fired, the trace, the alert resolved, its output, then the same
/// alert again (nothing) and a new firing within the cooldown (suppressed).
fn trigger_quick_start(env: &Env) {
    let mut blocks = docs::blocks("docs_trigger_quick_start");
    let ns = env.namespace("docs-trigger");
    let k = &env.kubectl;
    let agent = Agent::start(env, &format!("{ns}-node"));
    let reader = Reader::new(env, &ns, &agent.node);
    let in_ns = ("-n tracejob-system", format!("-n {ns}"));

    let secret = blocks.take(
        "docs/triggers.md",
        "create secret generic tracejob-trigger-token",
    );
    reader.run(&substitute(&secret, &[(in_ns.0, &in_ns.1)]));
    let token_file = reader.dir.path().join("token");
    let plain = must(
        reader.command(&format!(
            "kubectl -n {ns} get secret tracejob-trigger-token -o jsonpath='{{.data.token}}' | base64 -d > {}",
            token_file.display()
        ))
        .status(),
        "read the token",
    );
    assert!(plain.success(), "reading the token back");

    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let log = reader.dir.path().join("receiver.log");
    let out = must(std::fs::File::create(&log), "receiver log");
    let err = must(out.try_clone(), "receiver log");
    let _receiver = Proc::spawn(
        "trigger-receiver",
        Command::new(env!("CARGO_BIN_EXE_tracejob-agent"))
            .args(["trigger-receiver", "--namespace", &ns, "--listen", &address])
            .arg("--token-file")
            .arg(&token_file)
            .env("KUBECONFIG", &env.cp.kubeconfig)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err),
    );
    wait_for(Duration::from_secs(60), "the receiver ready", || {
        Command::new("curl")
            .args(["-sf", "-m", "5", &format!("http://{address}/readyz")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    });

    let trigger = blocks.take("README.md", "kind: TraceTrigger");
    reader.run(&substitute(
        &trigger,
        &[("namespace: default", &format!("namespace: {ns}"))],
    ));

    let alerts = blocks.take("README.md", "alert firing");
    let node_lookup = "kubectl get nodes -o jsonpath='{.items[0].metadata.name}'";
    let out = reader.run(&substitute(
        &alerts,
        &[
            (in_ns.0, &in_ns.1),
            (node_lookup, &format!("echo {}", agent.node)),
            ("127.0.0.1:9471", &address),
        ],
    ));
    assert!(
        out.contains("@usecs:"),
        "the triggered trace's histogram not printed:\n{out}\nreceiver:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let made = k.ok(&[
        "get",
        "tj",
        "-n",
        &ns,
        "-l",
        "observe.tracejob.dev/trigger=high-io-latency",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    assert_eq!(
        made, agent.node,
        "exactly one TraceJob, on the alert's node"
    );
    // The status is the receiver's worker's, written after the calls are answered: waited for.
    wait_for(
        Duration::from_secs(30),
        "the trigger's status: created 1, suppressed 1 by the cooldown",
        || {
            let s = k.jsonpath(
                &ns,
                "tt/high-io-latency",
                ".status.tracesCreated} {.status.suppressed.Cooldown} {.status.suppressedTotal",
            );
            (s == "1 1 1").then_some(())
        },
    );

    let get = blocks.take("docs/triggers.md", "kubectl get tt");
    let out = reader.run(&get);
    assert!(out.contains("high-io-latency"), "{out}");
}

/// docs/api.md's commands for a trace on many nodes: the TraceJobNodes listed, the merged output.
fn fan_out_commands(env: &Env) {
    let mut blocks = docs::blocks("docs_fan_out_commands");
    let ns = env.namespace("docs-wide");
    let (nodes, _agents) = pool(env, &ns, 2);
    let _summarizer = Summarizer::of(env, &ns);
    let reader = Reader::new(env, &ns, &nodes[0]);
    let k = &env.kubectl;
    k.apply(
        &ns,
        &format!(
            "apiVersion: observe.tracejob.dev/v1alpha1\nkind: TraceJob\nmetadata:\n  name: wide\nspec:\n  nodeSelector: {{matchLabels: {{pool: {ns}}}}}\n  program: 'BEGIN {{ @x = count(); exit(); }}'\n"
        ),
    );
    wait_for(Duration::from_secs(120), "the merged output", || {
        (k.jsonpath(&ns, "tj/wide", ".status.phase} {.status.mergedNodes") == "Completed 2")
            .then_some(())
    });
    let list = blocks.take("docs/api.md", "kubectl get tjn");
    let out = reader.run(&list);
    for n in &nodes {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("wide.{n} ")) && l.contains("Completed")),
            "{n}'s part not listed:\n{out}"
        );
    }
    let merged = blocks.take("docs/api.md", "kubectl get configmap");
    let out = reader.run(&merged);
    assert!(
        out.lines().any(|l| l.trim() == "@x: 2"),
        "the merged count:\n{out}"
    );
}
