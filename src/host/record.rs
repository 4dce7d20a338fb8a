//! The agent's record of a run (`record.json` in the run's directory), which a restarted agent,
//! possibly of a newer release, reads to take the run over.
//!
//! In memory a `Record` holds decide's types; on disk it is `OnDisk`, with a version and enums of
//! its own whose names are fixed here, so renaming a variant in `decide` (or `resource`) cannot
//! change the file and strand the runs an upgrade should take over. Records written before the
//! version existed have none: they are version 1, in the same format.

use serde::{Deserialize, Serialize};

use crate::decide::job::{Outcome, StopReason};
use crate::host::process::Identity;
use crate::resource::Phase;

/// The newest on-disk version this agent reads, and the one it writes.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "record version {0} is newer than the agent reads ({VERSION}); a newer agent wrote it"
    )]
    TooNew(u32),
    #[error("the record is not valid JSON of version {VERSION}: {0}")]
    Json(#[from] serde_json::Error),
}

/// The output a run stored in its ConfigMap. Its field names are its on-disk format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Landed {
    pub configmap: String,
    /// The `OutputStored` condition's reason and message.
    pub reason: String,
    pub message: String,
    /// Bytes of stdout, as bpftrace printed them (dropped ones included).
    pub bytes: u64,
}

/// What a restarted agent needs to resume a run, and what was decided of it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub run_id: String,
    /// The shim supervising bpftrace, once started.
    pub shim: Option<Identity>,
    /// bpftrace itself, once the shim reported it.
    pub bpftrace: Option<Identity>,
    /// Set once bpftrace is tracing.
    pub probes: Option<u32>,
    /// Unix seconds at which it began tracing (the deadline counts from then).
    pub tracing_since: Option<i64>,
    /// Set once SIGINT was sent, with why.
    pub stopped: Option<StopReason>,
    /// Set once bpftrace was killed after the grace period.
    pub killed: bool,
    /// The outcome, decided before it is reported.
    pub outcome: Option<Outcome>,
    /// The output ConfigMap, once written.
    pub landed: Option<Landed>,
    /// The target container's name and ID, when the TraceJob has a target: a restart changes
    /// the ID.
    pub target_id: Option<String>,
    pub target_name: Option<String>,
    /// Why the target was lost, if it was (the trace was stopped for it).
    pub target_lost: Option<String>,
    /// The target was lost to a restart of its container.
    pub target_restarted: bool,
    /// Why the namespace may no longer trace this node, if so (the trace was stopped for it).
    pub revoked: Option<String>,
    /// The program as it ran, when the agent filled in variables ($container_pid, ...).
    pub program: Option<String>,
}

impl Record {
    /// The record's JSON, as `record.json` holds it.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec_pretty(&OnDisk::from(self.clone()))
    }

    /// A record read from `record.json`. The version is read first, so a newer agent's record is
    /// refused as such, whatever else changed in its format.
    pub fn from_json(json: &[u8]) -> Result<Record, Error> {
        #[derive(Deserialize)]
        struct Versioned {
            #[serde(default = "first_version")]
            version: u32,
        }
        let Versioned { version } = serde_json::from_slice(json)?;
        if version > VERSION {
            return Err(Error::TooNew(version));
        }
        Ok(serde_json::from_slice::<OnDisk>(json)?.into())
    }
}

fn first_version() -> u32 {
    1
}

/// `Record` on disk. The field names are those of the records written before versions existed.
#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    #[serde(default = "first_version")]
    version: u32,
    namespace: String,
    name: String,
    uid: String,
    run_id: String,
    #[serde(default)]
    shim: Option<Identity>,
    #[serde(default)]
    bpftrace: Option<Identity>,
    #[serde(default)]
    probes: Option<u32>,
    #[serde(default)]
    tracing_since: Option<i64>,
    #[serde(default)]
    stopped: Option<DiskStop>,
    #[serde(default)]
    killed: bool,
    #[serde(default)]
    outcome: Option<DiskOutcome>,
    #[serde(default)]
    landed: Option<Landed>,
    #[serde(default)]
    target_id: Option<String>,
    #[serde(default)]
    target_name: Option<String>,
    #[serde(default)]
    target_lost: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    target_restarted: bool,
    #[serde(default)]
    revoked: Option<String>,
    #[serde(default)]
    program: Option<String>,
}

