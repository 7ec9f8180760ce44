//! Reconnection waits: exponential back-off with ±25 % jitter, shared by the camera
//! source and the MQTT connection driver.

use std::time::{Duration, SystemTime};

/// Exponential back-off with ±25 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Backoff {
            min,
            max,
            current: min,
            seed,
        }
    }

    /// The next wait (jittered), doubling the base up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        // xorshift: jitter only needs to spread reconnecting clients apart.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let unit = (self.seed % 1000) as f64 / 1000.0; // 0..1
        let wait = self.current.mul_f64(0.75 + 0.5 * unit);
        self.current = (self.current * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let waits: Vec<u128> = (0..6).map(|_| b.next_wait().as_millis()).collect();
        for (w, base) in waits.iter().zip([100u128, 200, 400, 800, 800, 800]) {
            assert!(*w >= base * 3 / 4 && *w <= base * 5 / 4, "{waits:?}");
        }
        b.reset();
        assert!(b.next_wait().as_millis() <= 125);
    }
}
