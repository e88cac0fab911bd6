//! Capture at the donor: `TCP_REPAIR` on, then read everything in the order the reference sheet
//! gives (state and queue lengths, options, window, both queues). The socket is left in repair
//! mode: the caller either releases it (closing a socket in repair mode sends nothing) or rolls
//! back with [`resume`].

use std::{
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
};

use nix::sys::socket::{SockaddrLike, SockaddrStorage, getpeername, getsockname};

use super::{
    Activation, TcpStateError,
    state::{ConnState, Linger, Negotiated, SocketOptions, TcpState},
    sys::{self, TCP_RECV_QUEUE, TCP_SEND_QUEUE},
};

/// Context for system call errors.
pub(crate) trait Op<T> {
    fn op(self, op: &'static str) -> Result<T, TcpStateError>;
}

impl<T> Op<T> for std::io::Result<T> {
    fn op(self, op: &'static str) -> Result<T, TcpStateError> {
        self.map_err(|source| TcpStateError::Sys { op, source })
    }
}

impl<T> Op<T> for nix::Result<T> {
    fn op(self, op: &'static str) -> Result<T, TcpStateError> {
        self.map_err(|errno| TcpStateError::Sys {
            op,
            source: errno.into(),
        })
    }
}

fn socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v6) = storage.as_sockaddr_in6() {
        let addr = SocketAddr::V6(std::net::SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        ));
        // A dual-stack socket carrying IPv4 is moved as IPv4: the acceptor rebuilds it with an
        // AF_INET socket, and the blob stays 24 bytes shorter.
        return Some(SocketAddr::new(addr.ip().to_canonical(), addr.port()));
    }
    storage
        .as_sockaddr_in()
        .map(|v4| SocketAddr::new(v4.ip().into(), v4.port()))
}

/// The (local, peer) addresses of a connected TCP socket.
pub fn addresses(fd: BorrowedFd<'_>) -> Result<(SocketAddr, SocketAddr), TcpStateError> {
    use std::os::fd::AsRawFd;
    let local: SockaddrStorage = getsockname(fd.as_raw_fd()).op("getsockname")?;
    let peer: SockaddrStorage = getpeername(fd.as_raw_fd()).op("getpeername")?;
    match (socket_addr(&local), socket_addr(&peer)) {
        (Some(l), Some(p)) if l.is_ipv6() == p.is_ipv6() => Ok((l, p)),
        _ => Err(TcpStateError::NotInet(format!(
            "family {:?}",
            local.family()
        ))),
    }
}

