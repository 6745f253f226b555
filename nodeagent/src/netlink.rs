//! The one rtnetlink request the agent makes itself: deleting a network interface (a
//! node's CNI bridge, on teardown; the CNI plugins create it but never remove it).
//!
//! Wire layout (all native-endian, as the kernel's structs): an `nlmsghdr` (len u32, type
//! u16 = RTM_DELLINK, flags u16 = NLM_F_REQUEST|NLM_F_ACK, seq u32, pid u32) followed by an
//! `ifinfomsg` (family u8 = AF_UNSPEC, pad u8, type u16, index i32, flags u32, change u32).
//! The kernel answers with an NLMSG_ERROR message whose `error` (i32 after the header) is
//! 0 or a negative errno.

use std::ffi::CString;
use std::io;

#[repr(C)]
struct IfInfoMsg {
    family: u8,
    pad: u8,
    type_: u16,
    index: i32,
    flags: u32,
    change: u32,
}

#[repr(C)]
struct DelLink {
    header: libc::nlmsghdr,
    info: IfInfoMsg,
}

/// Deletes the interface `name`; `Ok(false)` if there is none.
pub fn delete_link(name: &str) -> io::Result<bool> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Ok(false);
    }
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
    let result = request(fd, index);
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    result.map(|()| true)
}

fn request(fd: i32, index: u32) -> io::Result<()> {
    let msg = DelLink {
        header: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<DelLink>() as u32,
            nlmsg_type: libc::RTM_DELLINK,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        info: IfInfoMsg {
            family: libc::AF_UNSPEC as u8,
            pad: 0,
            type_: 0,
            index: index as i32,
            flags: 0,
            change: 0,
        },
    };
    // SAFETY: `msg` is a plain repr(C) value that outlives the call; len is its size.
    let sent = unsafe {
        libc::send(
            fd,
            (&msg as *const DelLink).cast(),
            std::mem::size_of::<DelLink>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let hdr = std::mem::size_of::<libc::nlmsghdr>();
    if (n as usize) < hdr + 4 {
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
    let errno = i32::from_ne_bytes([buf[hdr], buf[hdr + 1], buf[hdr + 2], buf[hdr + 3]]);
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
    fn the_request_is_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<IfInfoMsg>(), 16);
        assert_eq!(std::mem::size_of::<DelLink>(), 32);
    }
}
