//! The service proxy (kube-proxy's nftables mode, reduced): watches Services and Endpoints
//! and programs one nftables table, `ip nodeagent-proxy`, so that a ClusterIP:port (and a
//! NodePort on the node's IP) is DNATed to a ready endpoint picked at random
//! (`numgen random mod N vmap`), with `sessionAffinity: ClientIP` kept in a per-endpoint
//! set of client addresses with a timeout. Proxied connections are marked and masqueraded,
//! so replies come back through this node whatever the client (a pod on the same bridge, a
//! pod on another node, the host).
//!
//! The ruleset is built from typed structures ([`Cmd`], [`Stmt`], [`Val`]) that serialize
//! to libnftables' JSON schema, and each change replaces the whole table in one
//! transaction (`add table; delete table; add table; ...` piped to `nft -j -f -`), so the
//! kernel never sees a half-written ruleset.
//!
//! Layout of the table:
//!
//! ```text
//! chain prerouting  (nat, prerouting, dstnat)  jump services
//! chain output      (nat, output, -100)        jump services
//! chain postrouting (nat, postrouting, srcnat) meta mark & 0x4000 == 0x4000 masquerade
//! chain services    ip daddr <clusterIP> <proto> dport <port> goto svc-<ns>/<name>/<port>
//!                   ip daddr <nodeIP> <proto> dport <nodePort> goto svc-...
//! chain svc-...     [ip saddr @aff-<ep> goto ep-<ep> ...]  numgen random mod N vmap { i : goto ep-i }
//! chain ep-...      meta mark set meta mark | 0x4000; [update @aff-<ep> { ip saddr }]; dnat to ip:port
//! set aff-...       ipv4_addr, timeout <sessionAffinityConfig.clientIP.timeoutSeconds>
//! chain filter-input, filter-forward, filter-output (filter, -110)  jump no-endpoints
//! chain no-endpoints ip daddr <clusterIP|nodeIP> <proto> dport <port> reject  (ports without a ready endpoint)
//! ```
//!
//! Affinity entries start empty after each table replacement.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use controlplane::client::watcher::{watcher, Event};
use controlplane::client::{key_of, Api, ListParams};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The mark of connections to masquerade (kube-proxy's 0x4000).
const MASQ_MARK: u64 = 0x4000;
/// kube-proxy's default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY_SECS: i32 = 10800;
const FAMILY: &str = "ip";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("nft: {0}")]
    Nft(String),
}

/// Applies a JSON ruleset: the seam tests replace.
pub trait Nft: Send + Sync + 'static {
    fn apply(&self, ruleset: &[u8]) -> Result<(), ProxyError>;
}

/// The `nft` binary (`nft -j -f -`).
#[derive(Clone, Debug)]
pub struct NftBinary {
    pub nft: std::path::PathBuf,
}

