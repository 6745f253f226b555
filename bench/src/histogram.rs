//! Latency recording: an HDR histogram of per-operation latencies in microseconds, and the
//! percentile summary that the table and the JSON report show.
//!
//! HDR rather than a sorted vector of samples because each client task keeps its own
//! histogram (no lock on the hot path) and the per-task histograms merge exactly; with three
//! significant digits a reported percentile is within 0.1% of the true sample value.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency that is recorded as itself; anything slower is clamped to it. Sixty
/// seconds is far beyond any per-operation timeout the benchmark uses.
const MAX_MICROS: u64 = 60_000_000;

/// Significant decimal digits kept by the histogram (0.1% relative precision).
const SIGNIFICANT_DIGITS: u8 = 3;

/// Per-operation latencies of one step (or of one client task of it).
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    inner: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        let inner = Histogram::new_with_bounds(1, MAX_MICROS, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        LatencyHistogram { inner }
    }

    /// Records one operation. Sub-microsecond latencies count as 1 µs (the lowest bucket)
    /// and anything above [`MAX_MICROS`] as that maximum, so no sample is ever dropped.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.inner.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Adds every sample of `other` to this histogram.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Both histograms are built by `new` with identical bounds, so addition cannot fail.
        self.inner
            .add(&other.inner)
            .expect("histograms with identical bounds always add");
    }

    /// Number of recorded operations.
    pub fn count(&self) -> u64 {
        self.inner.len()
    }

    /// The latency at `quantile` (0.0..=1.0), or `None` when nothing was recorded.
    pub fn quantile(&self, quantile: f64) -> Option<Duration> {
        if self.inner.is_empty() {
            return None;
        }
        Some(Duration::from_micros(
            self.inner.value_at_quantile(quantile),
        ))
    }

    /// The summary reported for a step, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.inner.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(LatencySummary {
            p50_ms: ms(self.inner.value_at_quantile(0.50)),
            p90_ms: ms(self.inner.value_at_quantile(0.90)),
            p99_ms: ms(self.inner.value_at_quantile(0.99)),
            mean_ms: self.inner.mean() / 1000.0,
            max_ms: ms(self.inner.max()),
        })
    }
}

/// Latency percentiles of a step, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(micros: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for &m in micros {
            h.record(Duration::from_micros(m));
        }
        h
    }

    /// Asserts `actual` is within the histogram's 0.1% relative precision of `expected`.
    fn assert_close(case: &str, actual: f64, expected: f64) {
        let tolerance = expected.abs() * 0.001 + 1e-9;
        assert!(
            (actual - expected).abs() <= tolerance,
            "{case}: got {actual}, expected {expected} (±{tolerance})"
        );
    }

    #[test]
    fn percentiles_of_known_distributions() {
        let one_to_hundred_ms: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        // (case, samples in µs, expected p50, p90, p99, max; all in ms)
        let cases: Vec<(&str, Vec<u64>, [f64; 4])> = vec![
            ("single sample", vec![1500], [1.5, 1.5, 1.5, 1.5]),
            ("1..=100 ms", one_to_hundred_ms, [50.0, 90.0, 99.0, 100.0]),
            (
                "99 fast, 1 slow outlier",
                std::iter::repeat_n(1000, 99).chain([250_000]).collect(),
                [1.0, 1.0, 1.0, 250.0],
            ),
            (
                "98 fast, 2 slow: the tail shows at p99",
                std::iter::repeat_n(2000, 98)
                    .chain([40_000, 40_000])
                    .collect(),
                [2.0, 2.0, 40.0, 40.0],
            ),
            ("sub-microsecond clamps to 1 µs", vec![0, 0], [0.001; 4]),
        ];
        for (case, samples, [p50, p90, p99, max]) in cases {
            let s = histogram_of(&samples).summary().expect(case);
            assert_close(case, s.p50_ms, p50);
            assert_close(case, s.p90_ms, p90);
            assert_close(case, s.p99_ms, p99);
            assert_close(case, s.max_ms, max);
        }
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        let h = LatencyHistogram::new();
        assert_eq!(h.count(), 0);
        assert_eq!(h.summary(), None);
        assert_eq!(h.quantile(0.5), None);
    }

    #[test]
    fn merging_task_histograms_equals_one_histogram_of_all_samples() {
        let all: Vec<u64> = (1..=1000).map(|i| i * 37).collect();
        let mut merged = LatencyHistogram::new();
        for chunk in all.chunks(128) {
            merged.merge(&histogram_of(chunk));
        }
        let whole = histogram_of(&all);
        assert_eq!(merged.count(), 1000);
        assert_eq!(merged.summary(), whole.summary());
    }

    #[test]
    fn huge_latencies_are_clamped_not_dropped() {
        let h = histogram_of(&[10, 10 * MAX_MICROS]);
        assert_eq!(h.count(), 2);
        assert_close(
            "max",
            h.summary().unwrap().max_ms,
            MAX_MICROS as f64 / 1000.0,
        );
    }
}
