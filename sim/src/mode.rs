//! The simulator's load shapes: how many batches each virtual agent sends
//! per tick, as a function of time since the start.

use std::time::Duration;

/// A load shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One batch per tick, all run long.
    Steady,
    /// One batch per tick, with a burst of [`BURST_FACTOR`] batches per tick for
    /// [`BURST_LENGTH`] out of every [`BURST_PERIOD`].
    Burst,
    /// From a tenth of the steady rate up to the full steady rate, linearly over the run.
    Ramp,
    /// The steady rate with every failure of [`crate::chaos::Chaos`] injected (its
    /// defaults, unless rates are given).
    Chaos,
}

/// Batches per tick during a burst.
pub const BURST_FACTOR: f64 = 10.0;
/// How long a burst lasts.
pub const BURST_LENGTH: Duration = Duration::from_secs(2);
/// Bursts start this often.
pub const BURST_PERIOD: Duration = Duration::from_secs(10);

impl Mode {
    /// How many batches per tick to send at `elapsed` into a run of `total`: a real
    /// number; the caller sends its whole part and one more with the fractional part's
    /// probability.
    pub fn batches_per_tick(self, elapsed: Duration, total: Duration) -> f64 {
        match self {
            Mode::Steady | Mode::Chaos => 1.0,
            Mode::Burst => {
                let into_period = elapsed.as_nanos() % BURST_PERIOD.as_nanos();
                // The burst ends each period, so a run starts at the steady rate.
                if into_period >= (BURST_PERIOD - BURST_LENGTH).as_nanos() {
                    BURST_FACTOR
                } else {
                    1.0
                }
            }
            Mode::Ramp => {
                let progress = if total.is_zero() {
                    1.0
                } else {
                    (elapsed.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0)
                };
                0.1 + 0.9 * progress
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: Duration = Duration::from_secs(60);

    #[test]
    fn steady_and_chaos_send_one_batch_per_tick() {
        for at in [0, 5, 59] {
            let at = Duration::from_secs(at);
            assert_eq!(Mode::Steady.batches_per_tick(at, RUN), 1.0);
            assert_eq!(Mode::Chaos.batches_per_tick(at, RUN), 1.0);
        }
    }

    #[test]
    fn burst_is_steady_then_ten_times_for_two_seconds_of_every_ten() {
        let at = |s: f64| Mode::Burst.batches_per_tick(Duration::from_secs_f64(s), RUN);
        assert_eq!(at(0.0), 1.0);
        assert_eq!(at(7.9), 1.0);
        assert_eq!(at(8.0), BURST_FACTOR);
        assert_eq!(at(9.9), BURST_FACTOR);
        assert_eq!(at(10.0), 1.0);
        assert_eq!(at(18.5), BURST_FACTOR);
    }

    #[test]
    fn ramp_climbs_from_a_tenth_to_full_rate() {
        let at = |s: u64| Mode::Ramp.batches_per_tick(Duration::from_secs(s), RUN);
        assert!((at(0) - 0.1).abs() < 1e-9);
        assert!((at(30) - 0.55).abs() < 1e-9);
        assert!((at(60) - 1.0).abs() < 1e-9);
        assert!((at(600) - 1.0).abs() < 1e-9);
        assert_eq!(
            Mode::Ramp.batches_per_tick(Duration::ZERO, Duration::ZERO),
            1.0
        );
    }
}
