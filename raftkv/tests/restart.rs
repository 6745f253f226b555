//! Restart recovery: everything a client was told survives a SIGKILL and restart — keys and
//! their history, the revision counter, the compaction point, leases and the keys attached to
//! them (leases get a fresh TTL, as etcd's do).

mod common;

use std::time::Duration;

use common::{Flavor, Server};
use etcd_client::{
    CompactionOptions, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_kill_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::spawn(
        Flavor::Raftkv,
        &dir.path().join("data"),
        &dir.path().join("log"),
    );
    let mut c = server
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("raftkv starts");

    let lease = c
        .lease_grant(100, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .expect("grant")
        .id();
    for i in 0..10 {
        c.put(format!("k{i}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    c.put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");
    c.put("k0", "v0-2", None).await.expect("overwrite");
    c.delete("k1", None).await.expect("delete");
    c.compact(5, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let before = c
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get before");
    let rev_before = before.header().expect("header").revision();

    server.restart(); // SIGKILL, then start on the same data dir
    let mut c = server
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("raftkv restarts");

    let after = c
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get after");
    assert_eq!(
        after.header().expect("header").revision(),
        rev_before,
        "revision survives"
    );
    let rows = |r: &etcd_client::GetResponse| -> Vec<_> {
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                )
            })
            .collect()
    };
    assert_eq!(
        rows(&after),
        rows(&before),
        "every key, value and revision survives"
    );
    let k0 = &after.kvs()[0];
    assert_eq!(
        (k0.key(), k0.version(), k0.create_revision()),
        (&b"k0"[..], 2, 2),
        "k0: put at 2 (a lease grant takes no revision), overwritten at 13"
    );

    let err = c
        .get("k0", Some(GetOptions::new().with_revision(4)))
        .await
        .expect_err("compacted");
    assert!(
        err.to_string()
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    c.get("k0", Some(GetOptions::new().with_revision(5)))
        .await
        .expect("the compaction revision itself stays readable");

    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(ttl.granted_ttl(), 100);
    assert!(
        ttl.ttl() > 90,
        "a restart refreshes the TTL, got {}",
        ttl.ttl()
    );
    assert_eq!(ttl.keys(), &[b"leased".to_vec()]);

    // The attachment survived too: revoking the lease deletes the key.
    c.lease_revoke(lease).await.expect("revoke");
    assert!(c.get("leased", None).await.expect("get").kvs().is_empty());

    let put = c.put("k-new", "n", None).await.expect("put after restart");
    assert_eq!(
        put.header().expect("header").revision(),
        rev_before + 2,
        "revisions continue (revoke took one)"
    );
}
