//! `kubectl tracejob`, driven through kubectl as a user runs it: the plugin's binary on PATH,
//! kubectl finding it, Ctrl-C as SIGINT. (Its pod/NAME form and the quick start run in the
//! cluster test, against a real kubelet.)

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::host::disk_io;
use crate::support::wait::wait_phase;
use crate::support::{bpftrace_double, must, repo_root, wait_for, Agent, Env, Test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "plugin_run_then_ctrl_c_prints_the_histogram",
            run: run_then_ctrl_c,
        },
        Test {
            name: "plugin_a_syntax_error_is_on_stderr_and_fails",
            run: syntax_error,
        },
        Test {
            name: "plugin_detach_logs_stop_output",
            run: detach_logs_stop_output,
        },
        Test {
            name: "plugin_a_second_ctrl_c_leaves_and_says_where_the_output_will_be",
            run: second_ctrl_c,
        },
        Test {
            name: "plugin_trusts_no_output_it_reads",
            run: careful,
        },
        Test {
            name: "plugin_escapes_on_stderr_and_in_a_pipe",
            run: escapes_everywhere,
        },
        Test {
            name: "plugin_kubectl_finds_it_and_it_completes",
            run: found_by_kubectl,
        },
    ]
}

/// A directory holding just the plugin, for PATH.
pub(crate) fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubectl-tracejob"))
        .parent()
        .expect("the plugin's directory")
        .to_path_buf()
}

