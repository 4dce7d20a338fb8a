//! The receiver's decisions, as pure functions: Alertmanager's webhook payload, where an alert's
//! trace runs, whether a matching alert starts one (a repeat, the cooldown, the limits), and the
//! TraceJob it creates.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use serde::Deserialize;

use crate::resource::trigger::{
    sample_program, TargetKind, TraceTrigger, TriggerLimits, TriggerTarget,
    ANNOTATION_ALERT_LABELS, ANNOTATION_ALERT_STARTS_AT, ANNOTATION_TARGET, LABEL_FINGERPRINT,
    LABEL_TRIGGER,
};
use crate::resource::{Target, TraceJob, TraceJobSpec};

/// Alertmanager's webhook payload (version 4); fields the receiver does not use are ignored.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub receiver: String,
    pub alerts: Vec<Alert>,
}

/// One alert of a notification.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// firing or resolved.
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    pub fingerprint: String,
}

impl Alert {
    pub fn firing(&self) -> bool {
        self.status == "firing"
    }
}

/// Where an alert's trace runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Where {
    Node(String),
    Pod {
        pod: String,
        container: Option<String>,
    },
}

impl Where {
    /// The cooldown's key: `node/NAME` or `pod/NAME`.
    pub fn key(&self) -> String {
        match self {
            Where::Node(n) => format!("node/{n}"),
            Where::Pod { pod, .. } => format!("pod/{pod}"),
        }
    }
}

/// Why a matching alert started no trace (the `suppressed` reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suppress {
    /// No label names the node or pod.
    NoTarget,
    /// The pod is in another namespace than the trigger's.
    OtherNamespace,
    /// The target had a trace from this trigger within the cooldown.
    Cooldown,
    /// The trigger has maxRunning traces not yet ended.
    MaxRunning,
    /// The trigger started maxPerHour traces in the last hour.
    MaxPerHour,
}

impl Suppress {
    pub fn as_str(self) -> &'static str {
        match self {
            Suppress::NoTarget => "NoTarget",
            Suppress::OtherNamespace => "OtherNamespace",
            Suppress::Cooldown => "Cooldown",
            Suppress::MaxRunning => "MaxRunning",
            Suppress::MaxPerHour => "MaxPerHour",
        }
    }
}

/// `host:port` -> `host`, `[v6]:port` -> `v6`; a value without a port is as it is.
pub fn strip_port(instance: &str) -> &str {
    if let Some(rest) = instance.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host;
        }
    }
    match instance.rsplit_once(':') {
        // One colon and digits after it: a port. (Several colons: a bare IPv6 address.)
        Some((host, port))
            if !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        _ => instance,
    }
}

