//! Restore at the acceptor and activation.
//!
//! Order (each step explains itself where it happens): socket → `TCP_REPAIR` before bind →
//! buffers → bind → queue sequence numbers → connect (silent in repair mode) → repair options
//! before any byte is queued → `TCP_TIMESTAMP` → receive queue → FIN/ACK injection for the
//! half-closed states → `TCP_REPAIR_WINDOW` (after the injections, which may move the window) →
//! the part of the send queue restored "as sent" (its size decided from the kernel's initial
//! congestion window and the segment size the socket now has) → options that survive repair mode. Activation:
//! repair off (with or without a window probe) → `SO_REUSEADDR` → the bytes to (re)send →
//! our FIN → for CLOSING, the peer's FIN → `TCP_NODELAY`/`TCP_CORK` as the application had them.

use std::{
    net::{SocketAddr, TcpStream},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use nix::sys::socket::{SockaddrIn, SockaddrIn6, SockaddrLike};

use super::{
    Activation, TcpStateError,
    capture::{Op, resume},
    inject::{self, ACK, FIN, Segment},
    state::{ConnState, SocketOptions, TcpState},
    sys::{self, RepairOpt, TCP_RECV_QUEUE, TCP_SEND_QUEUE},
};

/// The kernel's initial congestion window (`TCP_INIT_CWND`, RFC 6928), in segments: the most
/// [`Unacked::Auto`] resends.
const TCP_INIT_CWND: u32 = 10;

/// How the sent-but-unacknowledged bytes are restored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unacked {
    /// [`Unacked::Resend`] when they fit in the kernel's initial congestion window (at most 10
    /// segments, whatever window the socket was given), else [`Unacked::AsSent`] with a window
    /// probe at activation.
    #[default]
    Auto,
    /// Rewind the send sequence to the first unacknowledged byte and queue them as never sent:
    /// they leave at activation, at once. The peer gets duplicates of what it already had, which
    /// TCP discards. Only safe while the initial window covers them (see docs/tcpstate.md).
    Resend,
    /// Restore them as sent (CRIU, passt): they leave on the retransmission timer, whose first
    /// value after a restore is 1 s, unless an acknowledgement arrives first.
    AsSent,
}

/// Knobs of [`restore`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Policy for the sent-but-unacknowledged bytes.
    pub unacked: Unacked,
}

/// A restored socket, still in repair mode and silent, waiting for activation. Dropping it
/// closes the socket in repair mode, which sends nothing: that is the acceptor's rollback.
#[derive(Debug)]
pub struct Restored {
    socket: OwnedFd,
    /// Bytes written after repair mode is off, so that they are transmitted at once.
    pending: Vec<u8>,
    /// Whether any bytes were restored "as sent" (then a window probe brings their ACK).
    restored_as_sent: bool,
    state: TcpState,
    options: SocketOptions,
    local: SocketAddr,
    peer: SocketAddr,
    recv_seq: u32,
    send_seq: u32,
    fin_window: u16,
    /// Our receive window as the header field carries it.
    rcv_window: u16,
    /// Last byte of the part restored "as sent", and that part's length.
    last_unacked: u8,
    unacked_len: u32,
    timestamps: bool,
}

/// The default `SO_SNDBUF`/`SO_RCVBUF` of a fresh TCP socket in this namespace.
fn default_buffers(fd: BorrowedFd<'_>) -> Result<(u32, u32), TcpStateError> {
    Ok((
        sys::get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).op("SO_SNDBUF")? as u32,
        sys::get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).op("SO_RCVBUF")? as u32,
    ))
}

fn sockaddr(addr: SocketAddr) -> Box<dyn SockaddrLike> {
    match addr {
        SocketAddr::V4(a) => Box::new(SockaddrIn::from(a)),
        SocketAddr::V6(a) => Box::new(SockaddrIn6::from(a)),
    }
}

