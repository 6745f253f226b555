//! Object storage in the etcd v3 API (raftkv or etcd). The only state of the API server.
//!
//! Layout: one key per object (see [`super::registry`] for key names); the value is the
//! object's JSON (`serde_json`, UTF-8) with `metadata.resourceVersion` removed.
//! Kubernetes stores protobuf here; we store JSON so `etcdctl get` shows readable objects.
//! `metadata.resourceVersion` is the key's etcd `mod_revision`, filled in on every read.
//!
//! Writes are optimistic: a create is a Txn guarded by `create_revision == 0`
//! (AlreadyExists otherwise); an update or delete is a Txn guarded by
//! `mod_revision == <the revision the caller read>` (Conflict otherwise). No locks, so any
//! number of API server replicas can write the same store.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use serde_json::Value;

/// A request that could not even connect is retried this many times, this far apart: the
/// client balances over every `--etcd-servers` endpoint and keeps trying a dead member's
/// address, so the retry most likely goes to a live one.
const CONNECT_RETRIES: u32 = 20;
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Storage failures. The handlers turn them into Kubernetes `Status` errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key already exists")]
    AlreadyExists,
    #[error("key not found")]
    NotFound,
    #[error("resource version {0} does not match the stored object")]
    Conflict(i64),
    #[error("revision {0} is compacted")]
    Compacted(i64),
    #[error("{0} is already claimed")]
    Claimed(String),
    #[error("stored object is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// An object as stored, with its revision.
#[derive(Clone, Debug)]
pub struct Stored {
    pub object: Value,
    pub mod_revision: i64,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Stored>,
    /// The store revision the page was read at (the list's resourceVersion).
    pub revision: i64,
    /// Key to continue from when more keys follow.
    pub next_key: Option<String>,
}

/// The etcd-backed object store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: Client,
}

/// Sets `metadata.resourceVersion` to `rev`.
pub fn set_resource_version(obj: &mut Value, rev: i64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

/// The stored bytes of an object: its JSON without `metadata.resourceVersion`.
fn encode(obj: &Value) -> Vec<u8> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).expect("a serde_json::Value always serializes")
}

/// Decodes a stored value read at `mod_revision`.
pub fn decode(value: &[u8], mod_revision: i64) -> Result<Stored, StoreError> {
    let mut object: Value = serde_json::from_slice(value)?;
    set_resource_version(&mut object, mod_revision);
    Ok(Stored {
        object,
        mod_revision,
    })
}

/// The smallest key greater than every key starting with `prefix` (etcd's `--prefix` end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether the request failed before reaching any server (the connection was refused),
/// which makes a retry safe for writes too.
fn never_sent(e: &etcd_client::Error) -> bool {
    let s = e.to_string();
    s.contains("tcp connect error") || s.contains("Connection refused")
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string()
        .contains("required revision has been compacted")
}

