//! Times one `Store::claim` through the `repeaterd` library while the
//! daemon is stopped: open the scenario's store, take the repeater's lease,
//! claim the same batch many times (a claim reads, it does not mark), and
//! report the median of the steadiest round.

use std::time::Instant;

use repeaterd::model::now_millis;

use crate::database::ScenarioDb;
use crate::stats::quantile;

/// Claims made before timing starts, to warm caches and connections.
const WARM_UP: usize = 20;
/// Rounds of `repetitions` claims each, a short pause apart.
const ROUNDS: usize = 5;

/// Microseconds of `Store::claim(lease, batch)` on `domain/repeater`: the
/// lowest of [`ROUNDS`] round medians. One round of a few hundred claims
/// lasts a tenth of a second, and a round that falls on the kernel
/// writing back the fill just before it (or any other burst on the
/// machine) once measured three times the others; the lowest median is
/// the claim's own cost.
pub async fn median_claim_us(
    db: &ScenarioDb,
    domain: &str,
    repeater: &str,
    batch: u32,
    repetitions: usize,
) -> Result<f64, String> {
    let sqlite = db
        .sqlite_path()
        .map(|path| path.to_path_buf())
        .unwrap_or_default();
    let store = repeaterd::store::open(db.postgres_url(), &sqlite)
        .await
        .map_err(|err| format!("cannot open the scenario's store: {err}"))?;
    let row = store
        .repeater(domain, repeater)
        .await
        .map_err(|err| format!("cannot read repeater {domain}/{repeater}: {err}"))?
        .ok_or_else(|| format!("repeater {domain}/{repeater} is not stored"))?;
    let lease = store
        .acquire_lease(row.id, "bench", now_millis(), 600_000)
        .await
        .map_err(|err| format!("cannot lease {domain}/{repeater}: {err}"))?
        .ok_or_else(|| format!("the lease of {domain}/{repeater} is held by someone else"))?;
    let mut medians = Vec::with_capacity(ROUNDS);
    let mut samples = Vec::with_capacity(repetitions);
    let mut failure = None;
    for round in 0..WARM_UP + repetitions * ROUNDS {
        if round > WARM_UP && (round - WARM_UP).is_multiple_of(repetitions) {
            medians.extend(quantile(&mut samples, 0.5));
            samples.clear();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let started = Instant::now();
        match store.claim(&lease, batch, now_millis()).await {
            Ok(records) if records.len() == batch as usize => {}
            Ok(records) => {
                failure = Some(format!(
                    "claim of {domain}/{repeater} returned {} records, expected {batch}",
                    records.len()
                ));
                break;
            }
            Err(err) => {
                failure = Some(format!("claim of {domain}/{repeater} failed: {err}"));
                break;
            }
        }
        if round >= WARM_UP {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let released = store.release_lease(&lease).await;
    if let Some(err) = failure {
        return Err(err);
    }
    released.map_err(|err| format!("cannot release the lease of {domain}/{repeater}: {err}"))?;
    medians.extend(quantile(&mut samples, 0.5));
    (medians.into_iter())
        .min_by(f64::total_cmp)
        .ok_or_else(|| "no claims timed".to_owned())
}