/// Rebuilds the connection of `state` in the calling thread's network namespace. The local
/// address must be configured there (IPv6: without duplicate address detection pending). The
/// peer's packets must be frozen until [`Restored::activate`].
pub fn restore(state: &ConnState, opts: RestoreOptions) -> Result<Restored, TcpStateError> {
    let domain = if state.local.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2), checked before use.
    let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(TcpStateError::Sys {
            op: "socket",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = socket.as_fd();
    // Before bind: repair mode lets the socket share the service port with a listener.
    sys::set_repair(fd, sys::TCP_REPAIR_ON).op("TCP_REPAIR on")?;
    restore_buffers(fd, state)?;
    let local = sockaddr(state.local);
    nix::sys::socket::bind(fd.as_raw_fd(), local.as_ref()).op("bind to the service address")?;

    sys::set_repair_queue(fd, TCP_RECV_QUEUE).op("TCP_REPAIR_QUEUE recv")?;
    sys::set_queue_seq(
        fd,
        state.recv_seq.wrapping_sub(state.recv_queue.len() as u32),
    )
    .op("TCP_QUEUE_SEQ recv")?;
    sys::set_repair_queue(fd, TCP_SEND_QUEUE).op("TCP_REPAIR_QUEUE send")?;
    sys::set_queue_seq(fd, state.send_seq).op("TCP_QUEUE_SEQ send")?;

    let peer = sockaddr(state.peer);
    match nix::sys::socket::connect(fd.as_raw_fd(), peer.as_ref()) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(errno) => return Err(errno).op("connect (repair)"),
    }

    // The kernel takes these only before any byte is queued.
    let n = &state.negotiated;
    let mut repair_opts = Vec::with_capacity(4);
    if n.sack {
        repair_opts.push(RepairOpt {
            code: sys::TCPOPT_SACK_PERM,
            val: 0,
        });
    }
    if let Some((snd, rcv)) = n.wscale {
        repair_opts.push(RepairOpt {
            code: sys::TCPOPT_WINDOW,
            val: u32::from(snd) | (u32::from(rcv) << 16),
        });
    }
    if n.timestamps {
        repair_opts.push(RepairOpt {
            code: sys::TCPOPT_TIMESTAMP,
            val: 0,
        });
    }
    repair_opts.push(RepairOpt {
        code: sys::TCPOPT_MAXSEG,
        val: u32::from(n.mss_clamp),
    });
    sys::setsockopt_slice(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_OPTIONS,
        &repair_opts,
    )
    .op("TCP_REPAIR_OPTIONS")?;
    if n.timestamps {
        sys::set_timestamp(fd, advanced_timestamp(state)).op("TCP_TIMESTAMP")?;
    }

    if !state.recv_queue.is_empty() {
        sys::set_repair_queue(fd, TCP_RECV_QUEUE).op("TCP_REPAIR_QUEUE recv")?;
        write_queue(fd, &state.recv_queue, "receive")?;
    }
    let mut restored = Restored {
        socket,
        pending: Vec::new(),
        restored_as_sent: false,
        state: state.state,
        options: state.options,
        local: state.local,
        peer: state.peer,
        recv_seq: state.recv_seq,
        send_seq: state.send_seq,
        fin_window: {
            let shift = n.wscale.map_or(0, |(snd, _)| snd);
            (state.window.snd_wnd >> shift).min(u32::from(u16::MAX)) as u16
        },
        rcv_window: {
            let shift = n.wscale.map_or(0, |(_, rcv)| rcv);
            (state.window.rcv_wnd >> shift).min(u32::from(u16::MAX)) as u16
        },
        last_unacked: state.unacked.last().copied().unwrap_or(0),
        unacked_len: state.unacked.len() as u32,
        timestamps: n.timestamps,
    };
    let fd = restored.socket.as_fd();
    if state.state.fin_acked() {
        // FIN_WAIT2 (its send queue is empty): with the send queue selected, shutdown queues
        // our FIN as already sent (FIN_WAIT1); an ACK of it from "the peer" completes the
        // transition.
        sys::set_repair_queue(fd, TCP_SEND_QUEUE).op("TCP_REPAIR_QUEUE send")?;
        nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write)
            .op("shutdown (repair)")?;
        restored.inject_until(ACK, state.send_seq.wrapping_add(1), TcpState::FinWait2)?;
    }
    sys::set_repair_queue(fd, sys::TCP_NO_QUEUE).op("TCP_REPAIR_QUEUE none")?;
    // CLOSING is restored as LAST_ACK: the peer's FIN now, ours at activation. Both states
    // wait for the ACK of our FIN; only TIME_WAIT moves to the peer. (An exact CLOSING needs
    // our FIN queued before the peer's, i.e. in repair mode, where it would count as sent and
    // wait for the retransmission timer.)
    if matches!(
        state.state,
        TcpState::CloseWait | TcpState::LastAck | TcpState::Closing
    ) {
        // The window must cover the FIN: after a large receive queue the window the socket
        // got at connect is used up, and a FIN beyond it is dropped as a zero-window probe.
        // CRIU moves the captured window back by one byte, which is not enough when the
        // window was closed or rcv_wup lagged behind rcv_nxt (measured: the FIN then lands in
        // the out-of-order queue). A window opened at the current rcv_nxt takes it; the
        // captured window replaces it right after.
        let before_fin = sys::RepairWindow {
            rcv_wup: state.recv_seq,
            rcv_wnd: state.window.rcv_wnd.max(u32::from(u16::MAX)),
            ..state.window
        };
        sys::set_repair_window(fd, &before_fin).op("TCP_REPAIR_WINDOW (before the FIN)")?;
        restored.inject_until(FIN | ACK, state.send_seq, TcpState::CloseWait)?;
    }
    // After the injected segments, which may have updated the window; the kernel checks these
    // values against the final rcv_nxt.
    sys::set_repair_window(fd, &state.window).op("TCP_REPAIR_WINDOW")?;

    let policy = match opts.unacked {
        Unacked::Auto => {
            // Resending is safe only if all of it leaves at once: the peer's ACKs beyond our
            // snd_nxt are discarded (RFC 793; this kernel answers them with challenge ACKs),
            // so a tail held back by the congestion window would stall the connection. The
            // initial window and the segment size are known now; the segment size can be
            // below the MSS clamp (measured: 1208 for a clamp of 1440), hence TCP_INFO, and
            // one segment of slack. The socket may have the donor's window by now (the
            // `restore_cwnd` program sets it at connect): the threshold stays the kernel's
            // initial window, at most TCP_INIT_CWND, so that only small flights are resent —
            // not tens of kilobytes of duplicates that the peer mostly has, ahead of new data.
            let (cwnd, mss) = sys::cwnd_and_mss(fd).op("TCP_INFO")?;
            let cwnd = cwnd.min(TCP_INIT_CWND);
            let options = if n.timestamps { 12 } else { 0 };
            let segment = usize::from(n.mss_clamp)
                .saturating_sub(options)
                .min(mss as usize);
            if state.unacked.len() <= (cwnd as usize).saturating_sub(2) * segment {
                Unacked::Resend
            } else {
                Unacked::AsSent
            }
        }
        other => other,
    };
    restored.restored_as_sent = policy == Unacked::AsSent && !state.unacked.is_empty();
    if restored.restored_as_sent {
        sys::set_repair_queue(fd, TCP_SEND_QUEUE).op("TCP_REPAIR_QUEUE send")?;
        write_queue(fd, &state.unacked, "send")?;
        sys::set_repair_queue(fd, sys::TCP_NO_QUEUE).op("TCP_REPAIR_QUEUE none")?;
    } else {
        restored.pending.extend_from_slice(&state.unacked);
    }
    restored.pending.extend_from_slice(&state.unsent);
    set_options(fd, &state.options, state.local.is_ipv6())?;
    tracing::debug!(
        local = %state.local, peer = %state.peer, state = ?state.state, ?policy,
        pending = restored.pending.len(), "restored"
    );
    Ok(restored)
}

