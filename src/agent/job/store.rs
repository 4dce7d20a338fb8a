//! The end of a run: the outcome decided and recorded, the output collected (off the async
//! threads) and stored in its ConfigMap, the end reported, the run's files removed.

use std::time::Duration;

use tracing::{info, warn, Instrument};

use crate::cluster::writer;
use crate::decide::job as decide;
use crate::decide::job::{Exit, Outcome, Process, StopReason};
use crate::host::bpftrace;
use crate::host::rundir::Landed;
use crate::output::collect;
use crate::output::collect::Collected;
use crate::output::fit::CONFIGMAP_BUDGET;

use super::{ended, Actor, Run, Stored};
use crate::resource::vocabulary::Reason;

impl Actor {
    /// Decides and records the outcome, has the output collected and stored, reports the end
    /// and removes the run's files. Each step done is recorded, so an agent that takes the run
    /// over after a restart goes on from there instead of doing it again.
    pub(super) async fn finish(&mut self, mut run: Run) {
        let exit = match &run.process {
            Process::Exited(e) => e.clone(),
            _ => Exit::Unrecorded,
        };
        let ended = ended(&run.files).await;
        if run.record.stopped.is_none() && ended.as_ref().is_some_and(|e| e.limit_reached) {
            // The shim stopped it at the output limit before this agent saw the limit reached.
            run.record.stopped = Some(StopReason::OutputLimit);
        }
        let outcome = match run.record.outcome.clone() {
            Some(o) => o,
            None => {
                let stderr = tokio::fs::read(&run.files.stderr).await.unwrap_or_default();
                let errors = bpftrace::error_text(&String::from_utf8_lossy(&stderr));
                let o = decide::outcome(&exit, run.record.stopped, run.record.killed, &errors);
                run.record.outcome = Some(o.clone());
                self.save(&run.record).await;
                o
            }
        };
        let details = run.details(self.unsaved.as_deref());
        let mut outcome = decide::explained(outcome, run.record.stopped, details);
        outcome = self.unless_unsaved(outcome, &run);
        info!(phase = %outcome.phase, ?exit, reason = %outcome.reason, "bpftrace ended");
        if let Some(live) = run.live.in_flight.take() {
            // A live copy must land before the final output, and the ConfigMap it made is the
            // run's own (an aborted one could have made it unseen).
            let abort = live.abort_handle();
            match tokio::time::timeout(Duration::from_secs(30), live).await {
                Ok(copied) => self.on_live_copied(&mut run, copied.ok()),
                Err(_) => abort.abort(),
            }
        }
        let landed = match run.record.landed.clone() {
            Some(l) => Some(l),
            None if self.seen.deleted => None,
            None => match self.store(&run).await {
                Stored::Landed(l) => {
                    info!(configmap = %l.configmap, bytes = l.bytes, stored = %l.reason, "output stored");
                    run.record.landed = Some(l.clone());
                    self.save(&run.record).await;
                    Some(l)
                }
                Stored::Failed(e) => {
                    outcome = decide::not_stored(outcome, &e);
                    None
                }
                // The agent is exiting: the next one stores it. Deleted: nobody wants it, and
                // its files go below.
                Stored::Interrupted if self.seen.exiting => return,
                Stored::Interrupted => None,
            },
        };
        // The save of where the output landed may have failed too.
        outcome = self.unless_unsaved(outcome, &run);
        if !self.seen.deleted && !self.seen.exiting {
            self.report_outcome(&outcome, landed.as_ref(), run.stop_seen);
            if !self.report_until_written().await {
                // The agent is exiting: the next one reports from the record.
                return;
            }
        }
        if self.seen.exiting {
            return;
        }
        self.remove(&run.record.run_id).await;
    }

    /// The outcome, or Failed/RecordNotSaved when a save of this run's record failed (unless
    /// it was stopped for that already, which says so).
    fn unless_unsaved(&self, outcome: Outcome, run: &Run) -> Outcome {
        match &self.unsaved {
            Some(error)
                if run.record.stopped != Some(StopReason::RecordNotSaved)
                    && outcome.reason != Reason::RecordNotSaved.as_str() =>
            {
                decide::not_recorded(outcome, error)
            }
            _ => outcome,
        }
    }

    /// Removes a run's directory (on a blocking thread).
    pub(super) async fn remove(&self, run_id: &str) {
        let (state, id) = (self.ctx.state.clone(), run_id.to_string());
        match tokio::task::spawn_blocking(move || state.remove(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not remove the run's files"),
            Err(e) => warn!(error = %e, "could not remove the run's files"),
        }
    }

    /// Collects the output (a few runs at a time, on blocking threads) and stores it in the
    /// ConfigMap, retrying transient failures, while following the TraceJob.
    pub(super) async fn store(&mut self, run: &Run) -> Stored {
        let ctx = self.ctx.clone();
        let stdout = run.files.stdout.clone();
        let dropped = ended(&run.files).await.map_or(0, |e| e.stdout.dropped);
        let program = run.record.program.clone();
        let (writer, job, run_id) = (
            self.ctx.writer.clone(),
            self.seen.job.clone(),
            run.record.run_id.clone(),
        );
        let ours = self.ours.output_ref.as_ref().map(|r| r.name.clone());
        let mut task = tokio::spawn(
            async move {
                let collected = {
                    let _permit = ctx.collections.acquire().await;
                    ctx.metrics.collecting.inc();
                    ctx.metrics.collections.inc();
                    let version = ctx.bpftrace_version.clone();
                    // The program as it ran goes beside the output when it differs from the spec.
                    let budget = CONFIGMAP_BUDGET
                        .saturating_sub(program.as_ref().map_or(0, |p| p.len() as u64));
                    let read = tokio::task::spawn_blocking(move || {
                        collect::collect(&stdout, dropped, &version, budget).map(|mut c| {
                            if let Some(p) = program {
                                c.contents = c.contents.with_program(p);
                            }
                            c
                        })
                    })
                    .await;
                    ctx.metrics.collecting.dec();
                    match read {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => return Err(format!("reading the output on the node: {e}")),
                        Err(e) => return Err(format!("reading the output on the node: {e}")),
                    }
                };
                let Collected { contents, stored } = collected;
                let mut delays = writer::backoff();
                let mut ours = ours;
                loop {
                    match writer.output(&job, &run_id, &contents, None, ours.as_deref()).await {
                        Ok(name) => {
                            let (reason, message) = stored.describe(&name);
                            return Ok(Landed {
                                configmap: name,
                                reason: reason.into(),
                                message,
                                bytes: stored.raw + stored.dropped_on_node,
                            });
                        }
                        Err(e) if e.is_transient() => {
                            let delay = delays.next().unwrap_or(Duration::from_secs(30));
                            warn!(error = %e, retry_in = ?delay, "writing the output ConfigMap failed");
                            tokio::time::sleep(delay).await;
                        }
                        // A name this run was writing is not ours after all (deleted and taken
                        // meanwhile): start again from a new ConfigMap.
                        Err(e) if ours.is_some() && e.is_refused() => {
                            warn!(error = %e, "the run's ConfigMap cannot be updated; writing a new one");
                            ours = None;
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            .in_current_span(),
        );
        loop {
            tokio::select! {
                done = &mut task => return match done {
                    Ok(Ok(l)) => Stored::Landed(l),
                    Ok(Err(e)) => Stored::Failed(e),
                    Err(e) => Stored::Failed(e.to_string()),
                },
                alive = self.seen.next() => if !alive || self.seen.deleted {
                    task.abort();
                    return Stored::Interrupted;
                },
                written = self.status.written.recv() => self.on_written(written),
            }
        }
    }
}
