//! The command line: `run` a test against a cluster the harness starts itself, or
//! `check` a saved history again. This module owns argument parsing (durations like
//! `60s`/`500ms`/`2m`, locating server binaries) and the human-readable output; the
//! final line of every command is machine-checkable: `verdict: VALID|INVALID|UNKNOWN`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::checker::{Report, Verdict};
use crate::cluster::Target;
use crate::nemesis::NemesisSpec;
use crate::runner::{OpStats, RunConfig, RunOutcome};
use crate::workload::WorkloadKind;

#[derive(Debug, Parser)]
#[command(
    name = "jepsen-tests",
    version,
    about = "Jepsen-style fault injection for raftkv and etcd: run a workload under faults, then check linearizability and watch guarantees"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a cluster, run a workload under faults, and check the history.
    Run(RunArgs),
    /// Check a saved history (history.jsonl from an earlier run).
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to test.
    #[arg(long, value_enum, default_value = "register")]
    pub workload: WorkloadKind,
    /// Faults: none, all, or a comma-separated list of kill, kill-leader, pause,
    /// pause-leader, partition, partition-halves, partition-leader, partition-bridge,
    /// member, disk-loss, lose-unsynced.
    #[arg(long, default_value = "none")]
    pub nemesis: NemesisSpec,
    /// How long clients run (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub time_limit: Duration,
    /// Target operations per second, across all clients.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Number of concurrent clients.
    #[arg(long, default_value_t = 5)]
    pub concurrency: usize,
    /// Seed for every random choice the harness makes (default: time-based, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Which server to test.
    #[arg(long, value_enum, default_value = "raftkv")]
    pub target: Target,
    /// Cluster size: 1, 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// raftkv binary (default: `raftkv` next to this executable, else on PATH).
    #[arg(long)]
    pub raftkv_bin: Option<PathBuf>,
    /// etcd binary (default: `etcd` on PATH).
    #[arg(long)]
    pub etcd_bin: Option<PathBuf>,
    /// Where run directories (history, server logs, nemesis log) are kept.
    #[arg(long, default_value = "jepsen-store")]
    pub store: PathBuf,
    /// Mean time between faults, and mean duration of each fault.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub nemesis_interval: Duration,
    /// Client operations taking longer are abandoned (and indeterminate if writes).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub op_timeout: Duration,
    /// How long to wait for the cluster to recover after healing.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub recovery_time: Duration,
    /// Raft heartbeat interval passed to the servers, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Raft election timeout passed to the servers, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Keep the members' data dirs after the run (they are deleted by default; logs and
    /// the history are always kept).
    #[arg(long)]
    pub keep_data: bool,
    /// Watch workload: whether watchers send progress requests (RequestProgress). etcd
    /// before 3.4.25 answers them out of order with the stream (etcd-io/etcd#15220);
    /// pass `false` to check everything else.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_progress_requests: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The history file (JSON lines).
    #[arg(long)]
    pub history: PathBuf,
    /// The workload that produced it.
    #[arg(long, value_enum)]
    pub workload: WorkloadKind,
}

/// Parses `60s`, `500ms`, `2m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (try 60s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Finds a program on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Errors turning arguments into a run configuration.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0} binary not found ({1}); pass --{0}-bin")]
    BinaryNotFound(&'static str, &'static str),
}

impl RunArgs {
    /// The server binary to run.
    pub fn binary(&self) -> Result<PathBuf, CliError> {
        match self.target {
            Target::Etcd => self
                .etcd_bin
                .clone()
                .or_else(|| on_path("etcd"))
                .ok_or(CliError::BinaryNotFound("etcd", "not on PATH")),
            Target::Raftkv => self
                .raftkv_bin
                .clone()
                .or_else(|| {
                    std::env::current_exe()
                        .ok()
                        .and_then(|exe| exe.parent().map(|d| d.join("raftkv")))
                        .filter(|p| p.is_file())
                })
                .or_else(|| on_path("raftkv"))
                .ok_or(CliError::BinaryNotFound(
                    "raftkv",
                    "not next to jepsen-tests nor on PATH",
                )),
        }
    }