impl Nft for NftBinary {
    fn apply(&self, ruleset: &[u8]) -> Result<(), ProxyError> {
        let err = |e: std::io::Error| ProxyError::Nft(e.to_string());
        let mut child = Command::new(&self.nft)
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(err)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(ruleset).map_err(err)?;
        }
        let out = child.wait_with_output().map_err(err)?;
        if !out.status.success() {
            return Err(ProxyError::Nft(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }
}

// --- libnftables JSON, typed -------------------------------------------------------------

/// The top level: `{"nftables": [cmd, ...]}`.
#[derive(Serialize, Debug)]
pub struct Ruleset {
    pub nftables: Vec<Cmd>,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Cmd {
    Add(Obj),
    Delete(Obj),
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Obj {
    Table(Table),
    Chain(Chain),
    Set(Set),
    Rule(Rule),
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Table {
    pub family: &'static str,
    pub name: String,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Chain {
    pub family: &'static str,
    pub table: String,
    pub name: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseChain>,
}

/// A chain attached to a netfilter hook.
#[derive(Serialize, Debug, PartialEq)]
pub struct BaseChain {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub hook: &'static str,
    pub prio: i32,
    pub policy: &'static str,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Set {
    pub family: &'static str,
    pub table: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub flags: Vec<&'static str>,
    pub timeout: u64,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Rule {
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    pub expr: Vec<Stmt>,
}

/// Statements of a rule.
#[derive(Serialize, Debug, PartialEq, Clone)]
#[serde(rename_all = "lowercase")]
pub enum Stmt {
    Match {
        op: &'static str,
        left: Val,
        right: Val,
    },
    Jump {
        target: String,
    },
    Goto {
        target: String,
    },
    Masquerade(Option<()>),
    Dnat {
        addr: String,
        port: u16,
    },
    /// `reject with icmp type <expr>`.
    Reject {
        #[serde(rename = "type")]
        kind: &'static str,
        expr: &'static str,
    },
    Mangle {
        key: Val,
        value: Val,
    },
    /// `update @set { elem }`.
    Set {
        op: &'static str,
        elem: Val,
        set: String,
    },
    Vmap {
        key: Val,
        data: Val,
    },
}

/// Expressions (operands).
#[derive(Serialize, Debug, PartialEq, Clone)]
#[serde(untagged)]
pub enum Val {
    Num(u64),
    Str(String),
    Expr(Box<Expr>),
}

#[derive(Serialize, Debug, PartialEq, Clone)]
#[serde(rename_all = "lowercase")]
pub enum Expr {
    Payload {
        protocol: &'static str,
        field: &'static str,
    },
    Meta {
        key: &'static str,
    },
    #[serde(rename = "&")]
    And([Val; 2]),
    #[serde(rename = "|")]
    Or([Val; 2]),
    Numgen {
        mode: &'static str,
        #[serde(rename = "mod")]
        modulus: u64,
        offset: u64,
    },
    /// An anonymous map: `[[key, verdict], ...]`.
    Set(Vec<(Val, Stmt)>),
}

fn expr(e: Expr) -> Val {
    Val::Expr(Box::new(e))
}
fn payload(protocol: &'static str, field: &'static str) -> Val {
    expr(Expr::Payload { protocol, field })
}
fn mark() -> Val {
    expr(Expr::Meta { key: "mark" })
}
fn eq(left: Val, right: Val) -> Stmt {
    Stmt::Match {
        op: "==",
        left,
        right,
    }
}

// --- the model -------------------------------------------------------------------------

/// One service port as the proxy programs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `<ns>/<name>/<port name or number>`.
    pub id: String,
    pub cluster_ip: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    pub port: u16,
    pub node_port: Option<u16>,
    /// ClientIP affinity timeout, if any.
    pub affinity_secs: Option<u64>,
    /// Ready endpoints `(ip, port)`, sorted.
    pub endpoints: Vec<(String, u16)>,
}

/// The service ports of `services` with the ready addresses of their `endpoints`.
pub fn service_ports(
    services: &BTreeMap<String, Service>,
    endpoints: &BTreeMap<String, Endpoints>,
) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for (key, svc) in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(cluster_ip) = spec
            .cluster_ip
            .clone()
            .filter(|ip| !ip.is_empty() && ip != "None")
        else {
            continue;
        };
        if cluster_ip.parse::<std::net::Ipv4Addr>().is_err() {
            continue;
        }
        let affinity_secs = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_SECS)
                .max(1) as u64
        });
        let ports = spec.ports.clone().unwrap_or_default();
        for sp in &ports {
            let protocol = match sp.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => "tcp",
                "UDP" => "udp",
                _ => continue,
            };
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            let mut eps: Vec<(String, u16)> = Vec::new();
            for subset in endpoints
                .get(key)
                .and_then(|e| e.subsets.clone())
                .unwrap_or_default()
            {
                let sub_ports = subset.ports.clone().unwrap_or_default();
                // Endpoints ports carry the service port's name; a single unnamed port
                // matches the single service port.
                let target = sub_ports
                    .iter()
                    .find(|p| p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or(""))
                    .or_else(|| (sub_ports.len() == 1 && ports.len() == 1).then(|| &sub_ports[0]));
                let Some(tp) = target.and_then(|p| u16::try_from(p.port).ok()) else {
                    continue;
                };
                for a in subset.addresses.clone().unwrap_or_default() {
                    eps.push((a.ip, tp));
                }
            }
            eps.sort();
            eps.dedup();
            let id = format!(
                "{key}/{}",
                sp.name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| port.to_string())
            );
            out.push(ServicePort {
                id,
                cluster_ip: cluster_ip.clone(),
                protocol,
                port,
                node_port: sp.node_port.and_then(|p| u16::try_from(p).ok()),
                affinity_secs,
                endpoints: eps,
            });
        }
    }
    out
}

