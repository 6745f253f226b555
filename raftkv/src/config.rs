//! Command-line configuration. Flag names, defaults and list syntax are etcd's, so an etcd
//! command line starts raftkv unchanged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::auth::provider::{ProviderError, TokenProvider};
use crate::clock::Clock;
use crate::tls::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid URL {0:?}: expected http://host:port or https://host:port")]
    BadUrl(String),
    #[error("cannot resolve {0:?}: {1}")]
    Resolve(String, std::io::Error),
    #[error("--heartbeat-interval must be > 0 and at most --election-timeout / 5")]
    Timing,
    #[error(
        "--auth-token {0:?}: {1} (expected simple, or jwt,sign-method=<RS256|RS384|RS512|\
         PS256|PS384|PS512|ES256|ES384|HS256|HS384|HS512>,pub-key=<path>,priv-key=<path>\
         [,ttl=<duration>])"
    )]
    AuthToken(String, #[source] ProviderError),
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: <name>.etcd).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (gRPC and HTTP), comma-separated.
    #[arg(long, default_value = "http://localhost:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,
    /// Client URLs advertised to the cluster, comma-separated.
    #[arg(long, default_value = "http://localhost:2379", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,
    /// URLs to listen on for peer traffic (Raft between members).
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub listen_peer_urls: Vec<String>,
    /// Peer URLs advertised to the cluster.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration (name=peer-url,...).
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// Initial cluster state: new or existing.
    #[arg(long, default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token; part of the member and cluster IDs.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Additional URLs serving /metrics and /health, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Number of committed entries between Raft snapshots (after which the log is compacted).
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Raise alarms when backend size exceeds the given quota (0 = the 2 GiB default).
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Test only, unsafe: serve linearizable reads from local state without asking the
    /// leader, so a partitioned member returns stale data. It exists so the fault-injection
    /// harness can prove it catches such a server.
    #[arg(long = "experimental-unsafe-stale-reads", hide = true)]
    pub unsafe_stale_reads: bool,
    /// Test only, unsafe: acknowledge Raft log appends without fsyncing them, so a power
    /// loss loses acknowledged writes. It exists so the fault-injection harness can prove
    /// it catches such a server.
    #[arg(long = "experimental-unsafe-no-fsync", hide = true)]
    pub unsafe_no_fsync: bool,
    /// Duration of periodic watch progress notifications (e.g. 10m, 500ms).
    #[arg(long = "experimental-watch-progress-notify-interval", default_value = "10m", value_parser = parse_duration)]
    pub watch_progress_notify_interval: Duration,
    /// Path to the client server TLS cert file.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication.
    #[arg(long)]
    pub client_cert_auth: bool,
    /// Path to the peer server TLS cert file.
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(long)]
    pub peer_client_cert_auth: bool,
    /// Specify a v3 authentication token type and its options: 'simple', or
    /// 'jwt,pub-key=PATH,priv-key=PATH,sign-method=ALG[,ttl=DURATION]'.
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// Time (in seconds) of the auth-token-ttl (simple tokens; a JWT's is its ttl option).
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// Specify the cost / strength of the bcrypt algorithm for hashing auth passwords.
    /// Valid values are between 4 and 31.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
}

