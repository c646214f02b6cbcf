//! Helpers shared by weir's example components and the reference model the
//! tests check them against. The market types themselves are the SDK's
//! (`weir_guest::events`), re-exported here.

pub use weir_guest::events::{Trade, iso8601_ms};

/// Simple moving averages over the newest prices of a window.
///
/// `prices` is oldest first; returns `None` until it holds `slow` prices.
pub fn sma_pair(prices: &[f64], fast: usize, slow: usize) -> Option<(f64, f64)> {
    let (&next, before) = prices.split_last()?;
    sma_pair_after(before, next, fast, slow)
}

/// [`sma_pair`] of `prices` with `next` appended, without building that
/// vector (a strategy can take the averages before it changes its state).
pub fn sma_pair_after(prices: &[f64], next: f64, fast: usize, slow: usize) -> Option<(f64, f64)> {
    let len = prices.len() + 1;
    if fast == 0 || slow == 0 || len < slow || len < fast {
        return None;
    }
    let mean = |n: usize| (prices[len - n..].iter().sum::<f64>() + next) / n as f64;
    Some((mean(fast), mean(slow)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sma_needs_full_window() {
        assert_eq!(sma_pair(&[1.0, 2.0], 1, 3), None);
        assert_eq!(sma_pair(&[1.0, 2.0, 3.0], 1, 3), Some((3.0, 2.0)));
    }

    #[test]
    fn sma_after_matches_sma_on_the_longer_window() {
        let prices: Vec<f64> = (0..30)
            .map(|i| 100.0 + (i as f64 * 0.37).sin() * 3.1)
            .collect();
        for len in 0..prices.len() {
            for (fast, slow) in [(1, 2), (5, 20), (3, 3), (0, 4)] {
                let with = sma_pair(&prices[..=len], fast, slow);
                let after = sma_pair_after(&prices[..len], prices[len], fast, slow);
                assert_eq!(
                    with.map(|(f, s)| (f.to_bits(), s.to_bits())),
                    after.map(|(f, s)| (f.to_bits(), s.to_bits())),
                    "len {len} fast {fast} slow {slow}"
                );
            }
        }
    }
}
