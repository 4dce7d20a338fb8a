//! A TraceJob with a target: which node runs it (the pod's), the container once it runs, its
//! variables filled into the program, and the target watched while the trace runs.

use std::time::{Duration, Instant};

use kube::ResourceExt;
use tracing::{info, warn};

use crate::cluster::stores::Changes;
use crate::cluster::{lookup, writer};
use crate::decide::job as decide;
use crate::decide::target as placing;
use crate::host::container;
use crate::host::rundir::Record;
use crate::resource::{Target, TraceJob};

use super::{Actor, Place, Resolved, Run, TargetWatch};
use crate::resource::vocabulary::Reason;

/// What a running trace's target is watched for, if it has one.
pub(super) fn target_watch(job: &TraceJob, record: &Record, pods: Changes) -> Option<TargetWatch> {
    let target = job.spec.target.clone()?;
    let id = record.target_id.clone()?;
    Some(TargetWatch {
        started: placing::Running {
            name: record.target_name.clone().unwrap_or_default(),
            id,
            restarts: 0,
        },
        target,
        pods,
        look: true,
    })
}

/// The program with the target's variables filled in, or why it cannot be.
pub(super) fn filled_in(program: &str, c: &container::Container) -> Result<String, String> {
    let cgroup = match c.cgroup {
        Some(id) => id.to_string(),
        None => {
            let probe = placing::substitute(program, &[(placing::CONTAINER_CGROUP, String::new())]);
            if probe != program {
                return Err(format!(
                    "{} cannot be filled in: this node has no cgroup v2 hierarchy (filter on {} instead)",
                    placing::CONTAINER_CGROUP,
                    placing::CONTAINER_PID
                ));
            }
            String::new()
        }
    };
    Ok(placing::substitute(
        program,
        &[
            (placing::CONTAINER_PID, c.main.to_string()),
            (placing::CONTAINER_CGROUP, cgroup),
            (placing::CONTAINER_ROOT, placing::root_of(c.main)),
        ],
    ))
}

impl Actor {
    /// Whether this node runs a TraceJob with a target: the one its pod runs on, as this node's
    /// pod store has it. While the pod is not here, a TraceJob that names no node is waited on
    /// without a request or a write (every node sees it; the pod's node takes it), woken by a
    /// change of this node's pods. One that names this node is failed saying what is wrong (a
    /// GET says where the pod is), or waited on while its pod is not scheduled yet, up to
    /// `--target-timeout` from the TraceJob's creation.
    pub(super) async fn place(&mut self, target: &Target) -> Place {
        let namespace = self.seen.job.namespace().unwrap_or_default();
        let named = self.seen.job.spec.node_name.clone();
        let timeout = self.ctx.config.target_timeout();
        let deadline = Instant::now() + timeout.saturating_sub(decide::age_of(&self.seen.job));
        let mut pods = self.ctx.stores.pods.changes();
        let mut ask = true;
        let mut delays = writer::backoff();
        loop {
            let here = self.ctx.stores.pod(&namespace, &target.pod).is_some();
            let named = match (placing::place(here, named.is_some()), &named) {
                (placing::Place::Here, _) => return Place::Here,
                (placing::Place::Ask, Some(named)) => named,
                (placing::Place::Wait | placing::Place::Ask, _) => {
                    tokio::select! {
                        _ = pods.next() => continue,
                        alive = self.seen.next() => return self.again(alive),
                    }
                }
            };
            if ask {
                let client = self.ctx.client.clone();
                let Some(found) = self
                    .seen
                    .follow(lookup::pod(&client, &namespace, &target.pod))
                    .await
                else {
                    return Place::Over;
                };
                match found {
                    Ok(pod) => {
                        let expired = Instant::now() >= deadline;
                        match placing::absent(
                            pod.as_ref(),
                            target,
                            &namespace,
                            named,
                            expired,
                            timeout,
                        ) {
                            placing::Absent::Fail(reason, why) => return Place::Fail(reason, why),
                            placing::Absent::Wait => ask = false,
                        }
                    }
                    Err(e) => {
                        let pause = delays.next().unwrap_or(Duration::from_secs(30));
                        warn!(error = %e, retry_in = ?pause, "cannot read the target pod yet");
                        if !self.pause(pause).await {
                            return Place::Over;
                        }
                        continue;
                    }
                }
            }
            // Until the pod is here, or the deadline (then asked once more), or a newer version.
            let expired = Instant::now() >= deadline;
            tokio::select! {
                _ = pods.next() => {}
                _ = tokio::time::sleep_until(deadline.into()), if !expired => ask = true,
                alive = self.seen.next() => return self.again(alive),
            }
        }
    }