/// Parses Go durations as `time.ParseDuration` does ("1h30m", "1.5s", "300ms", "0"), with
/// Go's error messages; a negative duration is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let digits = |r: &str| r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let (int, r) = rest.split_at(digits(rest));
        let (frac, r) = match r.strip_prefix('.') {
            Some(r) => r.split_at(digits(r)),
            None => ("", r),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let (unit, r) = r.split_at(
            r.find(|c: char| c == '.' || c.is_ascii_digit())
                .unwrap_or(r.len()),
        );
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| invalid())?
        };
        // Digits past nanosecond precision cannot matter.
        let frac = &frac[..frac.len().min(18)];
        let frac_nanos = if frac.is_empty() {
            0
        } else {
            let f: u128 = frac.parse().map_err(|_| invalid())?;
            f * scale / 10u128.pow(frac.len() as u32)
        };
        nanos = int
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(nanos))
            .filter(|&n| n <= i64::MAX as u128)
            .ok_or_else(invalid)?;
        rest = r;
    }
    if negative && nanos > 0 {
        return Err(format!("time: negative duration {s:?} is not supported"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

impl ServerArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    /// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds.
    pub fn min_lease_ttl(&self) -> Result<i64, ConfigError> {
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError::Timing);
        }
        let election_ticks = self.election_timeout / self.heartbeat_interval;
        let min_ttl_ms = (3 * election_ticks / 2) * self.heartbeat_interval;
        Ok(min_ttl_ms.div_ceil(1000) as i64)
    }

    /// The token provider `--auth-token` asks for (reading and checking JWT keys).
    pub fn token_provider(&self, clock: Arc<dyn Clock>) -> Result<TokenProvider, ConfigError> {
        TokenProvider::from_flag(&self.auth_token, clock)
            .map_err(|e| ConfigError::AuthToken(self.auth_token.clone(), e))
    }

    /// The client port's TLS flags.
    pub fn client_tls(&self) -> TlsFiles {
        TlsFiles {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            trusted_ca: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
        }
    }

    /// The peer port's TLS flags.
    pub fn peer_tls(&self) -> TlsFiles {
        TlsFiles {
            cert: self.peer_cert_file.clone(),
            key: self.peer_key_file.clone(),
            trusted_ca: self.peer_trusted_ca_file.clone(),
            client_cert_auth: self.peer_client_cert_auth,
        }
    }

    pub fn quota(&self) -> u64 {
        if self.quota_backend_bytes == 0 {
            2 * 1024 * 1024 * 1024
        } else {
            self.quota_backend_bytes
        }
    }
}

/// Whether a URL asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// Resolves an `http://host:port` or `https://host:port` URL to socket addresses.
pub async fn resolve(url: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let hostport = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .map(|s| s.trim_end_matches('/'))
        .filter(|s| s.contains(':'))
        .ok_or_else(|| ConfigError::BadUrl(url.to_string()))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| ConfigError::Resolve(url.to_string(), e))?
        .collect();
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("10m", Some(600.0)),
            ("500ms", Some(0.5)),
            ("1.5s", Some(1.5)),
            ("2h", Some(7200.0)),
            ("1h30m", Some(5400.0)),
            ("1m0.5s", Some(60.5)),
            (".5s", Some(0.5)),
            ("+2s", Some(2.0)),
            ("1500us", Some(0.0015)),
            ("1500\u{b5}s", Some(0.0015)),
            ("2000000ns", Some(0.002)),
            ("0", Some(0.0)),
            ("-0", Some(0.0)),
            ("5", None),
            ("3d", None),
            ("", None),
            ("-1m", None),
            ("1.s.", None),
            ("m", None),
            ("9999999999h", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s).ok().map(|d| d.as_secs_f64()), want, "{s}");
        }
    }

    #[test]
    fn min_lease_ttl_as_etcd() {
        // (heartbeat ms, election ms, min TTL s)
        for (hb, el, want) in [(100, 1000, 2), (100, 500, 1), (50, 1000, 2), (500, 5000, 8)] {
            let mut a = ServerArgs {
                name: "x".into(),
                data_dir: None,
                listen_client_urls: vec![],
                advertise_client_urls: vec![],
                listen_peer_urls: vec![],
                initial_advertise_peer_urls: vec![],
                initial_cluster: String::new(),
                initial_cluster_state: "new".into(),
                initial_cluster_token: String::new(),
                listen_metrics_urls: vec![],
                heartbeat_interval: hb,
                election_timeout: el,
                snapshot_count: 0,
                max_txn_ops: 128,
                max_request_bytes: 0,
                quota_backend_bytes: 0,
                watch_progress_notify_interval: Duration::from_secs(1),
                unsafe_stale_reads: false,
                unsafe_no_fsync: false,
                auth_token: "simple".into(),
                cert_file: None,
                key_file: None,
                trusted_ca_file: None,
                client_cert_auth: false,
                peer_cert_file: None,
                peer_key_file: None,
                peer_trusted_ca_file: None,
                peer_client_cert_auth: false,
                auth_token_ttl: 300,
                bcrypt_cost: 10,
            };
            assert_eq!(a.min_lease_ttl().unwrap(), want, "{hb}/{el}");
            a.heartbeat_interval = 0;
            assert!(a.min_lease_ttl().is_err());
        }
    }
}