impl Store {
    pub async fn connect(endpoints: &[String]) -> Result<Store, StoreError> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(10));
        let client = Client::connect(endpoints, Some(opts)).await?;
        Ok(Store { client })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs `f` on a KV client, retrying requests that never reached a server.
    async fn kv<T, F, Fut>(&self, f: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0;
        loop {
            match f(self.client.kv_client()).await {
                Err(e) if never_sent(&e) && attempt < CONNECT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "store unreachable; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                r => return r,
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Stored, StoreError> {
        let resp = self
            .kv(|mut c| async move { c.get(key, None).await })
            .await?;
        let kv = resp.kvs().first().ok_or(StoreError::NotFound)?;
        decode(kv.value(), kv.mod_revision())
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let resp = self
            .kv(|mut c| async move {
                c.get("/registry/", Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Up to `limit` (0 = all) objects under `prefix` from key `start` on, read at
    /// `revision` (0 = latest).
    pub async fn list(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: i64,
        revision: i64,
    ) -> Result<Page, StoreError> {
        let from = start.unwrap_or(prefix).to_string();
        let mut opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(limit);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = match self
            .kv(|mut c| {
                let (from, opts) = (from.clone(), opts.clone());
                async move { c.get(from, Some(opts)).await }
            })
            .await
        {
            Err(e) if is_compacted(&e) => return Err(StoreError::Compacted(revision)),
            r => r?,
        };
        let revision = match revision {
            0 => resp.header().map(|h| h.revision()).unwrap_or(0),
            r => r,
        };
        let items = resp
            .kvs()
            .iter()
            .map(|kv| decode(kv.value(), kv.mod_revision()))
            .collect::<Result<Vec<_>, _>>()?;
        let next_key = match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                let mut k = String::from_utf8_lossy(last.key()).into_owned();
                k.push('\0');
                Some(k)
            }
            _ => None,
        };
        Ok(Page {
            items,
            revision,
            next_key,
        })
    }

    /// Writes a new object; fails with AlreadyExists if the key exists. Returns the revision.
    pub async fn create(&self, key: &str, obj: &Value) -> Result<i64, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, encode(obj), None)]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists);
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Creates the object together with `claims` (keys that must not exist yet, each
    /// written with `owner` as its value), all or nothing. `Err(Claimed(k))` names a claim
    /// someone holds; AlreadyExists means the object's own key exists.
    pub async fn create_claiming(
        &self,
        key: &str,
        obj: &Value,
        claims: &[String],
        owner: &str,
    ) -> Result<i64, StoreError> {
        let mut guards = vec![Compare::create_revision(key, CompareOp::Equal, 0)];
        let mut puts = vec![TxnOp::put(key, encode(obj), None)];
        let mut gets = vec![TxnOp::get(key, Some(GetOptions::new().with_count_only()))];
        for c in claims {
            guards.push(Compare::create_revision(c.as_str(), CompareOp::Equal, 0));
            puts.push(TxnOp::put(c.as_str(), owner, None));
            gets.push(TxnOp::get(
                c.as_str(),
                Some(GetOptions::new().with_count_only()),
            ));
        }
        let resp = self
            .txn(Txn::new().when(guards).and_then(puts).or_else(gets))
            .await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or(0));
        }
        let taken: Vec<bool> = resp
            .op_responses()
            .into_iter()
            .map(|r| matches!(r, TxnOpResponse::Get(g) if g.count() > 0))
            .collect();
        if taken.first() == Some(&true) {
            return Err(StoreError::AlreadyExists);
        }
        let claimed = claims
            .iter()
            .zip(taken.iter().skip(1))
            .find(|(_, t)| **t)
            .map(|(c, _)| c.clone())
            .unwrap_or_default();
        Err(StoreError::Claimed(claimed))
    }

    /// Keys (only) under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_keys_only();
        let resp = self
            .kv(|mut c| {
                let opts = opts.clone();
                async move { c.get(prefix, Some(opts)).await }
            })
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    /// Deletes the claims `owner` holds among `keys` (best effort: a claim of another owner
    /// is left alone).
    pub async fn release(&self, keys: &[String], owner: &str) -> Result<(), StoreError> {
        for k in keys {
            let txn = Txn::new()
                .when([Compare::value(k.as_str(), CompareOp::Equal, owner)])
                .and_then([TxnOp::delete(k.as_str(), None)]);
            self.txn(txn).await?;
        }
        Ok(())
    }

    /// Replaces the object last read at `expected` (its mod_revision). Returns the revision.
    pub async fn update(&self, key: &str, obj: &Value, expected: i64) -> Result<i64, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, encode(obj), None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or(0));
        }
        Err(Self::failed_guard(resp.op_responses()))
    }

    /// Deletes the object last read at `expected`. Returns the deletion's revision.
    pub async fn delete(&self, key: &str, expected: i64) -> Result<i64, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or(0));
        }
        Err(Self::failed_guard(resp.op_responses()))
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        self.kv(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Why a guarded write failed: the key is gone, or it changed since it was read.
    fn failed_guard(ops: Vec<TxnOpResponse>) -> StoreError {
        match ops.into_iter().next() {
            Some(TxnOpResponse::Get(g)) => match g.kvs().first() {
                Some(kv) => StoreError::Conflict(kv.mod_revision()),
                None => StoreError::NotFound,
            },
            _ => StoreError::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end("ab"), b"ac".to_vec());
    }

    #[test]
    fn stored_bytes_drop_the_resource_version() {
        let obj = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let bytes = encode(&obj);
        assert_eq!(bytes, br#"{"metadata":{"name":"a"}}"#.to_vec());
        let back = decode(&bytes, 9).unwrap();
        assert_eq!(back.object["metadata"]["resourceVersion"], "9");
    }
}