/// Margin added to the timestamp clock on top of the handoff's duration: covers the clock
/// difference between donor and acceptor (zero on one host; NTP keeps hosts well inside it).
pub const TIMESTAMP_MARGIN_MS: u32 = 100;

/// The timestamp clock to restore: the captured value advanced by the time since the capture
/// plus [`TIMESTAMP_MARGIN_MS`]. `TCP_TIMESTAMP` restores an offset to the acceptor's clock, so
/// without this the clock would lag by the handoff's duration, the peer's PAWS check would drop
/// our segments (their TSval below its `ts_recent`) until the clock caught up, and it answers
/// each with a duplicate ACK: a stall. A forward jump is harmless: the peer only needs the
/// values to grow, and our RTT samples compare our own clock with its echo.
fn advanced_timestamp(state: &ConnState) -> u32 {
    let elapsed = super::state::realtime_ms().wrapping_sub(state.captured_at_ms);
    // A negative difference (clock skew) counts as zero; the margin covers it.
    let elapsed = if (elapsed as i32) < 0 { 0 } else { elapsed };
    let usec = state.timestamp & 1;
    let per_ms = if usec == 1 { 1000 } else { 1 };
    let advance = elapsed
        .saturating_add(TIMESTAMP_MARGIN_MS)
        .saturating_mul(per_ms);
    // The low bit says which clock (ms or µs) the value counts: keep it.
    (state.timestamp.wrapping_add(advance) & !1) | usec
}

