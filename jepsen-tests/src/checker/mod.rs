//! Checkers: turn a history into a verdict. This module owns the verdict type and the
//! dispatch from a workload to its checker; the submodules own the algorithms
//! (`linearizable`: Wing–Gong–Lowe; `model`: sequential specifications) and the
//! per-workload interpretation of histories.

pub mod append;
pub mod linearizable;
pub mod lock;
pub mod model;
pub mod register;
pub mod watch;

use std::fmt;
use std::path::Path;

use crate::history::{self, HistoryError};
use crate::workload::WorkloadKind;

/// Search steps per key before the linearizability checker gives up with UNKNOWN.
pub const DEFAULT_BUDGET: u64 = 5_000_000;

/// What a checker concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No anomaly found.
    Valid,
    /// The history violates the property; `anomaly` says how, for people.
    Invalid { anomaly: String },
    /// The checker could not decide (search budget exhausted, nothing to check, ...).
    Unknown { reason: String },
}

impl Verdict {
    /// The single word printed on the final line.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Valid => "VALID",
            Verdict::Invalid { .. } => "INVALID",
            Verdict::Unknown { .. } => "UNKNOWN",
        }
    }

    /// Combines per-part verdicts: any violation wins, then any unknown.
    pub fn merge(self, other: Verdict) -> Verdict {
        match (self, other) {
            (v @ Verdict::Invalid { .. }, _) | (_, v @ Verdict::Invalid { .. }) => v,
            (v @ Verdict::Unknown { .. }, _) | (_, v @ Verdict::Unknown { .. }) => v,
            _ => Verdict::Valid,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid => write!(f, "VALID"),
            Verdict::Invalid { anomaly } => write!(f, "INVALID: {anomaly}"),
            Verdict::Unknown { reason } => write!(f, "UNKNOWN: {reason}"),
        }
    }
}

/// A verdict plus what a person needs to trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub verdict: Verdict,
    /// Facts about the check (keys checked, anomalies beyond the first, ...).
    pub notes: Vec<String>,
}

/// Errors that prevent checking at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("malformed history: {0}")]
    Malformed(String),
}

/// Loads a saved history and checks it as `workload`.
pub fn check_file(workload: WorkloadKind, path: &Path) -> Result<Report, CheckError> {
    match workload {
        WorkloadKind::Register => register::check(&history::load(path)?, DEFAULT_BUDGET),
        WorkloadKind::Append => append::check(&history::load(path)?, DEFAULT_BUDGET),
        WorkloadKind::Watch => watch::check(&history::load(path)?),
        WorkloadKind::Lock => lock::check(&history::load(path)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_prefers_invalid_then_unknown() {
        let inv = Verdict::Invalid {
            anomaly: "x".into(),
        };
        let unk = Verdict::Unknown { reason: "y".into() };
        assert_eq!(Verdict::Valid.merge(unk.clone()), unk);
        assert_eq!(unk.clone().merge(inv.clone()), inv);
        assert_eq!(Verdict::Valid.merge(Verdict::Valid), Verdict::Valid);
    }
}
