//! Reporting: the status this actor wants handed to the writer (which never blocks the loop),
//! waiting for the final one, the outcome's status and Event, and the run's record saved.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::agent::Metrics;
use crate::cluster::writer;
use crate::cluster::writer::{Desired, Written};
use crate::decide::job as decide;
use crate::decide::job::Outcome;
use crate::decide::status;
use crate::host::rundir::{Landed, Record};
use crate::resource::{OutputRef, Phase, TraceJobStatus};

use super::{Actor, Reported};
use crate::resource::vocabulary::{ConditionType, Reason};

impl Actor {
    /// Waits until the final status is written. If the API server refuses it, a plain Failed
    /// status saying why is written instead; if that is refused too, both are tried again with
    /// backoff while the record keeps the outcome. False: the agent is exiting first.
    pub(super) async fn report_until_written(&mut self) -> bool {
        let wanted = (self.ours.clone(), self.reason.clone());
        let mut delays = writer::backoff();
        loop {
            let error = match self.reported().await {
                Reported::Written | Reported::Deleted => {
                    debug!("final status written");
                    return true;
                }
                Reported::Exiting => return false,
                Reported::Rejected(e) => e,
            };
            warn!(%error, "the API server refused the final status; reporting Failed instead");
            self.ours.phase = Some(Phase::Failed);
            self.ours.message = Some(format!(
                "the API server refused the TraceJob's status: {error}"
            ));
            self.report(Reason::StatusRejected.as_str());
            match self.reported().await {
                Reported::Written | Reported::Deleted => return true,
                Reported::Exiting => return false,
                Reported::Rejected(error) => {
                    let pause = delays.next().unwrap_or(Duration::from_secs(30));
                    warn!(%error, retry_in = ?pause, "the API server refuses every status of this TraceJob; keeping its outcome on the node and trying again");
                    if !self.pause(pause).await {
                        return !self.seen.exiting;
                    }
                    (self.ours, self.reason) = wanted.clone();
                    let reason = self.reason.clone();
                    self.report(&reason);
                }
            }
        }
    }

    pub(super) fn report_outcome(
        &mut self,
        outcome: &Outcome,
        landed: Option<&Landed>,
        stop_seen: Option<Instant>,
    ) {
        let mut message = outcome.message.clone();
        let mut conditions = std::mem::take(&mut self.ours.conditions);
        conditions.retain(|c| c.type_ != ConditionType::OutputStored.as_str());
        if let Some(l) = landed {
            if l.reason != Reason::Stored.as_str() || l.message.contains("binaryData") {
                message = format!("{message}; {}", l.message);
            }
            conditions.push(status::output_stored(
                &l.reason,
                &l.message,
                &self.seen.job,
                writer::now(),
            ));
            if let Some(seen) = stop_seen {
                Metrics::observe(&self.ctx.metrics.collect_latency, seen.elapsed());
            }
        }
        self.ours = TraceJobStatus {
            phase: Some(outcome.phase),
            exit_code: outcome.exit_code,
            completion_time: Some(writer::now()),
            message: Some(message.clone()),
            output_ref: landed.map(|l| OutputRef {
                name: l.configmap.clone(),
            }),
            conditions,
            ..self.ours.clone()
        };
        self.report(&outcome.reason);
        if outcome.phase == Phase::Completed {
            self.ctx.metrics.completed.inc();
        } else {
            self.ctx.metrics.failed(&outcome.reason);
        }
        let reported = Outcome {
            message,
            ..outcome.clone()
        };
        let (warning, reason, note) = decide::event(
            &reported,
            landed.map_or(0, |l| l.bytes),
            landed.map(|l| l.configmap.as_str()),
        );
        self.ctx.writer.event(&self.seen.job, warning, reason, note);
    }

    /// Fails a TraceJob that has no run to collect from.
    pub(super) async fn fail_unstarted(&mut self, reason: &str, message: String) {
        self.ours.phase = Some(Phase::Failed);
        self.ours.completion_time = Some(writer::now());
        self.ours.message = Some(message.clone());
        self.report(reason);
        self.ctx
            .writer
            .event(&self.seen.job, true, Reason::Failed.as_str(), message);
        self.ctx.metrics.failed(reason);
        if let Reported::Rejected(error) = self.reported().await {
            warn!(%error, "the API server refused the status");
        }
    }

    /// Waits until the last status handed to the writer is written, or will not be.
    pub(super) async fn reported(&mut self) -> Reported {
        loop {
            tokio::select! {
                written = self.status.written.recv() => match written {
                    Some(Written::Done { seq, .. }) if seq == self.seq => return Reported::Written,
                    Some(Written::Gone { .. }) | None => return Reported::Deleted,
                    Some(Written::Rejected { seq, error, .. }) if seq == self.seq => {
                        return Reported::Rejected(error);
                    }
                    Some(_) => {}
                },
                alive = self.seen.next() => if !alive {
                    return Reported::Exiting;
                } else if self.seen.deleted {
                    return Reported::Deleted;
                },
            }
        }
    }

    /// Hands the status this agent wants to the writer.
    pub(super) fn report(&mut self, reason: &str) {
        self.report_if(None, reason);
    }

    pub(super) fn report_if(&mut self, precondition: Option<String>, reason: &str) -> u64 {
        self.reason = reason.to_string();
        self.ours = status::complete(self.ours.clone(), reason, &self.seen.job, writer::now());
        self.seq += 1;
        self.status.write(Desired {
            seq: self.seq,
            status: self.ours.clone(),
            precondition,
        });
        self.seq
    }

    /// Saves the run's record (atomically and fsynced, on a blocking thread) before what it says
    /// is acted on. False when it could not be saved: the first such error is kept, and the run
    /// ends (`Wanted::record_unsaved`) with the reason RecordNotSaved.
    pub(super) async fn save(&mut self, record: &Record) -> bool {
        let (state, record) = (self.ctx.state.clone(), record.clone());
        let saved = match tokio::task::spawn_blocking(move || state.save(&record)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match saved {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "could not save the run's record; ending the run");
                self.ctx.metrics.record_save_failures.inc();
                self.unsaved.get_or_insert(error);
                false
            }
        }
    }
}
