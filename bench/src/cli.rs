//! The command line: `bench compare` and its flags, named after etcd's `tools/benchmark`
//! where one exists (`--clients`, `--conns`, `--val-size` is `--value-size` here, ...).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::runner::Limits;
use crate::workload::{Workload, WorkloadConfig};

/// The default `--workload` list: every workload, writes first so that the read workloads
/// run against a store of realistic size.
pub const DEFAULT_WORKLOADS: &str =
    "put-rand,put-seq,range-lin,range-ser,txn-put,mixed,lease-keepalive,watch";

/// Shortest `--value-size`: values start with a header naming their step and key, and the
/// checks need all of it.
pub const MIN_VALUE_SIZE: usize = 24;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    version,
    about = "Load raftkv and real etcd 3.4 with the same workload in the same run and compare them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start an etcd and a raftkv cluster on loopback, run every workload at every client
    /// count against both, stop them and print one table (JSON with --out).
    Compare(Box<CompareArgs>),
    /// Scheduling throughput: create fake nodes and pending pods, run the control plane's
    /// scheduler until every pod is bound, print pods/s. In memory (the scheduler's own
    /// cost) unless --kubeconfig names an API server (e.g. the one `controlplane up` runs).
    Scheduler(SchedulerArgs),
}

#[derive(Clone, Debug, Args)]
pub struct SchedulerArgs {
    /// Fake nodes to create (32 CPUs, 128 GiB each).
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Pending pods to create (100m CPU, 128 MiB each).
    #[arg(long, default_value_t = 1000)]
    pub pods: usize,
    /// Run against this API server instead of the in-memory API. Its cluster should have
    /// no scheduler of its own running, and `default` must hold no other pods.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

#[derive(Clone, Debug, Args)]
pub struct CompareArgs {
    /// Members per cluster (both clusters get the same number).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    pub members: u16,

    /// Concurrent client tasks, one step per value (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub clients: Vec<usize>,

    /// gRPC connections per cluster, round-robin over its members; the client tasks share
    /// them as in etcd's benchmark.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,

    /// Operations per step (for `watch`, see --watch-puts instead).
    #[arg(long, default_value_t = 10_000)]
    pub ops: u64,

    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,

    /// Workloads to run, in order (comma-separated): put-rand, put-seq, range-lin,
    /// range-ser, txn-put, mixed, lease-keepalive, watch.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_WORKLOADS)]
    pub workload: Vec<Workload>,

    /// Keys that put-rand, txn-put and the writes of mixed pick from.
    #[arg(long, default_value_t = 100_000)]
    pub key_space_size: u64,

    /// Puts per transaction of txn-put.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,

    /// Keys written before the range workloads, which read them at random.
    #[arg(long, default_value_t = 1_000)]
    pub range_keys: u64,

    /// TTL in seconds of the leases of lease-keepalive.
    #[arg(long, default_value_t = 60)]
    pub lease_ttl: i64,

    /// Puts per second during a watch step.
    #[arg(long, default_value_t = 100)]
    pub watch_put_rate: u64,

    /// Puts per watch step; each is delivered to every watcher (--clients).
    #[arg(long, default_value_t = 100)]
    pub watch_puts: u64,

    /// Acknowledged writes read back and compared after each write step.
    #[arg(long, default_value_t = 100)]
    pub verify_sample: usize,

    /// Seconds one operation may take before it counts as an error.
    #[arg(long, default_value_t = 10.0)]
    pub op_timeout: f64,

    /// Seconds one step may run; operations not started by then count as errors.
    #[arg(long, default_value_t = 120.0)]
    pub step_timeout: f64,

    /// Seconds a cluster may take to start and elect a leader.
    #[arg(long, default_value_t = 60.0)]
    pub ready_timeout: f64,

    /// The raftkv binary [default: `raftkv` next to this executable, then
    /// /var/cache/raftkv/target-main/release/raftkv, then PATH].
    #[arg(long)]
    pub raftkv_bin: Option<PathBuf>,