    /// After `Seen::next`: decide again, unless the TraceJob was deleted or the agent exits.
    pub(super) fn again(&self, alive: bool) -> Place {
        if alive && !self.seen.deleted {
            Place::Again
        } else {
            Place::Over
        }
    }

    /// The target container, once it runs (waiting up to `--target-timeout` from the claim),
    /// and its processes on this node. The pod is read from this node's pod store: the wait
    /// wakes when it changes, and every 2 s to look for the container's processes.
    pub(super) async fn resolve(&mut self, target: &Target) -> Resolved {
        let timeout = self.ctx.config.target_timeout();
        let since = Instant::now();
        let mut said = String::new();
        let mut pods = self.ctx.stores.pods.changes();
        loop {
            let namespace = self.seen.job.namespace().unwrap_or_default();
            // It was on this node when placed: gone from the store, it was deleted.
            let Some(pod) = self.ctx.stores.pod(&namespace, &target.pod) else {
                return Resolved::Fail(
                    Reason::TargetNotFound.as_str(),
                    placing::not_found(&target.pod, &namespace),
                );
            };
            let waiting = match placing::container(&pod, target) {
                placing::Found::Running(running) => {
                    let root = self
                        .ctx
                        .config
                        .host_cgroup_root
                        .clone()
                        .unwrap_or_else(|| "/sys/fs/cgroup".into());
                    // A scan of the host's /proc: on a blocking thread.
                    let id = running.id.clone();
                    let found = tokio::task::spawn_blocking(move || {
                        container::find(&id, &root).map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                    match found {
                        Ok(c) => return Resolved::Ready(running, c),
                        Err(e) => e,
                    }
                }
                placing::Found::NotRunning(why) => why,
                placing::Found::Wrong(why) => {
                    return Resolved::Fail(Reason::TargetInvalid.as_str(), why)
                }
            };
            if since.elapsed() >= timeout {
                return Resolved::Fail(
                    Reason::TargetNotRunning.as_str(),
                    format!(
                        "{waiting} (waited {}s, --target-timeout)",
                        timeout.as_secs()
                    ),
                );
            }
            if waiting != said {
                // Tell the user what it waits for.
                self.ours.message = Some(format!("waiting for the target: {waiting}"));
                self.report(Reason::Starting.as_str());
                said = waiting;
            }
            let nap = Duration::from_secs(2).min(timeout.saturating_sub(since.elapsed()));
            let changed_or_nap = async {
                tokio::select! {
                    _ = pods.next() => {}
                    _ = tokio::time::sleep(nap) => {}
                }
            };
            if self.seen.follow(changed_or_nap).await.is_none() {
                return Resolved::Over;
            }
        }
    }

    /// Looks at the target pod in this node's pod store, first and whenever the store changed:
    /// a restart of the container or the pod's deletion ends the trace.
    pub(super) async fn check_target(&mut self, run: &mut Run) {
        let Some(watch) = run.target.as_mut() else {
            return;
        };
        if watch.pods.take() {
            watch.look = true;
        }
        if !watch.look || run.record.target_lost.is_some() {
            return;
        }
        watch.look = false;
        let namespace = self.seen.job.namespace().unwrap_or_default();
        // The pod runs on this node: not in the store, it was deleted.
        let pod = self.ctx.stores.pod(&namespace, &watch.target.pod);
        if let Some(lost) = placing::lost(pod.as_deref(), &watch.target, &watch.started) {
            info!(why = %lost.why, "the target is gone; stopping the trace");
            run.record.target_lost = Some(lost.why);
            run.record.target_restarted = lost.restarted;
            self.save(&run.record).await;
        }
    }
}
