//! TCP Socket Information (TCP-SI) buffers: TCPCP2's layout for the state of one or more TCP
//! sockets, carrying what `TCP_REPAIR` needs beyond it in a versioned extension element.
//!
//! Everything is in network byte order; lengths are in 4-byte words. Offsets are those of the C
//! structs in `include/tcpcp.h` (checked by the C test program):
//!
//! ```text
//! total header (8)   total_si_length u32 (words) · major u8 = 0 · minor u8 = 1 · si_cnt u16
//! per socket:
//!  si header (164)   si_length u32 (words) · fd u32
//!                    id: ip_version u8 (4|6) · pad 3 · union 36 (v4: src, dst | v6: src, dst,
//!                        scope_id) · sport u16 · dport u16            (src = local, dst = peer)
//!                    fixgen: tcp_flags u8 (TCPI_OPT_*) · snd_wscale · rcv_wscale · pad ·
//!                        snd_mss u16 · rcv_mss u16
//!                    vargen: state u8 · pad 3 · snd_nxt · rcv_nxt · snd_wnd · rcv_wnd ·
//!                        ts_recent · ts_gen                            (u32 each)
//!                    sockopt: sk (flags, userlocks, pad 2, priority, sndbuf, rcvbuf, l_linger)
//!                        · ip union 48 (v4: flags, uc_ttl, pmtudisc, tos, opt_len, pad 3,
//!                        opt_data 40 | v6: flags, hop_limit, pmtudisc, pad) · tcp (nonagle,
//!                        keepcnt, pad 2, keepidle u16, keepintvl u16)
//!  extension (32)    type u8 = 0xd5 · version u8 = 1 · length u16 (words) = 8 · snd_wl1 ·
//!                    max_window · rcv_wup · ts_clock_ms · user_timeout · mark (u32 each) ·
//!                    tclass u8 · flags u8 = 0 · pad 2
//!  buffers           tcpcp_si_skb: type u8 (1 send, 2 receive) · pad · length u16 (bytes) ·
//!                    flags · sacked · pad 2 · tso_segs u16 · tso_size u16 · seq u32 · data
//!                    padded to 4 bytes
//! ```
//!
//! Sequence numbers exclude FINs (the state implies them, as in the `handoff-user` core): `rcv_nxt`
//! follows the last data byte received, `snd_nxt` the last data byte sent. Send buffers hold the
//! whole send queue from the first unacknowledged byte; the bytes before `snd_nxt` were sent.
//!
//! Parsing never panics and refuses anything it cannot restore exactly ([`SiError`]); after the
//! layout checks every socket's state also passes the core's own checks (it is run through the
//! `handoff-user` state blob), so both formats refuse the same impossible states.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use handoff_tcpstate::{
    BlobError, ConnState, Linger, Negotiated, RepairWindow, SocketOptions, TcpState,
};

/// `major` this build reads and writes (TCPCP2's only revision).
pub const MAJOR: u8 = 0;
/// `minor` this build reads and writes: 1 = TCPCP2's layout plus the repair extension element.
pub const MINOR: u8 = 1;
/// Type byte of the repair extension element.
pub const EXT_TYPE: u8 = 0xd5;
/// Version of the repair extension element.
pub const EXT_VERSION: u8 = 1;

/// Total header length.
pub const TOTAL_HDR_LEN: usize = 8;
/// TCPCP2's fixed per-socket header (`struct tcpcp_si_hdr`).
pub const SI_HDR_LEN: usize = 164;
/// The repair extension element (`struct tcpcp_sie_repair`).
pub const EXT_LEN: usize = 32;
/// Header of one queue buffer (`struct tcpcp_si_skb`).
pub const SKB_HDR_LEN: usize = 16;
/// Largest data length one queue buffer can declare (its length field is 16 bits); writers use
/// a multiple of 4 below it.
pub const SKB_CHUNK: usize = 0xfffc;

/// `tcpcp_si_skb.type` of send-queue buffers.
pub const SKB_SND: u8 = 1;
/// `tcpcp_si_skb.type` of receive-queue buffers.
pub const SKB_RCV: u8 = 2;

const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const TCP_FLAGS_KNOWN: u8 = TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE;

const SK_REUSEADDR: u8 = 1;
const SK_KEEPOPEN: u8 = 2;
const SK_LINGER: u8 = 4;
const SK_KNOWN: u8 = SK_REUSEADDR | SK_KEEPOPEN | SK_LINGER;

/// `TCPCP_SIE_IP_DEFAULT_TTL` / `TCPCP_SIE_IPV6_DEFAULT_HOPLIMIT`.
const IP_DEFAULT_HOPS: u8 = 1;

const NONAGLE_NODELAY: u8 = 1;
const NONAGLE_CORK: u8 = 2;
const NONAGLE_KNOWN: u8 = NONAGLE_NODELAY | NONAGLE_CORK;

