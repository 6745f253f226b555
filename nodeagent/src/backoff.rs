//! Kubernetes' crash-loop backoff: the delay before restarting a container that exited.
//! As the kubelet's per-container backoff: the first restart is immediate, then 10 s
//! doubling per restart up to 5 min; a run longer than twice the maximum (10 min) starts
//! the sequence over.

use std::time::Duration;

/// The delay of the second restart.
pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);

/// The delay before the next start of a container that has restarted `restarts` times
/// and whose last run lasted `last_run`.
pub fn delay(restarts: u32, last_run: Duration) -> Duration {
    if restarts == 0 || last_run > 2 * MAX {
        return Duration::ZERO;
    }
    let factor = 1u64 << (restarts - 1).min(16);
    (INITIAL * factor as u32).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_five_minutes_and_resets_after_a_long_run() {
        let s = Duration::from_secs;
        let cases = [
            (0, s(1), s(0)),
            (1, s(1), s(10)),
            (2, s(1), s(20)),
            (3, s(1), s(40)),
            (5, s(1), s(160)),
            (6, s(1), s(300)),
            (40, s(1), s(300)),
            (7, s(601), s(0)),
        ];
        for (restarts, run, want) in cases {
            assert_eq!(delay(restarts, run), want, "{restarts} {run:?}");
        }
    }
}