/// The commands replacing `table` with the rules for `ports`; `node_ip` is where NodePorts
/// are served.
pub fn ruleset(table: &str, node_ip: &str, ports: &[ServicePort]) -> Ruleset {
    let t = || table.to_string();
    let tbl = || {
        Obj::Table(Table {
            family: FAMILY,
            name: t(),
        })
    };
    let mut cmds = vec![Cmd::Add(tbl()), Cmd::Delete(tbl()), Cmd::Add(tbl())];
    let chain = |name: &str, base: Option<BaseChain>| {
        Cmd::Add(Obj::Chain(Chain {
            family: FAMILY,
            table: t(),
            name: name.into(),
            base,
        }))
    };
    let rule = |chain: &str, expr: Vec<Stmt>| {
        Cmd::Add(Obj::Rule(Rule {
            family: FAMILY,
            table: t(),
            chain: chain.into(),
            expr,
        }))
    };
    let nat = |hook, prio| {
        Some(BaseChain {
            kind: "nat",
            hook,
            prio,
            policy: "accept",
        })
    };
    cmds.push(chain("services", None));
    cmds.push(chain("prerouting", nat("prerouting", -100)));
    cmds.push(chain("output", nat("output", -100)));
    cmds.push(chain("postrouting", nat("postrouting", 100)));
    let jump = |target: &str| Stmt::Jump {
        target: target.into(),
    };
    let goto = |target: &str| Stmt::Goto {
        target: target.into(),
    };
    cmds.push(chain("no-endpoints", None));
    for hook in ["input", "forward", "output"] {
        let name = format!("filter-{hook}");
        cmds.push(chain(
            &name,
            Some(BaseChain {
                kind: "filter",
                hook,
                prio: -110,
                policy: "accept",
            }),
        ));
        cmds.push(rule(&name, vec![jump("no-endpoints")]));
    }
    cmds.push(rule("prerouting", vec![jump("services")]));
    cmds.push(rule("output", vec![jump("services")]));
    cmds.push(rule(
        "postrouting",
        vec![
            eq(
                expr(Expr::And([mark(), Val::Num(MASQ_MARK)])),
                Val::Num(MASQ_MARK),
            ),
            Stmt::Masquerade(None),
        ],
    ));
    // Without a ready endpoint a connection is refused at once, as kube-proxy does,
    // rather than left to time out.
    for sp in ports.iter().filter(|sp| sp.endpoints.is_empty()) {
        let reject = |ip: &str, port: u16| {
            vec![
                eq(payload("ip", "daddr"), Val::Str(ip.into())),
                eq(payload(sp.protocol, "dport"), Val::Num(port.into())),
                Stmt::Reject {
                    kind: "icmp",
                    expr: "port-unreachable",
                },
            ]
        };
        cmds.push(rule("no-endpoints", reject(&sp.cluster_ip, sp.port)));
        if let Some(np) = sp.node_port {
            cmds.push(rule("no-endpoints", reject(node_ip, np)));
        }
    }
    for sp in ports.iter().filter(|sp| !sp.endpoints.is_empty()) {
        let svc = format!("svc-{}", sp.id);
        let ep_chain = |(ip, port): &(String, u16)| format!("ep-{}-{ip}:{port}", sp.id);
        let aff_set = |(ip, port): &(String, u16)| format!("aff-{}-{ip}:{port}", sp.id);
        cmds.push(chain(&svc, None));
        let dest = |ip: &str, port: u16| {
            vec![
                eq(payload("ip", "daddr"), Val::Str(ip.into())),
                eq(payload(sp.protocol, "dport"), Val::Num(port.into())),
                goto(&svc),
            ]
        };
        cmds.push(rule("services", dest(&sp.cluster_ip, sp.port)));
        if let Some(np) = sp.node_port {
            cmds.push(rule("services", dest(node_ip, np)));
        }
        for ep in &sp.endpoints {
            let name = ep_chain(ep);
            cmds.push(chain(&name, None));
            let mut expr_ = vec![Stmt::Mangle {
                key: mark(),
                value: expr(Expr::Or([mark(), Val::Num(MASQ_MARK)])),
            }];
            if let Some(secs) = sp.affinity_secs {
                cmds.push(Cmd::Add(Obj::Set(Set {
                    family: FAMILY,
                    table: t(),
                    name: aff_set(ep),
                    kind: "ipv4_addr",
                    flags: vec!["timeout"],
                    timeout: secs,
                })));
                // A known client goes back to its endpoint.
                cmds.push(rule(
                    &svc,
                    vec![
                        eq(
                            payload("ip", "saddr"),
                            Val::Str(format!("@{}", aff_set(ep))),
                        ),
                        goto(&name),
                    ],
                ));
                expr_.push(Stmt::Set {
                    op: "update",
                    elem: payload("ip", "saddr"),
                    set: format!("@{}", aff_set(ep)),
                });
            }
            expr_.push(eq(
                expr(Expr::Meta { key: "l4proto" }),
                Val::Str(sp.protocol.into()),
            ));
            expr_.push(Stmt::Dnat {
                addr: ep.0.clone(),
                port: ep.1,
            });
            cmds.push(rule(&name, expr_));
        }
        let map = sp
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| (Val::Num(i as u64), goto(&ep_chain(ep))))
            .collect();
        cmds.push(rule(
            &svc,
            vec![Stmt::Vmap {
                key: expr(Expr::Numgen {
                    mode: "random",
                    modulus: sp.endpoints.len() as u64,
                    offset: 0,
                }),
                data: expr(Expr::Set(map)),
            }],
        ));
    }
    Ruleset { nftables: cmds }
}

