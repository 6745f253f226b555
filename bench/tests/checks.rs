//! The benchmark's checks catch wrong answers: against a real etcd whose data was tampered
//! with behind the benchmark's back, the read-back after a write step reports stale and
//! missing keys, and a range operation that reads a wrong value fails instead of counting.

use std::path::Path;
use std::time::Duration;

use bench::cluster::{Cluster, Flavor};
use bench::workload::{key, value, verify_writes, Worker, Workload, WorkloadConfig};

const ETCD: &str = "/usr/bin/etcd";

fn config() -> WorkloadConfig {
    WorkloadConfig {
        value_size: 64,
        key_space: 100,
        txn_ops: 1,
        range_keys: 1,
        lease_ttl: 60,
        watch_put_rate: 100,
        watch_puts: 10,
    }
}

async fn etcd(dir: &Path) -> (Cluster, etcd_client::Client) {
    let cluster = Cluster::launch(
        Flavor::Etcd,
        Path::new(ETCD),
        1,
        dir,
        Duration::from_secs(30),
    )
    .await
    .expect("starting etcd");
    let client = etcd_client::Client::connect([cluster.endpoints[0].as_str()], None)
        .await
        .expect("connect");
    (cluster, client)
}

#[tokio::test]
async fn read_back_reports_stale_and_missing_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, mut client) = etcd(dir.path()).await;
    let config = config();
    let step = 7;
    // Keys 0..10 "acknowledged" in step 7, but key 3 holds an older step's value and key 5
    // was never written.
    for k in 0..10u64 {
        let v = match k {
            3 => value(step - 1, k, config.value_size),
            5 => continue,
            _ => value(step, k, config.value_size),
        };
        client.put(key("put", k), v, None).await.unwrap();
    }
    let written: Vec<u64> = (0..10).collect();
    let mut problems = verify_writes(
        &client,
        Workload::PutRand,
        &config,
        step,
        &written,
        written.len(),
        1,
    )
    .await;
    problems.sort();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains(&key("put", 3)) && problems[0].contains("read \"s6:k3:"));
    assert!(problems[1].contains(&key("put", 5)) && problems[1].contains("missing"));

    // The untampered keys alone pass.
    let good: Vec<u64> = written.into_iter().filter(|k| *k != 3 && *k != 5).collect();
    let problems = verify_writes(&client, Workload::PutRand, &config, step, &good, 8, 1).await;
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn a_range_that_reads_a_wrong_value_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, mut client) = etcd(dir.path()).await;
    let config = config();
    bench::workload::populate_range_keys(&client, &config)
        .await
        .unwrap();

    for workload in [Workload::RangeLin, Workload::RangeSer] {
        let mut worker = Worker::new(workload, client.clone(), config.clone(), 1, 0)
            .await
            .unwrap();
        assert_eq!(worker.op(0).await, Ok(()), "{workload} on intact data");
    }

    client.put(key("range", 0), "tampered", None).await.unwrap();
    for workload in [Workload::RangeLin, Workload::RangeSer] {
        let mut worker = Worker::new(workload, client.clone(), config.clone(), 1, 0)
            .await
            .unwrap();
        let err = worker.op(0).await.unwrap_err();
        assert!(
            err.contains("wrong value \"tampered\""),
            "{workload}: {err}"
        );
    }
}
