//! `bench compare`: starts an etcd and a raftkv cluster side by side (data of both under one
//! temporary directory, so on the same medium), runs every workload at every client count
//! against each, checks the results, and stops both clusters.
//!
//! The two servers run the identical sequence of steps with identical keys and values, so
//! they hold the same data when each step starts. Within a step etcd goes first, then
//! raftkv; the idle cluster stays up meanwhile (it only sends heartbeats).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::Client;

use crate::cli::CompareArgs;
use crate::cluster::{check_executable, locate_raftkv, Cluster, ClusterError, Flavor};
use crate::report::{Report, RunInfo, StepResult};
use crate::runner::{run_closed_loop, Limits, StepOutcome};
use crate::watch::run_watch_step;
use crate::workload::{
    populate_range_keys, verify_writes, Worker, Workload, WorkloadConfig, WorkloadError,
};

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("creating the run directory: {0}")]
    TempDir(std::io::Error),
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: etcd_client::Error,
    },
}

/// A started cluster and the client connections shared by its steps.
struct Target {
    cluster: Cluster,
    conns: Vec<Client>,
    range_keys_written: bool,
}

/// Runs the whole comparison and returns its results.
pub async fn run(args: &CompareArgs) -> Result<Report, CompareError> {
    let etcd_bin = check_executable(&args.etcd_bin)?;
    let raftkv_bin = locate_raftkv(args.raftkv_bin.as_deref())?;
    let config = args.workload_config();
    let limits = args.limits();
    let members = usize::from(args.members);
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = tempfile::Builder::new()
        .prefix("bench-compare-")
        .tempdir_in(&parent)
        .map_err(CompareError::TempDir)?;
    eprintln!(
        "data and logs of both clusters under {} ({members} members each)",
        root.path().display()
    );

    let ready_timeout = Duration::from_secs_f64(args.ready_timeout);
    let mut targets = Vec::new();
    for (flavor, program) in [(Flavor::Etcd, &etcd_bin), (Flavor::Raftkv, &raftkv_bin)] {
        eprintln!("starting {flavor}: {}", program.display());
        let dir = root.path().join(flavor.name());
        let cluster = Cluster::launch(flavor, program, members, &dir, ready_timeout).await?;
        let conns = connect(&cluster.endpoints, args.conns).await?;
        targets.push(Target {
            cluster,
            conns,
            range_keys_written: false,
        });
    }

    let mut steps = Vec::new();
    let mut step_no = 0;
    for &workload in &args.workload {
        for &clients in &args.clients {
            step_no += 1;
            for target in &mut targets {
                target.cluster.check_alive()?;
                let step = StepSpec {
                    workload,
                    clients,
                    step: step_no,
                    ops: args.ops,
                    verify_sample: args.verify_sample,
                    limits,
                };
                let result = run_step(target, &step, &config).await;
                // A member that died during the step invalidates it: stop rather than report.
                target.cluster.check_alive()?;
                steps.push(result);
            }
        }
    }

    for target in &mut targets {
        target.cluster.stop();
    }
    if args.keep_data {
        let kept: PathBuf = root.keep();
        eprintln!("kept data and logs in {}", kept.display());
    }

    let run = RunInfo {
        members,
        conns: args.conns,
        ops: args.ops,
        clients: args.clients.clone(),
        workloads: args.workload.clone(),
        workload_config: config,
        etcd_bin: etcd_bin.display().to_string(),
        raftkv_bin: raftkv_bin.display().to_string(),
        started_unix_s,
    };
    Ok(Report::new(run, steps))
}

/// `n` client connections, round-robin over the endpoints (as etcd's benchmark dials them).
/// Each `Client` is one HTTP/2 connection; its clones share it.
async fn connect(endpoints: &[String], n: usize) -> Result<Vec<Client>, CompareError> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let endpoint = &endpoints[i % endpoints.len()];
        let client = Client::connect([endpoint.as_str()], None)
            .await
            .map_err(|source| CompareError::Connect {
                endpoint: endpoint.clone(),
                source,
            })?;
        conns.push(client);
    }
    Ok(conns)
}