/// `StopReason` on disk. The names are the file's, spelled out so that no rename changes them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum DiskStop {
    #[serde(rename = "Requested")]
    Requested,
    #[serde(rename = "Deadline")]
    Deadline,
    #[serde(rename = "Deleted")]
    Deleted,
    #[serde(rename = "OutputLimit")]
    OutputLimit,
    #[serde(rename = "AgentRemoved")]
    AgentRemoved,
    #[serde(rename = "StartTimeout")]
    StartTimeout,
    #[serde(rename = "StatusRejected")]
    StatusRejected,
    #[serde(rename = "TargetLost")]
    TargetLost,
    #[serde(rename = "TargetRestarted")]
    TargetRestarted,
    #[serde(rename = "Revoked")]
    Revoked,
    #[serde(rename = "RecordNotSaved")]
    RecordNotSaved,
}

/// `Outcome` on disk.
#[derive(Debug, Serialize, Deserialize)]
struct DiskOutcome {
    phase: DiskPhase,
    reason: String,
    #[serde(default)]
    exit_code: Option<i64>,
    message: String,
}

/// `Phase` on disk (an outcome's), named as the file names it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum DiskPhase {
    #[serde(rename = "Pending")]
    Pending,
    #[serde(rename = "Running")]
    Running,
    #[serde(rename = "Stopping")]
    Stopping,
    #[serde(rename = "Completed")]
    Completed,
    #[serde(rename = "Failed")]
    Failed,
}

// The conversions match every variant both ways, so a variant added in decide does not compile
// until it has a name on disk.

impl From<StopReason> for DiskStop {
    fn from(s: StopReason) -> DiskStop {
        match s {
            StopReason::Requested => DiskStop::Requested,
            StopReason::Deadline => DiskStop::Deadline,
            StopReason::Deleted => DiskStop::Deleted,
            StopReason::OutputLimit => DiskStop::OutputLimit,
            StopReason::AgentRemoved => DiskStop::AgentRemoved,
            StopReason::StartTimeout => DiskStop::StartTimeout,
            StopReason::StatusRejected => DiskStop::StatusRejected,
            StopReason::TargetLost => DiskStop::TargetLost,
            StopReason::TargetRestarted => DiskStop::TargetRestarted,
            StopReason::Revoked => DiskStop::Revoked,
            StopReason::RecordNotSaved => DiskStop::RecordNotSaved,
        }
    }
}

impl From<DiskStop> for StopReason {
    fn from(s: DiskStop) -> StopReason {
        match s {
            DiskStop::Requested => StopReason::Requested,
            DiskStop::Deadline => StopReason::Deadline,
            DiskStop::Deleted => StopReason::Deleted,
            DiskStop::OutputLimit => StopReason::OutputLimit,
            DiskStop::AgentRemoved => StopReason::AgentRemoved,
            DiskStop::StartTimeout => StopReason::StartTimeout,
            DiskStop::StatusRejected => StopReason::StatusRejected,
            DiskStop::TargetLost => StopReason::TargetLost,
            DiskStop::TargetRestarted => StopReason::TargetRestarted,
            DiskStop::Revoked => StopReason::Revoked,
            DiskStop::RecordNotSaved => StopReason::RecordNotSaved,
        }
    }
}

impl From<Phase> for DiskPhase {
    fn from(p: Phase) -> DiskPhase {
        match p {
            Phase::Pending => DiskPhase::Pending,
            Phase::Running => DiskPhase::Running,
            Phase::Stopping => DiskPhase::Stopping,
            Phase::Completed => DiskPhase::Completed,
            Phase::Failed => DiskPhase::Failed,
        }
    }
}

