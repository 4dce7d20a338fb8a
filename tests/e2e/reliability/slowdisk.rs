//! A slow disk under the state directory (issue #24): the agent must go on answering /healthz
//! while every write there takes a second. The disk is slowfs (tests/harness/slowfs, built once
//! and cached by tests/harness/build-slowfs.sh): a FUSE file system over a directory in which every
//! write, fsync, flush of written data and change of metadata (create, mkdir, rename, unlink,
//! setattr, ...) takes a fixed delay; reads do not.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::tracejobs::{stop, tracejob_yaml};
use crate::support::{bpftrace_double, must, repo_root, wait_for, Agent, Env, Kubectl, Proc, Test};

pub fn tests() -> Vec<Test> {
    vec![Test {
        name: "slowdisk_healthz_answers_within_100ms_at_p99_while_10_traces_start_and_stop",
        run: healthz_while_traces_start_and_stop,
    }]
}

/// How long each write to the slow disk takes.
const DELAY: Duration = Duration::from_secs(1);

const TRACES: usize = 10;

/// What the agent may add, at p99, to what the machine itself costs a trivial server probed
/// alongside it (the control): the tests beside this one load the same two cores, and a write on
/// the agent's async threads would cost a whole `DELAY`.
const P99_LIMIT: Duration = Duration::from_millis(100);

const PROBE_EVERY: Duration = Duration::from_millis(20);

/// From the TraceJobs' creation until all of them have started and ended.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(120);

fn ended(phase: &str) -> bool {
    phase == "Completed" || phase == "Failed"
}

fn count(phases: &BTreeMap<String, String>, phase: &str) -> usize {
    phases.values().filter(|p| *p == phase).count()
}

/// Every TraceJob's phase in `ns`, by name.
fn phases(k: &Kubectl, ns: &str) -> BTreeMap<String, String> {
    let out = k.ok(&[
        "get",
        "tj",
        "-n",
        ns,
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name}={.status.phase}{"\n"}{end}"#,
    ]);
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect()
}

