//! Supervising a started run: the loop that waits on the process, spec changes, timers and
//! write completions, reports Running once probes attach, and sends SIGINT (or SIGKILL) when
//! `decide::job::next` says so.

use super::*;

impl Actor {
    /// Follows the run until bpftrace has ended, then reports its outcome.
    pub(super) async fn follow(&mut self, mut run: Run) {
        loop {
            if let Process::Starting { .. } = run.process {
                self.check_attached(&mut run);
            }
            if run.sigint_pending {
                self.signal(&mut run, Signal::SIGINT);
            }
            if let Process::Tracing { .. } = run.process {
                self.copy_live(&mut run);
            }
            if matches!(
                run.process,
                Process::Starting { .. } | Process::Tracing { .. }
            ) {
                self.check_target(&mut run);
                self.check_scope(&mut run);
            }
            let now = Instant::now();
            let wanted = self.wanted(&run);
            match decide::next(wanted, &run.process, now) {
                Step::Collect => break,
                Step::Interrupt(reason) => self.interrupt(&mut run, reason),
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
                    self.signal(&mut run, Signal::SIGKILL);
                    run.record.killed = true;
                    self.save(&run.record);
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
        let pods_changed = async {
            match run.target.as_mut() {
                Some(t) if run.record.target_lost.is_none() => t.pods.next().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut run.exit => {
                run.process = Process::Exited(exit_of(rundir::read_json(&run.files.ended)));
                self.ctx.metrics.running.dec();
            }
            alive = self.seen.next() => return alive,
            written = self.status.written.recv() => self.on_written(written),
            copied = live => {
                run.live.in_flight = None;
                self.on_live_copied(run, copied);
            }
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
        let printed = std::fs::metadata(&run.files.stdout).map_or(0, |m| m.len());
        let stuck = matches!(run.process, Process::Interrupted { .. })
            && printed == run.printed_at_sigint
            && run
                .record
                .bpftrace
                .is_some_and(|p| process::is_polling(p.pid));
        Wanted {
            deleted: self.seen.deleted,
            output_full: printed >= head,
            stuck,
            target_lost: run.record.target_lost.is_some(),
            revoked: run.record.revoked.is_some(),
            agent_removed: *self.ctx.removed.borrow(),
            status_rejected: self.rejected.is_some(),
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

    /// Reports Running once bpftrace is tracing.
    pub(super) fn check_attached(&mut self, run: &mut Run) {
        if run.record.bpftrace.is_none() {
            if let Some(started) = rundir::read_json::<Started>(&run.files.started) {
                if let Some(e) = &started.cgroup_error {
                    warn!(error = %e, "the trace stays in the agent's cgroup: it will end if the agent's container stops");
                }
                info!(pid = started.bpftrace.pid, "bpftrace started");
                run.record.bpftrace = Some(started.bpftrace);
                self.save(&run.record);
            }
        }
        let Some(p) = run.record.bpftrace else { return };
        let files = &run.files;
        let printed = std::fs::metadata(&files.stdout).map_or(0, |m| m.len());
        // Up to 0.23 the attach line is on stdout; 0.27 prints it on stderr.
        let (line, printed_after) =
            match bpftrace::attach_line(&bpftrace::head(&files.stdout, 4096)) {
                Some(line) => (Some(line), printed > line.end as u64),
                None => (
                    bpftrace::attach_line(&bpftrace::head(&files.stderr, 16384)),
                    printed > 0,
                ),
            };
        let Some(probes) = decide::tracing(line, printed_after, process::is_polling(p.pid)) else {
            return;
        };
        let latency = run.since.elapsed();
        self.ctx.metrics.started.inc();
        Metrics::observe(&self.ctx.metrics.start_latency, latency);
        run.process = Process::Tracing {
            since: Instant::now(),
        };
        run.record.probes = Some(probes);
        run.record.tracing_since = Some(k8s_openapi::jiff::Timestamp::now().as_second());
        self.save(&run.record);
        info!(probes, ?latency, "probes attached; tracing");
        if self.seen.deleted {
            return;
        }
        self.ours = TraceJobStatus {
            phase: Some(Phase::Running),
            pid: Some(p.pid.into()),
            probes: Some(probes.into()),
            start_time: Some(writer::now()),
            message: Some(format!("tracing with {probes} probes")),
            ..self.ours.clone()
        };
        self.report("ProbesAttached");
        self.ctx.writer.event(
            &self.seen.job,
            false,
            "Started",
            format!("bpftrace attached {probes} probes (pid {})", p.pid),
        );
    }

    pub(super) fn interrupt(&mut self, run: &mut Run, reason: StopReason) {
        info!(reason = reason.describe(), "stopping: sending SIGINT");
        let now = Instant::now();
        run.process = Process::Interrupted {
            at: now,
            signalled: now,
            reason,
        };
        run.stop_seen = Some(now);
        run.record.stopped = Some(reason);
        self.save(&run.record);
        run.sigint_pending = true;
        self.signal(run, Signal::SIGINT);
        if self.seen.deleted {
            return;
        }
        let why = match (&run.record.target_lost, &run.record.revoked, reason) {
            (Some(lost), _, StopReason::TargetLost) => lost.clone(),
            (_, Some(revoked), StopReason::Revoked) => {
                format!("{}: {revoked}", reason.describe())
            }
            _ => reason.describe().to_string(),
        };
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
            run.record.bpftrace =
                rundir::read_json::<Started>(&run.files.started).map(|s| s.bpftrace);
        }
        match run.record.bpftrace {
            Some(p) => {
                p.signal(signal);
                if signal == Signal::SIGINT {
                    run.sigint_pending = false;
                    run.printed_at_sigint =
                        std::fs::metadata(&run.files.stdout).map_or(0, |m| m.len());
                }
            }
            // Not started yet: the shim is about to start it; SIGINT is sent once it has.
            None => run.sigint_pending = signal == Signal::SIGINT,
        }
    }

    /// Whether the namespace may still trace this node, from the watched Namespace and Node (a
    /// memory read: done on every turn of the loop, so a revoked scope stops the trace within a
    /// second or two). A running trace taken over after a restart is checked the same way.
    pub(super) fn check_scope(&mut self, run: &mut Run) {
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
            self.save(&run.record);
        }
    }
}
