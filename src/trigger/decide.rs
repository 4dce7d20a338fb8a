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
};
use crate::resource::vocabulary::{Annotation, Label, Reason};
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
    /// The alert names another namespace than the trigger's (one its namespace's
    /// `observe.tracejob.dev/alert-namespaces` does not allow), or a pod in another namespace.
    OtherNamespace,
    /// The target had a trace from this trigger within the cooldown.
    Cooldown,
    /// The trigger has maxRunning traces not yet ended.
    MaxRunning,
    /// The trigger started maxPerHour traces in the last hour.
    MaxPerHour,
}

impl Suppress {
    pub const ALL: [Suppress; 5] = [
        Suppress::NoTarget,
        Suppress::OtherNamespace,
        Suppress::Cooldown,
        Suppress::MaxRunning,
        Suppress::MaxPerHour,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Suppress::NoTarget => Reason::NoTarget.as_str(),
            Suppress::OtherNamespace => Reason::OtherNamespace.as_str(),
            Suppress::Cooldown => Reason::Cooldown.as_str(),
            Suppress::MaxRunning => Reason::MaxRunning.as_str(),
            Suppress::MaxPerHour => Reason::MaxPerHour.as_str(),
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

/// Whether a trigger in `own` may answer an alert of namespace `alert`, given `own`'s
/// `observe.tracejob.dev/alert-namespaces` annotation (`widened`).
pub fn may_answer(own: &str, widened: Option<&str>, alert: &str) -> bool {
    alert == own
        || widened.is_some_and(|w| {
            w.split(',')
                .map(str::trim)
                .any(|n| n == "*" || (!n.is_empty() && n == alert))
        })
}

/// The labels a trigger reads to place an alert's trace (its target's), whether present or not.
pub fn target_labels(spec: &TriggerTarget) -> Vec<&str> {
    fn or<'a>(l: &'a Option<String>, d: &'static str) -> &'a str {
        l.as_deref().unwrap_or(d)
    }
    let mut v = vec![or(&spec.namespace_label, "namespace")];
    match spec.kind {
        TargetKind::Node => v.extend([or(&spec.node_label, "node"), "instance"]),
        TargetKind::Pod => v.extend([
            or(&spec.pod_label, "pod"),
            or(&spec.container_label, "container"),
        ]),
    }
    v
}

/// Where the trace of an alert with `labels` runs, for a trigger in `namespace` whose
/// annotation `observe.tracejob.dev/alert-namespaces` is `widened`: an alert naming another
/// namespace than the trigger's starts nothing unless the annotation allows it, and a pod is
/// always in the trigger's namespace.
pub fn target(
    spec: &TriggerTarget,
    namespace: &str,
    widened: Option<&str>,
    labels: &BTreeMap<String, String>,
) -> Result<Where, Suppress> {
    let get = |label: &Option<String>, default: &str| {
        labels
            .get(label.as_deref().unwrap_or(default))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let alert_ns = get(&spec.namespace_label, "namespace");
    match spec.kind {
        TargetKind::Node => {
            let node = get(&spec.node_label, "node")
                .or_else(|| {
                    labels
                        .get("instance")
                        .map(|i| strip_port(i).to_string())
                        .filter(|i| !i.is_empty())
                })
                .ok_or(Suppress::NoTarget)?;
            if alert_ns.is_some_and(|ns| !may_answer(namespace, widened, &ns)) {
                return Err(Suppress::OtherNamespace);
            }
            Ok(Where::Node(node))
        }
        TargetKind::Pod => {
            let pod = get(&spec.pod_label, "pod").ok_or(Suppress::NoTarget)?;
            let ns = alert_ns.ok_or(Suppress::NoTarget)?;
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

/// The TraceJob's name: the trigger's name (cut to 40 characters) and a digest of the whole
/// trigger name, the alert's fingerprint, its start and the target. The same notification
/// repeated names the same TraceJob (so creating it again is a conflict, not a second trace);
/// two triggers whose names share their first 40 characters name different ones; the name stays
/// short enough to be a label value (the output ConfigMap's `observe.tracejob.dev/tracejob`).
pub fn job_name(trigger: &str, fingerprint: &str, starts_at: &str, target: &str) -> String {
    let digest = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{trigger}\0{fingerprint}\0{starts_at}\0{target}").as_bytes(),
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
            (Label::Trigger.as_str().to_string(), trigger.name_any()),
            (Label::AlertFingerprint.as_str().to_string(), fingerprint),
        ])),
        annotations: Some(BTreeMap::from([
            (
                Annotation::AlertLabels.as_str().to_string(),
                serde_json::to_string(&used_labels(trigger, &alert.labels)).unwrap_or_default(),
            ),
            (
                Annotation::AlertStartsAt.as_str().to_string(),
                alert.starts_at.clone(),
            ),
            (Annotation::TriggerTarget.as_str().to_string(), on.key()),
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

/// Of an alert's labels, those the trigger's matchers and target read: a trigger's namespace
/// learns no more of another team's alert than what it asked for.
pub fn used_labels(
    trigger: &TraceTrigger,
    labels: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut names: Vec<&str> = target_labels(&trigger.spec.target);
    names.extend(
        trigger
            .spec
            .matchers
            .iter()
            .map(|m| super::matcher::label_name(m)),
    );
    labels
        .iter()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The fingerprint as it is written in the label (Alertmanager's are 16 hex digits).
pub fn fingerprint_label(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(63)
        .collect()
}

/// What the receiver keeps of a TraceJob a TraceTrigger controls: what its limits and a
/// resolved alert need, and nothing a tenant could make large.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Triggered {
    pub namespace: String,
    pub name: String,
    /// The controlling TraceTrigger's UID.
    pub trigger_uid: String,
    /// Its `observe.tracejob.dev/alert-fingerprint` label.
    pub fingerprint: String,
    /// Its target's key (`Where::key`, from the annotation).
    pub target: String,
    pub created: Timestamp,
    /// spec.stop is set.
    pub stopping: bool,
    /// Completed or Failed.
    pub ended: bool,
}

/// Longest text kept of a label or annotation (a name or a key is far shorter).
const KEPT: usize = 253;

impl Triggered {
    /// None unless a TraceTrigger controls the TraceJob.
    pub fn of(job: &TraceJob) -> Option<Triggered> {
        let owner = job.owner_references().iter().find(|o| {
            o.controller == Some(true)
                && o.kind == TraceTrigger::kind(&())
                && o.api_version.starts_with("observe.tracejob.dev/")
        })?;
        let cut = |v: Option<&String>| {
            v.map(|v| v.chars().take(KEPT).collect())
                .unwrap_or_default()
        };
        Some(Triggered {
            namespace: job.namespace().unwrap_or_default(),
            name: job.name_any(),
            trigger_uid: owner.uid.clone(),
            fingerprint: cut(job.labels().get(Label::AlertFingerprint.as_str())),
            target: cut(job.annotations().get(Annotation::TriggerTarget.as_str())),
            created: job
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(Timestamp::now),
            stopping: job.spec.stop,
            ended: job.phase().is_some_and(|p| p.is_final()),
        })
    }

    /// As the decisions of the trigger with `uid` see it; None if that trigger did not make it.
    pub fn made_by(&self, uid: &str) -> Option<Made> {
        (self.trigger_uid == uid).then(|| Made {
            name: self.name.clone(),
            target: self.target.clone(),
            created: self.created,
            ended: self.ended,
        })
    }
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
            target(
                &spec,
                "ns",
                None,
                &labels(&[("node", "n1"), ("instance", "x:1")])
            ),
            Ok(Where::Node("n1".into()))
        );
        assert_eq!(
            target(&spec, "ns", None, &labels(&[("instance", "n2:9100")])),
            Ok(Where::Node("n2".into()))
        );
        assert_eq!(
            target(&spec, "ns", None, &labels(&[("alertname", "A")])),
            Err(Suppress::NoTarget)
        );
        let custom = TriggerTarget {
            node_label: Some("hostname".into()),
            ..Default::default()
        };
        assert_eq!(
            target(
                &custom,
                "ns",
                None,
                &labels(&[("hostname", "h"), ("node", "n")])
            ),
            Ok(Where::Node("h".into()))
        );
    }

    #[test]
    fn a_node_alert_of_another_namespace_only_where_the_namespace_allows_it() {
        let spec = TriggerTarget::default();
        let of = |ns: &str| labels(&[("node", "n1"), ("namespace", ns)]);
        assert_eq!(
            target(&spec, "shop", None, &of("bank")),
            Err(Suppress::OtherNamespace)
        );
        assert_eq!(
            target(&spec, "shop", None, &of("shop")),
            Ok(Where::Node("n1".into()))
        );
        assert_eq!(
            target(&spec, "shop", Some("ops, bank"), &of("bank")),
            Ok(Where::Node("n1".into()))
        );
        assert_eq!(
            target(&spec, "shop", Some("ops,banking"), &of("bank")),
            Err(Suppress::OtherNamespace)
        );
        assert_eq!(
            target(&spec, "shop", Some("*"), &of("bank")),
            Ok(Where::Node("n1".into()))
        );
        assert_eq!(
            target(&spec, "shop", Some(""), &of("bank")),
            Err(Suppress::OtherNamespace)
        );
        // A node alert naming no namespace (node-exporter's) is answered.
        assert_eq!(
            target(&spec, "shop", None, &labels(&[("instance", "n2:9100")])),
            Ok(Where::Node("n2".into()))
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
                None,
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
                None,
                &labels(&[("namespace", "bank"), ("pod", "p")])
            ),
            Err(Suppress::OtherNamespace)
        );
        assert_eq!(
            target(&spec, "shop", None, &labels(&[("namespace", "shop")])),
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
        // Triggers sharing their first 40 characters name different TraceJobs.
        let prefix = "p".repeat(40);
        assert_ne!(
            job_name(&format!("{prefix}-a"), "f", "s", "t"),
            job_name(&format!("{prefix}-b"), "f", "s", "t")
        );
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
        assert_eq!(job.labels()[Label::Trigger.as_str()], "io");
        assert_eq!(
            job.labels()[Label::AlertFingerprint.as_str()],
            "0123456789abcdef"
        );
        assert_eq!(
            job.annotations()[Annotation::TriggerTarget.as_str()],
            "node/n1"
        );
        assert_eq!(
            job.annotations()[Annotation::AlertStartsAt.as_str()],
            "2025-01-01T00:00:00Z"
        );
        assert!(job.annotations()[Annotation::AlertLabels.as_str()].contains(r#""alertname":"A""#));
        let kept = Triggered::of(&job).expect("controlled by its trigger");
        let m = kept.made_by("uid-1").expect("owned");
        assert_eq!(m.target, "node/n1");
        assert!(!m.ended);
        assert!(kept.made_by("other").is_none());
        let mut unowned = job.clone();
        unowned.metadata.owner_references = None;
        assert!(
            Triggered::of(&unowned).is_none(),
            "labelled but not controlled"
        );
        // Only the labels the trigger read: its matcher's and its target's.
        let mut other = alert();
        other.labels.insert("secret_team_label".into(), "x".into());
        let job = tracejob(&tt, &other, &Where::Node("n1".into()));
        let kept: BTreeMap<String, String> =
            serde_json::from_str(&job.annotations()[Annotation::AlertLabels.as_str()])
                .expect("json");
        assert_eq!(kept, labels(&[("alertname", "A"), ("node", "n1")]));
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