/// Where the trace of an alert with `labels` runs, for a trigger in `namespace`.
pub fn target(
    spec: &TriggerTarget,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Where, Suppress> {
    let get = |label: &Option<String>, default: &str| {
        labels
            .get(label.as_deref().unwrap_or(default))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    match spec.kind {
        TargetKind::Node => get(&spec.node_label, "node")
            .or_else(|| {
                labels
                    .get("instance")
                    .map(|i| strip_port(i).to_string())
                    .filter(|i| !i.is_empty())
            })
            .map(Where::Node)
            .ok_or(Suppress::NoTarget),
        TargetKind::Pod => {
            let pod = get(&spec.pod_label, "pod").ok_or(Suppress::NoTarget)?;
            let ns = get(&spec.namespace_label, "namespace").ok_or(Suppress::NoTarget)?;
            if ns != namespace {
                return Err(Suppress::OtherNamespace);
            }
            Ok(Where::Pod {
                pod,
                container: get(&spec.container_label, "container"),
            })
        }
    }
}

/// A trace a trigger made, as the decisions see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    pub name: String,
    /// Its target's key (`Where::key`).
    pub target: String,
    pub created: Timestamp,
    /// Completed or Failed (or gone).
    pub ended: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Create the TraceJob.
    Create,
    /// This alert's trace on this target exists already (a repeated notification).
    Repeat,
    Suppress(Suppress),
}

/// Whether the alert whose TraceJob would be `name`, on `target`, starts a trace at `now`, given
/// what the trigger made before.
pub fn decide(
    limits: &TriggerLimits,
    name: &str,
    target: &str,
    now: Timestamp,
    made: &[Made],
) -> Decision {
    if made.iter().any(|m| m.name == name) {
        return Decision::Repeat;
    }
    let age = |m: &Made| (now - m.created).get_seconds();
    if made
        .iter()
        .any(|m| m.target == target && age(m) < limits.cooldown_seconds)
    {
        return Decision::Suppress(Suppress::Cooldown);
    }
    let running = made.iter().filter(|m| !m.ended).count();
    if running as i64 >= limits.max_running {
        return Decision::Suppress(Suppress::MaxRunning);
    }
    let last_hour = made.iter().filter(|m| age(m) < 3600).count();
    if last_hour as i64 >= limits.max_per_hour {
        return Decision::Suppress(Suppress::MaxPerHour);
    }
    Decision::Create
}

/// The TraceJob's name: the trigger's name (cut to 40 characters) and a digest of the alert's
/// fingerprint, its start and the target. The same notification repeated names the same
/// TraceJob (so creating it again is a conflict, not a second trace); the name stays short
/// enough to be a label value (the output ConfigMap's `observe.tracejob.dev/tracejob`).
pub fn job_name(trigger: &str, fingerprint: &str, starts_at: &str, target: &str) -> String {
    let digest = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{fingerprint}\0{starts_at}\0{target}").as_bytes(),
    )
    .simple()
    .to_string();
    let base: String = trigger.chars().take(40).collect();
    format!("{}-{}", base.trim_end_matches(['-', '.']), &digest[..10])
}