/// Send-buffer room beyond twice the queued bytes, for the first new writes after activation.
const SEND_QUEUE_MARGIN: usize = 64 << 10;

/// `SO_SNDBUF`/`SO_RCVBUF` as the donor had them, when larger than a fresh socket's: the queues
/// must fit, and the kernel cannot tell us whether the application or autotuning set them, so
/// smaller (default) values are left to autotuning. The send buffer also grows to hold the send
/// queue as this socket will account it.
fn restore_buffers(fd: BorrowedFd<'_>, state: &ConnState) -> Result<(), TcpStateError> {
    let (snd_default, rcv_default) = default_buffers(fd)?;
    let o = &state.options;
    if o.sndbuf > snd_default {
        // The kernel doubles what it is given; the FORCE forms ignore wmem_max/rmem_max, which
        // autotuned sizes exceed.
        sys::set_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (o.sndbuf / 2) as i32,
        )
        .op("SO_SNDBUFFORCE")?;
    }
    // The send queue is written again in pieces whose buffers cost more than the donor's
    // (measured: 77 kB unacknowledged did not fit a buffer the donor held it in, and the
    // repair-mode write failed with EAGAIN; with a default buffer the pending bytes' blocking
    // write at activation waits for the peer). Room for twice the queue, as the kernel counts
    // overhead, plus a margin; only when it is short, since a set size turns autotuning off.
    let queued = state.unacked.len() + state.unsent.len();
    if queued > 0 {
        let needed = 2 * queued + SEND_QUEUE_MARGIN;
        let have = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).op("SO_SNDBUF")? as usize;
        if have < needed {
            sys::set_int(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                needed.div_ceil(2).min(i32::MAX as usize) as i32,
            )
            .op("SO_SNDBUFFORCE (room for the queue)")?;
        }
    }
    if o.rcvbuf > rcv_default {
        sys::set_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (o.rcvbuf / 2) as i32,
        )
        .op("SO_RCVBUFFORCE")?;
    }
    Ok(())
}

