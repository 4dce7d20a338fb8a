//! Starting a claimed run (a place among the node's traces, its directory and record, the
//! shim), or taking over one an earlier agent started.

use super::target::{filled_in, target_watch};
use std::path::Path;
use std::time::Instant;

use kube::ResourceExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, warn};

use crate::cluster::writer;
use crate::decide::job as decide;
use crate::decide::job::{Exit, Found, Process};
use crate::decide::status;
use crate::host::process::Identity;
use crate::host::progress::Progress;
use crate::host::rundir::{Record, RunFiles};
use crate::host::shim;
use crate::resource::Phase;

use std::sync::Arc;

use super::metrics;

use super::{ended, exit_of, instant_of, Actor, Live, Resolved, Run, Slot};
use crate::resource::vocabulary::{ConditionType, Reason};

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
                                self.fail_started(Reason::TargetInvalid.as_str(), why).await;
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
                self.fail_unstarted(Reason::RunDirFailed.as_str(), message)
                    .await;
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
            _slot: slot.unwrap_or_default(),
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

    /// A place among the traces of this TraceJob's namespace on this node
    /// (`--max-running-traces-per-namespace`), then among all the traces this node runs
    /// (`--max-running-traces`), each waited for while taken, Pending with a Waiting condition
    /// that says so. None: deleted or the agent exits meanwhile; Some(None): stopped while it
    /// waited (it will not run).
    pub(super) async fn slot(&mut self) -> Option<Option<Slot>> {
        let namespace = self.seen.job.namespace().unwrap_or_default();
        let node = self.ctx.writer.node().to_string();
        let per = self.ctx.config.per_namespace_traces();
        let mine = self.ctx.namespace_slots(&namespace);
        let message = format!(
            "waiting: node {node} runs {per} traces of namespace {namespace}, its --max-running-traces-per-namespace; this one starts when one of them ends"
        );
        let max = self.ctx.config.max_running_traces;
        // A share as large as the node's is no share: the node's limit says why it waits.
        let ns_permit = if per < max {
            let Some(permit) = self
                .permit(mine, Reason::MaxRunningTracesPerNamespace.as_str(), message)
                .await?
            else {
                return Some(None);
            };
            Some(permit)
        } else {
            None
        };
        let message = format!(
            "waiting: node {node} runs {max} traces, its --max-running-traces; this one starts when one of them ends"
        );
        let Some(node_permit) = self
            .permit(
                self.ctx.slots.clone(),
                Reason::MaxRunningTraces.as_str(),
                message,
            )
            .await?
        else {
            return Some(None);
        };
        Some(Some(Slot {
            _namespace: ns_permit,
            _node: Some(node_permit),
        }))
    }

    /// A permit of `slots`, waited for while none is free, Pending with a Waiting condition
    /// (`reason`, `message`). None: deleted or the agent exits meanwhile; Some(None): stopped
    /// while it waited.
    async fn permit(
        &mut self,
        slots: Arc<tokio::sync::Semaphore>,
        reason: &str,
        message: String,
    ) -> Option<Option<OwnedSemaphorePermit>> {
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Some(Some(permit));
        }
        info!(reason, "as many traces run as may; waiting for one to end");
        self.ours.message = Some(message.clone());
        self.ours
            .conditions
            .retain(|c| c.type_ != ConditionType::Waiting.as_str());
        self.ours.conditions.push(status::waiting(
            reason,
            &message,
            &self.seen.job,
            writer::now(),
        ));
        self.report(Reason::Starting.as_str());
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
            .filter(|c| c.type_ == ConditionType::Waiting.as_str())
        {
            c.status = "False".into();
            c.reason = Reason::Started.into();
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
            _slot: Slot {
                _namespace: self
                    .ctx
                    .namespace_slots(&self.seen.job.namespace().unwrap_or_default())
                    .try_acquire_owned()
                    .ok(),
                _node: self.ctx.slots.clone().try_acquire_owned().ok(),
            },
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

impl crate::agent::Ctx {
    /// The permits of `namespace`'s traces on this node. A namespace with none taken and none
    /// waited for is forgotten (each permit and each waiter holds its semaphore).
    pub fn namespace_slots(&self, namespace: &str) -> Arc<tokio::sync::Semaphore> {
        let per = usize::try_from(self.config.per_namespace_traces()).unwrap_or(usize::MAX);
        let mut all = self
            .namespace_slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|_, s| Arc::strong_count(s) > 1);
        all.entry(namespace.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(per)))
            .clone()
    }
}
