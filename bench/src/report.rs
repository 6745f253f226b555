//! The results of a run: one [`StepResult`] per (workload, clients, server), the ratios
//! ours/etcd per (workload, clients), the text table printed at the end, and the JSON file.
//!
//! The table shows, for every step, a row per server and a ratio row (`raftkv/etcd`: above
//! 1 is better for throughput, below 1 is better for latency). Errors are counted in the
//! table and the first error of each step is spelled out under it, so a fast but wrong run
//! cannot pass for a good one.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::cluster::Flavor;
use crate::histogram::LatencySummary;
use crate::workload::{Workload, WorkloadConfig};

/// What one server did in one step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepResult {
    pub workload: Workload,
    pub clients: usize,
    pub server: Flavor,
    /// Operations the step asked for (for `watch`: events to deliver).
    pub ops: u64,
    /// Acknowledged, checked operations; the only ones in throughput and latency.
    pub acked: u64,
    /// Failed operations plus failed read-back checks.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Acknowledged writes read back after the step (all matched unless `errors` says so).
    pub verified: usize,
    pub elapsed_s: f64,
    /// Acknowledged operations per second.
    pub throughput: f64,
    pub latency: Option<LatencySummary>,
}

/// raftkv divided by etcd for one (workload, clients).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub workload: Workload,
    pub clients: usize,
    pub throughput: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// How the run was set up, recorded with the results.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub members: usize,
    pub conns: usize,
    pub ops: u64,
    pub clients: Vec<usize>,
    pub workloads: Vec<Workload>,
    pub workload_config: WorkloadConfig,
    pub etcd_bin: String,
    pub raftkv_bin: String,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix_s: u64,
}

