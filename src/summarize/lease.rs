//! One summarizer at a time, through a coordination.k8s.io Lease (as kube-controller-manager and
//! kube-scheduler elect their leader): the holder renews it every few seconds; a candidate takes
//! it over once it has gone unrenewed for its duration. Every change is a compare-and-swap on the
//! Lease's resourceVersion, so two candidates never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;

/// How long a lease holds without renewal: a killed leader is replaced within this and one
/// `RETRY` (well within 30 s).
pub const DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews it.
pub const RENEW: Duration = Duration::from_secs(5);
/// How often a candidate tries to take it.
pub const RETRY: Duration = Duration::from_secs(2);

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

/// Whether a lease renewed at `renewed` (for `seconds`) has run out at `now`. A lease without a
/// renewal time has.
pub fn expired(renewed: Option<Timestamp>, seconds: Option<i32>, now: Timestamp) -> bool {
    let Some(renewed) = renewed else {
        return true;
    };
    let seconds = i64::from(seconds.unwrap_or(0).max(0));
    (now - renewed).get_seconds() >= seconds
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str) -> Elector {
        Elector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: takes the lease if it is free or has run out, renews it if it is ours.
    /// True when this identity holds it afterwards.
    pub async fn round(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = i32::try_from(DURATION.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours
            && !expired(
                spec.renew_time.as_ref().map(|t| t.0),
                spec.lease_duration_seconds,
                now,
            )
        {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        // The resourceVersion read is the precondition: a concurrent change makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_out_after_its_duration() {
        let t = |s: i64| Timestamp::from_second(s).expect("time");
        assert!(expired(None, Some(15), t(100)));
        assert!(!expired(Some(t(100)), Some(15), t(110)));
        assert!(expired(Some(t(100)), Some(15), t(115)));
        assert!(expired(Some(t(100)), None, t(100)));
        assert!(
            expired(Some(t(100)), Some(-5), t(100)),
            "a negative duration saturates"
        );
    }
}
