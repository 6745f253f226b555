//! The network between members: partitions and the TCP proxy that enforces them.
//!
//! Every member advertises a proxy "front" address as its peer URL (so that is what
//! the other members dial), and the front forwards to the member's real peer port. To
//! cut individual edges the proxy must know *who* is dialing; member processes all
//! connect from 127.0.0.1, so the [`ProcResolver`] finds the dialing socket in
//! `/proc/net/tcp` and the process that owns it in `/proc/<pid>/fd` — protocol-agnostic,
//! so it works for etcd's HTTP transport and for whatever raftkv's Raft speaks.
//! Connections over a cut edge are closed, and new ones are held silently (like a
//! black-holed SYN) until the edge heals. Everything sits behind [`Network`] so the
//! nemesis can be tested without sockets.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which directed edges between members are cut.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Partition {
    cut: BTreeSet<(usize, usize)>,
    description: String,
}

impl Partition {
    /// Everyone can talk to everyone.
    pub fn healed() -> Partition {
        Partition::default()
    }

    /// Cuts every edge between different groups (both directions). Members in no group
    /// keep all their links.
    pub fn between(groups: &[Vec<usize>]) -> Partition {
        let mut cut = BTreeSet::new();
        for (gi, a) in groups.iter().enumerate() {
            for (gj, b) in groups.iter().enumerate() {
                if gi != gj {
                    for &x in a {
                        for &y in b {
                            cut.insert((x, y));
                        }
                    }
                }
            }
        }
        let description = groups
            .iter()
            .map(|g| format!("{g:?}"))
            .collect::<Vec<_>>()
            .join(" | ");
        Partition { cut, description }
    }

    /// A random minority cut off from the majority.
    pub fn majority_minority(n: usize, rng: &mut impl Rng) -> Partition {
        let mut ids: Vec<usize> = (0..n).collect();
        ids.shuffle(rng);
        let (minority, majority) = ids.split_at(n / 2);
        let mut p = Partition::between(&[sorted(majority), sorted(minority)]);
        p.description = format!("majority/minority {}", p.description);
        p
    }

    /// One member cut off from all others.
    pub fn isolate(member: usize, n: usize) -> Partition {
        let rest: Vec<usize> = (0..n).filter(|&m| m != member).collect();
        let mut p = Partition::between(&[vec![member], rest]);
        p.description = format!("isolate {member}: {}", p.description);
        p
    }

    /// Two halves that cannot see each other, and one bridge member that sees both.
    pub fn bridge(n: usize, rng: &mut impl Rng) -> Partition {
        let mut ids: Vec<usize> = (0..n).collect();
        ids.shuffle(rng);
        let bridge = ids[0];
        let rest = &ids[1..];
        let (a, b) = rest.split_at(rest.len() / 2);
        let mut p = Partition::between(&[sorted(a), sorted(b)]);
        p.description = format!("bridge via {bridge}: {}", p.description);
        p
    }

    /// Whether traffic from `from` to `to` is blocked.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cut.contains(&(from, to))
    }

    pub fn is_healed(&self) -> bool {
        self.cut.is_empty()
    }

    pub fn describe(&self) -> &str {
        if self.cut.is_empty() {
            "healed"
        } else {
            &self.description
        }
    }
}

fn sorted(ids: &[usize]) -> Vec<usize> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}

/// Something that can partition the members' network.
pub trait Network: Send + Sync {
    fn apply(&self, partition: Partition);
    fn heal(&self) {
        self.apply(Partition::healed());
    }
}

/// Errors setting up the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot serve a proxy front: {0}")]
    Listener(std::io::Error),
}

/// Works out which member opened an incoming connection.
pub trait SourceResolver: Send + Sync {
    /// `peer` is the connection's remote address as the proxy sees it, `local` the
    /// front it arrived at.
    fn member_of(&self, peer: SocketAddr, local: SocketAddr) -> Option<usize>;
}

/// Maps pids to member indexes; the cluster updates it on every (re)start.
pub type PidMap = Arc<RwLock<HashMap<u32, usize>>>;

/// Resolves connection sources through `/proc` (Linux).
pub struct ProcResolver {
    pub pids: PidMap,
}

impl SourceResolver for ProcResolver {
    fn member_of(&self, peer: SocketAddr, local: SocketAddr) -> Option<usize> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        let inode = socket_inode(&table, peer, local)?;
        let needle = format!("socket:[{inode}]");
        let pids = self.pids.read().ok()?.clone();
        pids.iter().find_map(|(pid, member)| {
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
            fds.flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str())
                })
                .then_some(*member)
        })
    }
}

/// Finds the inode of the socket whose local address is `local` and remote `remote` in
/// a `/proc/net/tcp` table.
pub fn socket_inode(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            return None;
        }
        (parse_proc_addr(f[1])? == local && parse_proc_addr(f[2])? == remote)
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// Parses `0100007F:1F90`: the address is the kernel's native-endian u32, the port
/// big-endian hex.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(ip.to_ne_bytes()),
        port,
    )))
}

