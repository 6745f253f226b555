//! `controlplane status`: one table per layer of a running cluster, from its state file
//! and live queries: raftkv members (etcd Maintenance.Status: leader, term, index, db
//! size), API server replicas (`/healthz`), the scheduler's and controller manager's Lease
//! holders, nodes (Ready) and pods by phase.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};

use super::state::{is_ours, ClusterState, Role};
use crate::client::http::HttpClient;
use crate::client::{Api, ListParams};

/// One raftkv member's view, as `etcdctl endpoint status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub index: u64,
    pub db_size: i64,
}

pub async fn member_status(endpoint: &str) -> Option<MemberStatus> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    let mut c = etcd_client::Client::connect([endpoint], Some(opts))
        .await
        .ok()?;
    let s = c.status().await.ok()?;
    Some(MemberStatus {
        id: s.header()?.member_id(),
        leader: s.leader(),
        term: s.raft_term(),
        index: s.raft_index(),
        db_size: s.db_size(),
    })
}

/// The raftkv member that leads, by name.
pub async fn raft_leader(state: &ClusterState) -> Option<String> {
    for p in state.of_role(Role::Raftkv) {
        if let Some(s) = member_status(p.endpoint.as_deref()?).await {
            if s.id == s.leader && s.leader != 0 {
                return Some(p.name.clone());
            }
        }
    }
    None
}

pub async fn lease_holder(api: &HttpClient, name: &str) -> Option<String> {
    let l: Lease = api.get(Some("kube-system"), name).await.ok()?;
    l.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn healthz(http: &reqwest::Client, endpoint: &str) -> bool {
    http.get(format!("{endpoint}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// An HTTPS client trusting the cluster's serving certificate.
pub fn https_client(dir: &Path) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    if let Ok(pem) = std::fs::read(super::pki::cert_path(dir)) {
        if let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem) {
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
    }
    b.build().unwrap_or_default()
}

fn human_bytes(n: i64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

/// The status tables as text.
pub async fn render(dir: &Path, state: &ClusterState) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "RAFTKV MEMBER  ENDPOINT                 PID      RESTARTS  LEADER  TERM  INDEX     DB SIZE"
    );
    for p in state.of_role(Role::Raftkv) {
        let ep = p.endpoint.clone().unwrap_or_default();
        match member_status(&ep).await {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "{:<14} {:<24} {:<8} {:<9} {:<7} {:<5} {:<9} {}",
                    p.name,
                    ep,
                    p.pid,
                    p.restarts,
                    if s.id == s.leader { "*" } else { "" },
                    s.term,
                    s.index,
                    human_bytes(s.db_size)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<14} {:<24} {:<8} {:<9} DOWN",
                    p.name, ep, p.pid, p.restarts
                );
            }
        }
    }
    let http = https_client(dir);
    let _ = writeln!(
        out,
        "\nAPISERVER      ENDPOINT                 PID      RESTARTS  HEALTHY"
    );
    for p in state.of_role(Role::Apiserver) {
        let ep = p.endpoint.clone().unwrap_or_default();
        let ok = healthz(&http, &ep).await;
        let _ = writeln!(
            out,
            "{:<14} {:<24} {:<8} {:<9} {}",
            p.name,
            ep,
            p.pid,
            p.restarts,
            if ok { "yes" } else { "NO" }
        );
    }
    let _ = writeln!(out, "\nload-balanced endpoint: {}", state.api_endpoint);
    let Ok(api) = HttpClient::from_kubeconfig(&dir.join("kubeconfig")) else {
        return out;
    };
    let _ = writeln!(
        out,
        "\nCOMPONENT           REPLICAS  RUNNING  RESTARTS  LEADER (Lease holder)"
    );
    for (role, lease) in [
        (Role::Scheduler, "kube-scheduler"),
        (Role::ControllerManager, "kube-controller-manager"),
    ] {
        let all: Vec<_> = state.of_role(role).collect();
        let running = all.iter().filter(|p| is_ours(p.pid, &p.program)).count();
        let restarts: u32 = all.iter().map(|p| p.restarts).sum();
        let holder = lease_holder(&api, lease)
            .await
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<19} {:<9} {:<8} {:<9} {}",
            role.as_str(),
            all.len(),
            running,
            restarts,
            holder
        );
    }
    if let Ok(nodes) = api.list::<Node>(None, &ListParams::default()).await {
        let _ = writeln!(
            out,
            "\nNODE           READY    INTERNAL-IP     POD-CIDR         TAINTS"
        );
        for n in nodes.items {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone())
                .unwrap_or_else(|| "-".into());
            let taints: Vec<String> = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect();
            let ip = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.clone())
                .unwrap_or_else(|| "-".into());
            let cidr = n
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.clone())
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<14} {:<8} {:<15} {:<16} {}",
                n.metadata.name.unwrap_or_default(),
                ready,
                ip,
                cidr,
                taints.join(",")
            );
        }
    }
    if let Ok(pods) = api.list::<Pod>(None, &ListParams::default()).await {
        let mut phases: BTreeMap<String, usize> = BTreeMap::new();
        for p in &pods.items {
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Unknown".into());
            *phases.entry(phase).or_default() += 1;
        }
        let summary: Vec<String> = phases.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let _ = writeln!(out, "\npods: {} ({})", pods.items.len(), summary.join(", "));
    }
    out
}
