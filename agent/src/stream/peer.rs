//! The other end of a local socket: for a unix socket its peer's inode from
//! NETLINK_SOCK_DIAG (`UDIAG_SHOW_PEER`), for TCP the socket whose 4-tuple
//! mirrors ours in /proc/net/tcp{,6} (only loopback peers are local).
//! Both ends' copies of a message can then be joined like a pipe's.

use std::{fs, mem::size_of};

/// Inode of the unix socket connected to unix socket `ino`.
pub fn unix_peer(ino: u64) -> Option<u64> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_PEER: u32 = 0x4;
    const UNIX_DIAG_PEER: u16 = 2;
    #[repr(C)]
    struct Req {
        len: u32,
        ty: u16,
        flags: u16,
        seq: u32,
        pid: u32,
        family: u8,
        protocol: u8,
        pad: u16,
        states: u32,
        ino: u32,
        show: u32,
        cookie: [u32; 2],
    }
    let req = Req {
        len: size_of::<Req>() as u32,
        ty: SOCK_DIAG_BY_FAMILY,
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        pid: 0,
        family: libc::AF_UNIX as u8,
        protocol: 0,
        pad: 0,
        states: u32::MAX,
        ino: u32::try_from(ino).ok()?,
        show: UDIAG_SHOW_PEER,
        cookie: [u32::MAX, u32::MAX], // "no cookie": look up by inode alone
    };
    // SAFETY: plain socket syscalls on an fd we own and close; buffers are
    // valid for the lengths passed.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        );
        if fd < 0 {
            return None;
        }
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const _,
            size_of::<libc::timeval>() as u32,
        );
        let sent = libc::send(fd, &req as *const Req as *const _, size_of::<Req>(), 0);
        let mut buf = [0u8; 512];
        let n = if sent > 0 {
            libc::recv(fd, buf.as_mut_ptr() as *mut _, buf.len(), 0)
        } else {
            -1
        };
        libc::close(fd);
        if n <= 0 {
            return None;
        }
        parse_peer(&buf[..n as usize], UNIX_DIAG_PEER)
    }
}

/// Finds the `UNIX_DIAG_PEER` attribute in a sock_diag answer.
fn parse_peer(msg: &[u8], attr: u16) -> Option<u64> {
    const NLMSG_HDR: usize = 16;
    const UNIX_DIAG_MSG: usize = 16;
    let ty = u16::from_ne_bytes([*msg.get(4)?, *msg.get(5)?]);
    if ty == libc::NLMSG_ERROR as u16 || ty == libc::NLMSG_DONE as u16 {
        return None;
    }
    let mut off = NLMSG_HDR + UNIX_DIAG_MSG;
    while off + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[off], msg[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]);
        if len < 4 {
            return None;
        }
        if kind == attr && len >= 8 {
            let v = &msg[off + 4..off + 8];
            return Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]) as u64);
        }
        off += (len + 3) & !3;
    }
    None
}

/// Inode of the local TCP socket whose (local, remote) mirrors socket
/// `ino`'s, searched in `tgid`'s network namespace.
pub fn tcp_peer(tgid: u32, ino: u64) -> Option<u64> {
    let ns = if std::path::Path::new(&format!("/proc/{tgid}/net")).exists() {
        tgid.to_string()
    } else {
        "self".into()
    };
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{ns}/net/{table}")) else {
            continue;
        };
        let rows: Vec<(&str, &str, &str)> = text
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((*f.get(1)?, *f.get(2)?, *f.get(9)?))
            })
            .collect();
        let me = ino.to_string();
        if let Some((local, remote, _)) = rows.iter().find(|r| r.2 == me) {
            return rows
                .iter()
                .find(|r| r.0 == *remote && r.1 == *local && r.2 != "0")
                .and_then(|r| r.2.parse().ok());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsRawFd, unix::net::UnixStream};

    use super::*;
    use crate::stream::fdinfo::{resolve, FdKind};

    #[test]
    fn socketpair_peers_find_each_other() {
        let (a, b) = UnixStream::pair().unwrap();
        let me = std::process::id();
        let (FdKind::Unix(ia), FdKind::Unix(ib)) = (
            resolve(me, a.as_raw_fd() as u32),
            resolve(me, b.as_raw_fd() as u32),
        ) else {
            panic!("not unix sockets")
        };
        assert_eq!(unix_peer(ia), Some(ib));
        assert_eq!(unix_peer(ib), Some(ia));
    }

    #[test]
    fn loopback_tcp_peers_find_each_other() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let me = std::process::id();
        let (FdKind::Tcp(ic), FdKind::Tcp(is)) = (
            resolve(me, c.as_raw_fd() as u32),
            resolve(me, s.as_raw_fd() as u32),
        ) else {
            panic!("not tcp sockets")
        };
        assert_eq!(tcp_peer(me, ic), Some(is));
        assert_eq!(tcp_peer(me, is), Some(ic));
    }
}
