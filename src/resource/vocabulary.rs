//! The API's words: every label, annotation, condition type and reason this project writes or
//! reads, in one place. Each is an enum whose strings are the API (other tools select on them,
//! and `docs/api.md` lists them): code names the variant, never the string.

/// An enum of API words: `as_str` is the word, `ALL` every variant (for documentation checks
/// and metrics that show every series from the start).
macro_rules! words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$name> for String {
            fn from(word: $name) -> String {
                word.as_str().to_string()
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, word: &$name) -> bool {
                *self == word.as_str()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, word: &$name) -> bool {
                self == word.as_str()
            }
        }
    };
}

words! {
    /// Labels on TraceJobs, TraceJobNodes and output ConfigMaps.
    Label {
        /// The TraceJob an output ConfigMap or a TraceJobNode belongs to (its name).
        TraceJob = "observe.tracejob.dev/tracejob",
        /// The node whose agent wrote an output ConfigMap or a TraceJobNode.
        Node = "observe.tracejob.dev/node",
        /// The run an output ConfigMap holds (the run id).
        RunId = "observe.tracejob.dev/run-id",
        /// A fan-out's merged output ConfigMap (`true`).
        Merged = "observe.tracejob.dev/merged",
        /// A TraceJob a TraceTrigger made: the trigger's name.
        Trigger = "observe.tracejob.dev/trigger",
        /// A TraceJob a TraceTrigger made: the fingerprint of the alert that made it.
        AlertFingerprint = "observe.tracejob.dev/alert-fingerprint",
        /// A node kept out of `!observe.tracejob.dev/untraceable` (every node but protected ones).
        Untraceable = "observe.tracejob.dev/untraceable",
    }
}

words! {
    /// Annotations on Namespaces, TraceJobs and output ConfigMaps.
    Annotation {
        /// On a Namespace: the label selector of the nodes its TraceJobs may run on.
        NodeSelector = "observe.tracejob.dev/node-selector",
        /// On an output ConfigMap: it holds live output of a running trace (`true`).
        Live = "observe.tracejob.dev/live",
        /// On a live output ConfigMap: where its output begins in the whole output (bytes).
        LiveOffset = "observe.tracejob.dev/live-offset",
        /// On a triggered TraceJob: the alert's labels, as JSON.
        AlertLabels = "observe.tracejob.dev/alert-labels",
        /// On a triggered TraceJob: when the alert started firing (its startsAt).
        AlertStartsAt = "observe.tracejob.dev/alert-starts-at",
        /// On a triggered TraceJob: where it runs, `node/NAME` or `pod/NAME` (the cooldown's key).
        TriggerTarget = "observe.tracejob.dev/trigger-target",
        /// On a Namespace: the other namespaces whose alerts its Node triggers may answer.
        AlertNamespaces = "observe.tracejob.dev/alert-namespaces",
    }
}

words! {
    /// Condition types of a TraceJob (and a TraceJobNode).
    ConditionType {
        /// Probes attached (true while it runs).
        Running = "Running",
        /// Ended with its output stored.
        Completed = "Completed",
        /// Ended without running to completion; the reason says why.
        Failed = "Failed",
        /// How the output was stored: as it is, compressed, or truncated.
        OutputStored = "OutputStored",
        /// Pending for something named by its reason (a fact not yet known, a free slot).
        Waiting = "Waiting",
        /// On a fan-out: parts that are not as the node's agent writes them were left out.
        Rejected = "Rejected",
        /// On a fan-out: the merged output leaves nodes out (their outputs invalid, or over a
        /// limit); the message names them.
        OutputIncomplete = "OutputIncomplete",
        /// spec.metrics: the trace has more series than `maxSeries`; the largest are exported.
        MetricsCapped = "MetricsCapped",
    }
}