/// Everything a run produced: the JSON file is this, serialized.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub run: RunInfo,
    pub steps: Vec<StepResult>,
    pub comparisons: Vec<Comparison>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("encoding the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Report {
    pub fn new(run: RunInfo, steps: Vec<StepResult>) -> Report {
        let comparisons = compare(&steps);
        Report {
            run,
            steps,
            comparisons,
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<(), ReportError> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").map_err(|source| ReportError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

/// raftkv/etcd ratios for every (workload, clients) that both servers ran, in step order.
pub fn compare(steps: &[StepResult]) -> Vec<Comparison> {
    let find = |w, c, s| {
        steps
            .iter()
            .find(|r| r.workload == w && r.clients == c && r.server == s)
    };
    let mut out = Vec::new();
    for step in steps.iter().filter(|s| s.server == Flavor::Etcd) {
        let Some(ours) = find(step.workload, step.clients, Flavor::Raftkv) else {
            continue;
        };
        let lat = |f: fn(&LatencySummary) -> f64| match (&ours.latency, &step.latency) {
            (Some(o), Some(e)) => ratio(f(o), f(e)),
            _ => None,
        };
        out.push(Comparison {
            workload: step.workload,
            clients: step.clients,
            throughput: ratio(ours.throughput, step.throughput),
            p50: lat(|l| l.p50_ms),
            p90: lat(|l| l.p90_ms),
            p99: lat(|l| l.p99_ms),
        });
    }
    out
}

/// `ours / theirs`, or `None` when either side measured nothing.
fn ratio(ours: f64, theirs: f64) -> Option<f64> {
    (ours > 0.0 && theirs > 0.0).then(|| ours / theirs)
}

/// Operations per second: whole numbers once they are large enough for decimals to be noise.
pub fn fmt_rate(ops_per_s: f64) -> String {
    if ops_per_s >= 100.0 {
        format!("{ops_per_s:.0}")
    } else {
        format!("{ops_per_s:.1}")
    }
}

/// Milliseconds with three significant-ish digits.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"))
}

const HEADER: [&str; 8] = [
    "workload", "clients", "server", "ops/s", "p50 ms", "p90 ms", "p99 ms", "errors",
];

/// Renders the table: one block per (workload, clients) with a row per server and a ratio
/// row, then the first error of every step that had errors.
pub fn render_table(report: &Report) -> String {
    let mut rows: Vec<[String; 8]> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    for step in &report.steps {
        let id = (step.workload, step.clients);
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let mut first = true;
        for result in report
            .steps
            .iter()
            .filter(|s| (s.workload, s.clients) == id)
        {
            let (workload, clients) = if first {
                (result.workload.to_string(), result.clients.to_string())
            } else {
                (String::new(), String::new())
            };
            first = false;
            let lat = |f: fn(&LatencySummary) -> f64| {
                result.latency.as_ref().map_or("-".into(), |l| fmt_ms(f(l)))
            };
            let mut errors = result.errors.to_string();
            if let Some(e) = &result.first_error {
                notes.push(format!(
                    "[{}] {} {} clients={}: {} errors, first: {e}",
                    notes.len() + 1,
                    result.server,
                    result.workload,
                    result.clients,
                    result.errors
                ));
                errors = format!("{errors} [{}]", notes.len());
            }
            rows.push([
                workload,
                clients,
                result.server.to_string(),
                fmt_rate(result.throughput),
                lat(|l| l.p50_ms),
                lat(|l| l.p90_ms),
                lat(|l| l.p99_ms),
                errors,
            ]);
        }
        if let Some(c) = report
            .comparisons
            .iter()
            .find(|c| (c.workload, c.clients) == id)
        {
            rows.push([
                String::new(),
                String::new(),
                "raftkv/etcd".into(),
                fmt_ratio(c.throughput),
                fmt_ratio(c.p50),
                fmt_ratio(c.p90),
                fmt_ratio(c.p99),
                String::new(),
            ]);
        }
    }

    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            // Text columns align left, numbers right.
            let text_column = i == 0 || i == 2 || i == 7;
            if text_column {
                let _ = write!(line, "{cell:<w$}  ");
            } else {
                let _ = write!(line, "{cell:>w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for note in notes {
        out.push_str(&note);
        out.push('\n');
    }
    let read_back: usize = report.steps.iter().map(|s| s.verified).sum();
    let errors: u64 = report.steps.iter().map(|s| s.errors).sum();
    let _ = writeln!(
        out,
        "checked: every range value and watch event; {read_back} acknowledged writes read back; {errors} errors in all"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(
        workload: Workload,
        clients: usize,
        server: Flavor,
        throughput: f64,
        p: [f64; 3],
    ) -> StepResult {
        StepResult {
            workload,
            clients,
            server,
            ops: 1000,
            acked: 1000,
            errors: 0,
            first_error: None,
            verified: 100,
            elapsed_s: 1000.0 / throughput,
            throughput,
            latency: Some(LatencySummary {
                p50_ms: p[0],
                p90_ms: p[1],
                p99_ms: p[2],
                mean_ms: p[0],
                max_ms: p[2],
            }),
        }
    }

    fn run_info() -> RunInfo {
        RunInfo {
            members: 3,
            conns: 4,
            ops: 1000,
            clients: vec![1, 16],
            workloads: vec![Workload::PutRand],
            workload_config: WorkloadConfig {
                value_size: 256,
                key_space: 1000,
                txn_ops: 1,
                range_keys: 100,
                lease_ttl: 60,
                watch_put_rate: 100,
                watch_puts: 100,
            },
            etcd_bin: "/usr/bin/etcd".into(),
            raftkv_bin: "raftkv".into(),
            started_unix_s: 0,
        }
    }

    #[test]
    fn number_formats() {
        let cases: [(String, &str); 10] = [
            (fmt_rate(12345.67), "12346"),
            (fmt_rate(100.0), "100"),
            (fmt_rate(99.94), "99.9"),
            (fmt_rate(0.0), "0.0"),
            (fmt_ms(0.2134), "0.21"),
            (fmt_ms(12.345), "12.3"),
            (fmt_ms(250.4), "250"),
            (fmt_ratio(Some(1.5)), "1.50x"),
            (fmt_ratio(Some(0.333)), "0.33x"),
            (fmt_ratio(None), "-"),
        ];
        for (got, expected) in cases {
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn ratios_pair_servers_by_workload_and_clients() {
        // (etcd ops/s, raftkv ops/s, expected throughput ratio)
        let cases = [
            (1000.0, 1500.0, Some(1.5)),
            (2000.0, 1000.0, Some(0.5)),
            (0.0, 10.0, None),
        ];
        for (etcd, ours, expected) in cases {
            let steps = vec![
                step(Workload::PutRand, 16, Flavor::Etcd, etcd, [1.0, 2.0, 4.0]),
                step(Workload::PutRand, 16, Flavor::Raftkv, ours, [0.5, 1.0, 8.0]),
                // Unpaired: etcd only.
                step(Workload::RangeLin, 16, Flavor::Etcd, 10.0, [1.0, 1.0, 1.0]),
            ];
            let comparisons = compare(&steps);
            assert_eq!(comparisons.len(), 1);
            let c = &comparisons[0];
            assert_eq!(c.throughput, expected);
            assert_eq!((c.p50, c.p90, c.p99), (Some(0.5), Some(0.5), Some(2.0)));
        }
    }

    #[test]
    fn table_has_a_row_per_server_a_ratio_row_and_error_notes() {
        let mut failing = step(
            Workload::PutRand,
            16,
            Flavor::Raftkv,
            1500.0,
            [0.5, 1.0, 8.0],
        );
        failing.errors = 2;
        failing.first_error = Some("put: timed out".into());
        let steps = vec![
            step(Workload::PutRand, 1, Flavor::Etcd, 500.0, [2.0, 2.5, 3.0]),
            step(
                Workload::PutRand,
                1,
                Flavor::Raftkv,
                1000.0,
                [1.0, 1.25, 1.5],
            ),
            step(Workload::PutRand, 16, Flavor::Etcd, 1000.0, [1.0, 2.0, 4.0]),
            failing,
        ];
        let table = render_table(&Report::new(run_info(), steps));
        let expected = "\
workload  clients  server       ops/s  p50 ms  p90 ms  p99 ms  errors
put-rand        1  etcd           500    2.00    2.50    3.00  0
                   raftkv        1000    1.00    1.25    1.50  0
                   raftkv/etcd  2.00x   0.50x   0.50x   0.50x
put-rand       16  etcd          1000    1.00    2.00    4.00  0
                   raftkv        1500    0.50    1.00    8.00  2 [1]
                   raftkv/etcd  1.50x   0.50x   0.50x   2.00x
[1] raftkv put-rand clients=16: 2 errors, first: put: timed out
checked: every range value and watch event; 400 acknowledged writes read back; 2 errors in all
";
        assert_eq!(table, expected);
    }

    #[test]
    fn table_of_a_step_without_samples_shows_dashes() {
        let mut empty = step(Workload::TxnPut, 4, Flavor::Etcd, 0.0, [0.0; 3]);
        empty.latency = None;
        empty.acked = 0;
        let table = render_table(&Report::new(run_info(), vec![empty]));
        let row = table.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["txn-put", "4", "etcd", "0.0", "-", "-", "-", "0"]);
    }

    #[test]
    fn json_report_names_workloads_and_servers_as_in_the_cli() {
        let steps = vec![
            step(Workload::RangeSer, 4, Flavor::Etcd, 100.0, [1.0, 1.0, 1.0]),
            step(
                Workload::RangeSer,
                4,
                Flavor::Raftkv,
                200.0,
                [1.0, 1.0, 1.0],
            ),
        ];
        let json = serde_json::to_value(Report::new(run_info(), steps)).unwrap();
        assert_eq!(json["steps"][0]["workload"], "range-ser");
        assert_eq!(json["steps"][1]["server"], "raftkv");
        assert_eq!(json["comparisons"][0]["throughput"], 2.0);
        assert_eq!(json["run"]["members"], 3);
    }
}
