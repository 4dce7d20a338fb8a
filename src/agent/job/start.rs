//! Starting a claimed run (a place among the node's traces, its directory and record, the
//! shim), or taking over one an earlier agent started.

use super::target::{filled_in, target_watch};
use super::*;

impl Actor {
    /// Starts a claimed run: its directory and record, then the shim and bpftrace.
    pub(super) async fn start(&mut self, run_id: String) -> Option<Run> {
        let slot = self.slot().await?;
        let mut record = Record {
            namespace: self.seen.job.namespace().unwrap_or_default(),
            name: self.seen.job.name_any(),
            uid: self.seen.job.uid().unwrap_or_default(),
            run_id,
            ..Default::default()
        };
        let mut program = self.seen.job.spec.program.clone();
        if let Some(target) = self.seen.job.spec.target.clone() {
            if self.seen.job.spec.stop {
                // Stopped before it started: nothing to resolve.
            } else {
                match self.resolve(&target).await {
                    Resolved::Ready(running, container) => {
                        match filled_in(&program, &container) {
                            Ok(p) => program = p,
                            Err(why) => {
                                self.fail_started("TargetInvalid", why).await;
                                return None;
                            }
                        }
                        info!(container = %running.id, pid = container.main, cgroup = ?container.cgroup, "the target container runs here");
                        record.target_id = Some(running.id);
                        record.target_name = Some(running.name);
                        record.program = Some(program.clone());
                    }
                    Resolved::Fail(reason, why) => {
                        self.fail_started(reason, why).await;
                        return None;
                    }
                    Resolved::Over => return None,
                }
            }
        }
        let exporting = metrics::Exporting::new(&self.seen.job, &program, self.ctx.writer.node());
        let reads = match metrics::instrumented(&program, self.seen.job.spec.metrics.as_ref()) {
            Some((p, reads)) => {
                program = p;
                Some(reads)
            }
            None => None,
        };
        let (state, r, p) = (self.ctx.state.clone(), record.clone(), program.clone());
        let created =
            tokio::task::spawn_blocking(move || state.create(&r, &p).map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
        let files = match created {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "the run's directory could not be made");
                let message = format!("the agent could not store the run on the node: {e}");
                self.fail_unstarted("RunDirFailed", message).await;
                return None;
            }
        };
        let mut run = Run {
            record,
            files,
            process: Process::Starting {
                since: Instant::now(),
            },
            exit: tokio::spawn(async {}),
            since: Instant::now(),
            stop_seen: None,
            sigint_pending: false,
            printed_at_sigint: 0,
            progress: Progress::default(),
            attach_known: false,
            live: Live::default(),
            target: None,
            metrics: exporting,
            _slot: slot,
        };
        run.target = target_watch(&self.seen.job, &run.record, self.ctx.stores.pods.changes());
        if self.seen.job.spec.stop {
            info!("spec.stop was set before the trace started; not running bpftrace");
            run.process = Process::Exited(Exit::NotStarted);
            return Some(run);
        }
        // The shim's log is made on a blocking thread; the fork and exec here.
        let log = shim::log_file(&run.files);
        let log = tokio::task::spawn_blocking(log)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let cfg = &self.ctx.config;
        let spawned = log.and_then(|log| {
            shim::spawn(
                &self.ctx.exe,
                &run.files,
                log,
                &cfg.bpftrace,
                &self.seen.job.spec.args,
                cfg.max_output_bytes,
                cfg.host_cgroup_root.as_deref(),
                reads,
            )
        });
        match spawned {
            Ok(mut child) => {
                info!(shim = child.id(), "trace started under its shim");
                let pid = child.id();
                run.record.shim = tokio::task::spawn_blocking(move || {
                    pid.and_then(|pid| Identity::of(pid as i32))
                })
                .await
                .ok()
                .flatten();
                // A failed save ends the run (the loop interrupts it at once): an agent that took
                // it over could not find its shim.
                self.save(&run.record).await;
                run.exit = tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                self.ctx.metrics.running.inc();
            }
            Err(e) => {
                let why = format!("cannot start the agent's shim for bpftrace: {e}");
                run.process = Process::Exited(Exit::CouldNotStart(why));
            }
        }
        Some(run)
    }

    /// A place among the traces this node runs (`--max-running-traces`), waited for while the
    /// node runs as many, Pending with a Waiting condition that says so. None: deleted or the
    /// agent exits meanwhile; Some(None): stopped while it waited (it will not run).
    pub(super) async fn slot(&mut self) -> Option<Option<OwnedSemaphorePermit>> {
        let slots = self.ctx.slots.clone();
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Some(Some(permit));
        }
        let max = self.ctx.config.max_running_traces;
        info!(
            max,
            "this node runs as many traces as it may; waiting for one to end"
        );
        self.ours.message = Some(format!(
            "waiting: node {} runs {max} traces, its --max-running-traces; this one starts when one of them ends",
            self.ctx.writer.node()
        ));
        self.ours.conditions.retain(|c| c.type_ != WAITING);
        let message = self.ours.message.clone().unwrap_or_default();
        self.ours.conditions.push(status::waiting(
            "MaxRunningTraces",
            &message,
            &self.seen.job,
            writer::now(),
        ));
        self.report("Starting");
        let permit = loop {
            if self.seen.job.spec.stop {
                break None;
            }
            tokio::select! {
                permit = slots.clone().acquire_owned() => break permit.ok(),
                alive = self.seen.next() => if !alive || self.seen.deleted { return None },
            }
        };
        for c in self
            .ours
            .conditions
            .iter_mut()
            .filter(|c| c.type_ == WAITING)
        {
            c.status = "False".into();
            c.reason = "Started".into();
            c.message = "a slot freed".into();
            c.last_transition_time = writer::now();
        }
        Some(permit)
    }

    /// Ends a claimed TraceJob that could not start: Failed with `reason`, and no bpftrace.
    pub(super) async fn fail_started(&mut self, reason: &str, why: String) {
        warn!(reason, %why, "the trace cannot start");
        self.fail_unstarted(reason, why).await;
    }

    /// Takes over a run an earlier agent on this node started.
    pub(super) async fn resume(&mut self, record: Record) -> Run {
        tracing::Span::current().record("id", record.run_id.as_str());
        let files = match self.ctx.state.files(&record.run_id) {
            Ok(f) => f,
            // load() found the record under this id, so it is a UUID.
            Err(_) => RunFiles::in_dir(Path::new("/nonexistent")),
        };
        let shim = record.shim;
        let running = tokio::task::spawn_blocking(move || shim.is_some_and(|s| s.is_alive()))
            .await
            .unwrap_or(false);
        let ended = ended(&files).await;
        let now = Instant::now();
        let found = Found {
            running,
            ended: ended.map(|e| exit_of(Some(e))),
            stopped: record.stopped,
            killed: record.killed,
            tracing_since: record.tracing_since.map(|t| instant_of(t, now)),
        };
        let process = decide::resume(found, now);
        info!(?process, "taking over a trace started by an earlier agent");
        let exit = match record.shim {
            Some(shim) if running => {
                self.ctx.metrics.running.inc();
                // Not this agent's child: its exit comes through a pidfd.
                tokio::spawn(shim.exited())
            }
            _ => tokio::spawn(async {}),
        };
        let mut run = Run {
            stop_seen: record.stopped.map(|_| now),
            record,
            files,
            process,
            exit,
            since: now,
            sigint_pending: false,
            printed_at_sigint: 0,
            progress: Progress::default(),
            attach_known: false,
            live: Live::default(),
            target: None,
            metrics: None,
            // A trace taken over runs already: it takes a place if one is free.
            _slot: self.ctx.slots.clone().try_acquire_owned().ok(),
        };
        run.target = target_watch(&self.seen.job, &run.record, self.ctx.stores.pods.changes());
        let program = run
            .record
            .program
            .clone()
            .unwrap_or_else(|| self.seen.job.spec.program.clone());
        run.metrics = metrics::Exporting::new(&self.seen.job, &program, self.ctx.writer.node());
        // The earlier agent recorded that it traces but may have died before Running was
        // written: the status says so now.
        if let (Process::Tracing { .. }, Some(p), Some(probes)) =
            (&run.process, run.record.bpftrace, run.record.probes)
        {
            if self.seen.job.phase() != Some(Phase::Running) && !self.seen.deleted {
                info!("the earlier agent did not report Running; reporting it");
                self.report_running(p, probes);
            }
        }
        run
    }
}
