//! Supervising a started run: the loop that waits on the process, spec changes, timers and
//! write completions, reports Running once probes attach, and sends SIGINT (or SIGKILL) when
//! `decide::job::next` says so.

use std::time::{Duration, Instant};

use kube::ResourceExt;
use nix::sys::signal::Signal;
use tracing::{info, warn};

use crate::agent::Metrics;
use crate::cluster::writer;
use crate::cluster::writer::Written;
use crate::decide::job as decide;
use crate::decide::job::{Process, Step, StopReason, Wanted};
use crate::host::process::Identity;
use crate::host::{progress, shim};
use crate::resource::{Phase, TraceJobStatus};

use super::{ended, exit_of, Actor, Run};
use crate::resource::vocabulary::Reason;

impl Actor {
    /// Follows the run until bpftrace has ended, then reports its outcome.
    pub(super) async fn follow(&mut self, mut run: Run) {
        loop {
            if !matches!(run.process, Process::Exited(_)) {
                // Files and /proc, read on a blocking thread once per turn.
                let starting = matches!(run.process, Process::Starting { .. });
                let want = progress::Want {
                    // Once more after it started (or was taken over): where the output starts.
                    attach: starting || !run.attach_known,
                    polling: starting || matches!(run.process, Process::Interrupted { .. }),
                };
                let output_from = run.progress.output_from;
                run.progress = progress::look_async(&run.files, run.record.bpftrace, want).await;
                if want.attach {
                    run.attach_known = !starting;
                } else {
                    run.progress.output_from = output_from;
                }
            }
            if let Process::Starting { .. } = run.process {
                self.check_attached(&mut run).await;
            }
            if run.sigint_pending {
                self.signal(&mut run, Signal::SIGINT);
            }
            if let Process::Tracing { .. } = run.process {
                self.copy_live(&mut run);
                self.read_metrics(&mut run);
            }
            if matches!(
                run.process,
                Process::Starting { .. } | Process::Tracing { .. }
            ) {
                self.check_target(&mut run).await;
                self.check_scope(&mut run).await;
            }
            let now = Instant::now();
            let wanted = self.wanted(&run);
            match decide::next(wanted, &run.process, now) {
                Step::Collect => break,
                Step::Interrupt(reason) => self.interrupt(&mut run, reason).await,
                Step::Reinterrupt => {
                    warn!("bpftrace has not ended since SIGINT; sending SIGINT again");
                    self.signal(&mut run, Signal::SIGINT);
                    if let Process::Interrupted { at, reason, .. } = run.process {
                        run.process = Process::Interrupted {
                            at,
                            signalled: now,
                            reason,
                        };
                    }
                }
                Step::Kill => {
                    warn!("bpftrace did not exit within the grace period; killing it");
                    run.record.killed = true;
                    // Killed whether or not the record keeps it: the grace period is over.
                    self.save(&run.record).await;
                    self.signal(&mut run, Signal::SIGKILL);
                    let reason = run.record.stopped.unwrap_or(StopReason::Requested);
                    run.process = Process::Killed { reason };
                }
                Step::Wait(until) => {
                    if !self.wait(&mut run, until).await {
                        return;
                    }
                }
            }
        }
        self.end_metrics(&mut run).await;
        self.finish(run).await;
    }

