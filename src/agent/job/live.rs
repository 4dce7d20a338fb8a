//! Live output: the newest output copied into the ConfigMap while the trace runs, within the
//! node's budget, off the actor's loop.

use std::time::Instant;

use tracing::{warn, Instrument};

use crate::output::collect;
use crate::output::fit::Contents;
use crate::resource::OutputRef;

use super::{Actor, Run};

impl Actor {
    /// Copies the newest output into the ConfigMap while the trace runs: at most every
    /// `--live-interval`, only when it grew, past the attach line, within the node's budget.
    pub(super) fn copy_live(&mut self, run: &mut Run) {
        let Some(interval) = self.ctx.config.live_interval() else {
            return;
        };
        if self.seen.deleted
            || run.live.in_flight.is_some()
            || run.live.last.is_some_and(|t| t.elapsed() < interval)
        {
            return;
        }
        let (printed, from) = (run.progress.printed, run.progress.output_from);
        if printed <= from || printed == run.live.size {
            return;
        }
        run.live.last = Some(Instant::now());
        let window = self.ctx.config.live_window_bytes;
        let bytes = (printed - from).min(window);
        let spent = self
            .ctx
            .live_budget
            .lock()
            .map(|mut b| b.spend(bytes, Instant::now()))
            .unwrap_or(false);
        if !spent {
            self.ctx.metrics.live_skipped.inc();
            return;
        }
        let (writer, job, run_id, path) = (
            self.ctx.writer.clone(),
            self.seen.job.clone(),
            run.record.run_id.clone(),
            run.files.stdout.clone(),
        );
        let ours = self.ours.output_ref.as_ref().map(|r| r.name.clone());
        run.live.in_flight = Some(tokio::spawn(
            async move {
                let read = tokio::task::spawn_blocking(move || {
                    collect::live_window(&path, from, window)
                        .map(|(offset, bytes)| (offset, Contents::live(bytes), printed))
                })
                .await;
                let (offset, contents, printed) = match read {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(format!("reading the output: {e}")),
                    Err(e) => return Err(format!("reading the output: {e}")),
                };
                let name = writer
                    .output(&job, &run_id, &contents, Some(offset), ours.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((name, printed))
            }
            .in_current_span(),
        ));
    }

    pub(super) fn on_live_copied(
        &mut self,
        run: &mut Run,
        copied: Option<Result<(String, u64), String>>,
    ) {
        match copied {
            Some(Ok((name, printed))) => {
                self.ctx.metrics.live_bytes.inc_by(
                    printed
                        .saturating_sub(run.live.size)
                        .min(self.ctx.config.live_window_bytes),
                );
                run.live.size = printed;
                let output_ref = Some(OutputRef { name });
                if self.ours.output_ref != output_ref && !self.seen.deleted {
                    self.ours.output_ref = output_ref;
                    let reason = self.reason.clone();
                    self.report(&reason);
                }
            }
            Some(Err(e)) => warn!(error = %e, "live output not written; trying again later"),
            None => {}
        }
    }
}
