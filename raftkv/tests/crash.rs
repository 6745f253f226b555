//! Crash durability: a client writes keys `k0, k1, ...` one at a time, the server is
//! SIGKILLed at a random moment 1-2 s in, restarted on the same data directory, and every
//! put it acknowledged must still be there with its value, at a revision no lower than the
//! last acknowledged one.
//!
//! The kill moment comes from a seeded RNG; the seed is printed and `CRASH_SEED=<n>`
//! replays it. The subject is `raftkv` unless `DIFF_TARGET=etcd` (which validates the test).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, GetOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::Server;

const STARTUP: Duration = Duration::from_secs(10);
/// A put that has not completed within this is treated as lost (the server is being
/// killed); it was never acknowledged, so the test makes no claim about it.
const PUT_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole test, including both startups.
const TEST_LIMIT: Duration = Duration::from_secs(30);
const PREFIX: &str = "/crash/";

/// What the writer learned from the server before it died.
#[derive(Default)]
struct Acked {
    /// Key index -> value of every acknowledged put.
    values: BTreeMap<u64, String>,
    /// Highest revision any acknowledgement reported.
    revision: i64,
}

fn value_for(seed: u64, i: u64) -> String {
    // Seed-specific values, so a stale data directory could never satisfy the check.
    format!("value-{i}-seed-{seed}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_kill_9() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    println!("crash test seed: {seed} (rerun with CRASH_SEED={seed})");
    tokio::time::timeout(TEST_LIMIT, run(seed))
        .await
        .unwrap_or_else(|_| panic!("crash test (seed {seed}) exceeded {TEST_LIMIT:?}"));
}

async fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let kill_after = Duration::from_millis(rng.random_range(1000..2000));

    let flavor = common::subject_flavor();
    let dir = tempfile::tempdir().expect("creating the data-dir parent");
    let mut server = Server::spawn(flavor, &dir.path().join("data"), &dir.path().join("log"));
    let client = server
        .wait_ready(STARTUP)
        .await
        .unwrap_or_else(|e| panic!("{} did not start: {e}", flavor.name()));

    let acked = Arc::new(Mutex::new(Acked::default()));
    let writer = tokio::spawn(write_until_failure(client, seed, Arc::clone(&acked)));
    tokio::time::sleep(kill_after).await;
    server.kill();
    // The writer stops on its first failed or timed-out put; anything still in flight was
    // not acknowledged. Aborting covers a put stuck past the kill.
    let attempted = tokio::time::timeout(PUT_TIMEOUT * 2, writer)
        .await
        .ok()
        .and_then(Result::ok);

    let acked = std::mem::take(&mut *acked.lock().expect("writer panicked holding the lock"));
    println!(
        "killed {} after {kill_after:?}: {} puts acknowledged (up to revision {})",
        flavor.name(),
        acked.values.len(),
        acked.revision
    );
    assert!(
        acked.values.len() >= 10,
        "only {} puts were acknowledged before the kill: the server is too slow to test",
        acked.values.len()
    );

    server.restart();
    let mut client = server
        .wait_ready(STARTUP)
        .await
        .unwrap_or_else(|e| panic!("{} did not restart after kill -9: {e}", flavor.name()));
    let resp = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .expect("reading the keys back after the restart");
    let revision = resp.header().map_or(0, |h| h.revision());
    let stored: BTreeMap<String, String> = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect();

    let mut problems = Vec::new();
    for (i, value) in &acked.values {
        let key = format!("{PREFIX}k{i}");
        match stored.get(&key) {
            Some(v) if v == value => {}
            Some(v) => problems.push(format!("{key}: acknowledged {value:?}, found {v:?}")),
            None => problems.push(format!("{key}: acknowledged {value:?}, missing")),
        }
    }
    // Puts are sequential, so at most the one in flight at the kill may exist unacknowledged.
    let limit = attempted.unwrap_or(u64::MAX);
    for key in stored.keys() {
        let index = key
            .strip_prefix(&format!("{PREFIX}k"))
            .and_then(|i| i.parse::<u64>().ok());
        if !matches!(index, Some(i) if i < limit) {
            problems.push(format!("{key}: present but never written"));
        }
    }
    if revision < acked.revision {
        problems.push(format!(
            "revision went back from {} (acknowledged) to {revision} after the restart",
            acked.revision
        ));
    }
    // The first few problems say what went wrong; thousands of "missing" lines would not.
    const SHOWN: usize = 20;
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problem(s) after kill -9 and restart (first {SHOWN} shown):\n{}\n{}",
        problems.len(),
        problems[..problems.len().min(SHOWN)].join("\n"),
        server.log_tail()
    );
}

/// Puts `k0, k1, ...` sequentially, recording each acknowledgement, until a put fails or
/// times out. Returns how many puts were attempted (acknowledged or not).
async fn write_until_failure(mut client: Client, seed: u64, acked: Arc<Mutex<Acked>>) -> u64 {
    let mut i = 0;
    loop {
        let value = value_for(seed, i);
        let put = client.put(format!("{PREFIX}k{i}"), value.clone(), None);
        match tokio::time::timeout(PUT_TIMEOUT, put).await {
            Ok(Ok(resp)) => {
                let mut acked = acked.lock().expect("reader panicked holding the lock");
                acked.values.insert(i, value);
                if let Some(h) = resp.header() {
                    acked.revision = acked.revision.max(h.revision());
                }
            }
            _ => return i + 1,
        }
        i += 1;
    }
}