    /// Waits for the next thing that can change a decision. False: the agent is exiting.
    pub(super) async fn wait(&mut self, run: &mut Run, until: Option<Instant>) -> bool {
        let now = Instant::now();
        let nap = if matches!(run.process, Process::Starting { .. }) || run.sigint_pending {
            // Looking for the attach line (or for bpftrace's PID) often.
            Duration::from_millis(25)
        } else {
            // At least every second: the output's size and live output.
            until.map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(now).min(Duration::from_secs(1))
            })
        };
        let live = async {
            match run.live.in_flight.as_mut() {
                Some(handle) => handle.await.ok(),
                None => std::future::pending().await,
            }
        };
        let metrics_read = async {
            match run.metrics.as_mut().and_then(|m| m.in_flight.as_mut()) {
                Some(handle) => handle.await.ok().flatten(),
                None => std::future::pending().await,
            }
        };
        let pods_changed = async {
            match run.target.as_mut() {
                Some(t) if run.record.target_lost.is_none() => t.pods.next().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut run.exit => {
                run.process = Process::Exited(exit_of(ended(&run.files).await));
                self.ctx.metrics.running.dec();
            }
            alive = self.seen.next() => return alive,
            written = self.status.written.recv() => self.on_written(written),
            copied = live => {
                run.live.in_flight = None;
                self.on_live_copied(run, copied);
            }
            read = metrics_read => self.on_metrics_read(run, read),
            _ = pods_changed => {
                if let Some(t) = run.target.as_mut() {
                    t.look = true;
                }
            }
            _ = tokio::time::sleep(nap) => {}
        }
        true
    }

    pub(super) fn wanted(&self, run: &Run) -> Wanted {
        let (head, _) = shim::split(self.ctx.config.max_output_bytes);
        let printed = run.progress.printed;
        let stuck = decide::stuck(
            &run.process,
            printed,
            run.printed_at_sigint,
            run.progress.polling,
        );
        Wanted {
            deleted: self.seen.deleted,
            output_full: printed >= head,
            stuck,
            target_lost: run.record.target_lost.is_some(),
            target_restarted: run.record.target_restarted,
            revoked: run.record.revoked.is_some(),
            agent_removed: *self.ctx.removed.borrow(),
            status_rejected: self.rejected.is_some(),
            record_unsaved: self.unsaved.is_some(),
            ..Wanted::of(&self.seen.job, self.ctx.config.start_timeout())
        }
    }

    pub(super) fn on_written(&mut self, written: Option<Written>) {
        match written {
            Some(Written::Gone { .. }) => self.seen.deleted = true,
            Some(Written::Rejected { error, .. }) => {
                warn!(%error, "the API server refused the status; stopping the trace");
                self.rejected = Some(error);
            }
            Some(Written::Done { .. } | Written::Conflict { .. }) | None => {}
        }
    }

    /// Reports Running once bpftrace is tracing (and the record says so, durably).
    pub(super) async fn check_attached(&mut self, run: &mut Run) {
        if run.record.bpftrace.is_none() {
            if let Some(started) = run.progress.started.clone() {
                if let Some(e) = &started.cgroup_error {
                    warn!(error = %e, "the trace stays in the agent's cgroup: it will end if the agent's container stops");
                }
                info!(pid = started.bpftrace.pid, "bpftrace started");
                run.record.bpftrace = Some(started.bpftrace);
                self.save(&run.record).await;
            }
        }
        let Some(p) = run.record.bpftrace else { return };
        let seen = &run.progress;
        let Some(mut probes) = decide::tracing(seen.line, seen.printed_after, seen.polling) else {
            return;
        };
        if run.metrics.is_some() {
            // The probe added for spec.metrics is not the user's.
            probes = probes.saturating_sub(1);
        }
        let latency = run.since.elapsed();
        self.ctx.metrics.started.inc();
        Metrics::observe(&self.ctx.metrics.start_latency, latency);
        run.process = Process::Tracing {
            since: Instant::now(),
        };
        run.record.probes = Some(probes);
        run.record.tracing_since = Some(k8s_openapi::jiff::Timestamp::now().as_second());
        info!(probes, ?latency, "probes attached; tracing");
        // Running is reported only once the record says so: a failed save ends the run instead.
        if !self.save(&run.record).await || self.seen.deleted {
            return;
        }
        self.report_running(p, probes);
    }

    /// Reports Running (and its Event): bpftrace `p` traces with `probes` probes.
    pub(super) fn report_running(&mut self, p: Identity, probes: u32) {
        self.ours = TraceJobStatus {
            phase: Some(Phase::Running),
            pid: Some(p.pid.into()),
            probes: Some(probes.into()),
            start_time: Some(writer::now()),
            message: Some(format!("tracing with {probes} probes")),
            ..self.ours.clone()
        };
        self.report(Reason::ProbesAttached.as_str());
        self.ctx.writer.event(
            &self.seen.job,
            false,
            Reason::Started.as_str(),
            format!("bpftrace attached {probes} probes (pid {})", p.pid),
        );
    }

    /// Records why the trace stops, then sends SIGINT and reports Stopping. A failed save does
    /// not hold the SIGINT back: the run is ending either way (it then ends as RecordNotSaved).
    pub(super) async fn interrupt(&mut self, run: &mut Run, reason: StopReason) {
        info!(reason = reason.describe(), "stopping: sending SIGINT");
        let now = Instant::now();
        run.process = Process::Interrupted {
            at: now,
            signalled: now,
            reason,
        };
        run.stop_seen = Some(now);
        run.record.stopped = Some(reason);
        self.save(&run.record).await;
        run.sigint_pending = true;
        self.signal(run, Signal::SIGINT);
        if self.seen.deleted {
            return;
        }
        let mut why = decide::stop_message(reason, run.details(self.unsaved.as_deref()));
        if let (Some(error), false) = (&self.unsaved, reason == StopReason::RecordNotSaved) {
            // Stopped for another reason, whose save failed: the run ends failed, and says why.
            why = format!("{why} (and the agent could not save the run's record: {error})");
        }
        self.ours.phase = Some(Phase::Stopping);
        self.ours.message = Some(format!(
            "stopping: {why}; waiting for bpftrace to print its maps"
        ));
        self.report("Stopping");
        self.ctx.writer.event(
            &self.seen.job,
            false,
            "Stopping",
            format!("sent SIGINT: {why}"),
        );
    }

    /// Signals bpftrace, once its shim has said which process it is.
    pub(super) fn signal(&mut self, run: &mut Run, signal: Signal) {
        if run.record.bpftrace.is_none() {
            run.record.bpftrace = run.progress.started.as_ref().map(|s| s.bpftrace);
        }
        match run.record.bpftrace {
            Some(p) => {
                p.signal(signal);
                if signal == Signal::SIGINT {
                    run.sigint_pending = false;
                    run.printed_at_sigint = run.progress.printed;
                }
            }
            // Not started yet: the shim is about to start it; SIGINT is sent once it has.
            None => run.sigint_pending = signal == Signal::SIGINT,
        }
    }

    /// Whether the namespace may still trace this node, from the watched Namespace and Node (a
    /// memory read: done on every turn of the loop, so a revoked scope stops the trace within a
    /// second or two). A running trace taken over after a restart is checked the same way.
    pub(super) async fn check_scope(&mut self, run: &mut Run) {
        if run.record.revoked.is_some() {
            return;
        }
        let namespace = self.seen.job.namespace().unwrap_or_default();
        let (Some(annotation), Some(labels)) = (
            self.ctx.stores.namespace_selector(&namespace),
            self.ctx.stores.node_labels(),
        ) else {
            // Not watched (yet): nothing is known to have changed.
            return;
        };
        if let Err(why) = self.allowed(annotation.as_deref(), &labels) {
            info!(%why, "the namespace may no longer trace this node; stopping the trace");
            run.record.revoked = Some(why);
            self.save(&run.record).await;
        }
    }
}