words! {
    /// Reasons: of conditions, of `status.reason` on a TraceJobNode, of Events, and of a
    /// TraceTrigger's suppressed alerts.
    Reason {
        // Progress.
        /// Claimed, bpftrace starting.
        Starting = "Starting",
        /// bpftrace attached its probes.
        ProbesAttached = "ProbesAttached",
        /// Running condition: began (an Event).
        Started = "Started",
        /// The maps were collected and stored.
        Collected = "Collected",
        /// The target container restarted (a new process, a new root): the maps so far were
        /// collected.
        TargetRestarted = "TargetRestarted",
        /// Event: the trace completed.
        Completed = "Completed",
        /// Event: the trace failed.
        Failed = "Failed",
        // Waiting.
        /// The agent has not seen its own Node yet.
        NodeUnknown = "NodeUnknown",
        /// The agent has not seen the TraceJob's Namespace yet.
        NamespaceUnknown = "NamespaceUnknown",
        /// The node runs `--max-running-traces` traces already.
        MaxRunningTraces = "MaxRunningTraces",
        /// The namespace runs `--max-running-traces-per-namespace` traces on the node already.
        MaxRunningTracesPerNamespace = "MaxRunningTracesPerNamespace",
        // Refused before anything runs.
        /// The namespace's scope does not cover this node (or no longer does).
        NodeNotAllowed = "NodeNotAllowed",
        /// The API server refused the claim for good.
        ClaimForbidden = "ClaimForbidden",
        /// Claimed, but this node has no record of the run.
        RunLost = "RunLost",
        /// The run's directory could not be made.
        RunDirFailed = "RunDirFailed",
        // The target pod.
        /// The pod does not exist.
        TargetNotFound = "TargetNotFound",
        /// The container did not run within `--target-timeout`.
        TargetNotRunning = "TargetNotRunning",
        /// The container named does not exist in the pod.
        TargetInvalid = "TargetInvalid",
        /// `spec.nodeName` and the pod's node disagree.
        TargetElsewhere = "TargetElsewhere",
        // How a run ended.
        /// bpftrace did not attach within `--start-timeout`.
        StartTimeout = "StartTimeout",
        /// bpftrace could not be started.
        StartFailed = "StartFailed",
        /// bpftrace exited with an error.
        BpftraceFailed = "BpftraceFailed",
        /// bpftrace was killed by a signal.
        KilledBySignal = "KilledBySignal",
        /// bpftrace did not print its maps within the grace period after SIGINT.
        GracePeriodExceeded = "GracePeriodExceeded",
        /// The run ended while no agent recorded how.
        EndedUnrecorded = "EndedUnrecorded",
        /// The API server refused the status for good.
        StatusRejected = "StatusRejected",
        /// A save of the run's record on the node failed.
        RecordNotSaved = "RecordNotSaved",
        /// The output could not be stored.
        OutputNotStored = "OutputNotStored",
        // OutputStored.
        /// As it is.
        Stored = "Stored",
        /// gzip-compressed in binaryData.
        Compressed = "Compressed",
        /// Parts left out to fit; the message says which.
        Truncated = "Truncated",
        /// A fan-out's merged output was stored.
        Merged = "Merged",
        // A fan-out's summary.
        /// No node has run it yet.
        NoNodeYet = "NoNodeYet",
        /// Nodes are starting.
        NodesStarting = "NodesStarting",
        /// Nodes are running.
        NodesRunning = "NodesRunning",
        /// Nodes are stopping.
        NodesStopping = "NodesStopping",
        /// Every node is done and one at least completed.
        NodesDone = "NodesDone",
        /// Every node is done and none completed.
        NodesFailed = "NodesFailed",
        /// Parts not named, labelled or owned as their node's agent writes them.
        InvalidParts = "InvalidParts",
        /// Outputs not labelled, owned or named as a part's node writes them, or over a limit.
        InvalidOutputs = "InvalidOutputs",
        /// This node's name cannot be a label value, so it joins no fan-out.
        NodeNameNotALabelValue = "NodeNameNotALabelValue",
        /// spec.metrics: past `maxSeries`, the rest counted as dropped.
        MaxSeries = "MaxSeries",
        // A TraceTrigger's suppressed alerts.
        /// The alert names no node or pod.
        NoTarget = "NoTarget",
        /// The alert's pod is in another namespace than the trigger's.
        OtherNamespace = "OtherNamespace",
        /// The target had a trace from this trigger within the cooldown.
        Cooldown = "Cooldown",
        /// The trigger has `maxRunning` traces not yet ended.
        MaxRunning = "MaxRunning",
        /// The trigger started `maxPerHour` traces in the last hour.
        MaxPerHour = "MaxPerHour",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_is_distinct_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for w in Label::ALL.iter().map(|w| w.as_str()) {
            assert!(
                w.starts_with("observe.tracejob.dev/") && seen.insert(w),
                "{w}"
            );
        }
        for w in Annotation::ALL.iter().map(|w| w.as_str()) {
            assert!(
                w.starts_with("observe.tracejob.dev/") && seen.insert(w),
                "{w}"
            );
        }
        let mut reasons = std::collections::HashSet::new();
        for w in ConditionType::ALL
            .iter()
            .map(|w| w.as_str())
            .chain(Reason::ALL.iter().map(|w| w.as_str()))
        {
            // Kubernetes' convention for reasons and types: UpperCamelCase, no spaces.
            assert!(
                w.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && w.chars().all(|c| c.is_ascii_alphanumeric()),
                "{w}"
            );
        }
        for w in Reason::ALL.iter().map(|w| w.as_str()) {
            assert!(reasons.insert(w), "{w} twice");
        }
        assert_eq!(Reason::NodeNotAllowed.to_string(), "NodeNotAllowed");
        assert!("NodeNotAllowed" == Reason::NodeNotAllowed);
    }
}
