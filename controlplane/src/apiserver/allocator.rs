//! ClusterIPs and NodePorts of Services, allocated from `--service-cluster-ip-range` and
//! `--service-node-port-range` as kube-apiserver does. Every API server replica allocates,
//! so an allocation is a claim in the store, written in the same Txn as the Service
//! ([`super::storage::Store::create_claiming`]): two replicas cannot hand out one IP.
//!
//! Claim keys (value: the owning Service's `<namespace>/<name>`):
//! `/registry/ranges/serviceips/<ip>` and `/registry/ranges/servicenodeports/<port>`.
//! Claims are released when the Service is deleted.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use rand::Rng;
use serde_json::{json, Value};

pub const IP_CLAIMS: &str = "/registry/ranges/serviceips/";
pub const PORT_CLAIMS: &str = "/registry/ranges/servicenodeports/";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("invalid CIDR {0:?} (an IPv4 a.b.c.d/n with n from 8 to 30)")]
    Cidr(String),
    #[error("invalid port range {0:?} (low-high)")]
    Ports(String),
}

/// What a Service needs claimed, and why an explicit value cannot be.
#[derive(Debug, PartialEq, Eq)]
pub enum AllocError {
    /// (field, value as Kubernetes prints it, detail)
    Invalid(String, String, String),
    /// The range has nothing free.
    Full(&'static str),
}

#[derive(Clone, Debug)]
pub struct ServiceRanges {
    cidr: String,
    base: u32,
    size: u32,
    ports: (u16, u16),
}

fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if !(8..=30).contains(&len) {
        return None;
    }
    let mask = u32::MAX << (32 - len);
    Some((u32::from(ip) & mask, 1 << (32 - len)))
}

impl ServiceRanges {
    pub fn new(cidr: &str, ports: &str) -> Result<ServiceRanges, RangeError> {
        let (base, size) = parse_cidr(cidr).ok_or_else(|| RangeError::Cidr(cidr.into()))?;
        let bad = || RangeError::Ports(ports.into());
        let (lo, hi) = ports.split_once('-').ok_or_else(bad)?;
        let ports = (
            lo.trim().parse().map_err(|_| bad())?,
            hi.trim().parse().map_err(|_| bad())?,
        );
        if ports.0 == 0 || ports.0 > ports.1 {
            return Err(bad());
        }
        Ok(ServiceRanges {
            cidr: cidr.into(),
            base,
            size,
            ports,
        })
    }

    fn in_range(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        // The network and broadcast addresses are never handed out.
        ip > self.base && ip < self.base + self.size - 1
    }

    /// Fills in `spec.clusterIP(s)` and missing `nodePort`s of a new Service, avoiding
    /// `used_ips` and `used_ports`; returns the claim keys of everything it holds.
    pub fn assign(
        &self,
        svc: &mut Value,
        used_ips: &HashSet<Ipv4Addr>,
        used_ports: &HashSet<u16>,
    ) -> Result<Vec<String>, AllocError> {
        let mut claims = Vec::new();
        let ty = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if ty != "ExternalName" {
            let given = svc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let ip = match given.as_str() {
                "None" => None,
                "" => Some(
                    self.free_ip(used_ips)
                        .ok_or(AllocError::Full("clusterIP"))?,
                ),
                s => {
                    let invalid = |detail: String| {
                        AllocError::Invalid(
                            "spec.clusterIPs".into(),
                            format!("[]string{{\"{s}\"}}"),
                            detail,
                        )
                    };
                    let ip: Ipv4Addr = s.parse().map_err(|_| {
                        invalid(format!(
                            "failed to allocate IP {s}: must be a valid IP address"
                        ))
                    })?;
                    if !self.in_range(ip) {
                        return Err(invalid(format!(
                            "failed to allocate IP {s}: the provided IP ({s}) is not in the valid range. The range of valid IPs is {}",
                            self.cidr
                        )));
                    }
                    if used_ips.contains(&ip) {
                        return Err(invalid(format!(
                            "failed to allocate IP {s}: provided IP is already allocated"
                        )));
                    }
                    Some(ip)
                }
            };
            if let Some(ip) = ip {
                svc["spec"]["clusterIP"] = json!(ip.to_string());
                svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
                claims.push(format!("{IP_CLAIMS}{ip}"));
            } else {
                svc["spec"]["clusterIPs"] = json!(["None"]);
            }
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            let mut taken: HashSet<u16> = used_ports.clone();
            let n = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            // Explicit ports first, so a random pick cannot take one of them.
            for i in 0..n {
                let Some(p) = svc["spec"]["ports"][i]["nodePort"]
                    .as_i64()
                    .filter(|p| *p != 0)
                else {
                    continue;
                };
                let field = format!("spec.ports[{i}].nodePort");
                let port = u16::try_from(p).ok().filter(|p| (self.ports.0..=self.ports.1).contains(p)).ok_or_else(|| {
                    AllocError::Invalid(field.clone(), p.to_string(), format!("provided port is not in the valid range. The range of valid ports is {}-{}", self.ports.0, self.ports.1))
                })?;
                if !taken.insert(port) {
                    return Err(AllocError::Invalid(
                        field,
                        p.to_string(),
                        "provided port is already allocated".into(),
                    ));
                }
                claims.push(format!("{PORT_CLAIMS}{port}"));
            }
            for i in 0..n {
                if svc["spec"]["ports"][i]["nodePort"]
                    .as_i64()
                    .is_some_and(|p| p != 0)
                {
                    continue;
                }
                let port = self.free_port(&taken).ok_or(AllocError::Full("nodePort"))?;
                taken.insert(port);
                svc["spec"]["ports"][i]["nodePort"] = json!(port);
                claims.push(format!("{PORT_CLAIMS}{port}"));
            }
        }
        Ok(claims)
    }