/// One front per member, forwarding to the member's real peer port.
pub struct ProxyNet {
    state: watch::Sender<Partition>,
    tasks: Vec<JoinHandle<()>>,
}

impl ProxyNet {
    /// Serves each member's front (index = member) on an already bound listener —
    /// handed over rather than re-bound, so no other process can take the port in
    /// between — forwarding to that member's real peer address.
    pub fn start(
        fronts: Vec<(std::net::TcpListener, SocketAddr)>,
        resolver: Arc<dyn SourceResolver>,
    ) -> Result<ProxyNet, ProxyError> {
        let (state, _) = watch::channel(Partition::healed());
        let mut tasks = Vec::new();
        for (member, (listener, backend)) in fronts.into_iter().enumerate() {
            let front = listener.local_addr().map_err(ProxyError::Listener)?;
            listener
                .set_nonblocking(true)
                .map_err(ProxyError::Listener)?;
            let listener = TcpListener::from_std(listener).map_err(ProxyError::Listener)?;
            let rx = state.subscribe();
            let resolver = resolver.clone();
            tasks.push(tokio::spawn(accept_loop(
                listener, member, front, backend, rx, resolver,
            )));
        }
        Ok(ProxyNet { state, tasks })
    }
}

impl Network for ProxyNet {
    fn apply(&self, partition: Partition) {
        tracing::info!(partition = partition.describe(), "network");
        self.state.send_replace(partition);
    }
}

impl Drop for ProxyNet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    to: usize,
    front: SocketAddr,
    backend: SocketAddr,
    rx: watch::Receiver<Partition>,
    resolver: Arc<dyn SourceResolver>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let resolver = resolver.clone();
        let from = tokio::task::spawn_blocking(move || resolver.member_of(peer, front))
            .await
            .ok()
            .flatten();
        tracing::trace!(?from, to, %peer, "peer connection");
        conns.spawn(forward(inbound, from, to, backend, rx.clone()));
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
}

async fn forward(
    mut inbound: TcpStream,
    from: Option<usize>,
    to: usize,
    backend: SocketAddr,
    mut rx: watch::Receiver<Partition>,
) {
    // Unknown sources are never cut: the proxy must not invent partitions.
    let cut = |p: &Partition| from.is_some_and(|f| p.is_cut(f, to) || p.is_cut(to, f));
    if cut(&rx.borrow()) {
        // Hold the connection without forwarding, as a black hole would, until the edge
        // heals; then close it so the dialer reconnects through a fresh connection.
        let _ = rx.wait_for(|p| !cut(p)).await;
        return;
    }
    let Ok(Ok(mut outbound)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(backend)).await
    else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = rx.wait_for(|p| cut(p)) => {
            tracing::debug!(?from, to, "cutting live connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn partitions_cut_the_right_edges() {
        let p = Partition::isolate(1, 3);
        assert!(p.is_cut(1, 0) && p.is_cut(0, 1) && p.is_cut(2, 1));
        assert!(!p.is_cut(0, 2));

        let mut rng = StdRng::seed_from_u64(7);
        for n in [3, 5] {
            let p = Partition::majority_minority(n, &mut rng);
            let cut_nodes: BTreeSet<usize> = p.cut.iter().map(|e| e.0).collect();
            assert_eq!(cut_nodes.len(), n, "every member loses someone: {p:?}");
            let b = Partition::bridge(n, &mut rng);
            let bridges: Vec<usize> = (0..n)
                .filter(|&m| (0..n).all(|o| !b.is_cut(m, o)))
                .collect();
            assert_eq!(bridges.len(), 1, "{b:?}");
        }
        assert!(Partition::healed().is_healed());
    }

    #[test]
    fn parses_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n";
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(socket_inode(table, local, remote), Some(4242));
        assert_eq!(socket_inode(table, remote, local), None);
    }

    struct Fixed(Option<usize>);
    impl SourceResolver for Fixed {
        fn member_of(&self, _: SocketAddr, _: SocketAddr) -> Option<usize> {
            self.0
        }
    }

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: SocketAddr) -> bool {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"ping").await.ok()?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.ok()?;
            Some(&buf == b"ping")
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(300), attempt).await,
            Ok(Some(true))
        )
    }

    #[tokio::test]
    async fn proxy_forwards_and_cuts() {
        let backend = echo_server().await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let front = listener.local_addr().unwrap();
        // All connections look like they come from member 1; the front is member 0.
        let net = ProxyNet::start(vec![(listener, backend)], Arc::new(Fixed(Some(1)))).unwrap();
        assert!(roundtrip(front).await);

        // A live connection dies when its edge is cut.
        let mut live = TcpStream::connect(front).await.unwrap();
        live.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        live.read_exact(&mut b).await.unwrap();
        net.apply(Partition::between(&[vec![0], vec![1]]));
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(1), live.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        assert!(!roundtrip(front).await, "cut edge must not forward");

        net.heal();
        assert!(roundtrip(front).await);
    }
}
