//! Per-connection rate limits.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: rate_per_sec,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Counts events in fixed windows; says when a window's count passes a limit.
#[derive(Debug, Clone)]
pub struct WindowCounter {
    window: Duration,
    start: Instant,
    count: u32,
}

impl WindowCounter {
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            start: now,
            count: 0,
        }
    }

    /// Records one event; returns the count in the current window.
    pub fn hit(&mut self, now: Instant) -> u32 {
        if now.saturating_duration_since(self.start) >= self.window {
            self.start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait >= Duration::from_millis(99));
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(t0 + Duration::from_millis(100)).is_err());
        // Never more than the burst, however long it idles.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn window_counter_resets() {
        let t0 = Instant::now();
        let mut w = WindowCounter::new(Duration::from_secs(60), t0);
        for i in 1..=5 {
            assert_eq!(w.hit(t0), i);
        }
        assert_eq!(w.hit(t0 + Duration::from_secs(61)), 1);
    }
}
