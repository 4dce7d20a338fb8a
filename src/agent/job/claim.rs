//! The claim: status.id and Pending written only if the TraceJob is still the version read, so
//! one TraceJob is never started twice; and failing one that was never started.

use std::time::Duration;

use kube::ResourceExt;
use tracing::{info, warn};

use crate::cluster::writer;
use crate::cluster::writer::Written;
use crate::resource::{Phase, TraceJobStatus};

use super::{Actor, Claimed};
use crate::resource::vocabulary::Reason;

impl Actor {
    /// Ends a TraceJob that was never started: Failed with `reason`, written only if it is still
    /// the version read. (A TraceJob without spec.nodeName gets here only on its pod's node.)
    pub(super) async fn fail_unclaimed(&mut self, reason: &str, why: String) -> Claimed {
        self.ours = TraceJobStatus {
            phase: Some(Phase::Failed),
            node_name: Some(self.ctx.writer.node().to_string()),
            completion_time: Some(writer::now()),
            message: Some(why.clone()),
            ..Default::default()
        };
        match self.write_claim(reason).await {
            Claimed::Won(_) => {
                warn!(reason, %why, "the TraceJob failed before it started");
                self.ctx
                    .writer
                    .event(&self.seen.job, true, Reason::Failed.as_str(), why);
                self.ctx.metrics.failed(reason);
                Claimed::Refused
            }
            other => other,
        }
    }

    /// Claims the TraceJob for a run: status.id and Pending, only if the object is still the
    /// version read (so one TraceJob is never started twice).
    pub(super) async fn claim(&mut self) -> Claimed {
        let run_id = uuid::Uuid::new_v4().to_string();
        self.ours = TraceJobStatus {
            phase: Some(Phase::Pending),
            id: Some(run_id.clone()),
            node_name: Some(self.ctx.writer.node().to_string()),
            message: Some(format!(
                "starting bpftrace on node {}",
                self.ctx.writer.node()
            )),
            ..Default::default()
        };
        let claimed = self.write_claim(Reason::Starting.as_str()).await;
        if let Claimed::Won(_) = claimed {
            tracing::Span::current().record("id", run_id.as_str());
            return Claimed::Won(run_id);
        }
        claimed
    }

    /// Writes `self.ours` only if the TraceJob is still the version read (a node's entry of a
    /// TraceJob on several nodes is its own: it needs no precondition).
    pub(super) async fn write_claim(&mut self, reason: &str) -> Claimed {
        let precondition = match self.seen.job.spec.node_selector {
            Some(_) => None,
            None => self.seen.job.resource_version(),
        };
        let seq = self.report_if(precondition, reason);
        loop {
            tokio::select! {
                written = self.status.written.recv() => match written {
                    Some(Written::Done { seq: s, .. }) if s == seq => {
                        return Claimed::Won(String::new());
                    }
                    Some(Written::Conflict { seq: s, newest }) if s == seq => {
                        info!("the TraceJob changed while it was claimed; deciding again");
                        match newest {
                            Some(n) => self.seen.job = *n,
                            None => return self.wait_for_newer().await,
                        }
                        return Claimed::Again;
                    }
                    Some(Written::Gone { .. }) => return Claimed::Over,
                    Some(Written::Rejected { seq: s, error, forbidden: true }) if s == seq => {
                        // Forbidden for this agent (its token, RBAC or the fence): trying again
                        // cannot help, and every agent retrying would flood the API server.
                        tracing::error!(%error, "the API server forbids this agent to claim the TraceJob; giving it up");
                        self.ctx.metrics.failed(Reason::ClaimForbidden.as_str());
                        self.ctx.writer.event(&self.seen.job, true, Reason::ClaimForbidden.as_str(), format!("the agent of node {} may not claim this TraceJob: {error}", self.ctx.writer.node()));
                        return Claimed::Refused;
                    }
                    Some(Written::Rejected { seq: s, error, .. }) if s == seq => {
                        warn!(%error, "the claim was refused; trying again later");
                        self.rejected = Some(error);
                        return Claimed::Again;
                    }
                    Some(_) => {}
                    None => return Claimed::Over,
                },
                alive = self.seen.next() => if !alive || self.seen.deleted {
                    return Claimed::Over;
                },
            }
        }
    }

    /// Waits for the next version of the TraceJob. Over if it was deleted or the agent exits.
    pub(super) async fn wait_for_newer(&mut self) -> Claimed {
        if self.seen.next().await && !self.seen.deleted {
            Claimed::Again
        } else {
            Claimed::Over
        }
    }

    /// Waits `pause`, following spec changes meanwhile. False: deleted or the agent exits.
    pub(super) async fn pause(&mut self, pause: Duration) -> bool {
        self.seen.follow(tokio::time::sleep(pause)).await.is_some()
    }
}
