//! Batching of linearizable reads, as etcd's `linearizableReadLoop` does: every read waiting
//! when a round starts shares that round's read index, so N concurrent reads cost one
//! confirmation of leadership (a heartbeat round to a quorum on the leader, one RPC to the
//! leader on a follower) instead of N. A read that arrives while a round runs waits for the
//! next one: its index must be fixed after it arrived, or it could miss a write that was
//! acknowledged before it began.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{oneshot, Notify};

use crate::error::ServerError;

type Waiter = oneshot::Sender<Result<u64, ServerError>>;

#[derive(Default)]
pub struct ReadBatcher {
    waiters: Mutex<Vec<Waiter>>,
    wake: Notify,
}

impl ReadBatcher {
    /// The read index of the next round that starts after this call.
    pub async fn read_index(&self) -> Result<u64, ServerError> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        self.wake.notify_one();
        rx.await.unwrap_or(Err(ServerError::Stopped))
    }

    /// Runs rounds while there are waiters; `round` gets one read index, or `None` when
    /// the server is gone (the loop then ends).
    pub async fn run<F, Fut>(&self, mut round: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<Result<u64, ServerError>>>,
    {
        loop {
            self.wake.notified().await;
            let batch =
                std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|e| e.into_inner()));
            if batch.is_empty() {
                continue;
            }
            let Some(result) = round().await else {
                return;
            };
            for tx in batch {
                let _ = tx.send(match &result {
                    Ok(i) => Ok(*i),
                    Err(e) => Err(same_error(e)),
                });
            }
        }
    }
}

/// The error a round ended with, for each of its reads.
fn same_error(e: &ServerError) -> ServerError {
    match e {
        ServerError::Timeout => ServerError::Timeout,
        ServerError::Stopped => ServerError::Stopped,
        ServerError::NotLeader => ServerError::NotLeader,
        ServerError::Unreachable => ServerError::Unreachable,
        ServerError::LeaderFail => ServerError::LeaderFail,
        other => ServerError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn concurrent_reads_share_a_round_and_late_ones_wait_for_the_next() {
        let b = Arc::new(ReadBatcher::default());
        let rounds = Arc::new(AtomicU64::new(0));
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(0u64);
        {
            let (b, rounds) = (b.clone(), rounds.clone());
            tokio::spawn(async move {
                b.run(|| {
                    let rounds = rounds.clone();
                    let mut gate = gate_rx.clone();
                    async move {
                        let n = rounds.fetch_add(1, Ordering::SeqCst) + 1;
                        // Each round waits until the test lets it finish.
                        gate.wait_for(|g| *g >= n).await.unwrap();
                        Some(Ok(n * 100))
                    }
                })
                .await
            });
        }
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.read_index().await.unwrap() }
        });
        // Round 1 is running (with the first read only); these 50 arrive during it.
        while rounds.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        let late: Vec<_> = (0..50)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.read_index().await.unwrap() })
            })
            .collect();
        tokio::task::yield_now().await;
        gate_tx.send(1).unwrap();
        assert_eq!(first.await.unwrap(), 100);
        gate_tx.send(2).unwrap();
        for l in late {
            assert_eq!(l.await.unwrap(), 200, "a late read got the round it missed");
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2, "50 reads, one round");
    }

    #[tokio::test]
    async fn a_failed_round_fails_its_reads_alike() {
        let b = Arc::new(ReadBatcher::default());
        let bb = b.clone();
        tokio::spawn(async move { bb.run(|| async { Some(Err(ServerError::Timeout)) }).await });
        let reads: Vec<_> = (0..5)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.read_index().await })
            })
            .collect();
        for r in reads {
            assert!(matches!(r.await.unwrap(), Err(ServerError::Timeout)));
        }
    }
}