/// `kubectl ARGS` with the plugin on PATH, in namespace `ns`.
fn kubectl(env: &Env, ns: &str, args: &[&str]) -> Command {
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(&env.kubectl.path);
    cmd.env("KUBECONFIG", &env.kubectl.kubeconfig)
        .env("PATH", path)
        .args(["tracejob", "-n", ns])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn output(cmd: &mut Command) -> Output {
    must(cmd.output(), "run kubectl tracejob")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn spawn(mut cmd: Command) -> Child {
    must(
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn(),
        "spawn kubectl tracejob",
    )
}

/// Waits until the plugin has created TraceJob `name`, then until it reaches `phase`.
pub(crate) fn wait_created(env: &Env, ns: &str, name: &str, phase: &str) {
    wait_for(
        Duration::from_secs(30),
        "the plugin to create the TraceJob",
        || {
            env.kubectl
                .run(&["get", "-n", ns, "tj", name])
                .ok
                .then_some(())
        },
    );
    wait_phase(&env.kubectl, ns, name, phase, Duration::from_secs(30));
}

pub(crate) fn interrupt(child: &Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
}

pub(crate) fn finish(mut child: Child) -> (Option<i32>, String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let status = must(child.wait(), "wait kubectl tracejob");
    (status.code(), out, err)
}

fn run_then_ctrl_c(env: &Env) {
    let ns = env.namespace("plugin-run");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let file = repo_root().join("bpf-samples/biolatency.bt");
    let child = spawn(kubectl(
        env,
        &ns,
        &[
            "run",
            &format!("node/{}", agent.node),
            "-f",
            &file.to_string_lossy(),
            "--name",
            "bio",
            "--grace",
            "5m",
        ],
    ));
    wait_created(env, &ns, "bio", "Running");
    disk_io();
    interrupt(&child);
    let (code, out, err) = finish(child);
    assert_eq!(code, Some(0), "exit code; stderr:\n{err}");
    assert!(out.contains("@usecs:"), "no histogram on stdout:\n{out}");
    let buckets: u64 = crate::support::outputs::histogram_counts(&out).iter().sum();
    assert!(buckets > 0, "an empty histogram:\n{out}");
    assert!(
        err.contains(&format!("Running on {} with 3 probes", agent.node)),
        "{err}"
    );
    assert!(err.contains("stopping"), "{err}");
    assert!(!out.contains("stopping"), "progress on stdout:\n{out}");
}

fn syntax_error(env: &Env) {
    let ns = env.namespace("plugin-error");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let out = output(&mut kubectl(
        env,
        &ns,
        &[
            "run",
            &format!("node/{}", agent.node),
            "-e",
            "BEGIN { @x = count( }",
        ],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("syntax error"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    // A missing TraceJob, and a usage error.
    let missing = output(&mut kubectl(env, &ns, &["output", "no-such-trace"]));
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing.stderr));
    let usage = output(&mut kubectl(env, &ns, &["run", "here", "-e", "BEGIN {}"]));
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage.stderr));
}

fn detach_logs_stop_output(env: &Env) {
    let ns = env.namespace("plugin-detach");
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--live-interval", "1"],
        &[],
    );
    let run = output(&mut kubectl(
        env,
        &ns,
        &[
            "run",
            &format!("node/{}", agent.node),
            "-e",
            "interval:ms:200 { printf(\"tick\\n\"); @n = count(); }",
            "--detach",
        ],
    ));
    assert!(run.status.success(), "{}", text(&run.stderr));
    let name = text(&run.stdout).trim().to_string();
    assert!(name.starts_with("trace-"), "--detach printed {name:?}");
    assert_eq!(
        env.kubectl
            .jsonpath(&ns, &format!("tj/{name}"), ".status.phase"),
        "Running"
    );
    let follower = spawn(kubectl(env, &ns, &["logs", &name, "-f"]));
    let logs = wait_for(Duration::from_secs(30), "live output in logs", || {
        let l = output(&mut kubectl(env, &ns, &["logs", &name]));
        let t = text(&l.stdout);
        t.contains("tick").then_some(t)
    });
    assert!(!logs.contains("@n: "), "maps before the stop:\n{logs}");
    let get = output(&mut kubectl(env, &ns, &["get", &name]));
    assert!(
        text(&get.stdout).contains("Running"),
        "{}",
        text(&get.stdout)
    );
    let stopped = output(&mut kubectl(env, &ns, &["stop", &name]));
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    wait_phase(
        &env.kubectl,
        &ns,
        &name,
        "Completed",
        Duration::from_secs(60),
    );
    let (code, followed, _) = finish(follower);
    assert_eq!(code, Some(0));
    assert!(
        followed.contains("tick") && followed.contains("@n: "),
        "logs -f did not follow to the end:\n{followed}"
    );
    let printed = output(&mut kubectl(env, &ns, &["output", &name]));
    let printed = text(&printed.stdout);
    assert!(
        printed.starts_with("Attaching 1 probe") || printed.contains("tick"),
        "{printed}"
    );
    assert!(printed.contains("@n: "), "{printed}");
    let json = output(&mut kubectl(env, &ns, &["output", &name, "-o", "json"]));
    let maps: tracejob_agent::output::maps::Maps =
        must(serde_json::from_slice(&json.stdout), "output -o json");
    assert!(maps.maps.iter().any(|m| m.name == "@n"), "{maps:?}");
    let names = output(&mut kubectl(env, &ns, &["get", "-o", "name"]));
    assert_eq!(
        text(&names.stdout).trim(),
        format!("tracejob.observe.tracejob.dev/{name}")
    );
    let deleted = output(&mut kubectl(env, &ns, &["delete", &name]));
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    assert_eq!(
        text(&output(&mut kubectl(env, &ns, &["get", "-o", "name"])).stdout).trim(),
        ""
    );
}

fn second_ctrl_c(env: &Env) {
    let ns = env.namespace("plugin-leave");
    let double = bpftrace_double().to_string_lossy().into_owned();
    let agent = Agent::start_with(
        env,
        &format!("{ns}-node"),
        &env.cp.kubeconfig,
        &["--bpftrace", &double],
        &[],
    );
    let child = spawn(kubectl(
        env,
        &ns,
        &[
            "run",
            &format!("node/{}", agent.node),
            "-e",
            "// double: sigint=ignore\nBEGIN {}",
            "--name",
            "deaf",
            "--grace",
            "1m",
        ],
    ));
    wait_created(env, &ns, "deaf", "Running");
    interrupt(&child);
    wait_phase(
        &env.kubectl,
        &ns,
        "deaf",
        "Stopping",
        Duration::from_secs(30),
    );
    interrupt(&child);
    let (code, _, err) = finish(child);
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains(&format!("kubectl tracejob output deaf -n {ns}")),
        "{err}"
    );
}