impl From<DiskPhase> for Phase {
    fn from(p: DiskPhase) -> Phase {
        match p {
            DiskPhase::Pending => Phase::Pending,
            DiskPhase::Running => Phase::Running,
            DiskPhase::Stopping => Phase::Stopping,
            DiskPhase::Completed => Phase::Completed,
            DiskPhase::Failed => Phase::Failed,
        }
    }
}

impl From<Outcome> for DiskOutcome {
    fn from(o: Outcome) -> DiskOutcome {
        DiskOutcome {
            phase: o.phase.into(),
            reason: o.reason,
            exit_code: o.exit_code,
            message: o.message,
        }
    }
}

impl From<DiskOutcome> for Outcome {
    fn from(o: DiskOutcome) -> Outcome {
        Outcome {
            phase: o.phase.into(),
            reason: o.reason,
            exit_code: o.exit_code,
            message: o.message,
        }
    }
}

impl From<Record> for OnDisk {
    fn from(r: Record) -> OnDisk {
        OnDisk {
            version: VERSION,
            namespace: r.namespace,
            name: r.name,
            uid: r.uid,
            run_id: r.run_id,
            shim: r.shim,
            bpftrace: r.bpftrace,
            probes: r.probes,
            tracing_since: r.tracing_since,
            stopped: r.stopped.map(Into::into),
            killed: r.killed,
            outcome: r.outcome.map(Into::into),
            landed: r.landed,
            target_id: r.target_id,
            target_name: r.target_name,
            target_lost: r.target_lost,
            target_restarted: r.target_restarted,
            revoked: r.revoked,
            program: r.program,
        }
    }
}

/// Only for a version this agent reads (`Record::from_json` checks it first).
impl From<OnDisk> for Record {
    fn from(d: OnDisk) -> Record {
        Record {
            namespace: d.namespace,
            name: d.name,
            uid: d.uid,
            run_id: d.run_id,
            shim: d.shim,
            bpftrace: d.bpftrace,
            probes: d.probes,
            tracing_since: d.tracing_since,
            stopped: d.stopped.map(Into::into),
            killed: d.killed,
            outcome: d.outcome.map(Into::into),
            landed: d.landed,
            target_id: d.target_id,
            target_name: d.target_name,
            target_lost: d.target_lost,
            target_restarted: d.target_restarted,
            revoked: d.revoked,
            program: d.program,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the agent wrote it before records had a version (every field set).
    const UNVERSIONED: &str = r#"{
  "namespace": "ns",
  "name": "n",
  "uid": "u",
  "run_id": "0b3c7a52-8f8e-4d5e-9a59-4f1d5b7c2e10",
  "shim": {
    "pid": 10,
    "start_ticks": 100
  },
  "bpftrace": {
    "pid": 11,
    "start_ticks": 101
  },
  "probes": 3,
  "tracing_since": 1700000000,
  "stopped": "OutputLimit",
  "killed": true,
  "outcome": {
    "phase": "Failed",
    "reason": "OutputLimit",
    "exit_code": 1,
    "message": "m"
  },
  "landed": {
    "configmap": "cm",
    "reason": "r",
    "message": "msg",
    "bytes": 5
  },
  "target_id": "tid",
  "target_name": "tn",
  "target_lost": "tl",
  "revoked": "rv",
  "program": "BEGIN {}"
}"#;

    fn full() -> Record {
        Record {
            namespace: "ns".into(),
            name: "n".into(),
            uid: "u".into(),
            run_id: "0b3c7a52-8f8e-4d5e-9a59-4f1d5b7c2e10".into(),
            shim: Some(Identity {
                pid: 10,
                start_ticks: 100,
            }),
            bpftrace: Some(Identity {
                pid: 11,
                start_ticks: 101,
            }),
            probes: Some(3),
            tracing_since: Some(1_700_000_000),
            stopped: Some(StopReason::OutputLimit),
            killed: true,
            outcome: Some(Outcome {
                phase: Phase::Failed,
                reason: "OutputLimit".into(),
                exit_code: Some(1),
                message: "m".into(),
            }),
            landed: Some(Landed {
                configmap: "cm".into(),
                reason: "r".into(),
                message: "msg".into(),
                bytes: 5,
            }),
            target_id: Some("tid".into()),
            target_name: Some("tn".into()),
            target_lost: Some("tl".into()),
            target_restarted: false,
            revoked: Some("rv".into()),
            program: Some("BEGIN {}".into()),
        }
    }

    fn json(r: &Record) -> String {
        String::from_utf8(r.to_json().expect("encodes")).expect("UTF-8")
    }

    #[test]
    fn records_without_a_version_still_load() {
        assert_eq!(Record::from_json(UNVERSIONED.as_bytes()).ok(), Some(full()));
        // The oldest records have only the first four fields, and no outcome's exit code.
        let minimal = r#"{"namespace":"ns","name":"n","uid":"u","run_id":"id",
            "outcome":{"phase":"Completed","reason":"Exited","message":"ok"}}"#;
        let r = Record::from_json(minimal.as_bytes()).expect("loads");
        assert_eq!(
            r.outcome.map(|o| (o.phase, o.exit_code)),
            Some((Phase::Completed, None))
        );
    }

