//! The summary of a TraceJob run on several nodes (phase, progress, conditions), kept by one small
//! task per such TraceJob this node takes part in, fed every version the watch brings.
//!
//! Every node's entry write makes the summary stale, and N agents each writing it would make N
//! writes of one object, each conflicting with the others. So the agents of the first nodes by
//! name (`status::SUMMARISERS`) write it, a moment after it goes stale, onto the version they
//! computed it from; the other agents write it only if it stays stale and unwritten for a while
//! (the first nodes' agents may be gone).

use std::time::Duration;

use kube::ResourceExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{warn, Instrument};

use crate::cluster::writer::{self, SummaryWritten, Writer};
use crate::decide::status::{self, SummaryDue};
use crate::resource::TraceJob;

/// How long after the summary went stale a summariser writes it: long enough to take in a burst
/// of entry writes, at random so two summarisers seldom write at once.
const SOON_MS: (u64, u64) = (300, 1300);
/// How long the summary stays stale and unwritten before any other node's agent writes it.
const FALLBACK_MS: (u64, u64) = (10_000, 20_000);

fn after((min, max): (u64, u64)) -> Instant {
    Instant::now() + Duration::from_millis(min + writer::rand_below(max - min))
}

/// Starts keeping one TraceJob's summary; it ends when the TraceJob is deleted (None is sent) or
/// the sender is dropped.
pub fn keep(writer: Writer, job: &TraceJob, rx: watch::Receiver<Option<TraceJob>>) {
    let span = tracing::info_span!("summary", namespace = %job.namespace().unwrap_or_default(), name = %job.name_any());
    tokio::spawn(run(writer, rx).instrument(span));
}

async fn run(writer: Writer, mut rx: watch::Receiver<Option<TraceJob>>) {
    let mut due: Option<Instant> = None;
    let mut key = None;
    let mut delays = writer::backoff();
    loop {
        let Some(job) = rx.borrow_and_update().clone() else {
            return;
        };
        // Somebody wrote the summary: decide anew from this version.
        let now_key = Some(status::summary_key(&job));
        if now_key != key {
            key = now_key;
            due = None;
        }
        due = match status::summary_due(writer.node(), &job, writer::now()) {
            SummaryDue::NotOurs | SummaryDue::Current => None,
            SummaryDue::Soon => due.or_else(|| Some(after(SOON_MS))),
            SummaryDue::Fallback => due.or_else(|| Some(after(FALLBACK_MS))),
        };
        let Some(at) = due else {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = tokio::time::sleep_until(at) => {}
        }
        // Due: write it from the newest version.
        let Some(job) = rx.borrow_and_update().clone() else {
            return;
        };
        due = None;
        match writer.write_summary(&job).await {
            // Either way the watch brings a newer version: decide again on that one.
            Ok(SummaryWritten::Done | SummaryWritten::Conflict) => {
                delays = writer::backoff();
                if rx.changed().await.is_err() {
                    return;
                }
            }
            Ok(SummaryWritten::Gone) => return,
            Err(error) => {
                let pause = delays.next().unwrap_or(Duration::from_secs(30));
                warn!(%error, retry_in = ?pause, "writing the TraceJob's summary failed");
                due = Some(Instant::now() + pause);
            }
        }
    }
}
