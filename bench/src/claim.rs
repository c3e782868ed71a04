//! Times one `Store::claim` through the `repeaterd` library while the
//! daemon is stopped: open the scenario's store, take the repeater's lease,
//! claim the same batch many times (a claim reads, it does not mark), and
//! report the median.

use crate::database::ScenarioDb;

/// Median microseconds of `Store::claim(lease, batch)` on `domain/repeater`.
pub async fn median_claim_us(
    db: &ScenarioDb,
    domain: &str,
    repeater: &str,
    batch: u32,
    repetitions: usize,
) -> Result<f64, String> {
    let _ = (batch, repetitions);
    let target = match (db.sqlite_path(), db.postgres_url()) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(url)) => url.to_owned(),
        (None, None) => String::new(),
    };
    Err(format!(
        "timing a claim of {domain}/{repeater} on {target} needs the store implementations, not yet merged"
    ))
}
