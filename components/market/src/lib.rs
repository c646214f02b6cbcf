//! Helpers shared by weir's example components and the reference model the
//! tests check them against. The market types themselves are the SDK's
//! (`weir_guest::events`), re-exported here.

pub use weir_guest::events::{Trade, iso8601_ms};

/// Simple moving averages over the newest prices of a window.
///
/// `prices` is oldest first; returns `None` until it holds `slow` prices.
pub fn sma_pair(prices: &[f64], fast: usize, slow: usize) -> Option<(f64, f64)> {
    if fast == 0 || slow == 0 || prices.len() < slow || prices.len() < fast {
        return None;
    }
    let mean = |n: usize| prices[prices.len() - n..].iter().sum::<f64>() / n as f64;
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
}