/// The TraceJob a trigger creates for an alert on `target`: in the trigger's namespace, owned by
/// it, labelled with its name and the alert's fingerprint, annotated with the alert's labels,
/// start and target.
pub fn tracejob(trigger: &TraceTrigger, alert: &Alert, on: &Where) -> TraceJob {
    let t = &trigger.spec.trace;
    let program = t
        .program
        .clone()
        .or_else(|| {
            t.sample
                .as_deref()
                .and_then(sample_program)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let (node_name, target) = match on {
        Where::Node(n) => (Some(n.clone()), None),
        Where::Pod { pod, container } => (
            None,
            Some(Target {
                pod: pod.clone(),
                container: container.clone(),
            }),
        ),
    };
    let name = job_name(
        &trigger.name_any(),
        &alert.fingerprint,
        &alert.starts_at,
        &on.key(),
    );
    let mut job = TraceJob::new(
        &name,
        TraceJobSpec {
            node_name,
            node_selector: None,
            target,
            program,
            args: t.args.clone(),
            stop: false,
            deadline: t.deadline,
            deadline_grace_period: t.deadline_grace_period.unwrap_or(30),
            metrics: t.metrics.clone(),
        },
    );
    let fingerprint = fingerprint_label(&alert.fingerprint);
    job.metadata = ObjectMeta {
        name: Some(name),
        namespace: trigger.namespace(),
        labels: Some(BTreeMap::from([
            (LABEL_TRIGGER.to_string(), trigger.name_any()),
            (LABEL_FINGERPRINT.to_string(), fingerprint),
        ])),
        annotations: Some(BTreeMap::from([
            (
                ANNOTATION_ALERT_LABELS.to_string(),
                serde_json::to_string(&alert.labels).unwrap_or_default(),
            ),
            (
                ANNOTATION_ALERT_STARTS_AT.to_string(),
                alert.starts_at.clone(),
            ),
            (ANNOTATION_TARGET.to_string(), on.key()),
        ])),
        owner_references: Some(vec![OwnerReference {
            api_version: TraceTrigger::api_version(&()).to_string(),
            kind: TraceTrigger::kind(&()).to_string(),
            name: trigger.name_any(),
            uid: trigger.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: None,
        }]),
        ..Default::default()
    };
    job
}

/// The fingerprint as it is written in the label (Alertmanager's are 16 hex digits).
pub fn fingerprint_label(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(63)
        .collect()
}

/// A TraceJob the trigger with `uid` made, as the decisions see it; None if it is not one.
pub fn made_from(job: &TraceJob, uid: &str) -> Option<Made> {
    let owned = job
        .owner_references()
        .iter()
        .any(|o| o.uid == uid && o.kind == TraceTrigger::kind(&()));
    if !owned {
        return None;
    }
    Some(Made {
        name: job.name_any(),
        target: job
            .annotations()
            .get(ANNOTATION_TARGET)
            .cloned()
            .unwrap_or_default(),
        created: job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now),
        ended: job.phase().is_some_and(|p| p.is_final()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::trigger::{TraceTemplate, TraceTriggerSpec};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ports_are_removed() {
        assert_eq!(strip_port("node-1:9100"), "node-1");
        assert_eq!(strip_port("node-1"), "node-1");
        assert_eq!(strip_port("10.0.0.1:9100"), "10.0.0.1");
        assert_eq!(strip_port("[fe80::1]:9100"), "fe80::1");
        assert_eq!(strip_port("fe80::1"), "fe80::1");
        assert_eq!(strip_port("host:"), "host:");
    }

    #[test]
    fn node_from_its_label_or_the_instance() {
        let spec = TriggerTarget::default();
        assert_eq!(
            target(&spec, "ns", &labels(&[("node", "n1"), ("instance", "x:1")])),
            Ok(Where::Node("n1".into()))
        );
        assert_eq!(
            target(&spec, "ns", &labels(&[("instance", "n2:9100")])),
            Ok(Where::Node("n2".into()))
        );
        assert_eq!(
            target(&spec, "ns", &labels(&[("alertname", "A")])),
            Err(Suppress::NoTarget)
        );
        let custom = TriggerTarget {
            node_label: Some("hostname".into()),
            ..Default::default()
        };
        assert_eq!(
            target(&custom, "ns", &labels(&[("hostname", "h"), ("node", "n")])),
            Ok(Where::Node("h".into()))
        );
    }

    #[test]
    fn pod_from_its_labels_in_the_triggers_namespace_only() {
        let spec = TriggerTarget {
            kind: TargetKind::Pod,
            ..Default::default()
        };
        assert_eq!(
            target(
                &spec,
                "shop",
                &labels(&[
                    ("namespace", "shop"),
                    ("pod", "web-1"),
                    ("container", "app")
                ])
            ),
            Ok(Where::Pod {
                pod: "web-1".into(),
                container: Some("app".into())
            })
        );
        assert_eq!(
            target(
                &spec,
                "shop",
                &labels(&[("namespace", "bank"), ("pod", "p")])
            ),
            Err(Suppress::OtherNamespace)
        );
        assert_eq!(
            target(&spec, "shop", &labels(&[("namespace", "shop")])),
            Err(Suppress::NoTarget)
        );
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + s).expect("time")
    }

    fn made(name: &str, target: &str, at: i64, ended: bool) -> Made {
        Made {
            name: name.into(),
            target: target.into(),
            created: t(at),
            ended,
        }
    }

    #[test]
    fn repeats_cooldown_and_limits() {
        let limits = TriggerLimits {
            cooldown_seconds: 600,
            max_running: 2,
            max_per_hour: 3,
        };
        let none: Vec<Made> = vec![];
        assert_eq!(
            decide(&limits, "a", "node/n1", t(0), &none),
            Decision::Create
        );
        let one = vec![made("a", "node/n1", 0, false)];
        assert_eq!(
            decide(&limits, "a", "node/n1", t(5), &one),
            Decision::Repeat
        );
        assert_eq!(
            decide(&limits, "b", "node/n1", t(599), &one),
            Decision::Suppress(Suppress::Cooldown)
        );
        assert_eq!(
            decide(&limits, "b", "node/n1", t(600), &one),
            Decision::Create
        );
        assert_eq!(
            decide(&limits, "b", "node/n2", t(1), &one),
            Decision::Create
        );
        let two = vec![
            made("a", "node/n1", 0, false),
            made("b", "node/n2", 0, false),
        ];
        assert_eq!(
            decide(&limits, "c", "node/n3", t(1), &two),
            Decision::Suppress(Suppress::MaxRunning)
        );
        let ended = vec![
            made("a", "node/n1", 0, true),
            made("b", "node/n2", 0, true),
            made("c", "node/n3", 0, false),
        ];
        assert_eq!(
            decide(&limits, "d", "node/n4", t(1), &ended),
            Decision::Suppress(Suppress::MaxPerHour)
        );
        assert_eq!(
            decide(&limits, "d", "node/n4", t(3600), &ended),
            Decision::Create
        );
    }

    #[test]
    fn names_are_stable_short_and_distinct() {
        let a = job_name("io", "f1", "2025-01-01T00:00:00Z", "node/n1");
        assert_eq!(a, job_name("io", "f1", "2025-01-01T00:00:00Z", "node/n1"));
        assert_ne!(a, job_name("io", "f1", "2025-01-01T00:05:00Z", "node/n1"));
        assert_ne!(a, job_name("io", "f1", "2025-01-01T00:00:00Z", "node/n2"));
        assert_ne!(a, job_name("io", "f2", "2025-01-01T00:00:00Z", "node/n1"));
        assert!(a.starts_with("io-") && a.len() == 13, "{a}");
        let long = job_name(&"x".repeat(100), "f", "s", "t");
        assert!(long.len() <= 63, "{long}");
    }

    fn trigger(on: TargetKind) -> TraceTrigger {
        let mut t = TraceTrigger::new(
            "io",
            TraceTriggerSpec {
                matchers: vec![r#"alertname="A""#.into()],
                target: TriggerTarget {
                    kind: on,
                    ..Default::default()
                },
                trace: TraceTemplate {
                    program: None,
                    sample: Some("biolatency".into()),
                    args: vec![],
                    deadline: 60,
                    deadline_grace_period: None,
                    metrics: None,
                },
                limits: TriggerLimits::default(),
            },
        );
        t.metadata.namespace = Some("ns".into());
        t.metadata.uid = Some("uid-1".into());
        t
    }

    fn alert() -> Alert {
        serde_json::from_value(serde_json::json!({
            "status": "firing", "labels": {"alertname": "A", "node": "n1"},
            "annotations": {}, "startsAt": "2025-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "0123456789abcdef"
        }))
        .expect("alert")
    }

    #[test]
    fn a_tracejob_is_owned_labelled_and_annotated() {
        let tt = trigger(TargetKind::Node);
        let job = tracejob(&tt, &alert(), &Where::Node("n1".into()));
        assert_eq!(job.namespace().as_deref(), Some("ns"));
        assert_eq!(job.spec.node_name.as_deref(), Some("n1"));
        assert!(job.spec.program.contains("block_rq_issue"));
        assert_eq!(job.spec.deadline, 60);
        assert_eq!(job.labels()[LABEL_TRIGGER], "io");
        assert_eq!(job.labels()[LABEL_FINGERPRINT], "0123456789abcdef");
        assert_eq!(job.annotations()[ANNOTATION_TARGET], "node/n1");
        assert_eq!(
            job.annotations()[ANNOTATION_ALERT_STARTS_AT],
            "2025-01-01T00:00:00Z"
        );
        assert!(job.annotations()[ANNOTATION_ALERT_LABELS].contains(r#""alertname":"A""#));
        let m = made_from(&job, "uid-1").expect("owned");
        assert_eq!(m.target, "node/n1");
        assert!(!m.ended);
        assert!(made_from(&job, "other").is_none());
        let pod = tracejob(
            &trigger(TargetKind::Pod),
            &alert(),
            &Where::Pod {
                pod: "web".into(),
                container: None,
            },
        );
        assert_eq!(pod.spec.node_name, None);
        assert_eq!(pod.spec.target.map(|t| t.pod).as_deref(), Some("web"));
    }

    #[test]
    fn parses_alertmanagers_payload() {
        let n: Notification = serde_json::from_str(
            r#"{"receiver":"tracejob","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"A"},"annotations":{},"startsAt":"2025-01-01T00:00:00.1Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://x","fingerprint":"abc"}],"groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am","version":"4","groupKey":"{}:{}","truncatedAlerts":0}"#,
        )
        .expect("parses");
        assert_eq!(n.version, "4");
        assert!(n.alerts[0].firing());
        assert_eq!(n.alerts[0].fingerprint, "abc");
    }
}
