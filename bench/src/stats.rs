//! Summary statistics used by the scenarios: percentiles of latency samples
//! and Jain's fairness index.

/// The `q`-th quantile (0.0–1.0) by nearest rank, or `None` for no samples.
/// Sorts `samples` in place.
pub fn quantile(samples: &mut [f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (q * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

/// Jain's index J = (Σx)² / (n·Σx²): 1.0 when every share is equal, 1/n when
/// one party takes everything. `None` when there is nothing to compare.
pub fn jain_index(shares: &[f64]) -> Option<f64> {
    let sum: f64 = shares.iter().sum();
    let sum_sq: f64 = shares.iter().map(|x| x * x).sum();
    if shares.is_empty() || sum_sq == 0.0 {
        return None;
    }
    Some(sum * sum / (shares.len() as f64 * sum_sq))
}

/// Rounds to three decimals so JSON lines stay readable.
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&mut samples, 0.5), Some(50.0));
        assert_eq!(quantile(&mut samples, 0.99), Some(99.0));
        assert_eq!(quantile(&mut samples, 1.0), Some(100.0));
        assert_eq!(quantile(&mut samples, 0.0), Some(1.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn jain_index_is_one_for_equal_shares_and_one_over_n_for_a_hog() {
        assert_eq!(jain_index(&[3.0, 3.0, 3.0, 3.0]), Some(1.0));
        let hog = jain_index(&[8.0, 0.0, 0.0, 0.0]).unwrap();
        assert!((hog - 0.25).abs() < 1e-12);
        let uneven = jain_index(&[1.0, 2.0]).unwrap();
        assert!((uneven - 0.9).abs() < 1e-12);
        assert_eq!(jain_index(&[]), None);
        assert_eq!(jain_index(&[0.0, 0.0]), None);
    }
}