/// What the proxy needs to know.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub table: String,
    pub node_ip: String,
}

/// Watches Services and Endpoints and reprograms the table on every change until `stop`.
pub async fn run<C: Api, N: Nft>(
    api: C,
    cfg: ProxyConfig,
    nft: N,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut svc_events = watcher::<C, Service>(api.clone(), None, ListParams::default());
    let mut ep_events = watcher::<C, Endpoints>(api, None, ListParams::default());
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    let mut endpoints: BTreeMap<String, Endpoints> = BTreeMap::new();
    let (mut svc_synced, mut ep_synced) = (false, false);
    let mut applied: Option<Vec<ServicePort>> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = svc_events.recv() => match ev {
                Some(ev) => { svc_synced |= apply_event(&mut services, ev) }
                None => return,
            },
            ev = ep_events.recv() => match ev {
                Some(ev) => { ep_synced |= apply_event(&mut endpoints, ev) }
                None => return,
            },
            // A failed apply is retried.
            _ = tokio::time::sleep(Duration::from_secs(5)), if applied.is_none() => {}
        }
        // Take what else is queued before rebuilding.
        while let Ok(ev) = svc_events.try_recv() {
            svc_synced |= apply_event(&mut services, ev);
        }
        while let Ok(ev) = ep_events.try_recv() {
            ep_synced |= apply_event(&mut endpoints, ev);
        }
        if !(svc_synced && ep_synced) {
            continue;
        }
        let ports = service_ports(&services, &endpoints);
        if applied.as_ref() == Some(&ports) {
            continue;
        }
        let rs = ruleset(&cfg.table, &cfg.node_ip, &ports);
        let json = serde_json::to_vec(&rs).unwrap_or_default();
        match nft.apply(&json) {
            Ok(()) => {
                metrics.proxy_syncs.inc();
                metrics
                    .proxy_endpoints
                    .set(ports.iter().map(|p| p.endpoints.len() as i64).sum());
                tracing::info!(
                    services = ports.len(),
                    endpoints = ports.iter().map(|p| p.endpoints.len()).sum::<usize>(),
                    "proxy rules applied"
                );
                applied = Some(ports);
            }
            Err(e) => {
                metrics.proxy_sync_errors.inc();
                tracing::warn!(error = %e, "applying proxy rules");
                applied = None;
            }
        }
    }
}

