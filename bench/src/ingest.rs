//! Ingest as fast as the daemon accepts: events are cut into batches for
//! `POST /v1/domains/{domain}/events/batch`, interleaved across domains, and
//! posted by several concurrent client tasks, each sending its next batch
//! as soon as the last one was accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::api::Api;
use crate::payload;

/// What to post.
#[derive(Debug, Clone)]
pub struct IngestPlan {
    /// Each domain and how many events it gets.
    pub domains: Vec<(String, u64)>,
    /// Events per batch request (at most 1000, the API's limit).
    pub batch: u64,
    /// Concurrent client tasks.
    pub tasks: usize,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Producer ids are `<prefix>-<seq>`; must be unique per domain per run.
    pub prefix: String,
}

/// One accepted batch.
#[derive(Debug, Clone)]
pub struct PostedBatch {
    /// When the request was sent.
    pub sent: Instant,
    /// Keys of the records it created.
    pub records: Vec<u64>,
}

/// What ingest did.
#[derive(Debug)]
pub struct Ingested {
    /// When the first request was sent.
    pub started: Instant,
    /// When the last answer came back.
    pub finished: Instant,
    /// Every accepted batch.
    pub batches: Vec<PostedBatch>,
}

impl Ingested {
    /// Records created by all batches.
    pub fn records(&self) -> usize {
        self.batches.iter().map(|batch| batch.records.len()).sum()
    }
}

/// One batch to post: domain index, first sequence number, event count.
type BatchJob = (usize, u64, u64);

/// Cuts the plan into batches, taking one batch from each domain in turn so
/// that every domain's work starts early.
fn batch_jobs(plan: &IngestPlan) -> Vec<BatchJob> {
    let batch = plan.batch.clamp(1, 1000);
    let mut next: Vec<u64> = vec![0; plan.domains.len()];
    let mut jobs = Vec::new();
    loop {
        let mut any = false;
        for (index, (_, events)) in plan.domains.iter().enumerate() {
            if next[index] < *events {
                let count = batch.min(events - next[index]);
                jobs.push((index, next[index], count));
                next[index] += count;
                any = true;
            }
        }
        if !any {
            return jobs;
        }
    }
}

/// Posts the whole plan; the first failed batch fails the ingest.
pub async fn ingest(api: &Api, plan: &IngestPlan) -> Result<Ingested, String> {
    let jobs = Arc::new(batch_jobs(plan));
    let cursor = Arc::new(AtomicUsize::new(0));
    let plan = Arc::new(plan.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..plan.tasks.max(1) {
        let (api, jobs, cursor, plan) = (api.clone(), jobs.clone(), cursor.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            let mut posted = Vec::new();
            loop {
                let Some(&(domain, first, count)) =
                    jobs.get(cursor.fetch_add(1, Ordering::Relaxed))
                else {
                    return Ok::<_, String>(posted);
                };
                let body = payload::batch_body(&plan.prefix, first, count, plan.payload_bytes);
                let sent = Instant::now();
                let records = api.ingest_batch(&plan.domains[domain].0, body).await?;
                posted.push(PostedBatch { sent, records });
            }
        }));
    }
    let mut batches = Vec::new();
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(posted)) => batches.extend(posted),
            Ok(Err(err)) => failure = failure.or(Some(err)),
            Err(err) => failure = failure.or(Some(format!("ingest task failed: {err}"))),
        }
    }
    if let Some(err) = failure {
        return Err(format!("ingest failed: {err}"));
    }
    Ok(Ingested {
        started,
        finished: Instant::now(),
        batches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_event_once_interleaving_domains() {
        let plan = IngestPlan {
            domains: vec![("a".into(), 5), ("b".into(), 2)],
            batch: 2,
            tasks: 1,
            payload_bytes: 10,
            prefix: "p".into(),
        };
        let jobs = batch_jobs(&plan);
        assert_eq!(jobs, vec![(0, 0, 2), (1, 0, 2), (0, 2, 2), (0, 4, 1)]);
    }
}
