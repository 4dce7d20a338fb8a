//! Admission: whether this node runs the TraceJob at all (its node selector, its namespace's
//! scope over this node), and the loop that decides a TraceJob first seen.

use super::*;

impl Actor {
    /// Decides what to do with the TraceJob: claim and start it, take over its run, or not.
    pub(super) async fn begin(&mut self) -> Option<Run> {
        let mut delays = writer::backoff();
        loop {
            let record = self
                .seen
                .job
                .run_id()
                .and_then(|id| self.ctx.state.load(id));
            match decide::first_sight(&self.seen.job, self.ctx.writer.node(), record.is_some()) {
                FirstSight::Ignore => {
                    // Reported, but the agent stopped before cleaning up.
                    if let Some(r) = record {
                        let _ = self.ctx.state.remove(&r.run_id);
                    }
                    return None;
                }
                FirstSight::Lost => {
                    let message = "this node's agent has no record of the run (its state directory was lost); it cannot be resumed";
                    warn!(message);
                    self.fail_unstarted("RunLost", message.into()).await;
                    return None;
                }
                FirstSight::Resume => return record.map(|r| self.resume(r)),
                FirstSight::Start => {
                    if let Some(selector) = self.seen.job.spec.node_selector.clone() {
                        match self.selects_this_node(selector).await {
                            Some(true) => {}
                            Some(false) | None => return None,
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
                        Scope::Over => Claimed::Over,
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
        let labels = self.node_labels().await?;
        Some(match Selector::try_from(selector) {
            Ok(s) => s.matches(&labels),
            Err(e) => {
                warn!(error = %e, "spec.nodeSelector cannot be read");
                false
            }
        })
    }

    /// This node's labels, waiting (and following the TraceJob) while its Node is not known.
    /// None: deleted or the agent exits meanwhile.
    pub(super) async fn node_labels(&mut self) -> Option<BTreeMap<String, String>> {
        let mut changes = self.ctx.stores.node.changes();
        let mut said = false;
        loop {
            if let Some(labels) = self.ctx.stores.node_labels() {
                return Some(labels);
            }
            if !said {
                warn!(
                    node = self.ctx.writer.node(),
                    "this node's Node object is not known yet; waiting for it"
                );
                said = true;
            }
            self.seen.follow(changes.next()).await?;
        }
    }

    /// The node-selector annotation of the TraceJob's namespace, waiting (and following the
    /// TraceJob) while the namespace is not known yet. None: deleted or the agent exits meanwhile.
    pub(super) async fn namespace_selector(&mut self, namespace: &str) -> Option<Option<String>> {
        let mut changes = self.ctx.stores.namespaces.changes();
        loop {
            if let Some(annotation) = self.ctx.stores.namespace_selector(namespace) {
                return Some(annotation);
            }
            self.seen.follow(changes.next()).await?;
        }
    }

    /// Whether this TraceJob's namespace may trace this node (`decide::scope`), from the
    /// namespace's annotation and the node's labels, as their watches have them.
    pub(super) async fn scope(&mut self) -> Scope {
        let namespace = self.seen.job.namespace().unwrap_or_default();
        let Some(annotation) = self.namespace_selector(&namespace).await else {
            return Scope::Over;
        };
        let Some(labels) = self.node_labels().await else {
            return Scope::Over;
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

    /// Ends a TraceJob this node may not run: Failed, NodeNotAllowed, and no bpftrace.
    pub(super) async fn refuse(&mut self, why: String) -> Claimed {
        info!(%why, "not running this TraceJob: its namespace may not trace this node");
        if self.seen.job.spec.node_selector.is_some() {
            // One of many nodes: a refused node writes nothing (the TraceJob's size, and the API
            // server's work, must not grow with the nodes that may not run it); it is counted.
            self.ctx
                .metrics
                .fanout_refused
                .get_or_create(&crate::metrics::Reason {
                    reason: NODE_NOT_ALLOWED.into(),
                })
                .inc();
            return Claimed::Refused;
        }
        self.fail_unclaimed(NODE_NOT_ALLOWED, why).await
    }
}