/// Applies a watch event to a cache; true when it was a (re)list.
fn apply_event<K: controlplane::client::Object>(
    cache: &mut BTreeMap<String, K>,
    ev: Event<K>,
) -> bool {
    match ev {
        Event::Restarted(list) => {
            cache.clear();
            for o in list {
                cache.insert(key_of(o.metadata()), o);
            }
            true
        }
        Event::Applied(o) => {
            cache.insert(key_of(o.metadata()), o);
            false
        }
        Event::Deleted(o) => {
            cache.remove(&key_of(o.metadata()));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, ip: &str, ports: serde_json::Value, affinity: Option<i32>) -> Service {
        let mut spec = json!({"clusterIP": ip, "ports": ports});
        if let Some(t) = affinity {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
        }
        serde_json::from_value(
            json!({"metadata": {"namespace": "default", "name": name}, "spec": spec}),
        )
        .unwrap()
    }

    fn eps(name: &str, subsets: serde_json::Value) -> Endpoints {
        serde_json::from_value(
            json!({"metadata": {"namespace": "default", "name": name}, "subsets": subsets}),
        )
        .unwrap()
    }

    fn maps(
        s: Vec<Service>,
        e: Vec<Endpoints>,
    ) -> (BTreeMap<String, Service>, BTreeMap<String, Endpoints>) {
        (
            s.into_iter().map(|o| (key_of(&o.metadata), o)).collect(),
            e.into_iter().map(|o| (key_of(&o.metadata), o)).collect(),
        )
    }

    #[test]
    fn service_ports_table() {
        let web_ports =
            json!([{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]);
        let ready = json!([{
            "addresses": [{"ip": "10.244.1.3"}, {"ip": "10.244.2.2"}],
            "notReadyAddresses": [{"ip": "10.244.1.9"}],
            "ports": [{"name": "http", "port": 8080}],
        }]);
        /// (id, endpoints, nodePort, affinity seconds)
        type Want = (
            &'static str,
            Vec<(&'static str, u16)>,
            Option<u16>,
            Option<u64>,
        );
        struct Case {
            name: &'static str,
            svc: Service,
            eps: Vec<Endpoints>,
            want: Vec<Want>,
        }
        let cases = vec![
            Case {
                name: "ready addresses only, node port",
                svc: svc("web", "10.96.0.10", web_ports.clone(), None),
                eps: vec![eps("web", ready.clone())],
                want: vec![(
                    "default/web/http",
                    vec![("10.244.1.3", 8080), ("10.244.2.2", 8080)],
                    Some(30080),
                    None,
                )],
            },
            Case {
                name: "no endpoints object",
                svc: svc("web", "10.96.0.10", web_ports.clone(), Some(60)),
                eps: vec![],
                want: vec![("default/web/http", vec![], Some(30080), Some(60))],
            },
            Case {
                name: "headless is skipped",
                svc: svc("web", "None", web_ports.clone(), None),
                eps: vec![eps("web", ready.clone())],
                want: vec![],
            },
            Case {
                name: "unnamed single port",
                svc: svc("db", "10.96.0.11", json!([{"port": 5432}]), None),
                eps: vec![eps(
                    "db",
                    json!([{"addresses": [{"ip": "10.244.1.4"}], "ports": [{"port": 5432}]}]),
                )],
                want: vec![("default/db/5432", vec![("10.244.1.4", 5432)], None, None)],
            },
            Case {
                name: "SCTP is skipped",
                svc: svc(
                    "x",
                    "10.96.0.12",
                    json!([{"port": 1, "protocol": "SCTP"}]),
                    None,
                ),
                eps: vec![],
                want: vec![],
            },
        ];
        for c in cases {
            let (s, e) = maps(vec![c.svc], c.eps);
            let got: Vec<_> = service_ports(&s, &e)
                .into_iter()
                .map(|p| (p.id, p.endpoints, p.node_port, p.affinity_secs))
                .collect();
            let want: Vec<_> = c
                .want
                .into_iter()
                .map(|(id, eps, np, aff)| {
                    (
                        id.to_string(),
                        eps.into_iter()
                            .map(|(i, p)| (i.to_string(), p))
                            .collect::<Vec<_>>(),
                        np,
                        aff,
                    )
                })
                .collect();
            assert_eq!(got, want, "{}", c.name);
        }
    }

    #[test]
    fn ruleset_json() {
        let sp = ServicePort {
            id: "default/web/http".into(),
            cluster_ip: "10.96.0.10".into(),
            protocol: "tcp",
            port: 80,
            node_port: Some(30080),
            affinity_secs: Some(60),
            endpoints: vec![("10.244.1.3".into(), 8080), ("10.244.2.2".into(), 8080)],
        };
        let empty = ServicePort {
            id: "default/none/81".into(),
            cluster_ip: "10.96.0.11".into(),
            port: 81,
            node_port: Some(30081),
            endpoints: vec![],
            ..sp.clone()
        };
        let v = serde_json::to_value(ruleset("t", "192.168.1.2", &[sp, empty])).unwrap();
        let cmds = v["nftables"].as_array().unwrap();
        // Atomic replacement: add, delete, add the table first.
        assert_eq!(
            cmds[0],
            json!({"add": {"table": {"family": "ip", "name": "t"}}})
        );
        assert_eq!(
            cmds[1],
            json!({"delete": {"table": {"family": "ip", "name": "t"}}})
        );
        let rules = |chain: &str| -> Vec<serde_json::Value> {
            cmds.iter()
                .filter(|c| c["add"]["rule"]["chain"] == chain)
                .map(|c| c["add"]["rule"]["expr"].clone())
                .collect()
        };
        assert_eq!(
            rules("services")[1],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.1.2"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 30080}},
                {"goto": {"target": "svc-default/web/http"}},
            ])
        );
        // The service without endpoints is rejected, on its ClusterIP and NodePort.
        assert_eq!(rules("services").len(), 2);
        assert_eq!(
            rules("no-endpoints"),
            vec![
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.96.0.11"}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 81}},
                    {"reject": {"type": "icmp", "expr": "port-unreachable"}},
                ]),
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.1.2"}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 30081}},
                    {"reject": {"type": "icmp", "expr": "port-unreachable"}},
                ]),
            ]
        );
        assert_eq!(
            rules("filter-forward"),
            vec![json!([{"jump": {"target": "no-endpoints"}}])]
        );
        let svc = rules("svc-default/web/http");
        assert_eq!(svc.len(), 3, "two affinity rules and the random pick");
        assert_eq!(
            svc[2],
            json!([{"vmap": {
                "key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
                "data": {"set": [
                    [0, {"goto": {"target": "ep-default/web/http-10.244.1.3:8080"}}],
                    [1, {"goto": {"target": "ep-default/web/http-10.244.2.2:8080"}}],
                ]},
            }}])
        );
        let ep = rules("ep-default/web/http-10.244.1.3:8080");
        assert_eq!(
            ep[0][3],
            json!({"dnat": {"addr": "10.244.1.3", "port": 8080}})
        );
        assert_eq!(
            ep[0][1],
            json!({"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@aff-default/web/http-10.244.1.3:8080"}})
        );
        assert_eq!(
            rules("postrouting")[0],
            json!([
                {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 16384]}, "right": 16384}},
                {"masquerade": null},
            ])
        );
        let chain = cmds
            .iter()
            .find(|c| c["add"]["chain"]["name"] == "prerouting")
            .unwrap();
        assert_eq!(
            chain["add"]["chain"],
            json!({"family": "ip", "table": "t", "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"})
        );
    }

    /// Records every ruleset applied.
    #[derive(Clone, Default)]
    struct FakeNft(Arc<std::sync::Mutex<Vec<serde_json::Value>>>);

    impl Nft for FakeNft {
        fn apply(&self, ruleset: &[u8]) -> Result<(), ProxyError> {
            self.0
                .lock()
                .unwrap()
                .push(serde_json::from_slice(ruleset).unwrap());
            Ok(())
        }
    }

    /// The DNAT targets of the last applied ruleset.
    fn dnat_targets(nft: &FakeNft) -> Vec<String> {
        let last = nft.0.lock().unwrap().last().cloned().unwrap_or_default();
        let mut out: Vec<String> = last["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c["add"]["rule"]["expr"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|e| {
                Some(format!(
                    "{}:{}",
                    e["dnat"]["addr"].as_str()?,
                    e["dnat"]["port"]
                ))
            })
            .collect();
        out.sort();
        out
    }

    async fn wait_targets(nft: &FakeNft, want: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while dnat_targets(nft) != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "rules {:?}, want {want:?}",
                dnat_targets(nft)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn follows_services_and_endpoints() {
        use controlplane::client::fake::FakeApi;
        let api = FakeApi::new();
        let nft = FakeNft::default();
        let stop = CancellationToken::new();
        let cfg = ProxyConfig {
            table: "t".into(),
            node_ip: "192.168.1.2".into(),
        };
        let task = tokio::spawn(run(
            api.clone(),
            cfg,
            nft.clone(),
            Arc::default(),
            stop.clone(),
        ));
        let ports = json!([{"name": "http", "port": 80, "targetPort": 8080}]);
        api.create(Some("default"), &svc("web", "10.96.0.10", ports, None))
            .await
            .unwrap();
        let subsets = |ips: &[&str]| {
            json!([{
                "addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "ports": [{"name": "http", "port": 8080}],
            }])
        };
        let created = api
            .create(
                Some("default"),
                &eps("web", subsets(&["10.244.1.3", "10.244.2.2"])),
            )
            .await
            .unwrap();
        wait_targets(&nft, &["10.244.1.3:8080", "10.244.2.2:8080"]).await;
        // An endpoint that goes unready leaves the rules.
        let mut e = created;
        e.subsets = eps("web", subsets(&["10.244.2.2"])).subsets;
        api.update(Some("default"), &e).await.unwrap();
        wait_targets(&nft, &["10.244.2.2:8080"]).await;
        // A deleted service leaves no rules.
        api.delete::<Service>(Some("default"), "web").await.unwrap();
        wait_targets(&nft, &[]).await;
        let applies = nft.0.lock().unwrap().len();
        stop.cancel();
        task.await.unwrap();
        assert!(
            applies <= 4,
            "{applies} applies for 3 changes and the initial sync"
        );
    }
}
