//! spec.metrics of a running trace: the program gets the probe that prints its maps on demand
//! (the shim calls it every interval and keeps the newest dump in `metrics.txt`); the actor reads
//! a new dump when there is one, off the async threads, and puts its exposition in the agent's
//! registry. A trace past spec.metrics.maxSeries says so in its MetricsCapped condition.

use std::collections::HashMap;
use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use std::time::Duration;

use kube::ResourceExt;
use tokio::task::JoinHandle;
use tracing::warn;

use super::{Actor, Run};
use crate::cluster::writer;
use crate::host::shim;
use crate::output::collect;
use crate::output::prom::{self, Exposed, Kind, Seen as Bounds, Trace};
use crate::resource::vocabulary::{ConditionType, Reason};
use crate::resource::MetricsSpec;
use crate::resource::TraceJob;

/// Exporting one run's maps.
pub(super) struct Exporting {
    spec: MetricsSpec,
    kinds: HashMap<String, Kind>,
    trace: Trace,
    bounds: Bounds,
    /// The dump last read: its modification time and length.
    last: Option<(SystemTime, u64)>,
    /// A read is under way (its result comes back through the loop's wait).
    pub(super) in_flight: Option<JoinHandle<Option<Read>>>,
    /// The MetricsCapped condition was reported.
    capped: bool,
}

/// A new dump, read and converted.
pub(super) struct Read {
    stamp: (SystemTime, u64),
    exposed: Exposed,
    bounds: Bounds,
}

/// The program with the probe that prints the exported maps, and how the shim reads them; None
/// when the TraceJob has no spec.metrics or its program no map to export.
pub(super) fn instrumented(
    program: &str,
    spec: Option<&MetricsSpec>,
) -> Option<(String, shim::MetricsReads)> {
    let spec = spec?;
    let maps = prom::exported_maps(program, spec);
    if maps.is_empty() {
        return None;
    }
    // Above the kernel's largest PID (2^22), so no process has it.
    let magic = 0x4000_0000 | (uuid::Uuid::new_v4().as_u128() as i32 & 0x0fff_ffff);
    let reads = shim::MetricsReads {
        interval: Duration::from_secs(spec.interval_seconds.clamp(1, 3600) as u64),
        magic,
    };
    Some((prom::instrument(program, &maps, magic), reads))
}

impl Exporting {
    pub(super) fn new(job: &TraceJob, program: &str, node: &str) -> Option<Exporting> {
        let spec = job.spec.metrics.clone()?;
        if prom::exported_maps(program, &spec).is_empty() {
            return None;
        }
        Some(Exporting {
            kinds: prom::kinds(program),
            spec,
            trace: Trace {
                namespace: job.namespace().unwrap_or_default(),
                name: job.name_any(),
                node: node.to_string(),
            },
            bounds: Bounds::default(),
            last: None,
            in_flight: None,
            capped: false,
        })
    }
}

impl Actor {
    /// Starts reading the newest dump of the maps, unless one is being read.
    pub(super) fn read_metrics(&mut self, run: &mut Run) {
        let Some(m) = run.metrics.as_mut() else {
            return;
        };
        if m.in_flight.is_some() {
            return;
        }
        let (path, last, spec, kinds, trace, bounds) = (
            run.files.metrics.clone(),
            m.last,
            m.spec.clone(),
            m.kinds.clone(),
            m.trace.clone(),
            m.bounds.clone(),
        );
        m.in_flight = Some(tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&path).ok()?;
            let stamp = (meta.modified().ok()?, meta.len());
            if Some(stamp) == last {
                return None;
            }
            let text = std::fs::read(&path).ok()?;
            let maps = crate::output::parse::parse(&String::from_utf8_lossy(&text));
            drop(text);
            let mut bounds = bounds;
            let exposed = prom::expose(&maps, &spec, &kinds, &trace, &mut bounds);
            drop(maps);
            release_freed_memory();
            Some(Read {
                stamp,
                exposed,
                bounds,
            })
        }));
    }

    /// A read has finished: its exposition is served, and a cap reached is reported.
    pub(super) fn on_metrics_read(&mut self, run: &mut Run, read: Option<Read>) {
        let Some(m) = run.metrics.as_mut() else {
            return;
        };
        m.in_flight = None;
        let Some(read) = read else { return };
        m.last = Some(read.stamp);
        m.bounds = read.bounds;
        let (series, dropped) = (read.exposed.series, read.exposed.dropped);
        let uid = self.seen.job.uid().unwrap_or_default();
        self.ctx
            .trace_metrics
            .set(&uid, m.trace.clone(), read.exposed);
        if dropped == 0 || m.capped || self.seen.deleted {
            return;
        }
        m.capped = true;
        let max = m.spec.max_series;
        warn!(
            series,
            dropped,
            max,
            "the trace has more series than spec.metrics.maxSeries; the largest are exported"
        );
        self.ours
            .conditions
            .retain(|c| c.type_ != ConditionType::MetricsCapped.as_str());
        self.ours.conditions.push(Condition {
            type_: ConditionType::MetricsCapped.as_str().into(),
            status: "True".into(),
            reason: Reason::MaxSeries.into(),
            message: format!(
                "the maps have more series than spec.metrics.maxSeries ({max}): {series} exported (the largest), {dropped} dropped (tracejob_trace_metrics_dropped_series)"
            ),
            last_transition_time: writer::now(),
            observed_generation: self.seen.job.metadata.generation,
        });
        let reason = self.reason.clone();
        self.report(&reason);
    }

    /// The run has ended: its last values (the maps bpftrace printed as it ended, read from
    /// the output) are served two scrapes longer, then go.
    pub(super) async fn end_metrics(&mut self, run: &mut Run) {
        let Some(m) = run.metrics.as_mut() else {
            return;
        };
        if let Some(r) = m.in_flight.take() {
            r.abort();
        }
        let (path, spec, kinds, trace, mut bounds) = (
            run.files.stdout.clone(),
            m.spec.clone(),
            m.kinds.clone(),
            m.trace.clone(),
            m.bounds.clone(),
        );
        let last = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).ok()?;
            let parsed = crate::output::parse::parse_reader(
                std::io::BufReader::new(file),
                collect::MAPS_TEXT_LIMIT,
            )
            .ok()?;
            let maps = parsed.maps?;
            let exposed = prom::expose(&maps, &spec, &kinds, &trace, &mut bounds);
            drop(maps);
            release_freed_memory();
            // Nothing printed at the end (killed, say): the last read stays.
            (exposed.series > 0).then_some(exposed)
        })
        .await
        .ok()
        .flatten();
        let uid = self.seen.job.uid().unwrap_or_default();
        if let Some(exposed) = last {
            self.ctx.trace_metrics.set(&uid, m.trace.clone(), exposed);
        }
        self.ctx.trace_metrics.end(&uid);
    }
}

/// Gives the memory a large read freed back to the system. glibc keeps freed memory in the
/// arena of the thread that freed it, and reads run on whichever blocking thread is free: without
/// this, each of them would keep a large read's worth (100,000 keys: about 25 MB each).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it takes no pointers.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