/// Waits until all `TRACES` TraceJobs in `ns` are in a phase that `done` accepts, or until
/// `deadline`: whether they are, and their phases.
fn wait_phases(
    k: &Kubectl,
    ns: &str,
    deadline: Instant,
    done: impl Fn(&str) -> bool,
) -> (bool, BTreeMap<String, String>) {
    loop {
        let now = phases(k, ns);
        let all = now.len() == TRACES && now.values().all(|p| done(p));
        if all || Instant::now() >= deadline {
            return (all, now);
        }
        // kubectl costs CPU the agent competes for: not too often.
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// slowfs mounted on a temporary directory, over another one; unmounted when dropped, also when
/// the test fails.
struct SlowDisk {
    mountpoint: PathBuf,
    slowfs: Option<Proc>,
    _tmp: tempfile::TempDir,
}

impl SlowDisk {
    fn mount(delay: Duration) -> SlowDisk {
        unmount_dead_slowfs();
        let tmp = must(
            tempfile::Builder::new()
                .prefix("tracejob-slowdisk-")
                .tempdir(),
            "tempdir",
        );
        let backing = tmp.path().join("backing");
        let mountpoint = tmp.path().join("mnt");
        must(std::fs::create_dir(&backing), "mkdir backing");
        must(std::fs::create_dir(&mountpoint), "mkdir mnt");
        let slowfs = Proc::spawn(
            "slowfs",
            Command::new(slowfs_binary())
                .arg(format!("--delay={}ms", delay.as_millis()))
                .arg(&backing)
                .arg(&mountpoint)
                .stdin(Stdio::null()),
        );
        let disk = SlowDisk {
            mountpoint,
            slowfs: Some(slowfs),
            _tmp: tmp,
        };
        wait_for(Duration::from_secs(10), "slowfs to be mounted", || {
            slowfs_mounts().contains(&disk.mountpoint).then_some(())
        });
        // Its writes are slow (with FUSE passthrough, say, the kernel would write past it): a
        // file made in the backing directory, then one write to it through the mount.
        must(std::fs::write(backing.join("written"), ""), "create a file");
        let mut file = must(
            std::fs::OpenOptions::new()
                .write(true)
                .open(disk.mountpoint.join("written")),
            "open a file on slowfs",
        );
        let start = Instant::now();
        must(file.write_all(b"x"), "write to slowfs");
        let took = start.elapsed();
        assert!(
            took >= delay,
            "a write to slowfs took {took:?}, not {delay:?}"
        );
        disk
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        // On SIGTERM slowfs unmounts, or detaches a mount still in use; killed, it cannot.
        self.slowfs = None;
        if slowfs_mounts().contains(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

/// slowfs, built once (cached); a failed build fails the test.
fn slowfs_binary() -> PathBuf {
    let out = must(
        Command::new("bash")
            .arg(repo_root().join("tests/harness/build-slowfs.sh"))
            .stderr(Stdio::inherit())
            .output(),
        "run build-slowfs.sh",
    );
    assert!(out.status.success(), "building slowfs failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Where slowfs file systems are mounted, from /proc/self/mountinfo.
fn slowfs_mounts() -> Vec<PathBuf> {
    let info = must(
        std::fs::read_to_string("/proc/self/mountinfo"),
        "read mountinfo",
    );
    info.lines()
        .filter_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            let mountpoint = mount.split(' ').nth(4)?;
            (fs.split(' ').next() == Some("fuse.slowfs")).then(|| PathBuf::from(mountpoint))
        })
        .collect()
}

/// Detaches slowfs mounts whose slowfs is gone (a test run that was killed): only a dead one's
/// mount point answers ENOTCONN.
fn unmount_dead_slowfs() {
    for mountpoint in slowfs_mounts() {
        let dead = std::fs::metadata(&mountpoint)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotConnected);
        if dead {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&mountpoint)
                .status();
        }
    }
}

/// Asks /healthz on a fixed schedule (every `PROBE_EVERY`) from a thread of its own. Each answer's
/// latency counts from when its request was due, so a stall counts for every request it held
/// back, not only the one that waited on it.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Probe {
    fn start(port: u16) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut samples = Vec::new();
            let mut due = Instant::now();
            while !s.load(Ordering::SeqCst) {
                let ok = healthz(addr).is_ok_and(|status| status.starts_with("HTTP/1.1 200"));
                samples.push(Sample {
                    latency: due.elapsed(),
                    ok,
                });
                due += PROBE_EVERY;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            samples
        });
        Probe {
            stop,
            thread: Some(thread),
        }
    }

    /// Every request's latency, and whether it was answered 200.
    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("a probe is finished once");
        thread.join().expect("the probe thread panicked")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The control: a server that answers every request at once with 200, on a thread of its own in
/// this process. Probed on the same schedule as the agent, it measures what the machine's load
/// alone costs a request.
struct Control {
    port: u16,
}

impl Control {
    fn start() -> Control {
        let listener = must(
            std::net::TcpListener::bind("127.0.0.1:0"),
            "bind the control",
        );
        let port = must(listener.local_addr(), "the control's address").port();
        // It lives as long as the test binary: a thread blocked in accept costs nothing.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn);
            }
        });
        Control { port }
    }
}