    /// The run configuration; `seed` is the resolved seed.
    pub fn config(&self, seed: u64) -> Result<RunConfig, CliError> {
        Ok(RunConfig {
            workload: self.workload,
            nemesis: self.nemesis.clone(),
            time_limit: self.time_limit,
            rate: self.rate,
            concurrency: self.concurrency,
            seed,
            target: self.target,
            members: self.members,
            binary: self.binary()?,
            store: self.store.clone(),
            nemesis_interval: self.nemesis_interval,
            op_timeout: self.op_timeout,
            recovery_time: self.recovery_time,
            heartbeat_ms: self.heartbeat_interval,
            election_ms: self.election_timeout,
            progress: true,
            keep_data: self.keep_data,
            watch_progress_requests: self.watch_progress_requests,
        })
    }
}

/// The header printed before a run starts.
pub fn describe_run(cfg: &RunConfig) -> String {
    format!(
        "jepsen-tests: workload {}, target {} ({} member{}, {}), nemesis {}, {:?} at {} op/s over {} clients, seed {}",
        cfg.workload.name(),
        cfg.target.name(),
        cfg.members,
        if cfg.members == 1 { "" } else { "s" },
        cfg.binary.display(),
        cfg.nemesis,
        cfg.time_limit,
        cfg.rate,
        cfg.concurrency,
        cfg.seed
    )
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} ms"))
}

fn stats_lines(stats: &OpStats) -> Vec<String> {
    vec![
        format!(
            "ops:      {} ok, {} fail, {} info",
            stats.ok, stats.fail, stats.info
        ),
        format!(
            "latency:  p50 {}, p99 {} (ok ops)",
            ms(stats.p50_ms),
            ms(stats.p99_ms)
        ),
    ]
}

fn report_lines(report: &Report) -> Vec<String> {
    let mut out: Vec<String> = report
        .notes
        .iter()
        .map(|n| format!("checker:  {n}"))
        .collect();
    match &report.verdict {
        Verdict::Valid => {}
        Verdict::Invalid { anomaly } => out.push(format!("anomaly:  {anomaly}")),
        Verdict::Unknown { reason } => out.push(format!("unknown:  {reason}")),
    }
    out.push(format!("verdict: {}", report.verdict.word()));
    out
}

/// The summary of a run; the last line is `verdict: ...`.
pub fn summarize_run(outcome: &RunOutcome) -> String {
    let mut out = vec![format!(
        "== summary ({:.1}s)",
        outcome.elapsed.as_secs_f64()
    )];
    out.extend(stats_lines(&outcome.stats));
    let faults = outcome.faults();
    let faults = if faults.is_empty() {
        "none".to_string()
    } else {
        faults
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push(format!("faults:   {faults}"));
    for p in &outcome.nemesis.problems {
        out.push(format!("nemesis:  {p}"));
    }
    if let Some(why) = &outcome.unrecovered {
        out.push(format!("recovery: FAILED: {why}"));
    }
    out.push(format!("history:  {}", outcome.history.display()));
    out.push(format!("logs:     {}", outcome.dir.display()));
    out.extend(report_lines(&outcome.report));
    out.join("\n")
}

/// The summary of a re-check.
pub fn summarize_check(path: &Path, report: &Report, stats: &OpStats) -> String {
    let mut out = vec![format!("== check of {}", path.display())];
    out.extend(stats_lines(stats));
    out.extend(report_lines(report));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_parses_the_documented_command_line() {
        let cli = Cli::try_parse_from([
            "jepsen-tests",
            "run",
            "--workload",
            "register",
            "--nemesis",
            "kill,pause",
            "--time-limit",
            "60s",
            "--rate",
            "100",
            "--concurrency",
            "10",
            "--seed",
            "7",
            "--target",
            "etcd",
            "--members",
            "3",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.workload, WorkloadKind::Register);
        assert_eq!(args.nemesis.to_string(), "kill,pause");
        assert_eq!(args.seed, Some(7));
        assert_eq!(args.target, Target::Etcd);
        assert!(Cli::try_parse_from(["jepsen-tests", "run", "--nemesis", "meteor"]).is_err());
        let cli = Cli::try_parse_from([
            "jepsen-tests",
            "check",
            "--history",
            "h.jsonl",
            "--workload",
            "watch",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Check(CheckArgs {
                workload: WorkloadKind::Watch,
                ..
            })
        ));
    }

    #[test]
    fn report_ends_with_a_verdict_line() {
        let r = Report {
            verdict: Verdict::Invalid {
                anomaly: "stale read".into(),
            },
            notes: vec!["n".into()],
        };
        let lines = report_lines(&r);
        assert_eq!(lines.last().unwrap(), "verdict: INVALID");
        assert!(lines.iter().any(|l| l.contains("stale read")));
    }
}
