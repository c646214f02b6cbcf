//! A count-min sketch of 4-bit counters that ages: the frequency filter of
//! TinyLFU. L1 uses it to admit a new key into a full shard only when the
//! key is used more often than the entry it would push out, which keeps
//! one-off keys from flushing the hot set.

/// Rows of the sketch; each uses different bits of the key's hash.
const ROWS: u32 = 4;
/// Counters saturate here (4 bits).
const MAX: u8 = 15;

/// Access frequencies of recently seen keys, by 64-bit hash.
#[derive(Debug)]
pub struct FrequencySketch {
    counters: Vec<u8>,
    mask: usize,
    /// Increments since the last halving.
    additions: usize,
    /// Halve every counter after this many increments.
    sample: usize,
}

impl FrequencySketch {
    /// A sketch sized for a cache of `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        let size = (capacity.max(16) * 4).next_power_of_two();
        FrequencySketch {
            counters: vec![0; size],
            mask: size - 1,
            additions: 0,
            sample: capacity.max(16) * 10,
        }
    }

    fn slot(&self, hash: u64, row: u32) -> usize {
        let h = hash
            .rotate_left(row * 16)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 20) as usize & self.mask
    }

    /// Counts one access.
    pub fn increment(&mut self, hash: u64) {
        for row in 0..ROWS {
            let i = self.slot(hash, row);
            if self.counters[i] < MAX {
                self.counters[i] += 1;
            }
        }
        self.additions += 1;
        if self.additions >= self.sample {
            for c in &mut self.counters {
                *c /= 2;
            }
            self.additions /= 2;
        }
    }

    /// Estimated recent accesses (the smallest of the key's counters).
    pub fn estimate(&self, hash: u64) -> u8 {
        (0..ROWS)
            .map(|row| self.counters[self.slot(hash, row)])
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_and_age() {
        let mut s = FrequencySketch::new(16);
        for _ in 0..5 {
            s.increment(42);
        }
        assert_eq!(s.estimate(42), 5);
        assert_eq!(s.estimate(7), 0);
        for _ in 0..100 {
            s.increment(42);
        }
        // 160 additions per halving: saturation at 15, then halved once.
        assert!(s.estimate(42) <= MAX);
        for i in 0..200 {
            s.increment(1000 + i);
        }
        assert!(s.estimate(42) < MAX, "aged: {}", s.estimate(42));
    }
}