fn found_by_kubectl(env: &Env) {
    let ns = env.namespace("plugin-found");
    let list = output(kubectl(env, &ns, &[]).args(["--help"]));
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(
        text(&list.stdout).contains("Exit codes"),
        "{}",
        text(&list.stdout)
    );
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugins = output(
        Command::new(&env.kubectl.path)
            .args(["plugin", "list"])
            .env("PATH", &path),
    );
    assert!(
        text(&plugins.stdout).contains("kubectl-tracejob"),
        "{}{}",
        text(&plugins.stdout),
        text(&plugins.stderr)
    );
    for verb in [
        "run",
        "get",
        "stop",
        "output",
        "logs",
        "delete",
        "completion",
    ] {
        let help = output(&mut kubectl(env, &ns, &[verb, "--help"]));
        assert!(
            help.status.success(),
            "{verb} --help: {}",
            text(&help.stderr)
        );
    }
    // The bash completion loads and completes the verbs.
    let script = format!(
        "source <({} completion bash) && COMP_WORDS=(kubectl-tracejob ru) COMP_CWORD=1 && \
         $(complete -p kubectl-tracejob | sed 's/.*-F \\([^ ]*\\).*/\\1/') kubectl-tracejob ru kubectl-tracejob && echo \"${{COMPREPLY[@]}}\"",
        env!("CARGO_BIN_EXE_kubectl-tracejob")
    );
    let completed = output(Command::new("bash").arg("-c").arg(&script));
    assert!(
        text(&completed.stdout)
            .split_whitespace()
            .any(|w| w == "run"),
        "{}{}",
        text(&completed.stdout),
        text(&completed.stderr)
    );
    let zsh =
        output(Command::new(env!("CARGO_BIN_EXE_kubectl-tracejob")).args(["completion", "zsh"]));
    assert!(
        text(&zsh.stdout).contains("#compdef"),
        "{}",
        text(&zsh.stdout)
    );
}

/// What the plugin reads is not trusted: a traced process's escape sequences are shown escaped
/// on a terminal (raw with --raw), a ConfigMap its TraceJob does not own is not shown, and a
/// gzip bomb is refused with a clear error in bounded memory.
fn careful(env: &Env) {
    let ns = env.namespace("plugin-careful");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    let program = r#"BEGIN { printf("\x1b]0;owned\x07hello\n"); @x = count(); exit(); }"#;
    let r = output(&mut kubectl(
        env,
        &ns,
        &[
            "run",
            &format!("node/{}", agent.node),
            "--name",
            "esc",
            "-e",
            program,
        ],
    ));
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    // Not a terminal (a pipe may end in one): escaped all the same.
    assert!(
        !r.stdout.contains(&0x1b) && r.stdout.windows(6).any(|w| w == b"\\x1b]0"),
        "{:?}",
        text(&r.stdout)
    );
    // --raw: as bpftrace printed it.
    let r = output(&mut kubectl(env, &ns, &["output", "esc", "--raw"]));
    assert!(
        r.stdout.windows(2).any(|w| w == b"\x1b]"),
        "{:?}",
        text(&r.stdout)
    );

    // On a terminal (script gives the plugin one): escaped, unless --raw.
    let on_terminal = |extra: &str| {
        let line = format!(
            "PATH={}:$PATH KUBECONFIG={} {} tracejob -n {ns} output esc {extra}",
            plugin_dir().display(),
            env.kubectl.kubeconfig.display(),
            env.kubectl.path.display()
        );
        let out = must(
            Command::new("script")
                .args(["-qec", &line, "/dev/null"])
                .stdin(Stdio::null())
                .output(),
            "script",
        );
        out.stdout
    };
    let shown = on_terminal("");
    assert!(
        !shown.contains(&0x1b) && shown.windows(6).any(|w| w == b"\\x1b]0"),
        "not escaped on a terminal: {:?}",
        text(&shown)
    );
    assert!(
        shown.windows(5).any(|w| w == b"hello"),
        "{:?}",
        text(&shown)
    );
    assert!(on_terminal("--raw").contains(&0x1b), "--raw escaped it");

    // A ConfigMap of the output's name that its TraceJob does not own: refused.
    let cm = k.jsonpath(&ns, "tj/esc", ".status.outputRef.name");
    k.ok(&["delete", "configmap", "-n", &ns, &cm]);
    k.ok(&[
        "create",
        "configmap",
        "-n",
        &ns,
        &cm,
        "--from-literal=output=@x: 1000000",
    ]);
    let r = output(&mut kubectl(env, &ns, &["output", "esc"]));
    assert_eq!(r.status.code(), Some(3), "{}", text(&r.stdout));
    assert!(
        text(&r.stderr).contains("is not owned by tracejob esc")
            && !text(&r.stdout).contains("1000000"),
        "{}",
        text(&r.stderr)
    );

    // A gzip bomb (512 MiB of zeros in under 1 MiB) in a ConfigMap the TraceJob owns: a clear
    // error, within 256 MiB of address space (the plugin's own binary: kubectl, a Go program,
    // reserves more than that at start).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..512 {
        std::io::Write::write_all(&mut gz, &zeros).expect("gzip");
    }
    let bomb = gz.finish().expect("gzip");
    assert!(bomb.len() < 1000 * 1024, "{} bytes", bomb.len());
    let owner = serde_json::json!({
        "apiVersion": "observe.tracejob.dev/v1alpha1", "kind": "TraceJob", "name": "esc",
        "uid": k.jsonpath(&ns, "tj/esc", ".metadata.uid"), "controller": true
    });
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": cm, "namespace": ns, "ownerReferences": [owner]},
        "binaryData": {"output.gz": k8s_openapi::ByteString(bomb)}
    });
    k.ok(&["delete", "configmap", "-n", &ns, &cm]);
    let created = k.run_with_stdin(&["create", "-f", "-"], &object.to_string());
    assert!(created.ok, "{}", created.stderr);
    let line = format!(
        "ulimit -v 262144; exec {} --kubeconfig {} -n {ns} output esc",
        env!("CARGO_BIN_EXE_kubectl-tracejob"),
        env.kubectl.kubeconfig.display(),
    );
    let r = must(
        Command::new("bash")
            .args(["-c", &line])
            .stdin(Stdio::null())
            .output(),
        "the plugin under ulimit",
    );
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(3), "{err}");
    assert!(err.contains("expands to more than 67108864 bytes"), "{err}");
}

