//! Receiving IPv6 packets with their original extension headers on an `AF_PACKET` socket.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// ETH_P_IPV6 in network byte order, as `AF_PACKET` reports it.
const ETH_P_IPV6_BE: u16 = (libc::ETH_P_IPV6 as u16).to_be();
/// ETH_P_ALL in network byte order.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// A packet socket bound to one interface, receiving the IPv6 packets that arrive on it and
/// carry a Mobility Header (cooked: without the link-layer header).
///
/// It is bound to `ETH_P_ALL`, not `ETH_P_IPV6`: the kernel hands packets to `ETH_P_ALL`
/// sockets (taps) before TC ingress, to protocol-specific ones after it. The data path drops
/// Mobility Header packets carrying an RH2 or a Home Address option at TC ingress (the kernel
/// would answer them with a Parameter Problem), so only a tap sees a Binding Update at a
/// client or a Binding Acknowledgement at a member. A socket filter ([`MOBILITY_ONLY`]) lets
/// only Mobility Header packets through, so the connections' data never reaches userspace;
/// other protocols that pass it are skipped in `recv`.
#[derive(Debug)]
pub struct PacketReceiver {
    fd: OwnedFd,
}

impl PacketReceiver {
    /// Opens the socket on `interface` in the calling thread's network namespace (needs
    /// CAP_NET_RAW).
    pub fn new(interface: &str) -> io::Result<Self> {
        let name = CString::new(interface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has NUL"))?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {interface} in this network namespace"),
            ));
        }
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        attach_filter(&fd, &MOBILITY_ONLY)?;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to start from.
        let mut addr: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL_BE;
        addr.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
        // SAFETY: `addr` is a valid sockaddr_ll whose size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                core::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let rx = PacketReceiver { fd };
        // Packets from other interfaces may have queued between socket() and bind().
        let mut scratch = [0u8; 2048];
        while rx.recv(&mut scratch)?.is_some() {}
        Ok(rx)
    }

    /// Waits until a packet is readable or `timeout` passes; returns whether one is.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // Round sub-millisecond waits up so that a due timer is not spun on.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        // SAFETY: `pfd` is one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
    }

    /// Receives one packet into `buf`: `Some((length, outgoing))`, `None` when nothing is
    /// queued. `outgoing` marks this host's own transmissions, which a packet socket also sees.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, bool)>> {
        loop {
            match self.recv_any(buf)? {
                None => return Ok(None),
                Some((n, outgoing, protocol)) if protocol == ETH_P_IPV6_BE => {
                    return Ok(Some((n, outgoing)));
                }
                Some(_) => {}
            }
        }
    }

    /// One packet of any protocol, with its `sll_protocol`.
    fn recv_any(&self, buf: &mut [u8]) -> io::Result<Option<(usize, bool, u16)>> {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to start from.
        let mut from: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
        let mut len = core::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` is a valid writable buffer of the given length; `from`/`len` describe a
        // valid sockaddr_ll.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some((
            n as usize,
            from.sll_pkttype == libc::PACKET_OUTGOING,
            from.sll_protocol,
        )))
    }
}

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

const LDB_ABS: u32 = libc::BPF_LD | libc::BPF_B | libc::BPF_ABS;
const NEXT_MH: u32 = 135;
const NEXT_IPV6: u32 = 41;
const NEXT_DEST_OPTS: u32 = 60;
const NEXT_ROUTING: u32 = 43;
const NEXT_HOP_BY_HOP: u32 = 0;

/// Classic BPF over the packet from its IPv6 header (a cooked socket's view, both directions):
/// accepts IPv6 whose Mobility Header follows the fixed header, one extension header (Hop-by-Hop,
/// Routing — an RH2 —, Destination Options — a Home Address option) or two; and IPv6-in-IPv6
/// whose inner packet carries it directly or after a Routing or Destination Options header (a
/// HoT through the home agent's tunnel). Everything else — the connections' data, tunnelled or
/// not — stays in the kernel. Jump offsets count instructions after the jump.
const MOBILITY_ONLY: [libc::sock_filter; 25] = [
    // 0: the frame's protocol.
    stmt(
        libc::BPF_LD | libc::BPF_H | libc::BPF_ABS,
        (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32,
    ),
    jeq(libc::ETH_P_IPV6 as u32, 0, 22), // → 2, else drop (24)
    stmt(LDB_ABS, 6),                    // 2: next header
    jeq(NEXT_MH, 19, 0),                 // → accept (23)
    jeq(NEXT_IPV6, 12, 0),               // → tunnel (17)
    jeq(NEXT_DEST_OPTS, 2, 0),           // → extension (8)
    jeq(NEXT_ROUTING, 1, 0),             // → extension (8)
    jeq(NEXT_HOP_BY_HOP, 0, 16),         // → extension (8), else drop (24)
    stmt(LDB_ABS, 40),                   // 8: the first extension header's next header
    jeq(NEXT_MH, 13, 0),                 // → accept (23)
    stmt(LDB_ABS, 41),                   // 10: its length: X = 40 + (len + 1) × 8
    stmt(libc::BPF_ALU | libc::BPF_ADD | libc::BPF_K, 1),
    stmt(libc::BPF_ALU | libc::BPF_LSH | libc::BPF_K, 3),
    stmt(libc::BPF_ALU | libc::BPF_ADD | libc::BPF_K, 40),
    stmt(libc::BPF_MISC | libc::BPF_TAX, 0),
    stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_IND, 0), // 15: the second one's next header
    jeq(NEXT_MH, 6, 7),                                  // → accept (23), else drop (24)
    stmt(LDB_ABS, 46),                                   // 17: the inner packet's next header
    jeq(NEXT_MH, 4, 0),                                  // → accept (23)
    jeq(NEXT_DEST_OPTS, 1, 0),                           // → inner extension (21)
    jeq(NEXT_ROUTING, 0, 3),                             // → inner extension (21), else drop
    stmt(LDB_ABS, 80),                                   // 21: its next header
    jeq(NEXT_MH, 0, 1),                                  // → accept (23), else drop (24)
    stmt(libc::BPF_RET | libc::BPF_K, 0x4_0000),         // 23: accept (the whole packet)
    stmt(libc::BPF_RET | libc::BPF_K, 0),                // 24: drop
];

fn attach_filter(fd: &OwnedFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points to `program`, which outlives the call (the kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            core::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsRawFd for PacketReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
