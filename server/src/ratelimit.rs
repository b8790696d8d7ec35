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

/// Counts events over a sliding window (the usual two-bucket approximation: this
/// window's count plus the previous window's, weighted by how much of it still
/// overlaps), so a burst straddling a window boundary is still seen as one burst.
#[derive(Debug, Clone)]
pub struct WindowCounter {
    window: Duration,
    start: Instant,
    count: u32,
    prev: u32,
}

impl WindowCounter {
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            start: now,
            count: 0,
            prev: 0,
        }
    }

    /// Records one event; returns the estimated count over the last window.
    pub fn hit(&mut self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= self.window * 2 {
            self.prev = 0;
            self.count = 0;
            self.start = now;
        } else if elapsed >= self.window {
            self.prev = self.count;
            self.count = 0;
            self.start += self.window;
        }
        self.count += 1;
        let into =
            now.saturating_duration_since(self.start).as_secs_f64() / self.window.as_secs_f64();
        self.count + (f64::from(self.prev) * (1.0 - into).max(0.0)) as u32
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
    fn window_counter_slides() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = WindowCounter::new(s(60), t0);
        for i in 1..=100 {
            assert_eq!(w.hit(t0 + s(59)), i);
        }
        // Just after the boundary the previous burst still counts almost fully.
        assert!(w.hit(t0 + s(61)) > 95);
        // Half a window later, half of it.
        let half = w.hit(t0 + s(90));
        assert!((50..=53).contains(&half), "{half}");
        // Two windows of silence forget everything.
        assert_eq!(w.hit(t0 + s(300)), 1);
    }
}
