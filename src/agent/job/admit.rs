//! Admission: whether this node runs the TraceJob at all (its node selector, its namespace's
//! scope over this node), and the loop that decides a TraceJob first seen.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;
use tracing::{info, warn};

use crate::cluster::stores::Changes;
use crate::cluster::writer;
use crate::decide::job as decide;
use crate::decide::job::FirstSight;
use crate::decide::{scope, status};
use crate::resource::Phase;

use super::{Actor, Claimed, Fact, Place, Run, Scope, Waited};
use crate::resource::vocabulary::{ConditionType, Reason};

impl Actor {
    /// Decides what to do with the TraceJob: claim and start it, take over its run, or not.
    pub(super) async fn begin(&mut self) -> Option<Run> {
        let mut delays = writer::backoff();
        loop {
            let record = match self.seen.job.run_id() {
                Some(id) => {
                    let (state, id) = (self.ctx.state.clone(), id.to_string());
                    tokio::task::spawn_blocking(move || state.load(&id))
                        .await
                        .ok()
                        .flatten()
                }
                None => None,
            };
            match decide::first_sight(&self.seen.job, self.ctx.writer.node(), record.is_some()) {
                FirstSight::Ignore => {
                    // Reported, but the agent stopped before cleaning up.
                    if let Some(r) = record {
                        self.remove(&r.run_id).await;
                    }
                    return None;
                }
                FirstSight::Lost => {
                    let message = "this node's agent has no record of the run (its state directory was lost); it cannot be resumed";
                    warn!(message);
                    self.fail_unstarted(Reason::RunLost.as_str(), message.into())
                        .await;
                    return None;
                }
                FirstSight::Resume => {
                    return match record {
                        Some(r) => Some(self.resume(r).await),
                        None => None,
                    };
                }
                FirstSight::Start => {
                    if let Some(selector) = self.seen.job.spec.node_selector.clone() {
                        match self.selects_this_node(selector).await {
                            Some(true) => {}
                            Some(false) | None => return None,
                        }
                        if !crate::resource::node::joinable(self.ctx.writer.node()) {
                            self.cannot_join();
                            return None;
                        }
                    }
                    if let Some(target) = self.seen.job.spec.target.clone() {
                        match self.place(&target).await {
                            Place::Here => {}
                            // A newer version of the TraceJob: decide again from it.
                            Place::Again => continue,
                            Place::Over => return None,
                            Place::Fail(reason, why) => {
                                self.fail_unclaimed(reason, why).await;
                                return None;
                            }
                        }
                    }
                    let claimed = match self.scope().await {
                        Scope::Allowed => self.claim().await,
                        Scope::Refused(why) => self.refuse(why).await,
                        Scope::Waited(claimed) => claimed,
                    };
                    match claimed {
                        Claimed::Won(run_id) => return self.start(run_id).await,
                        Claimed::Again => {
                            // A conflict is decided again at once; a refused write after a
                            // pause.
                            if self.rejected.take().is_some() {
                                let pause = delays.next().unwrap_or(Duration::from_secs(30));
                                if !self.pause(pause).await {
                                    return None;
                                }
                            }
                        }
                        Claimed::Refused | Claimed::Over => return None,
                    }
                }
            }
        }
    }

    /// Whether spec.nodeSelector selects this node (its labels as its Node's watch has them).
    /// None: deleted or the agent exits meanwhile.
    pub(super) async fn selects_this_node(&mut self, selector: LabelSelector) -> Option<bool> {
        // Which TraceJob on several nodes is this node's is not known without its labels: it
        // waits without a word (nothing is written for a TraceJob that may not select it).
        let labels = match self.node_labels(false).await {
            Waited::Known(labels) => labels,
            Waited::Ended(_) => return None,
        };
        Some(match Selector::try_from(selector) {
            Ok(s) => s.matches(&labels),
            Err(e) => {
                warn!(error = %e, "spec.nodeSelector cannot be read");
                false
            }
        })
    }

    /// This node's labels, as its Node's watch has them, waited for while it is not known
    /// (`fact`). `report`: say so in status, and give up after a while.
    async fn node_labels(&mut self, report: bool) -> Waited<BTreeMap<String, String>> {
        let node = self.ctx.writer.node().to_string();
        let what = Fact {
            reason: Reason::NodeUnknown.as_str(),
            message: format!("this agent (NODE_NAME={node}) has not seen the Node {node}: is NODE_NAME right, does the Node exist, and may the agent read it?"),
        };
        let changes = self.ctx.stores.node.changes();
        self.fact(what, |s| s.node_labels(), changes, report).await
    }

    /// The node-selector annotation of the TraceJob's namespace (`fact`).
    async fn namespace_selector(&mut self, namespace: &str) -> Waited<Option<String>> {
        let what = Fact {
            reason: Reason::NamespaceUnknown.as_str(),
            message: format!("this agent's watch of Namespaces has not seen the namespace {namespace}: may the agent list and watch Namespaces?"),
        };
        let changes = self.ctx.stores.namespaces.changes();
        let namespace = namespace.to_string();
        self.fact(
            what,
            move |s| s.namespace_selector(&namespace),
            changes,
            true,
        )
        .await
    }

