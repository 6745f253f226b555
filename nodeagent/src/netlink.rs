//! The few rtnetlink requests the agent makes itself: deleting a network interface (a
//! node's CNI bridge, on teardown; the CNI plugins create it but never remove it), and
//! adding or deleting an IPv4 route via a gateway (the host's routes to each node's
//! podCIDR, see [`crate::nodenet`]).
//!
//! Wire layout (all native-endian, as the kernel's structs), one request per socket:
//! - an `nlmsghdr`: len u32, type u16, flags u16 (NLM_F_REQUEST|NLM_F_ACK, plus
//!   NLM_F_CREATE|NLM_F_REPLACE for a route that may exist), seq u32, pid u32;
//! - RTM_DELLINK: an `ifinfomsg`: family u8 = AF_UNSPEC, pad u8, type u16, index i32,
//!   flags u32, change u32;
//! - RTM_NEWROUTE / RTM_DELROUTE: an `rtmsg`: family u8 = AF_INET, dst_len u8, src_len u8,
//!   tos u8, table u8 = RT_TABLE_MAIN, protocol u8 = RTPROT_STATIC, scope u8 =
//!   RT_SCOPE_UNIVERSE, type u8 = RTN_UNICAST, flags u32; then `rtattr`s (len u16, type u16,
//!   payload padded to 4 bytes): RTA_DST (4 address bytes, network order) and, for a new
//!   route, RTA_GATEWAY.
//!
//! The kernel answers with an NLMSG_ERROR message whose `error` (i32 after the header) is
//! 0 or a negative errno.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;

const NLMSG_HDRLEN: usize = 16;

/// A request: the header with `len` filled in when the body is complete.
struct Request(Vec<u8>);

impl Request {
    fn new(ty: u16, extra_flags: i32) -> Request {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(
            &((libc::NLM_F_REQUEST | libc::NLM_F_ACK | extra_flags) as u16).to_ne_bytes(),
        );
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        Request(b)
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Request {
        self.0.extend_from_slice(b);
        self
    }

    fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Request {
        let len = 4 + payload.len();
        self.bytes(&(len as u16).to_ne_bytes())
            .bytes(&ty.to_ne_bytes())
            .bytes(payload);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    fn finish(&mut self) -> &[u8] {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        &self.0
    }
}

/// Deletes the interface `name`; `Ok(false)` if there is none.
pub fn delete_link(name: &str) -> io::Result<bool> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Ok(false);
    }
    let mut req = Request::new(libc::RTM_DELLINK, 0);
    req.bytes(&[libc::AF_UNSPEC as u8, 0])
        .bytes(&0u16.to_ne_bytes())
        .bytes(&(index as i32).to_ne_bytes())
        .bytes(&0u32.to_ne_bytes())
        .bytes(&0u32.to_ne_bytes());
    send(req.finish()).map(|()| true)
}

fn route(ty: u16, flags: i32, dst: Ipv4Addr, prefix: u8, via: Option<Ipv4Addr>) -> Request {
    let mut req = Request::new(ty, flags);
    req.bytes(&[
        libc::AF_INET as u8,
        prefix,
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_STATIC,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_UNICAST,
    ])
    .bytes(&0u32.to_ne_bytes())
    .attr(libc::RTA_DST, &dst.octets());
    if let Some(gw) = via {
        req.attr(libc::RTA_GATEWAY, &gw.octets());
    }
    req
}

/// `ip route replace dst/prefix via gateway`.
pub fn replace_route(dst: Ipv4Addr, prefix: u8, via: Ipv4Addr) -> io::Result<()> {
    let mut req = route(
        libc::RTM_NEWROUTE,
        libc::NLM_F_CREATE | libc::NLM_F_REPLACE,
        dst,
        prefix,
        Some(via),
    );
    send(req.finish())
}

/// `ip route del dst/prefix`; `Ok(false)` if there is no such route.
pub fn delete_route(dst: Ipv4Addr, prefix: u8) -> io::Result<bool> {
    let mut req = route(libc::RTM_DELROUTE, 0, dst, prefix, None);
    match send(req.finish()) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends one request on a fresh NETLINK_ROUTE socket and reads the kernel's ack.
fn send(msg: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is closed below on every path.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = exchange(fd, msg);
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    result
}

fn exchange(fd: i32, msg: &[u8]) -> io::Result<()> {
    // SAFETY: `msg` outlives the call; len is its length.
    let sent = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    ack(&buf[..n as usize])
}

/// The errno of an NLMSG_ERROR answer.
fn ack(buf: &[u8]) -> io::Result<()> {
    if buf.len() < NLMSG_HDRLEN + 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink answer",
        ));
    }
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    if ty != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected netlink answer",
        ));
    }
    let h = NLMSG_HDRLEN;
    let errno = i32::from_ne_bytes([buf[h], buf[h + 1], buf[h + 2], buf[h + 3]]);
    match errno {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interface_is_not_an_error() {
        assert!(!delete_link("nosuchif0").unwrap());
        assert!(delete_link("bad\0name").is_err());
    }

    #[test]
    fn requests_have_the_kernels_layout() {
        // nlmsghdr 16 + ifinfomsg 16.
        let mut del = Request::new(libc::RTM_DELLINK, 0);
        del.bytes(&[0u8; 16]);
        assert_eq!(del.finish().len(), 32);
        // nlmsghdr 16 + rtmsg 12 + RTA_DST 8 + RTA_GATEWAY 8.
        let mut r = route(
            libc::RTM_NEWROUTE,
            0,
            Ipv4Addr::new(10, 244, 1, 0),
            24,
            Some(Ipv4Addr::new(10, 100, 0, 11)),
        );
        let b = r.finish().to_vec();
        assert_eq!(b.len(), 44);
        assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()), 44);
        assert_eq!(b[17], 24, "dst_len");
        assert_eq!(
            &b[28..32],
            &[8, 0, 1, 0][..],
            "RTA_DST header (little-endian)"
        );
        assert_eq!(&b[32..36], &[10, 244, 1, 0]);
        assert_eq!(&b[40..44], &[10, 100, 0, 11]);
    }

    #[test]
    fn acks_and_errors() {
        let mut ok = vec![0u8; 20];
        ok[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        assert!(ack(&ok).is_ok());
        let mut err = ok.clone();
        err[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(ack(&err).unwrap_err().raw_os_error(), Some(libc::EEXIST));
        assert!(ack(&ok[..10]).is_err());
    }

    #[test]
    fn routes_in_a_private_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: needs root");
            return;
        }
        // A thread of its own in a fresh namespace, so the host's routes are untouched.
        std::thread::spawn(|| {
            // SAFETY: affects only this thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let gw = Ipv4Addr::new(10, 1, 2, 3);
            // No interface reaches the gateway yet: the kernel refuses.
            assert!(replace_route(Ipv4Addr::new(10, 9, 0, 0), 16, gw).is_err());
            assert!(!delete_route(Ipv4Addr::new(10, 9, 0, 0), 16).unwrap());
        })
        .join()
        .unwrap();
    }
}