/// TCP's segment header flag ACK, written into every buffer's `flags`.
const SKB_FLAG_ACK: u8 = 0x10;

/// Field offsets inside a per-socket header (the C struct's, see the module comment).
mod field {
    pub const SI_LENGTH: usize = 0;
    pub const FD: usize = 4;
    pub const IP_VERSION: usize = 8;
    pub const ADDR: usize = 12;
    pub const V6_SCOPE: usize = 44;
    pub const SPORT: usize = 48;
    pub const DPORT: usize = 50;
    pub const TCP_FLAGS: usize = 52;
    pub const SND_WSCALE: usize = 53;
    pub const RCV_WSCALE: usize = 54;
    pub const SND_MSS: usize = 56;
    pub const RCV_MSS: usize = 58;
    pub const STATE: usize = 60;
    pub const SND_NXT: usize = 64;
    pub const RCV_NXT: usize = 68;
    pub const SND_WND: usize = 72;
    pub const RCV_WND: usize = 76;
    pub const TS_RECENT: usize = 80;
    pub const TS_GEN: usize = 84;
    pub const SK_FLAGS: usize = 88;
    pub const SK_PRIORITY: usize = 92;
    pub const SK_SNDBUF: usize = 96;
    pub const SK_RCVBUF: usize = 100;
    pub const SK_LINGER: usize = 104;
    pub const IP_FLAGS: usize = 108;
    pub const IP_HOPS: usize = 109;
    pub const IP_TOS: usize = 111;
    pub const IP_OPT_LEN: usize = 112;
    pub const TCP_NONAGLE: usize = 156;
    pub const TCP_KEEPCNT: usize = 157;
    pub const TCP_KEEPIDLE: usize = 160;
    pub const TCP_KEEPINTVL: usize = 162;
    // The extension element, relative to the socket header's start.
    pub const EXT: usize = 164;
    pub const EXT_TYPE: usize = EXT;
    pub const EXT_VERSION: usize = EXT + 1;
    pub const EXT_LENGTH: usize = EXT + 2;
    pub const EXT_SND_WL1: usize = EXT + 4;
    pub const EXT_MAX_WINDOW: usize = EXT + 8;
    pub const EXT_RCV_WUP: usize = EXT + 12;
    pub const EXT_TS_CLOCK: usize = EXT + 16;
    pub const EXT_USER_TIMEOUT: usize = EXT + 20;
    pub const EXT_MARK: usize = EXT + 24;
    pub const EXT_TCLASS: usize = EXT + 28;
    pub const EXT_FLAGS: usize = EXT + 29;
    // A queue buffer, relative to its start.
    pub const SKB_TYPE: usize = 0;
    pub const SKB_LENGTH: usize = 2;
    pub const SKB_FLAGS: usize = 4;
    pub const SKB_SEQ: usize = 12;
}