    /// The etcd 3.4 binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,

    /// Write the results as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Write a bar chart of throughput per step to this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,

    /// Directory in which the run's temporary directory (both clusters' data and logs) is
    /// made [default: the system temp dir].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// Keep the data and logs of both clusters after the run (the path is printed).
    #[arg(long)]
    pub keep_data: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid arguments: {0}")]
pub struct InvalidArgs(String);

impl CompareArgs {
    /// Checks what clap cannot express.
    pub fn validate(&self) -> Result<(), InvalidArgs> {
        let fail = |m: String| Err(InvalidArgs(m));
        if self.clients.is_empty() || self.clients.contains(&0) {
            return fail("--clients needs one or more counts above 0".into());
        }
        if self.workload.is_empty() {
            return fail("--workload needs one or more workloads".into());
        }
        if self.conns == 0 || self.ops == 0 || self.range_keys == 0 || self.watch_puts == 0 {
            return fail("--conns, --ops, --range-keys and --watch-puts must be above 0".into());
        }
        if self.value_size < MIN_VALUE_SIZE {
            return fail(format!("--value-size must be at least {MIN_VALUE_SIZE}"));
        }
        if self.txn_ops == 0 || self.txn_ops as u64 > self.key_space_size {
            return fail("--txn-ops must be between 1 and --key-space-size".into());
        }
        if self.lease_ttl <= 0 {
            return fail("--lease-ttl must be above 0".into());
        }
        for (name, secs) in [
            ("--op-timeout", self.op_timeout),
            ("--step-timeout", self.step_timeout),
            ("--ready-timeout", self.ready_timeout),
        ] {
            if !(secs.is_finite() && secs > 0.0) {
                return fail(format!("{name} must be a positive number of seconds"));
            }
        }
        Ok(())
    }

    pub fn workload_config(&self) -> WorkloadConfig {
        WorkloadConfig {
            value_size: self.value_size,
            key_space: self.key_space_size,
            txn_ops: self.txn_ops,
            range_keys: self.range_keys,
            lease_ttl: self.lease_ttl,
            watch_put_rate: self.watch_put_rate,
            watch_puts: self.watch_puts,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            op_timeout: Duration::from_secs_f64(self.op_timeout),
            step_timeout: Duration::from_secs_f64(self.step_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<CompareArgs, String> {
        let argv = ["bench", "compare"].iter().chain(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Compare(args) = cli.command else {
            return Err("not a compare command".into());
        };
        args.validate().map_err(|e| e.to_string())?;
        Ok(*args)
    }

    #[test]
    fn defaults_follow_the_issue() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.members, 3);
        assert_eq!(args.clients, [1, 16, 64, 256]);
        assert_eq!(args.conns, 4);
        assert_eq!(args.value_size, 256);
        assert_eq!(args.workload.len(), Workload::ALL.len());
    }

    #[test]
    fn flags_are_checked() {
        // (arguments, expected error fragment or None when valid)
        let cases: [(&[&str], Option<&str>); 8] = [
            (&["--clients", "1,4", "--members", "1"], None),
            (&["--workload", "put-rand,range-ser"], None),
            (&["--clients", "0"], Some("--clients")),
            (&["--members", "0"], Some("--members")),
            (&["--workload", "nope"], Some("unknown workload")),
            (&["--value-size", "8"], Some("--value-size")),
            (
                &["--txn-ops", "5", "--key-space-size", "4"],
                Some("--txn-ops"),
            ),
            (&["--op-timeout", "0"], Some("--op-timeout")),
        ];
        for (args, expected) in cases {
            match (parse(args), expected) {
                (Ok(_), None) => {}
                (Err(e), Some(fragment)) => assert!(e.contains(fragment), "{args:?}: {e}"),
                (result, _) => panic!("{args:?}: unexpected {result:?}"),
            }
        }
    }
}