/// Options that repair mode leaves alone; `SO_REUSEADDR`, `TCP_NODELAY` and `TCP_CORK` wait for
/// activation.
fn set_options(fd: BorrowedFd<'_>, o: &SocketOptions, v6: bool) -> Result<(), TcpStateError> {
    use libc::{IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, SOL_SOCKET};
    let set = |level, name, value: u32, op| sys::set_int(fd, level, name, value as i32).op(op);
    if o.keepalive {
        set(SOL_SOCKET, libc::SO_KEEPALIVE, 1, "SO_KEEPALIVE")?;
    }
    if o.keepidle > 0 {
        set(IPPROTO_TCP, libc::TCP_KEEPIDLE, o.keepidle, "TCP_KEEPIDLE")?;
    }
    if o.keepintvl > 0 {
        set(
            IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            o.keepintvl,
            "TCP_KEEPINTVL",
        )?;
    }
    if o.keepcnt > 0 {
        set(IPPROTO_TCP, libc::TCP_KEEPCNT, o.keepcnt, "TCP_KEEPCNT")?;
    }
    if o.user_timeout > 0 {
        set(
            IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            o.user_timeout,
            "TCP_USER_TIMEOUT",
        )?;
    }
    if o.mark != 0 {
        set(SOL_SOCKET, libc::SO_MARK, o.mark, "SO_MARK")?;
    }
    if o.priority != 0 {
        set(SOL_SOCKET, libc::SO_PRIORITY, o.priority, "SO_PRIORITY")?;
    }
    if o.linger.on {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: o.linger.seconds.min(i32::MAX as u32) as i32,
        };
        sys::setsockopt(fd, SOL_SOCKET, libc::SO_LINGER, &linger).op("SO_LINGER")?;
    }
    if o.tclass != 0 {
        let (level, name, op) = if v6 {
            (IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS")
        } else {
            (IPPROTO_IP, libc::IP_TOS, "IP_TOS")
        };
        set(level, name, u32::from(o.tclass), op)?;
    }
    if o.hop_limit != 0 {
        let (level, name, op) = if v6 {
            (IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS")
        } else {
            (IPPROTO_IP, libc::IP_TTL, "IP_TTL")
        };
        set(level, name, u32::from(o.hop_limit), op)?;
    }
    Ok(())
}

/// Writes `data` to the selected queue in repair mode. The kernel allocates one linear buffer
/// per call there, so large writes fail with ENOMEM/ENOBUFS: halve the chunk, down to 1 KiB.
fn write_queue(fd: BorrowedFd<'_>, data: &[u8], queue: &'static str) -> Result<(), TcpStateError> {
    let mut chunk = data.len();
    let mut off = 0;
    while off < data.len() {
        let end = data.len().min(off + chunk);
        match sys::send(fd, &data[off..end], libc::MSG_DONTWAIT) {
            Ok(0) => {
                return Err(TcpStateError::QueueMismatch {
                    queue,
                    reported: data.len() as u32,
                    peeked: off,
                });
            }
            Ok(n) => off += n,
            Err(err)
                if matches!(err.raw_os_error(), Some(libc::ENOMEM | libc::ENOBUFS))
                    && chunk > 1024 =>
            {
                chunk /= 2;
            }
            Err(source) => {
                return Err(TcpStateError::Sys {
                    op: if queue == "receive" {
                        "restore receive queue"
                    } else {
                        "restore send queue"
                    },
                    source,
                });
            }
        }
    }
    Ok(())
}

/// How long an injected segment may take to move the socket, and how often it is re-sent.
const INJECT_DEADLINE: Duration = Duration::from_secs(1);
const INJECT_RETRY: Duration = Duration::from_millis(20);

impl Restored {
    /// Injects a segment from the peer and waits until the socket reaches `state`, sending it
    /// again every [`INJECT_RETRY`]: the loopback path delivers it from a softirq, not inside
    /// our sendto, and right after an address is added its local route is installed from a
    /// workqueue (measured: an injected FIN can leave by the wire instead). Duplicates are
    /// harmless (an old sequence number).
    fn inject_until(&self, flags: u8, ack: u32, state: TcpState) -> Result<(), TcpStateError> {
        let fd = self.socket.as_fd();
        let deadline = Instant::now() + INJECT_DEADLINE;
        loop {
            self.inject(flags, ack)?;
            let retry = Instant::now() + INJECT_RETRY;
            loop {
                let now = sys::tcp_info_head(fd).op("TCP_INFO")?.state;
                if now == state as u8 {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(TcpStateError::Injection {
                        wanted: state,
                        found: now,
                    });
                }
                if Instant::now() > retry {
                    break;
                }
                std::thread::yield_now();
            }
        }
    }

    fn inject(&self, flags: u8, ack: u32) -> Result<(), TcpStateError> {
        inject::inject(&Segment {
            from: self.peer,
            to: self.local,
            seq: self.recv_seq,
            ack,
            flags,
            window: self.fin_window,
            timestamps: self.timestamps,
            tsval: 0,
            payload: None,
        })
        .op("inject segment (raw socket)")
    }

    /// Sends the peer one byte it most likely has, the last byte restored "as sent" (with its
    /// real content and sequence number), so that it acknowledges at once what it holds (see
    /// `inject.rs`). The last byte, not the first: a segment that ends at the peer's `rcv_nxt`
    /// lies inside its window, so the peer takes our (advanced) timestamp as `ts_recent` and
    /// echoes it; a segment entirely below its window is answered with a duplicate ACK that
    /// echoes a donor-era timestamp. If the peer lacks the byte it is the right byte at the
    /// right place: TCP keeps it.
    fn elicit_ack(&self) -> Result<(), TcpStateError> {
        let fd = self.socket.as_fd();
        let tsval = if self.timestamps {
            sys::timestamp(fd).op("TCP_TIMESTAMP")?
        } else {
            0
        };
        inject::inject(&Segment {
            from: self.local,
            to: self.peer,
            seq: self.send_seq.wrapping_add(self.unacked_len.wrapping_sub(1)),
            ack: self
                .recv_seq
                .wrapping_add(u32::from(self.state.fin_received())),
            flags: ACK,
            window: self.rcv_window,
            timestamps: self.timestamps,
            tsval,
            payload: Some(self.last_unacked),
        })
        .op("elicit an ACK from the peer (raw socket)")
    }

    /// The restored socket (in repair mode until activation).
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Bytes that activation will write (unacknowledged bytes to resend plus never-sent ones).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Activates the connection: repair off, then the pending bytes and FINs go out. The peer's
    /// packets must reach the socket from now on (thaw first). `how` chooses the window probe
    /// (see also [`Restored::activate_auto`]). Runs in the acceptor's namespace (CLOSING injects
    /// the peer's FIN there). On failure the socket is back in repair mode and dropped silently.
    pub fn activate(self, how: Activation) -> Result<TcpStream, TcpStateError> {
        let fd = self.socket.as_fd();
        resume(fd, how, self.options.reuseaddr)?;
        if let Err(err) = self.finish_activation() {
            // Back into repair mode so that dropping the socket stays silent: the donor may
            // still roll back (the bytes sent meanwhile are the ones it holds, at the same
            // sequence numbers).
            if let Err(on) = sys::set_repair(self.socket.as_fd(), sys::TCP_REPAIR_ON) {
                tracing::error!(%on, "cannot re-enter repair mode after a failed activation");
            }
            return Err(err);
        }
        Ok(TcpStream::from(self.socket))
    }

    fn finish_activation(&self) -> Result<(), TcpStateError> {
        let fd = self.socket.as_fd();
        if self.restored_as_sent {
            self.elicit_ack()?;
        }
        if !self.pending.is_empty() {
            // Nagle would hold the last partial segment behind the others' ACK.
            sys::set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).op("TCP_NODELAY")?;
            let mut off = 0;
            while off < self.pending.len() {
                match sys::send(fd, &self.pending[off..], 0) {
                    Ok(n) => off += n,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(TcpStateError::Sys {
                            op: "send pending bytes",
                            source,
                        });
                    }
                }
            }
        }
        if matches!(
            self.state,
            TcpState::FinWait1 | TcpState::LastAck | TcpState::Closing
        ) {
            nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write)
                .op("shutdown (our FIN)")?;
        }
        let o = &self.options;
        if o.nodelay || !self.pending.is_empty() {
            sys::set_int(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                i32::from(o.nodelay),
            )
            .op("TCP_NODELAY")?;
        }
        if o.cork {
            sys::set_int(fd, libc::IPPROTO_TCP, libc::TCP_CORK, 1).op("TCP_CORK")?;
        }
        Ok(())
    }

    /// Activates without a window probe. When bytes were restored "as sent", activation always
    /// sends the peer one of them (whatever `how` says), whose answer acknowledges what it
    /// already has instead of waiting for the 1 s retransmission timer.
    pub fn activate_auto(self) -> Result<TcpStream, TcpStateError> {
        self.activate(Activation::NoWindowProbe)
    }

    /// Gives up: closes the socket in repair mode, which sends nothing to the peer.
    pub fn abort(self) {
        drop(self);
    }
}