    /// Waits for a fact its watches bring the agent (`read` from the stores; woken by `changes`),
    /// following the TraceJob meanwhile. Unknown for a while (`decide::job::fact_wait`, counted
    /// from the TraceJob's creation): Pending with a Waiting condition that says what it waits
    /// for; unknown for longer: Failed with the fact's reason. `report` false: neither (only a
    /// log line).
    async fn fact<T>(
        &mut self,
        what: Fact,
        read: impl Fn(&crate::cluster::stores::Stores) -> Option<T>,
        mut changes: Changes,
        report: bool,
    ) -> Waited<T> {
        let (mut logged, mut said) = (false, false);
        loop {
            if let Some(known) = read(&self.ctx.stores) {
                return Waited::Known(known);
            }
            let age = decide::age_of(&self.seen.job);
            let timeout = self.ctx.config.wait_timeout();
            let wait = decide::fact_wait(age, timeout);
            if !logged {
                warn!(reason = what.reason, message = %what.message, "waiting");
                logged = true;
            }
            match wait {
                decide::FactWait::GiveUp if report => {
                    let why = format!("gave up after {}s: {}", timeout.as_secs(), what.message);
                    return Waited::Ended(self.fail_unclaimed(what.reason, why).await);
                }
                decide::FactWait::Say if report && !said => {
                    self.ours.phase = Some(Phase::Pending);
                    self.ours.message = Some(format!("waiting: {}", what.message));
                    let waiting =
                        status::waiting(what.reason, &what.message, &self.seen.job, writer::now());
                    self.ours
                        .conditions
                        .retain(|c| c.type_ != ConditionType::Waiting.as_str());
                    self.ours.conditions.push(waiting);
                    self.report(ConditionType::Waiting.as_str());
                    said = true;
                }
                _ => {}
            }
            // Woken by the store, or when it is time to say so or to give up.
            let nap = decide::fact_wait_next(age, timeout);
            let changed_or_due = async {
                tokio::select! {
                    _ = changes.next() => {}
                    _ = tokio::time::sleep(nap) => {}
                }
            };
            if self.seen.follow(changed_or_due).await.is_none() {
                return Waited::Ended(Claimed::Over);
            }
        }
    }

    /// Whether this TraceJob's namespace may trace this node (`decide::scope`), from the
    /// namespace's annotation and the node's labels, as their watches have them.
    pub(super) async fn scope(&mut self) -> Scope {
        let namespace = self.seen.job.namespace().unwrap_or_default();
        let annotation = match self.namespace_selector(&namespace).await {
            Waited::Known(a) => a,
            Waited::Ended(claimed) => return Scope::Waited(claimed),
        };
        let labels = match self.node_labels(true).await {
            Waited::Known(l) => l,
            Waited::Ended(claimed) => return Scope::Waited(claimed),
        };
        match self.allowed(annotation.as_deref(), &labels) {
            Ok(()) => Scope::Allowed,
            Err(why) => Scope::Refused(why),
        }
    }

    /// `scope::allowed` for this node under the agent's flags.
    pub(super) fn allowed(
        &self,
        annotation: Option<&str>,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        scope::allowed(
            annotation,
            self.ctx.writer.node(),
            labels,
            self.ctx.config.unannotated_namespaces,
            &self.ctx.config.protected_node_labels,
        )
    }

    /// A TraceJob on several nodes that selects this node, whose name is not a label value: its
    /// part (TRACEJOB.NODE, labelled with the node) cannot be written, so it does not join; it
    /// says so and counts it (reason NodeNameNotALabelValue).
    fn cannot_join(&self) {
        let node = self.ctx.writer.node();
        warn!(node, "not joining this TraceJob on several nodes: this node's name is not a label value (at most 63 characters, alphanumerics, '-', '_' and '.'), so its part cannot be named or labelled");
        self.ctx
            .metrics
            .fanout_refused
            .get_or_create(&crate::agent::metrics::Reason {
                reason: Reason::NodeNameNotALabelValue.as_str().into(),
            })
            .inc();
    }

    /// Ends a TraceJob this node may not run: Failed, NodeNotAllowed, and no bpftrace.
    pub(super) async fn refuse(&mut self, why: String) -> Claimed {
        info!(%why, "not running this TraceJob: its namespace may not trace this node");
        if self.seen.job.spec.node_selector.is_some() {
            // One of many nodes: a refused node writes nothing (the TraceJob's size, and the API
            // server's work, must not grow with the nodes that may not run it); it is counted.
            self.ctx
                .metrics
                .fanout_refused
                .get_or_create(&crate::agent::metrics::Reason {
                    reason: Reason::NodeNotAllowed.as_str().into(),
                })
                .inc();
            return Claimed::Refused;
        }
        self.fail_unclaimed(Reason::NodeNotAllowed.as_str(), why)
            .await
    }
}