/// One step of one server.
struct StepSpec {
    workload: Workload,
    clients: usize,
    /// Step number, the same for both servers: it goes into every written value.
    step: u64,
    ops: u64,
    verify_sample: usize,
    limits: Limits,
}

/// Runs one step on one server. A step that cannot be set up (say, a lease grant fails)
/// is reported as failed rather than ending the run, so the other results are kept.
async fn run_step(target: &mut Target, spec: &StepSpec, config: &WorkloadConfig) -> StepResult {
    let ops = match spec.workload {
        Workload::Watch => config.watch_puts * spec.clients as u64,
        _ => spec.ops,
    };
    let (outcome, verified) = match measure(target, spec, config).await {
        Ok(measured) => measured,
        Err(e) => {
            let mut outcome = StepOutcome::default();
            outcome.add_error(e.to_string());
            (outcome, 0)
        }
    };
    StepResult {
        workload: spec.workload,
        clients: spec.clients,
        server: target.cluster.flavor,
        ops,
        acked: outcome.acked,
        errors: outcome.errors,
        first_error: outcome.first_error.clone(),
        verified,
        elapsed_s: outcome.elapsed.as_secs_f64(),
        throughput: outcome.throughput(),
        latency: outcome.latency.summary(),
    }
}

/// Sets up, runs and checks one step; returns what it measured and how many written keys
/// were read back.
async fn measure(
    target: &mut Target,
    spec: &StepSpec,
    config: &WorkloadConfig,
) -> Result<(StepOutcome, usize), WorkloadError> {
    let label = format!(
        "[{}] {} clients={}",
        target.cluster.flavor, spec.workload, spec.clients
    );
    let too_slow = |what: String| WorkloadError::SetupCheck {
        workload: spec.workload,
        message: what,
    };
    if spec.workload.reads_range_keys() && !target.range_keys_written {
        let populate = populate_range_keys(&target.conns[0], config);
        tokio::time::timeout(spec.limits.step_timeout, populate)
            .await
            .map_err(|_| {
                too_slow(format!(
                    "writing the range keys took over {:?}",
                    spec.limits.step_timeout
                ))
            })??;
        target.range_keys_written = true;
    }

    let mut outcome = if spec.workload == Workload::Watch {
        run_watch_step(
            &target.conns,
            spec.clients,
            config,
            spec.step,
            spec.limits,
            &label,
        )
        .await?
    } else {
        let mut workers = Vec::with_capacity(spec.clients);
        for task in 0..spec.clients {
            let conn = target.conns[task % target.conns.len()].clone();
            let worker = Worker::new(spec.workload, conn, config.clone(), spec.step, task);
            let worker = tokio::time::timeout(spec.limits.op_timeout, worker)
                .await
                .map_err(|_| {
                    too_slow(format!(
                        "preparing client task {task} took over {:?}",
                        spec.limits.op_timeout
                    ))
                })??;
            workers.push(worker);
        }
        run_closed_loop(workers, spec.ops, spec.limits, &label).await
    };

    let verified = if spec.workload.writes() {
        verify(target, spec, config, &mut outcome).await
    } else {
        0
    };
    Ok((outcome, verified))
}

/// Reads back a sample of the step's acknowledged writes; each mismatch is an error of the
/// step. Returns how many keys were read back.
async fn verify(
    target: &Target,
    spec: &StepSpec,
    config: &WorkloadConfig,
    outcome: &mut StepOutcome,
) -> usize {
    let problems = verify_writes(
        &target.conns[0],
        spec.workload,
        config,
        spec.step,
        &outcome.written,
        spec.verify_sample,
        spec.step,
    )
    .await;
    for problem in problems {
        outcome.add_error(problem);
    }
    spec.verify_sample.min(outcome.written.len())
}