/// Why a TCP-SI buffer was refused (or could not be written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiError {
    /// The buffer ends before a header or a declared length.
    #[error("TCP-SI buffer truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes there.
        available: u64,
    },
    /// A revision this build does not read.
    #[error("TCP-SI revision {major}.{minor} is not supported (this build reads {MAJOR}.{MINOR})")]
    Revision {
        /// `major` found.
        major: u8,
        /// `minor` found.
        minor: u8,
    },
    /// A field holds a value that is wrong or cannot be restored.
    #[error("TCP-SI field {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A socket's state is refused by the `handoff-user` core.
    #[error("TCP-SI socket state: {0}")]
    State(#[from] BlobError),
    /// A captured state does not fit the layout (writing only).
    #[error("cannot write {field} into a TCP-SI buffer: {reason}")]
    Unrepresentable {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

fn invalid(field: &'static str, reason: &'static str) -> SiError {
    SiError::Invalid { field, reason }
}

/// One socket of a TCP-SI buffer: the descriptor it had at the donor and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// The donor's descriptor number (informative; the acceptor gets new descriptors).
    pub fd: u32,
    /// The connection.
    pub state: ConnState,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// The byte length a buffer declares in its first word (`total_si_length` × 4), or `None` when
/// fewer than 4 bytes are given. Used by `tcpcp_size`.
pub fn declared_len(buf: &[u8]) -> Option<u64> {
    (buf.len() >= 4).then(|| u64::from(be32(buf, 0)) * 4)
}

/// Parses a whole TCP-SI buffer (`buf` must be exactly `total_si_length` words long).
pub fn parse(buf: &[u8]) -> Result<Vec<SocketInfo>, SiError> {
    if buf.len() < TOTAL_HDR_LEN {
        return Err(SiError::Truncated {
            needed: TOTAL_HDR_LEN as u64,
            available: buf.len() as u64,
        });
    }
    let (major, minor) = (buf[4], buf[5]);
    if (major, minor) != (MAJOR, MINOR) {
        return Err(SiError::Revision { major, minor });
    }
    let declared = u64::from(be32(buf, 0)) * 4;
    if declared > buf.len() as u64 {
        return Err(SiError::Truncated {
            needed: declared,
            available: buf.len() as u64,
        });
    }
    if declared < buf.len() as u64 {
        return Err(invalid(
            "total_si_length",
            "shorter than the buffer (trailing bytes)",
        ));
    }
    let count = be16(buf, 6);
    if count == 0 {
        return Err(invalid("si_cnt", "no socket"));
    }
    let mut rest = &buf[TOTAL_HDR_LEN..];
    let mut out = Vec::with_capacity(usize::from(count).min(rest.len() / SI_HDR_LEN));
    for _ in 0..count {
        if rest.len() < SI_HDR_LEN + EXT_LEN {
            return Err(SiError::Truncated {
                needed: (SI_HDR_LEN + EXT_LEN) as u64,
                available: rest.len() as u64,
            });
        }
        let len = u64::from(be32(rest, field::SI_LENGTH)) * 4;
        if len < (SI_HDR_LEN + EXT_LEN) as u64 {
            return Err(invalid("si_length", "shorter than the socket header"));
        }
        if len > rest.len() as u64 {
            return Err(SiError::Truncated {
                needed: len,
                available: rest.len() as u64,
            });
        }
        let (one, tail) = rest.split_at(len as usize);
        out.push(parse_socket(one)?);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(invalid("si_cnt", "bytes left after the last socket"));
    }
    Ok(out)
}

/// A queue being reassembled from buffers: contiguous, in order.
#[derive(Default)]
struct Queue {
    start: Option<u32>,
    bytes: Vec<u8>,
}

impl Queue {
    fn push(&mut self, seq: u32, data: &[u8], name: &'static str) -> Result<(), SiError> {
        match self.start {
            None => self.start = Some(seq),
            Some(start) if start.wrapping_add(self.bytes.len() as u32) != seq => {
                return Err(invalid(name, "buffers not contiguous"));
            }
            Some(_) => {}
        }
        if self.bytes.len() + data.len() > u32::MAX as usize / 4 {
            return Err(invalid(name, "longer than a TCP window can be"));
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }
}

fn parse_addr(si: &[u8], v6: bool) -> Result<(IpAddr, IpAddr), SiError> {
    let a = field::ADDR;
    if v6 {
        if be32(si, field::V6_SCOPE) != 0 {
            return Err(invalid("scope_id", "scoped addresses are not restored"));
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&si[a..a + 16]);
        dst.copy_from_slice(&si[a + 16..a + 32]);
        Ok((Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()))
    } else {
        Ok((
            Ipv4Addr::from(be32(si, a)).into(),
            Ipv4Addr::from(be32(si, a + 4)).into(),
        ))
    }
}

fn parse_socket(si: &[u8]) -> Result<SocketInfo, SiError> {
    let v6 = match si[field::IP_VERSION] {
        4 => false,
        6 => true,
        _ => return Err(invalid("ip_version", "neither 4 nor 6")),
    };
    let (src, dst) = parse_addr(si, v6)?;
    let local = SocketAddr::new(src, be16(si, field::SPORT));
    let peer = SocketAddr::new(dst, be16(si, field::DPORT));

    let tcp_flags = si[field::TCP_FLAGS];
    if tcp_flags & !TCP_FLAGS_KNOWN != 0 {
        return Err(invalid(
            "tcp_flags",
            "unknown or unrestorable option (ECN is not carried)",
        ));
    }
    let (snd_ws, rcv_ws) = (si[field::SND_WSCALE], si[field::RCV_WSCALE]);
    let wscale = if tcp_flags & TCPI_OPT_WSCALE != 0 {
        Some((snd_ws, rcv_ws))
    } else if snd_ws != 0 || rcv_ws != 0 {
        return Err(invalid("snd_wscale", "set without TCPI_OPT_WSCALE"));
    } else {
        None
    };
    let timestamps = tcp_flags & TCPI_OPT_TIMESTAMPS != 0;
    let state = TcpState::from_kernel(si[field::STATE])
        .ok_or_else(|| invalid("state", "not a restorable TCP state"))?;
    let snd_nxt = be32(si, field::SND_NXT);
    let recv_seq = be32(si, field::RCV_NXT);

    let sk_flags = si[field::SK_FLAGS];
    if sk_flags & !SK_KNOWN != 0 {
        return Err(invalid("sockopt.sk.flags", "unknown bits set"));
    }
    let ip_flags = si[field::IP_FLAGS];
    if ip_flags & !IP_DEFAULT_HOPS != 0 {
        return Err(invalid("sockopt.ip.flags", "unknown bits set"));
    }
    if !v6 && si[field::IP_OPT_LEN] != 0 {
        return Err(invalid(
            "sockopt.ip.v4.opt_len",
            "IP options are not restored",
        ));
    }
    let hop_limit = if ip_flags & IP_DEFAULT_HOPS != 0 {
        0
    } else {
        si[field::IP_HOPS]
    };
    let nonagle = si[field::TCP_NONAGLE];
    if nonagle & !NONAGLE_KNOWN != 0 {
        return Err(invalid("sockopt.tcp.nonagle", "unknown bits set"));
    }

    if si[field::EXT_TYPE] != EXT_TYPE {
        return Err(invalid("extension", "repair extension element missing"));
    }
    if si[field::EXT_VERSION] != EXT_VERSION {
        return Err(invalid("extension.version", "unknown version"));
    }
    if usize::from(be16(si, field::EXT_LENGTH)) * 4 != EXT_LEN {
        return Err(invalid("extension.length", "not 8 words"));
    }
    if si[field::EXT_FLAGS] != 0 {
        return Err(invalid("extension.flags", "unknown bits set"));
    }

    let mut send = Queue::default();
    let mut recv = Queue::default();
    let mut at = SI_HDR_LEN + EXT_LEN;
    while at < si.len() {
        if si.len() - at < SKB_HDR_LEN {
            return Err(invalid("si_skb", "buffer header past si_length"));
        }
        let len = usize::from(be16(si, at + field::SKB_LENGTH));
        if len == 0 {
            return Err(invalid("si_skb.length", "empty buffer"));
        }
        let data_at = at + SKB_HDR_LEN;
        if si.len() - data_at < padded(len) {
            return Err(invalid("si_skb.length", "data past si_length"));
        }
        let seq = be32(si, at + field::SKB_SEQ);
        let data = &si[data_at..data_at + len];
        match si[at + field::SKB_TYPE] {
            SKB_SND => send.push(seq, data, "send buffers")?,
            SKB_RCV => recv.push(seq, data, "receive buffers")?,
            _ => return Err(invalid("si_skb.type", "neither send nor receive")),
        }
        at = data_at + padded(len);
    }
    if let Some(start) = recv.start
        && start.wrapping_add(recv.bytes.len() as u32) != recv_seq
    {
        return Err(invalid("receive buffers", "do not end at rcv_nxt"));
    }
    let send_seq = send.start.unwrap_or(snd_nxt);
    let sent = snd_nxt.wrapping_sub(send_seq) as usize;
    if sent > send.bytes.len() {
        return Err(invalid("snd_nxt", "outside the send buffers"));
    }
    let unsent = send.bytes.split_off(sent);

    let state = ConnState {
        local,
        peer,
        state,
        negotiated: Negotiated {
            sack: tcp_flags & TCPI_OPT_SACK != 0,
            timestamps,
            wscale,
            mss_clamp: be16(si, field::RCV_MSS),
        },
        timestamp: if timestamps {
            be32(si, field::TS_GEN)
        } else {
            0
        },
        captured_at_ms: if timestamps {
            be32(si, field::EXT_TS_CLOCK)
        } else {
            0
        },
        recv_seq,
        send_seq,
        window: RepairWindow {
            snd_wl1: be32(si, field::EXT_SND_WL1),
            snd_wnd: be32(si, field::SND_WND),
            max_window: be32(si, field::EXT_MAX_WINDOW),
            rcv_wnd: be32(si, field::RCV_WND),
            rcv_wup: be32(si, field::EXT_RCV_WUP),
        },
        // TCPCP's format has no congestion window: the restored socket starts with the
        // kernel's initial window.
        snd_cwnd: 0,
        recv_queue: recv.bytes,
        unacked: send.bytes,
        unsent,
        options: SocketOptions {
            nodelay: nonagle & NONAGLE_NODELAY != 0,
            cork: nonagle & NONAGLE_CORK != 0,
            keepalive: sk_flags & SK_KEEPOPEN != 0,
            reuseaddr: sk_flags & SK_REUSEADDR != 0,
            keepidle: u32::from(be16(si, field::TCP_KEEPIDLE)),
            keepintvl: u32::from(be16(si, field::TCP_KEEPINTVL)),
            keepcnt: u32::from(si[field::TCP_KEEPCNT]),
            user_timeout: be32(si, field::EXT_USER_TIMEOUT),
            sndbuf: be32(si, field::SK_SNDBUF),
            rcvbuf: be32(si, field::SK_RCVBUF),
            mark: be32(si, field::EXT_MARK),
            priority: be32(si, field::SK_PRIORITY),
            linger: Linger {
                on: sk_flags & SK_LINGER != 0,
                seconds: be32(si, field::SK_LINGER),
            },
            tclass: if v6 {
                si[field::EXT_TCLASS]
            } else {
                si[field::IP_TOS]
            },
            hop_limit,
        },
    };
    // The core's own checks (state, window scales, MSS, ports, addresses, windows, FINs):
    // the same refusals as its state blob, from the same code.
    ConnState::from_bytes(&state.to_bytes()?)?;
    Ok(SocketInfo {
        fd: be32(si, field::FD),
        state,
    })
}

/// Bytes the buffers of one queue take.
fn queue_len(bytes: usize) -> usize {
    let full = bytes / SKB_CHUNK;
    let last = bytes % SKB_CHUNK;
    full * (SKB_HDR_LEN + SKB_CHUNK)
        + if last > 0 {
            SKB_HDR_LEN + padded(last)
        } else {
            0
        }
}

fn socket_len(state: &ConnState) -> usize {
    SI_HDR_LEN
        + EXT_LEN
        + queue_len(state.unacked.len() + state.unsent.len())
        + queue_len(state.recv_queue.len())
}

/// Length of the buffer [`emit`] writes for `sockets`.
pub fn buffer_len(sockets: &[SocketInfo]) -> usize {
    TOTAL_HDR_LEN + sockets.iter().map(|s| socket_len(&s.state)).sum::<usize>()
}

/// Writes `sockets` as a TCP-SI buffer into the start of `out` (at least [`buffer_len`] bytes,
/// zero-filled by the caller or not: every byte is written) and returns its length.
pub fn emit(sockets: &[SocketInfo], out: &mut [u8]) -> Result<usize, SiError> {
    let total = buffer_len(sockets);
    if out.len() < total {
        return Err(SiError::Unrepresentable {
            field: "buffer",
            reason: "output buffer too small",
        });
    }
    let words = u32::try_from(total / 4).map_err(|_| SiError::Unrepresentable {
        field: "total_si_length",
        reason: "buffer above 16 GiB",
    })?;
    let count = u16::try_from(sockets.len()).map_err(|_| SiError::Unrepresentable {
        field: "si_cnt",
        reason: "more than 65535 sockets",
    })?;
    if count == 0 {
        return Err(SiError::Unrepresentable {
            field: "si_cnt",
            reason: "no socket",
        });
    }
    let out = &mut out[..total];
    out.fill(0);
    put32(out, 0, words);
    out[4] = MAJOR;
    out[5] = MINOR;
    put16(out, 6, count);
    let mut at = TOTAL_HDR_LEN;
    for socket in sockets {
        let len = socket_len(&socket.state);
        emit_socket(socket, &mut out[at..at + len])?;
        at += len;
    }
    Ok(total)
}

/// The buffer as a new vector.
pub fn to_bytes(sockets: &[SocketInfo]) -> Result<Vec<u8>, SiError> {
    let mut out = vec![0; buffer_len(sockets)];
    emit(sockets, &mut out)?;
    Ok(out)
}

fn fits<T: TryFrom<u32>>(value: u32, field: &'static str) -> Result<T, SiError> {
    T::try_from(value).map_err(|_| SiError::Unrepresentable {
        field,
        reason: "value above the field's width",
    })
}

fn emit_socket(socket: &SocketInfo, si: &mut [u8]) -> Result<(), SiError> {
    let s = &socket.state;
    let o = &s.options;
    let v6 = match (s.local.ip(), s.peer.ip()) {
        (IpAddr::V6(local), IpAddr::V6(peer)) => {
            si[field::ADDR..field::ADDR + 16].copy_from_slice(&local.octets());
            si[field::ADDR + 16..field::ADDR + 32].copy_from_slice(&peer.octets());
            true
        }
        (IpAddr::V4(local), IpAddr::V4(peer)) => {
            si[field::ADDR..field::ADDR + 4].copy_from_slice(&local.octets());
            si[field::ADDR + 4..field::ADDR + 8].copy_from_slice(&peer.octets());
            false
        }
        _ => {
            return Err(SiError::Unrepresentable {
                field: "id",
                reason: "local and peer addresses of different families",
            });
        }
    };
    let words = u32::try_from(si.len() / 4).map_err(|_| SiError::Unrepresentable {
        field: "si_length",
        reason: "socket above 16 GiB",
    })?;
    put32(si, field::SI_LENGTH, words);
    put32(si, field::FD, socket.fd);
    si[field::IP_VERSION] = if v6 { 6 } else { 4 };
    put16(si, field::SPORT, s.local.port());
    put16(si, field::DPORT, s.peer.port());

    let n = &s.negotiated;
    let mut tcp_flags = 0;
    if n.timestamps {
        tcp_flags |= TCPI_OPT_TIMESTAMPS;
    }
    if n.sack {
        tcp_flags |= TCPI_OPT_SACK;
    }
    if let Some((snd, rcv)) = n.wscale {
        tcp_flags |= TCPI_OPT_WSCALE;
        si[field::SND_WSCALE] = snd;
        si[field::RCV_WSCALE] = rcv;
    }
    si[field::TCP_FLAGS] = tcp_flags;
    // TCP_REPAIR knows one MSS, the clamp; both fields carry it (snd_mss is ignored on read).
    put16(si, field::SND_MSS, n.mss_clamp);
    put16(si, field::RCV_MSS, n.mss_clamp);

    si[field::STATE] = s.state as u8;
    put32(
        si,
        field::SND_NXT,
        s.send_seq.wrapping_add(s.unacked.len() as u32),
    );
    put32(si, field::RCV_NXT, s.recv_seq);
    put32(si, field::SND_WND, s.window.snd_wnd);
    put32(si, field::RCV_WND, s.window.rcv_wnd);
    // ts_recent cannot be read with TCP_REPAIR: 0, TCPCP2's "none".
    put32(si, field::TS_RECENT, 0);
    put32(
        si,
        field::TS_GEN,
        if n.timestamps { s.timestamp } else { 0 },
    );

    let mut sk_flags = 0;
    if o.reuseaddr {
        sk_flags |= SK_REUSEADDR;
    }
    if o.keepalive {
        sk_flags |= SK_KEEPOPEN;
    }
    if o.linger.on {
        sk_flags |= SK_LINGER;
    }
    si[field::SK_FLAGS] = sk_flags;
    put32(si, field::SK_PRIORITY, o.priority);
    put32(si, field::SK_SNDBUF, o.sndbuf);
    put32(si, field::SK_RCVBUF, o.rcvbuf);
    put32(si, field::SK_LINGER, o.linger.seconds);
    if o.hop_limit == 0 {
        si[field::IP_FLAGS] = IP_DEFAULT_HOPS;
    }
    si[field::IP_HOPS] = o.hop_limit;
    if !v6 {
        si[field::IP_TOS] = o.tclass;
    }
    let mut nonagle = 0;
    if o.nodelay {
        nonagle |= NONAGLE_NODELAY;
    }
    if o.cork {
        nonagle |= NONAGLE_CORK;
    }
    si[field::TCP_NONAGLE] = nonagle;
    si[field::TCP_KEEPCNT] = fits::<u8>(o.keepcnt, "keepcnt")?;
    put16(
        si,
        field::TCP_KEEPIDLE,
        fits::<u16>(o.keepidle, "keepidle")?,
    );
    put16(
        si,
        field::TCP_KEEPINTVL,
        fits::<u16>(o.keepintvl, "keepintvl")?,
    );

    si[field::EXT_TYPE] = EXT_TYPE;
    si[field::EXT_VERSION] = EXT_VERSION;
    put16(si, field::EXT_LENGTH, (EXT_LEN / 4) as u16);
    put32(si, field::EXT_SND_WL1, s.window.snd_wl1);
    put32(si, field::EXT_MAX_WINDOW, s.window.max_window);
    put32(si, field::EXT_RCV_WUP, s.window.rcv_wup);
    put32(
        si,
        field::EXT_TS_CLOCK,
        if n.timestamps { s.captured_at_ms } else { 0 },
    );
    put32(si, field::EXT_USER_TIMEOUT, o.user_timeout);
    put32(si, field::EXT_MARK, o.mark);
    if v6 {
        si[field::EXT_TCLASS] = o.tclass;
    }

    let at = emit_queue(
        si,
        SI_HDR_LEN + EXT_LEN,
        SKB_SND,
        s.send_seq,
        [&s.unacked, &s.unsent],
    );
    let at = emit_queue(
        si,
        at,
        SKB_RCV,
        s.recv_seq.wrapping_sub(s.recv_queue.len() as u32),
        [&s.recv_queue, &[]],
    );
    debug_assert_eq!(at, si.len());
    Ok(())
}

/// Writes the queue made of `parts` (one sequence space: the send queue is its unacked then its
/// unsent bytes, and a buffer may straddle them) as buffers of at most [`SKB_CHUNK`] bytes.
/// Returns where the next byte goes.
fn emit_queue(si: &mut [u8], mut at: usize, kind: u8, mut seq: u32, parts: [&[u8]; 2]) -> usize {
    let total = parts[0].len() + parts[1].len();
    let mut off = 0;
    while off < total {
        let len = (total - off).min(SKB_CHUNK);
        si[at + field::SKB_TYPE] = kind;
        put16(si, at + field::SKB_LENGTH, len as u16);
        si[at + field::SKB_FLAGS] = SKB_FLAG_ACK;
        put32(si, at + field::SKB_SEQ, seq);
        let mut to = at + SKB_HDR_LEN;
        let (mut from, end) = (off, off + len);
        for (part, part_start) in [(parts[0], 0), (parts[1], parts[0].len())] {
            let (lo, hi) = (from.max(part_start), end.min(part_start + part.len()));
            if lo < hi {
                si[to..to + hi - lo].copy_from_slice(&part[lo - part_start..hi - part_start]);
                to += hi - lo;
                from = hi;
            }
        }
        at += SKB_HDR_LEN + padded(len);
        seq = seq.wrapping_add(len as u32);
        off = end;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection as this kernel reports one (IPv6, ESTABLISHED, Linux option defaults), with
    /// `recv`, `unacked` and `unsent` queued bytes.
    pub(crate) fn sample(recv: usize, unacked: usize, unsent: usize) -> SocketInfo {
        SocketInfo {
            fd: 7,
            state: ConnState {
                local: "[fd00:d51::2]:8080".parse().unwrap(),
                peer: "[fd00:d51::1]:41000".parse().unwrap(),
                state: TcpState::Established,
                negotiated: Negotiated {
                    sack: true,
                    timestamps: true,
                    wscale: Some((7, 7)),
                    mss_clamp: 1428,
                },
                timestamp: 0x1234_5679,
                captured_at_ms: 0x0bad_cafe,
                recv_seq: 0xffff_f000,
                send_seq: 0x0000_0100,
                window: RepairWindow {
                    snd_wl1: 0xffff_e000,
                    snd_wnd: 65_536,
                    max_window: 65_536,
                    rcv_wnd: 65_483,
                    rcv_wup: 0xffff_f000,
                },
                snd_cwnd: 0,
                recv_queue: (0..recv).map(|i| i as u8).collect(),
                unacked: (0..unacked).map(|i| (i * 3) as u8).collect(),
                unsent: (0..unsent).map(|i| (i * 5) as u8).collect(),
                options: SocketOptions {
                    nodelay: true,
                    keepalive: true,
                    keepidle: 7200,
                    keepintvl: 75,
                    keepcnt: 9,
                    sndbuf: 16_384,
                    rcvbuf: 131_072,
                    hop_limit: 64,
                    tclass: 0x20,
                    ..SocketOptions::default()
                },
            },
        }
    }

    fn ipv4(mut s: SocketInfo) -> SocketInfo {
        s.state.local = "192.0.2.2:8080".parse().unwrap();
        s.state.peer = "192.0.2.1:41000".parse().unwrap();
        s
    }

    #[test]
    fn round_trips_every_shape() {
        for socket in [
            sample(0, 0, 0),
            sample(3, 5, 7),
            // Found by the fuzzer: never-sent bytes without unacknowledged ones.
            sample(0, 0, 3),
            sample(SKB_CHUNK + 1, SKB_CHUNK - 1, 3),
            sample(200_000, 70_000, 140_001),
            ipv4(sample(10, 0, 0)),
        ] {
            let bytes = to_bytes(std::slice::from_ref(&socket)).unwrap();
            assert_eq!(bytes.len() % 4, 0);
            assert_eq!(declared_len(&bytes), Some(bytes.len() as u64));
            assert_eq!(parse(&bytes).unwrap(), vec![socket]);
        }
        let many: Vec<SocketInfo> = (0..100)
            .map(|i| {
                let mut s = sample(i, i * 2, i % 3);
                s.fd = i as u32 + 3;
                s.state.peer.set_port(40_000 + i as u16);
                s
            })
            .collect();
        assert_eq!(parse(&to_bytes(&many).unwrap()).unwrap(), many);
    }

    /// Golden bytes: the header of an empty IPv6 socket, field by field at the C offsets.
    #[test]
    fn layout_matches_the_c_structs() {
        let bytes = to_bytes(&[sample(0, 0, 0)]).unwrap();
        assert_eq!(bytes.len(), TOTAL_HDR_LEN + SI_HDR_LEN + EXT_LEN);
        assert_eq!(&bytes[..8], &[0, 0, 0, 51, 0, 1, 0, 1]);
        let si = &bytes[8..];
        assert_eq!(&si[0..8], &[0, 0, 0, 49, 0, 0, 0, 7]);
        assert_eq!(si[8], 6);
        assert_eq!(&si[12..14], &[0xfd, 0x00]);
        assert_eq!(&si[48..52], &[0x1f, 0x90, 0xa0, 0x28]);
        assert_eq!(&si[52..60], &[7, 7, 7, 0, 0x05, 0x94, 0x05, 0x94]);
        assert_eq!(si[60], 1);
        assert_eq!(&si[64..72], &[0, 0, 1, 0, 0xff, 0xff, 0xf0, 0]);
        assert_eq!(&si[84..88], &[0x12, 0x34, 0x56, 0x79]);
        assert_eq!(si[88], SK_KEEPOPEN);
        assert_eq!((si[108], si[109]), (0, 64));
        assert_eq!(&si[156..164], &[1, 9, 0, 0, 0x1c, 0x20, 0, 75]);
        assert_eq!(&si[164..168], &[0xd5, 1, 0, 8]);
        assert_eq!(si[192], 0x20);
    }

    fn refused(bytes: &[u8]) -> SiError {
        parse(bytes).expect_err("malformed buffer accepted")
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = to_bytes(&[sample(5, 6, 7)]).unwrap();
        for len in 0..bytes.len() {
            refused(&bytes[..len]);
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 4]);
        refused(&longer);
    }

    #[test]
    fn each_field_check_refuses() {
        let good = to_bytes(&[sample(5, 6, 7)]).unwrap();
        let si = TOTAL_HDR_LEN;
        let cases: &[(&str, usize, u8)] = &[
            ("major", 4, 1),
            ("minor 0 (no extension)", 5, 0),
            ("si_cnt 0", 7, 0),
            ("si_cnt 2", 7, 2),
            ("si_length short", si + 3, 10),
            ("ip_version", si + field::IP_VERSION, 5),
            ("scope_id", si + field::V6_SCOPE + 3, 1),
            ("ECN", si + field::TCP_FLAGS, 7 | 8),
            ("wscale above 14", si + field::SND_WSCALE, 15),
            ("mss below 8", si + field::RCV_MSS, 0),
            ("state LISTEN", si + field::STATE, 10),
            ("state TIME_WAIT", si + field::STATE, 6),
            ("sk flags", si + field::SK_FLAGS, 8),
            ("ip flags", si + field::IP_FLAGS, 2),
            ("nonagle", si + field::TCP_NONAGLE, 4),
            ("port 0", si + field::SPORT, 0),
            ("extension type", si + field::EXT_TYPE, 0),
            ("extension version", si + field::EXT_VERSION, 2),
            ("extension length", si + field::EXT_LENGTH + 1, 7),
            ("extension flags", si + field::EXT_FLAGS, 1),
            ("skb type", si + SI_HDR_LEN + EXT_LEN, 3),
            ("skb length 0", si + SI_HDR_LEN + EXT_LEN + 3, 0),
            ("skb seq gap", si + SI_HDR_LEN + EXT_LEN + 15, 0x55),
            ("snd_nxt", si + field::SND_NXT, 0x80),
            ("rcv_nxt", si + field::RCV_NXT + 3, 0x01),
            (
                "max_window below snd_wnd",
                si + field::EXT_MAX_WINDOW + 1,
                0,
            ),
        ];
        for &(what, at, value) in cases {
            let mut bad = good.clone();
            // Two-byte fields set to zero: both bytes.
            if what == "port 0" || what == "mss below 8" {
                bad[at + 1] = 0;
            }
            bad[at] = value;
            assert_ne!(bad, good, "{what}: no change");
            let err = refused(&bad);
            eprintln!("{what}: {err}");
        }
        let mut no_wscale = good.clone();
        no_wscale[si + field::TCP_FLAGS] &= !TCPI_OPT_WSCALE;
        refused(&no_wscale);
        let mut ipv4_options = to_bytes(&[ipv4(sample(0, 0, 0))]).unwrap();
        ipv4_options[si + field::IP_OPT_LEN] = 4;
        refused(&ipv4_options);
    }

    #[test]
    fn unrepresentable_states_are_not_written() {
        let mut s = sample(0, 0, 0);
        s.state.options.keepidle = 70_000;
        assert!(matches!(
            to_bytes(&[s]),
            Err(SiError::Unrepresentable { .. })
        ));
        assert!(to_bytes(&[]).is_err());
    }

    /// Writes the fuzz target's seeds (`TCPCP_WRITE_SEEDS=dir cargo test -p tcpcp-shim --lib
    /// write_fuzz_seeds`); without the variable it checks that the seeds parse.
    #[test]
    fn write_fuzz_seeds() {
        let seeds = [
            ("v6_empty", to_bytes(&[sample(0, 0, 0)]).unwrap()),
            ("v6_queues", to_bytes(&[sample(40, 30, 20)]).unwrap()),
            ("v4_recv", to_bytes(&[ipv4(sample(9, 0, 0))]).unwrap()),
            (
                "three",
                to_bytes(&[sample(1, 0, 0), sample(0, 2, 0), ipv4(sample(0, 0, 3))]).unwrap(),
            ),
        ];
        for (name, bytes) in &seeds {
            parse(bytes).unwrap();
            if let Some(dir) = std::env::var_os("TCPCP_WRITE_SEEDS") {
                let dir = std::path::Path::new(&dir);
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}