    /// A free address, probing from a random offset.
    fn free_ip(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let usable = self.size - 2;
        let start = rand::rng().random_range(0..usable);
        (0..usable)
            .map(|i| Ipv4Addr::from(self.base + 1 + (start + i) % usable))
            .find(|ip| !used.contains(ip))
    }

    fn free_port(&self, used: &HashSet<u16>) -> Option<u16> {
        let n = u32::from(self.ports.1 - self.ports.0) + 1;
        let start = rand::rng().random_range(0..n);
        (0..n)
            .map(|i| self.ports.0 + ((start + i) % n) as u16)
            .find(|p| !used.contains(p))
    }
}

/// The claim keys a stored Service holds.
pub fn claims_of(svc: &Value) -> Vec<String> {
    let mut claims = Vec::new();
    if let Some(ip) = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
    {
        claims.push(format!("{IP_CLAIMS}{ip}"));
    }
    for p in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(port) = p["nodePort"].as_i64().filter(|p| *p != 0) {
            claims.push(format!("{PORT_CLAIMS}{port}"));
        }
    }
    claims
}

/// Claimed IPs and ports, from the claim keys.
pub fn used(ip_keys: &[String], port_keys: &[String]) -> (HashSet<Ipv4Addr>, HashSet<u16>) {
    let ips = ip_keys
        .iter()
        .filter_map(|k| k.strip_prefix(IP_CLAIMS)?.parse().ok())
        .collect();
    let ports = port_keys
        .iter()
        .filter_map(|k| k.strip_prefix(PORT_CLAIMS)?.parse().ok())
        .collect();
    (ips, ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> ServiceRanges {
        ServiceRanges::new("10.96.0.0/29", "30000-30002").unwrap()
    }

    #[test]
    fn ranges_parse() {
        assert!(ServiceRanges::new("10.96.0.0/12", "30000-32767").is_ok());
        assert_eq!(
            ServiceRanges::new("10.96.0.0", "1-2").unwrap_err(),
            RangeError::Cidr("10.96.0.0".into())
        );
        assert_eq!(
            ServiceRanges::new("10.96.0.0/12", "9-2").unwrap_err(),
            RangeError::Ports("9-2".into())
        );
    }

    #[test]
    fn assignment_table() {
        let used_ip: HashSet<Ipv4Addr> = ["10.96.0.3".parse().unwrap()].into();
        let used_port: HashSet<u16> = [30001].into();
        let cases: Vec<(Value, Result<usize, &str>)> = vec![
            (json!({"spec": {"ports": [{"port": 80}]}}), Ok(1)),
            (json!({"spec": {"clusterIP": "None", "ports": [{"port": 80}]}}), Ok(0)),
            (json!({"spec": {"type": "ExternalName"}}), Ok(0)),
            (json!({"spec": {"clusterIP": "10.96.0.2", "ports": []}}), Ok(1)),
            (json!({"spec": {"clusterIP": "10.96.0.3"}}), Err("failed to allocate IP 10.96.0.3: provided IP is already allocated")),
            (json!({"spec": {"clusterIP": "10.97.0.1"}}), Err("failed to allocate IP 10.97.0.1: the provided IP (10.97.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/29")),
            (json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}}), Ok(3)),
            (json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}}), Err("provided port is already allocated")),
            (json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}}), Err("provided port is not in the valid range. The range of valid ports is 30000-30002")),
        ];
        for (mut svc, want) in cases {
            let got = ranges().assign(&mut svc, &used_ip, &used_port);
            match (got, want) {
                (Ok(claims), Ok(n)) => {
                    assert_eq!(claims.len(), n, "{svc}");
                    assert_eq!(claims_of(&svc), claims, "{svc}");
                    let ip = svc["spec"]["clusterIP"].as_str().unwrap_or("");
                    assert!(
                        ip != "10.96.0.3" && ip != "10.96.0.0" && ip != "10.96.0.7",
                        "{svc}"
                    );
                    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
                        assert_ne!(p["nodePort"], 30001);
                    }
                }
                (Err(AllocError::Invalid(_, _, detail)), Err(want)) => assert_eq!(detail, want),
                (got, want) => panic!("{svc}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_full_range_says_so() {
        let used: HashSet<Ipv4Addr> = (1..7).map(|i| Ipv4Addr::new(10, 96, 0, i)).collect();
        let mut svc = json!({"spec": {"ports": []}});
        assert_eq!(
            ranges().assign(&mut svc, &used, &HashSet::new()),
            Err(AllocError::Full("clusterIP"))
        );
    }
}