/// Reads the socket options an application may have set. Works in or out of repair mode, but
/// must run before `TCP_REPAIR` is switched on because that forces `SO_REUSEADDR`.
pub fn socket_options(fd: BorrowedFd<'_>, v6: bool) -> Result<SocketOptions, TcpStateError> {
    use libc::{IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, SOL_SOCKET};
    let int = |level, name, op| sys::get_int(fd, level, name).op(op);
    let uint = |level, name, op| int(level, name, op).map(|v| v.max(0) as u32);
    let linger: libc::linger = sys::getsockopt(fd, SOL_SOCKET, libc::SO_LINGER).op("SO_LINGER")?;
    let (tclass, hops) = if v6 {
        (
            int(IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS")?,
            int(IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS")?,
        )
    } else {
        (
            int(IPPROTO_IP, libc::IP_TOS, "IP_TOS")?,
            int(IPPROTO_IP, libc::IP_TTL, "IP_TTL")?,
        )
    };
    Ok(SocketOptions {
        nodelay: int(IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY")? != 0,
        cork: int(IPPROTO_TCP, libc::TCP_CORK, "TCP_CORK")? != 0,
        keepalive: int(SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE")? != 0,
        reuseaddr: int(SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR")? != 0,
        keepidle: uint(IPPROTO_TCP, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE")?,
        keepintvl: uint(IPPROTO_TCP, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL")?,
        keepcnt: uint(IPPROTO_TCP, libc::TCP_KEEPCNT, "TCP_KEEPCNT")?,
        user_timeout: uint(IPPROTO_TCP, libc::TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT")?,
        sndbuf: uint(SOL_SOCKET, libc::SO_SNDBUF, "SO_SNDBUF")?,
        rcvbuf: uint(SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF")?,
        mark: uint(SOL_SOCKET, libc::SO_MARK, "SO_MARK")?,
        priority: uint(SOL_SOCKET, libc::SO_PRIORITY, "SO_PRIORITY")?,
        linger: Linger {
            on: linger.l_onoff != 0,
            seconds: linger.l_linger.max(0) as u32,
        },
        tclass: tclass.clamp(0, 255) as u8,
        hop_limit: hops.clamp(0, 255) as u8,
    })
}

/// Captures the connection of `socket`: switches `TCP_REPAIR` on and reads its complete state.
/// On success the socket stays in repair mode (frozen as far as the kernel is concerned); on
/// failure it is taken out of repair mode again, without a window probe, and keeps working.
///
/// The peer's packets must be kept away from the socket meanwhile (the freeze map): see
/// [`super::handoff`].
pub fn capture(socket: impl AsFd) -> Result<ConnState, TcpStateError> {
    let fd = socket.as_fd();
    let (local, peer) = addresses(fd)?;
    let domain_v6 =
        sys::get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).op("SO_DOMAIN")? == libc::AF_INET6;
    let options = socket_options(fd, domain_v6)?;
    sys::set_repair(fd, sys::TCP_REPAIR_ON).op("TCP_REPAIR on")?;
    match capture_repaired(fd, local, peer, options) {
        Ok(state) => Ok(state),
        Err(err) => {
            if let Err(off) = resume(fd, Activation::NoWindowProbe, options.reuseaddr) {
                tracing::error!(%off, "cannot leave repair mode after a failed capture");
            }
            Err(err)
        }
    }
}

fn capture_repaired(
    fd: BorrowedFd<'_>,
    local: SocketAddr,
    peer: SocketAddr,
    options: SocketOptions,
) -> Result<ConnState, TcpStateError> {
    let info = sys::tcp_info_head(fd).op("TCP_INFO")?;
    let state =
        TcpState::from_kernel(info.state).ok_or(TcpStateError::UnsupportedState(info.state))?;
    // Repair mode does not stop transmission: the pacing timer and TCP small queues keep
    // pushing never-sent bytes out. Bytes sent after we read the split would reach the peer
    // behind our back, and its ACKs for them would be beyond what the acceptor has sent, which
    // the kernel discards: a stall. A zero send window stops new data (retransmissions of the
    // first unacknowledged segment and zero-window probes may still leave; both are harmless).
    // Rollback puts the window back.
    let window = sys::repair_window(fd).op("TCP_REPAIR_WINDOW")?;
    sys::set_repair_window(
        fd,
        &sys::RepairWindow {
            snd_wnd: 0,
            ..window
        },
    )
    .op("TCP_REPAIR_WINDOW (stop sending)")?;
    let result = capture_stopped(fd, local, peer, options, info, state, window);
    if result.is_err()
        && let Err(err) = sys::set_repair_window(fd, &window)
    {
        tracing::error!(%err, "cannot restore the send window after a failed capture");
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn capture_stopped(
    fd: BorrowedFd<'_>,
    local: SocketAddr,
    peer: SocketAddr,
    options: SocketOptions,
    info: sys::TcpInfoHead,
    state: TcpState,
    window: sys::RepairWindow,
) -> Result<ConnState, TcpStateError> {
    // Segments that reached the socket before the freeze may still be processed while we read
    // (from its backlog, when the kernel releases the socket between two calls): the queues can
    // shrink or grow between an ioctl and the peek. They settle at once — nothing new arrives —
    // so a mismatch is read again.
    let mut attempt = 1;
    let Queues {
        outq,
        notsent,
        rcv_nxt,
        recv_queue,
        write_seq,
        mut send_queue,
    } = loop {
        match read_queues(fd, state) {
            Err(TcpStateError::QueueMismatch { .. }) if attempt < QUEUE_READ_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            other => break other?,
        }
    };
    let mss = sys::get_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG).op("TCP_MAXSEG")?;
    let (snd_cwnd, _) = sys::cwnd_and_mss(fd).op("TCP_INFO")?;
    let timestamps = info.options & sys::TCPI_OPT_TIMESTAMPS != 0;
    let (timestamp, captured_at_ms) = if timestamps {
        (
            sys::timestamp(fd).op("TCP_TIMESTAMP")?,
            super::state::realtime_ms(),
        )
    } else {
        (0, 0)
    };
    let unsent = send_queue.split_off((outq - notsent) as usize);
    let recv_seq = rcv_nxt.wrapping_sub(u32::from(state.fin_received()));
    let send_seq = write_seq
        .wrapping_sub(u32::from(state.fin_sent()))
        .wrapping_sub(outq);
    let negotiated = Negotiated {
        sack: info.options & sys::TCPI_OPT_SACK != 0,
        timestamps,
        wscale: (info.options & sys::TCPI_OPT_WSCALE != 0)
            .then_some((info.snd_wscale, info.rcv_wscale)),
        mss_clamp: mss.clamp(0, i32::from(u16::MAX)) as u16,
    };
    tracing::debug!(
        %local, %peer, ?state, recv = recv_queue.len(), unacked = send_queue.len(),
        unsent = unsent.len(), snd_cwnd, "captured"
    );
    Ok(ConnState {
        local,
        peer,
        state,
        negotiated,
        timestamp,
        captured_at_ms,
        recv_seq,
        send_seq,
        window,
        snd_cwnd,
        recv_queue,
        unacked: send_queue,
        unsent,
        options,
    })
}

/// Reads of the queues before a consistent one is given up.
const QUEUE_READ_ATTEMPTS: usize = 5;

/// Both queues with the lengths and sequence numbers they go with.
struct Queues {
    outq: u32,
    notsent: u32,
    rcv_nxt: u32,
    recv_queue: Vec<u8>,
    write_seq: u32,
    send_queue: Vec<u8>,
}

/// One read of both queues: their lengths (ioctls), sequence numbers and contents (peeks), which
/// must agree.
fn read_queues(fd: BorrowedFd<'_>, state: TcpState) -> Result<Queues, TcpStateError> {
    let mut outq = sys::outq(fd).op("SIOCOUTQ")?;
    let mut notsent = sys::outq_not_sent(fd).op("SIOCOUTQNSD")?;
    let inq = sys::inq(fd).op("SIOCINQ")?;
    if state.fin_sent() {
        // The ioctls count our FIN as a byte of the send queue while it is unacknowledged
        // (and in the never-sent part while it waits behind data).
        outq = outq.saturating_sub(1);
        notsent = notsent.saturating_sub(1);
    }
    if notsent > outq {
        return Err(TcpStateError::QueueMismatch {
            queue: "send",
            reported: notsent,
            peeked: outq as usize,
        });
    }
    sys::set_repair_queue(fd, TCP_RECV_QUEUE).op("TCP_REPAIR_QUEUE recv")?;
    let rcv_nxt = sys::queue_seq(fd).op("TCP_QUEUE_SEQ recv")?;
    let recv_queue = peek_queue(fd, inq, "receive");
    sys::set_repair_queue(fd, TCP_SEND_QUEUE).op("TCP_REPAIR_QUEUE send")?;
    let write_seq = sys::queue_seq(fd).op("TCP_QUEUE_SEQ send")?;
    let send_queue = peek_queue(fd, outq, "send");
    sys::set_repair_queue(fd, sys::TCP_NO_QUEUE).op("TCP_REPAIR_QUEUE none")?;
    Ok(Queues {
        outq,
        notsent,
        rcv_nxt,
        recv_queue: recv_queue?,
        write_seq,
        send_queue: send_queue?,
    })
}

/// Peeks `len` bytes of the selected queue, asking for one more to prove nothing is hidden.
fn peek_queue(fd: BorrowedFd<'_>, len: u32, queue: &'static str) -> Result<Vec<u8>, TcpStateError> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; len as usize + 1];
    let peeked = match sys::peek(fd, &mut buf) {
        Ok(n) => n,
        // The send-queue peek copies whole buffers and fails with EFAULT when they do not fit:
        // the queue holds more than the ioctl said.
        Err(err) if err.raw_os_error() == Some(libc::EFAULT) => len as usize + 1,
        Err(source) => {
            return Err(TcpStateError::Sys {
                op: "peek queue",
                source,
            });
        }
    };
    if peeked != len as usize {
        return Err(TcpStateError::QueueMismatch {
            queue,
            reported: len,
            peeked,
        });
    }
    buf.truncate(peeked);
    Ok(buf)
}

/// Rolls a captured socket back: puts the send window that capture zeroed back (`state` is
/// what [`capture`] returned for it), then leaves repair mode as [`resume`] does.
pub fn rollback(
    socket: impl AsFd,
    state: &ConnState,
    how: Activation,
) -> Result<(), TcpStateError> {
    let fd = socket.as_fd();
    sys::set_repair_window(fd, &state.window).op("TCP_REPAIR_WINDOW (rollback)")?;
    resume(fd, how, state.options.reuseaddr)
}

/// Whether `socket` is in repair mode (`TCP_REPAIR_WINDOW` is only readable then).
pub fn in_repair_mode(socket: impl AsFd) -> Result<bool, TcpStateError> {
    match sys::repair_window(socket.as_fd()) {
        Ok(_) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => Ok(false),
        Err(source) => Err(TcpStateError::Sys {
            op: "TCP_REPAIR_WINDOW",
            source,
        }),
    }
}

/// Brings back a socket that a handoff interrupted by a crash of its agent left in repair mode
/// (frozen and captured, never transferred), without the capture's record of it: the socket
/// leaves repair mode with a window probe, whose answer also gives back the send window the
/// capture zeroed (measured: `privileged_revive_after_a_capture_whose_record_is_lost`).
/// `Ok(false)`: the socket was not in repair mode (the crash came before the capture), nothing
/// was done.
pub fn revive(socket: impl AsFd) -> Result<bool, TcpStateError> {
    let fd = socket.as_fd();
    if !in_repair_mode(fd)? {
        return Ok(false);
    }
    resume(fd, Activation::WindowProbe, false)?;
    Ok(true)
}

/// Takes a socket out of repair mode so that it works again (rollback at the donor, or a step
/// of activation at the acceptor), then sets `SO_REUSEADDR` to `reuseaddr`: leaving repair mode
/// clears it whatever the application had set.
pub fn resume(socket: impl AsFd, how: Activation, reuseaddr: bool) -> Result<(), TcpStateError> {
    let fd = socket.as_fd();
    let mode = match how {
        Activation::WindowProbe => sys::TCP_REPAIR_OFF,
        Activation::NoWindowProbe => sys::TCP_REPAIR_OFF_NO_WP,
    };
    sys::set_repair(fd, mode).op("TCP_REPAIR off")?;
    if reuseaddr {
        sys::set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).op("SO_REUSEADDR")?;
    }
    Ok(())
}