    #[test]
    fn the_format_is_todays_plus_a_version() {
        let want = UNVERSIONED.replacen("{\n", "{\n  \"version\": 1,\n", 1);
        assert_eq!(json(&full()), want);
        assert_eq!(Record::from_json(want.as_bytes()).ok(), Some(full()));
        let empty = Record::default();
        assert_eq!(Record::from_json(json(&empty).as_bytes()).ok(), Some(empty));
    }

    #[test]
    fn stop_reasons_and_phases_keep_their_names_on_disk() {
        use StopReason::*;
        let stops = [
            (Requested, "Requested"),
            (Deadline, "Deadline"),
            (Deleted, "Deleted"),
            (OutputLimit, "OutputLimit"),
            (AgentRemoved, "AgentRemoved"),
            (StartTimeout, "StartTimeout"),
            (StatusRejected, "StatusRejected"),
            (TargetLost, "TargetLost"),
            (TargetRestarted, "TargetRestarted"),
            (Revoked, "Revoked"),
            (RecordNotSaved, "RecordNotSaved"),
        ];
        for (stop, name) in stops {
            let r = Record {
                stopped: Some(stop),
                ..full()
            };
            let text = json(&r);
            assert!(
                text.contains(&format!("\n  \"stopped\": \"{name}\",\n")),
                "{text}"
            );
            assert_eq!(Record::from_json(text.as_bytes()).ok(), Some(r));
        }
        use Phase::*;
        let phases = [
            (Pending, "Pending"),
            (Running, "Running"),
            (Stopping, "Stopping"),
            (Completed, "Completed"),
            (Failed, "Failed"),
        ];
        for (phase, name) in phases {
            let mut r = full();
            r.outcome.as_mut().expect("set").phase = phase;
            let text = json(&r);
            assert!(text.contains(&format!("\"phase\": \"{name}\",")), "{text}");
            assert_eq!(Record::from_json(text.as_bytes()).ok(), Some(r));
        }
    }

    #[test]
    fn newer_or_unreadable_records_are_refused() {
        let newer = UNVERSIONED.replacen("{\n", "{\n  \"version\": 2,\n", 1);
        let err = Record::from_json(newer.as_bytes()).expect_err("too new");
        assert!(matches!(err, Error::TooNew(2)), "{err}");
        assert!(err.to_string().contains("a newer agent wrote it"), "{err}");
        // Refused as too new even when the rest no longer parses as version 1.
        let changed = r#"{"version": 3, "namespace": 7}"#;
        assert!(matches!(
            Record::from_json(changed.as_bytes()),
            Err(Error::TooNew(3))
        ));
        let renamed =
            UNVERSIONED.replace("\"OutputLimit\",\n  \"killed\"", "\"Limit\",\n  \"killed\"");
        assert!(matches!(
            Record::from_json(renamed.as_bytes()),
            Err(Error::Json(_))
        ));
        assert!(matches!(Record::from_json(b"{\"nam"), Err(Error::Json(_))));
    }
}
