//! BENCH_ONLY=metrics: spec.metrics' cost, on real bpftrace, without a cluster. One read of the
//! maps at 10, 1,000 and 100,000 keys (bpftrace's pause: from `getpgid(MAGIC)` to the end marker;
//! the agent's CPU: parsing the dump and converting it), and a traced workload's event rate with
//! reads every 5 s against without, runs interleaved. Each figure as min / median / max.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracejob_agent::output::prom;
use tracejob_agent::resource::MetricsSpec;

const MAGIC: i32 = 0x4abc_de01;

fn summary(mut v: Vec<f64>, unit: &str) -> String {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return "no runs".into();
    }
    format!(
        "{:.1} / {:.1} / {:.1} {unit}",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

/// bpftrace running `program` with the read probe, its stdout as lines.
struct Traced {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<(Instant, String)>,
}

impl Traced {
    fn start(program: &str, maps: &[String]) -> Traced {
        let mut child = Command::new("bpftrace")
            .arg("-e")
            .arg(prom::instrument(program, maps, MAGIC))
            .env("BPFTRACE_MAP_KEYS_MAX", "200000")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bpftrace");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), l)).is_err() {
                    return;
                }
            }
        });
        let t = Traced { child, lines };
        t.wait_for(
            |l| l.starts_with("Attaching") || l.starts_with("Attached"),
            60,
        );
        t
    }

    fn wait_for(&self, f: impl Fn(&str) -> bool, secs: u64) -> Option<Instant> {
        let until = Instant::now() + Duration::from_secs(secs);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok((at, l)) if f(&l) => return Some(at),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// One read: the dump's text and how long bpftrace took to print it.
    fn read(&self) -> Option<(String, Duration)> {
        let begin = prom::begin_marker(MAGIC);
        let end = prom::end_marker(MAGIC);
        while self.lines.try_recv().is_ok() {}
        let asked = Instant::now();
        let _ = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(MAGIC)));
        self.wait_for(|l| l == begin, 60)?;
        let mut dump = String::new();
        loop {
            let (at, l) = self.lines.recv_timeout(Duration::from_secs(60)).ok()?;
            if l == end {
                return Some((dump, at - asked));
            }
            dump.push_str(&l);
            dump.push('\n');
        }
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
    }
}

fn cpu_of(f: impl FnOnce()) -> Duration {
    let cpu = || {
        let mut t = nix::libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec given; nothing else.
        unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let start = cpu();
    f();
    cpu() - start
}

pub fn rows(runs: u64) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let spec = MetricsSpec::default();
    for keys in [10u64, 1_000, 100_000] {
        let program = format!(
            "tracepoint:raw_syscalls:sys_enter {{ @pid[@n % {keys}] = count(); @n = @n + 1; }}"
        );
        let kinds = prom::kinds(&program);
        let traced = Traced::start(&program, &["@pid".to_string()]);
        // Filled: a read with every key.
        let full = Instant::now() + Duration::from_secs(300);
        while Instant::now() < full {
            match traced.read() {
                Some((d, _)) if d.lines().count() as u64 >= keys => break,
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        let (mut pause, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let Some((dump, took)) = traced.read() else {
                continue;
            };
            pause.push(took.as_secs_f64() * 1e3);
            let trace = prom::Trace {
                namespace: "ns".into(),
                name: "bench".into(),
                node: "n".into(),
            };
            cpu.push(
                cpu_of(|| {
                    let maps = tracejob_agent::output::parse::parse(&dump);
                    let e = prom::expose(&maps, &spec, &kinds, &trace, &mut Default::default());
                    std::hint::black_box(prom::render(&[(&trace, &e)]));
                })
                .as_secs_f64()
                    * 1e3,
            );
        }
        traced.stop();
        rows.push((
            format!("metrics: one read of {keys} keys, bpftrace's pause"),
            summary(pause, "ms"),
        ));
        rows.push((
            format!("metrics: one read of {keys} keys, agent CPU (parse, convert, render)"),
            summary(cpu, "ms"),
        ));
    }
    // A traced workload's event rate: getppid() in a loop, counted by the program, for 12 s
    // (two reads), with reads every 5 s and without, interleaved.
    let program = "tracepoint:syscalls:sys_enter_getppid { @calls[comm] = count(); }";
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..runs * 2 {
        let reading = i % 2 == 0;
        let traced = Traced::start(program, &["@calls".to_string()]);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let worker = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::black_box(nix::unistd::getppid());
                n += 1;
            }
            n
        });
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(12) {
            let left = Duration::from_secs(12).saturating_sub(start.elapsed());
            std::thread::sleep(Duration::from_secs(5).min(left));
            if reading && start.elapsed() < Duration::from_secs(12) {
                let _ = traced.read();
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = worker.join().unwrap_or(0);
        let rate = n as f64 / start.elapsed().as_secs_f64() / 1e3;
        traced.stop();
        if reading {
            with.push(rate);
        } else {
            without.push(rate);
        }
    }
    rows.push((
        "metrics: traced getppid() rate, reads every 5 s".into(),
        summary(with, "k/s"),
    ));
    rows.push((
        "metrics: traced getppid() rate, no reads".into(),
        summary(without, "k/s"),
    ));
    rows
}
