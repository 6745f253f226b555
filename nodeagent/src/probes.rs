//! Liveness, readiness and startup probes: when a probe is due ([`Tracker::due`]: after
//! initialDelaySeconds, every periodSeconds), running it (exec through the runtime,
//! httpGet, tcpSocket, each bounded by timeoutSeconds) and turning results into a state
//! with successThreshold/failureThreshold ([`Tracker::record`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::Runtime;

/// The defaults Kubernetes fills in.
pub fn period(p: &Probe) -> Duration {
    Duration::from_secs(p.period_seconds.filter(|s| *s > 0).unwrap_or(10) as u64)
}
pub fn timeout(p: &Probe) -> Duration {
    Duration::from_secs(p.timeout_seconds.filter(|s| *s > 0).unwrap_or(1) as u64)
}
fn success_threshold(p: &Probe) -> u32 {
    p.success_threshold.filter(|s| *s > 0).unwrap_or(1) as u32
}
fn failure_threshold(p: &Probe) -> u32 {
    p.failure_threshold.filter(|s| *s > 0).unwrap_or(3) as u32
}

/// One probe's running state for one container run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracker {
    successes: u32,
    failures: u32,
    last: Option<DateTime<Utc>>,
    /// `None` until a threshold is first crossed.
    pub result: Option<bool>,
}

impl Tracker {
    /// Whether the probe should run now for a container started at `started`.
    pub fn due(&self, p: &Probe, started: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let delay = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        if controlplane::clock::since(now, started) < delay {
            return false;
        }
        match self.last {
            None => true,
            Some(l) => controlplane::clock::since(now, l) >= period(p),
        }
    }

    /// Records one result; returns the state after it.
    pub fn record(&mut self, p: &Probe, ok: bool, now: DateTime<Utc>) -> Option<bool> {
        self.last = Some(now);
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= success_threshold(p) {
                self.result = Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= failure_threshold(p) {
                self.result = Some(false);
            }
        }
        self.result
    }
}

fn port_of(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Runs the probe once; `true` on success.
pub async fn run<R: Runtime>(
    runtime: &R,
    container_id: &str,
    container: &Container,
    p: &Probe,
    pod_ip: &str,
) -> bool {
    let t = timeout(p);
    if let Some(exec) = &p.exec {
        let argv = exec.command.clone().unwrap_or_default();
        return matches!(runtime.exec(container_id, &argv, t).await, Ok(0));
    }
    if let Some(h) = &p.http_get {
        let Some(port) = port_of(&h.port, container) else {
            return false;
        };
        let host = h
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let url = format!("{scheme}://{host}:{port}{path}");
        let Ok(client) = reqwest::Client::builder()
            .use_rustls_tls()
            .danger_accept_invalid_certs(true)
            .timeout(t)
            .build()
        else {
            return false;
        };
        let mut req = client.get(&url).header("User-Agent", "kube-probe/1.20");
        for hdr in h.http_headers.clone().unwrap_or_default() {
            req = req.header(hdr.name, hdr.value);
        }
        return match req.send().await {
            Ok(r) => (200..400).contains(&r.status().as_u16()),
            Err(_) => false,
        };
    }
    if let Some(tcp) = &p.tcp_socket {
        let Some(port) = port_of(&tcp.port, container) else {
            return false;
        };
        let host = tcp
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        return matches!(
            tokio::time::timeout(t, tokio::net::TcpStream::connect((host.as_str(), port))).await,
            Ok(Ok(_))
        );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn thresholds_and_schedule() {
        let p = Probe {
            initial_delay_seconds: Some(5),
            period_seconds: Some(2),
            failure_threshold: Some(2),
            success_threshold: Some(2),
            ..Default::default()
        };
        let mut t = Tracker::default();
        assert!(!t.due(&p, at(0), at(4)));
        assert!(t.due(&p, at(0), at(5)));
        // (ok, want state after)
        let steps = [
            (true, None),
            (true, Some(true)),
            (false, Some(true)),
            (false, Some(false)),
            (true, Some(false)),
            (true, Some(true)),
        ];
        for (i, (ok, want)) in steps.into_iter().enumerate() {
            let now = at(5 + 2 * i as i64);
            assert!(t.due(&p, at(0), now), "step {i}");
            assert_eq!(t.record(&p, ok, now), want, "step {i}");
            assert!(!t.due(&p, at(0), now + chrono::Duration::seconds(1)));
        }
    }

    #[tokio::test]
    async fn tcp_and_http_probes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let status = if req.starts_with("GET /healthz") {
                    "200 OK"
                } else {
                    "500 Oops"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let rt = crate::runtime::Runc {
            runc: "/nonexistent".into(),
            root: "/nonexistent".into(),
            shim_exe: "/nonexistent".into(),
        };
        let c = Container {
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("web".into()),
                container_port: port as i32,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let http = |path: &str, port: IntOrString| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port,
                ..Default::default()
            }),
            ..Default::default()
        };
        let tcp = |port: i32| Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(port),
                host: None,
            }),
            ..Default::default()
        };
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port() as i32
        };
        let cases = [
            (http("/healthz", IntOrString::String("web".into())), true),
            (http("/other", IntOrString::Int(port as i32)), false),
            (http("/healthz", IntOrString::String("nope".into())), false),
            (tcp(port as i32), true),
            (tcp(closed), false),
        ];
        for (p, want) in cases {
            assert_eq!(run(&rt, "x", &c, &p, "127.0.0.1").await, want, "{p:?}");
        }
    }
}