/// What a trace prints live (on stderr while `run` follows it) and bpftrace's error text (on
/// stderr when the trace fails) reach the user escaped, though neither stream is a terminal.
fn escapes_everywhere(env: &Env) {
    let ns = env.namespace("plugin-escapes");
    let agent = Agent::start(env, &format!("{ns}-node"));
    let k = &env.kubectl;
    let child = spawn(kubectl(
        env,
        &ns,
        &[
            "run",
            &format!("node/{}", agent.node),
            "--name",
            "live",
            "-e",
            r#"interval:ms:200 { printf("\x1b]0;live\x07tick\n"); }"#,
        ],
    ));
    wait_created(env, &ns, "live", "Running");
    // The live copy holds some ticks; the plugin looks every POLL, so a few more seconds.
    wait_for(Duration::from_secs(60), "live output stored", || {
        let cm = k.jsonpath(&ns, "tj/live", ".status.outputRef.name");
        (!cm.is_empty()
            && k.jsonpath(&ns, &format!("cm/{cm}"), ".data.output")
                .contains("tick"))
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    interrupt(&child);
    let (code, out, err) = finish(child);
    assert_eq!(code, Some(0), "exit code; stderr:\n{err}");
    let live = err.find("tick").map(|at| &err[..at]).unwrap_or("");
    assert!(
        live.contains("\\x1b]0;live\\x07"),
        "no live output on stderr, or not escaped: {err:?}"
    );
    assert!(!err.contains('\x1b'), "a control byte on stderr: {err:?}");
    assert!(
        !out.contains('\x1b') && out.contains("\\x1b]0;live"),
        "{out:?}"
    );

    // bpftrace's error quotes the program: a control byte in it reaches stderr escaped.
    let r = output(&mut kubectl(
        env,
        &ns,
        &[
            "run",
            &format!("node/{}", agent.node),
            "-e",
            "BEGIN { @x = count( \x1b]0;owned\x07 }",
        ],
    ));
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        !r.stderr.contains(&0x1b),
        "a control byte on stderr: {err:?}"
    );
    assert!(
        err.contains("\\x1b]0;owned"),
        "bpftrace's error not shown escaped: {err:?}"
    );
}