/// Reads a request's head, then answers 200 and closes.
fn answer(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

/// How long one request may take; one that takes longer has failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One GET /healthz on a new connection: the response's status line.
fn healthz(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    conn.set_read_timeout(Some(PROBE_TIMEOUT))?;
    conn.set_write_timeout(Some(PROBE_TIMEOUT))?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    Ok(response.lines().next().unwrap_or_default().to_string())
}

struct Sample {
    latency: Duration,
    ok: bool,
}

struct Stats {
    min: Duration,
    median: Duration,
    p99: Duration,
    max: Duration,
    failed: usize,
}

impl Stats {
    fn of(samples: &[Sample]) -> Stats {
        let mut sorted: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        sorted.sort();
        // The q-quantile: the smallest latency that at least q of the requests did not exceed.
        let at = |q: f64| {
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted.get(rank.max(1) - 1).copied().unwrap_or_default()
        };
        Stats {
            min: at(0.0),
            median: at(0.5),
            p99: at(0.99),
            max: at(1.0),
            failed: samples.iter().filter(|s| !s.ok).count(),
        }
    }
}

fn healthz_while_traces_start_and_stop(env: &Env) {
    let disk = SlowDisk::mount(DELAY);
    let ns = env.namespace("slowdisk");
    let k = &env.kubectl;
    let double = bpftrace_double().to_string_lossy().into_owned();
    let agent = Agent::start_with_state_dir(
        env,
        &format!("{ns}-node"),
        &disk.mountpoint.join("state"),
        // Ten traces of one namespace at once: past its default share of the node (8).
        &[
            "--bpftrace",
            &double,
            "--max-running-traces-per-namespace",
            "32",
        ],
    );
    // It opens its state directory before it serves: seconds on this disk.
    wait_for(Duration::from_secs(30), "the agent's /healthz", || {
        (agent.get("/healthz").0 == 200).then_some(())
    });

    let control = Control::start();
    let probe = Probe::start(agent.port);
    let control_probe = Probe::start(control.port);
    let began = Instant::now();
    let deadline = began + WORKLOAD_TIMEOUT;
    let names: Vec<String> = (0..TRACES).map(|i| format!("t{i}")).collect();
    // The double attaches at once, then waits for SIGINT and prints its maps.
    let yaml = names
        .iter()
        .map(|n| tracejob_yaml(n, &agent.node, "BEGIN {}", ""))
        .collect::<Vec<_>>()
        .join("---\n");
    k.apply(&ns, &yaml);
    // Ended before its stop (failed to start, say) counts as not Running, without waiting more.
    let (_, at_start) = wait_phases(k, &ns, deadline, |p| p == "Running" || ended(p));
    let running_after = began.elapsed();
    let all_running = count(&at_start, "Running") == TRACES;
    let (all_ended, at_end) = if all_running {
        for n in &names {
            stop(k, &ns, n);
        }
        wait_phases(k, &ns, deadline, ended)
    } else {
        (false, at_start.clone())
    };
    let ended_after = began.elapsed();
    let samples = probe.finish();
    let control_stats = Stats::of(&control_probe.finish());

    let stats = Stats::of(&samples);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "slowdisk: /healthz every {} ms while {TRACES} traces started and stopped, every write \
         taking {DELAY:?}: {} probes, min {:.1} ms, median {:.1} ms, p99 {:.1} ms, max {:.1} ms, \
         {} failed (a trivial server alongside: median {:.1} ms, p99 {:.1} ms, max {:.1} ms); \
         traces: {}/{TRACES} Running after {:.0} s, {}/{TRACES} Completed after {:.0} s",
        PROBE_EVERY.as_millis(),
        samples.len(),
        ms(stats.min),
        ms(stats.median),
        ms(stats.p99),
        ms(stats.max),
        stats.failed,
        ms(control_stats.median),
        ms(control_stats.p99),
        ms(control_stats.max),
        count(&at_start, "Running"),
        running_after.as_secs_f64(),
        count(&at_end, "Completed"),
        ended_after.as_secs_f64(),
    );
    assert!(
        samples.len() >= 300,
        "only {} probes: too few for a p99",
        samples.len()
    );
    assert!(
        stats.p99 < control_stats.p99 + P99_LIMIT,
        "/healthz took {:?} at p99 (over {} probes; the slowest {:?}), the trivial server {:?}",
        stats.p99,
        samples.len(),
        stats.max,
        control_stats.p99
    );
    assert_eq!(stats.failed, 0, "/healthz failed to answer 200 in time");
    assert!(
        all_running,
        "the traces did not all reach Running within {WORKLOAD_TIMEOUT:?}: {at_start:?}"
    );
    assert!(
        all_ended,
        "the traces did not all end within {WORKLOAD_TIMEOUT:?} of their creation: {at_end:?}"
    );
    assert_eq!(
        count(&at_end, "Completed"),
        TRACES,
        "not every trace Completed: {at_end:?}"
    );
}
