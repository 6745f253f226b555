//! Scheduling throughput, shared by `bench scheduler` and the scheduler's benchmark test:
//! `nodes` fake nodes and `pods` pending pods are created through an [`Api`], then a
//! scheduler runs until every pod is bound; the rate is pods over the time from the
//! scheduler's start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;

use super::{run, testing, Options};
use crate::client::{Api, ClientError, ListParams};
use crate::clock::SystemClock;

/// Namespace the benchmark's pods are created in.
pub const NAMESPACE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ThroughputError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("only {bound} of {pods} pods bound within {limit:?}")]
    TimedOut {
        bound: usize,
        pods: usize,
        limit: Duration,
    },
}

/// Creates `nodes` nodes (32 CPUs, 128 GiB) and `pods` pods (100m, 128 Mi), 16 at a time.
pub async fn populate<C: Api>(api: &C, nodes: usize, pods: usize) -> Result<(), ClientError> {
    for i in 0..nodes {
        api.create(
            None,
            &testing::node(&format!("bench-node-{i}"), "32", "128Gi"),
        )
        .await?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let api = api.clone();
        tasks.spawn(async move {
            for i in (w..pods).step_by(16) {
                let pod = testing::pod(&format!("bench-pod-{i}"), "100m", "128Mi");
                api.create(Some(NAMESPACE), &pod).await?;
            }
            Ok::<_, ClientError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("pod creator panicked")?;
    }
    Ok(())
}

async fn bound<C: Api>(api: &C) -> Result<usize, ClientError> {
    let pods = api
        .list::<Pod>(Some(NAMESPACE), &ListParams::default())
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .count())
}

/// Runs a scheduler until `pods` pods are bound; returns pods/s.
pub async fn measure<C: Api>(api: C, pods: usize, limit: Duration) -> Result<f64, ThroughputError> {
    let stop = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(run(
        api.clone(),
        Arc::new(SystemClock),
        Options::default(),
        stop.clone(),
    ));
    let result = loop {
        let n = bound(&api).await?;
        if n >= pods {
            break Ok(pods as f64 / start.elapsed().as_secs_f64());
        }
        if start.elapsed() > limit {
            break Err(ThroughputError::TimedOut {
                bound: n,
                pods,
                limit,
            });
        }
        // Listing every pod is not free: poll gently so the measurement does not slow
        // the scheduler it measures.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.cancel();
    let _ = task.await;
    result
}
