//! The `jepsen-tests` binary: parses the command line, runs or re-checks, prints the
//! summary, and exits 0 for VALID, 1 for INVALID, 2 for UNKNOWN, 3 when the run itself
//! failed. Everything of substance lives in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use jepsen_tests::checker::Verdict;
use jepsen_tests::cli::{self, Cli, Command};
use jepsen_tests::runner;

fn exit_code(v: &Verdict) -> ExitCode {
    match v {
        Verdict::Valid => ExitCode::SUCCESS,
        Verdict::Invalid { .. } => ExitCode::from(1),
        Verdict::Unknown { .. } => ExitCode::from(2),
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => {
            let (report, stats) = runner::check_saved(args.workload, &args.history)
                .with_context(|| format!("checking {}", args.history.display()))?;
            println!("{}", cli::summarize_check(&args.history, &report, &stats));
            Ok(exit_code(&report.verdict))
        }
        Command::Run(args) => {
            let seed = args.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            });
            let cfg = args.config(seed)?;
            println!("{}", cli::describe_run(&cfg));
            // Ctrl-C or SIGTERM abandons the run; returning drops the runtime and with
            // it the cluster, which kills every server process.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            let outcome = tokio::select! {
                r = runner::run(cfg) => r.context("run failed")?,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
                _ = term.recv() => anyhow::bail!("terminated"),
            };
            println!("{}", cli::summarize_run(&outcome));
            Ok(exit_code(&outcome.report.verdict))
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let result = runtime.block_on(real_main(cli));
    // Dropping the runtime cancels any task still holding a cluster, killing servers.
    drop(runtime);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            println!("verdict: UNKNOWN");
            ExitCode::from(3)
        }
    }
}
