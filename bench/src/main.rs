//! The `bench` binary: parses the command line, runs the comparison on a Tokio runtime, and
//! prints the table (stdout) and writes the JSON and SVG files. Ctrl-C or SIGTERM abandon
//! the run, which drops (and so kills) every server it started.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use bench::cli::{Cli, Command, CompareArgs, SchedulerArgs};
use bench::plot::throughput_ratio_svg;
use bench::report::render_table;

/// Exit status of a run stopped by a signal, as a shell reports one stopped by SIGINT.
const INTERRUPTED: u8 = 130;

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Compare(args) => compare(*args),
        Command::Scheduler(args) => scheduler(args),
    }
}

fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    use controlplane::client::fake::FakeApi;
    use controlplane::client::http::HttpClient;
    use controlplane::scheduler::throughput::{measure, populate};
    use std::time::{Duration, Instant};

    let runtime = tokio::runtime::Runtime::new().context("starting the Tokio runtime")?;
    let limit = Duration::from_secs(args.timeout_secs);
    let (nodes, pods) = (args.nodes, args.pods);
    runtime.block_on(async {
        let (rate, target) = match &args.kubeconfig {
            None => {
                let api = FakeApi::new();
                populate(&api, nodes, pods).await?;
                (
                    measure(api, pods, limit).await?,
                    "in-memory API".to_string(),
                )
            }
            Some(path) => {
                let api = HttpClient::from_kubeconfig(path)?;
                let t = Instant::now();
                populate(&api, nodes, pods).await?;
                eprintln!(
                    "created {nodes} nodes and {pods} pods in {:.1?}",
                    t.elapsed()
                );
                (
                    measure(api, pods, limit).await?,
                    format!("API server of {}", path.display()),
                )
            }
        };
        println!("scheduler: {pods} pods over {nodes} nodes at {rate:.0} pods/s ({target})");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the Tokio runtime")?;
    let report = runtime.block_on(async {
        tokio::select! {
            result = bench::compare::run(&args) => result.map(Some),
            name = shutdown_signal() => {
                eprintln!("bench: interrupted by {name}; servers stopped");
                Ok(None)
            }
        }
    })?;
    let Some(report) = report else {
        return Ok(ExitCode::from(INTERRUPTED));
    };
    print!("{}", render_table(&report));
    if let Some(path) = &args.out {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "raftkv/etcd throughput, {} members, value {} B",
            report.run.members, report.run.workload_config.value_size
        );
        std::fs::write(path, throughput_ratio_svg(&report.comparisons, &title))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM with the signal's name. Handling them (instead of the
/// default action, exiting on the spot) is what lets the servers be killed on Ctrl-C. If the
/// handlers cannot be installed this never resolves, with a warning.
async fn shutdown_signal() -> &'static str {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("warning: cannot install signal handlers; Ctrl-C will not stop the servers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
