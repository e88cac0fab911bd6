//! The captured state of one TCP connection: everything needed to rebuild it elsewhere.
//!
//! Sequence numbers are the kernel's, without the FINs: a FIN is implied by [`TcpState`]. So
//! `recv_seq` is the sequence number just after the last data byte received (the peer's FIN, if
//! received, sits at `recv_seq`) and `send_seq` is the sequence number of the first byte of the
//! send queue (our FIN, if sent, follows the last queued byte). All arithmetic on them wraps.

use std::net::SocketAddr;

use super::sys::RepairWindow;

/// TCP states that can be captured and restored (values of `tcpi_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    /// Both directions open.
    Established = 1,
    /// We sent a FIN that is not acknowledged yet.
    FinWait1 = 4,
    /// Our FIN is acknowledged; the peer may still send.
    FinWait2 = 5,
    /// The peer sent a FIN; we may still send.
    CloseWait = 8,
    /// Both FINs sent; ours is not acknowledged yet.
    LastAck = 9,
    /// Simultaneous close: both FINs sent, ours not acknowledged.
    Closing = 11,
}

impl TcpState {
    /// The state of a `tcpi_state` value, if it is one that can be moved.
    pub fn from_kernel(value: u8) -> Option<TcpState> {
        Some(match value {
            1 => TcpState::Established,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            11 => TcpState::Closing,
            _ => return None,
        })
    }

    /// Whether we have sent (queued) our FIN.
    pub fn fin_sent(self) -> bool {
        matches!(
            self,
            TcpState::FinWait1 | TcpState::FinWait2 | TcpState::LastAck | TcpState::Closing
        )
    }

    /// Whether our FIN has been acknowledged.
    pub fn fin_acked(self) -> bool {
        self == TcpState::FinWait2
    }

    /// Whether the peer's FIN has been received.
    pub fn fin_received(self) -> bool {
        matches!(
            self,
            TcpState::CloseWait | TcpState::LastAck | TcpState::Closing
        )
    }
}

/// TCP options negotiated in the handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// SACK permitted.
    pub sack: bool,
    /// Timestamps (RFC 7323).
    pub timestamps: bool,
    /// Window scaling: (the peer's shift, our shift), each ≤ 14.
    pub wscale: Option<(u8, u8)>,
    /// Maximum segment size clamp (the peer's announced MSS, bounded by ours).
    pub mss_clamp: u16,
}

/// `SO_LINGER` as set by the application.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Linger {
    /// `l_onoff`.
    pub on: bool,
    /// `l_linger`, seconds.
    pub seconds: u32,
}

/// Socket options the application may have set, restored on the new socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOptions {
    /// `TCP_NODELAY`.
    pub nodelay: bool,
    /// `TCP_CORK`.
    pub cork: bool,
    /// `SO_KEEPALIVE`.
    pub keepalive: bool,
    /// `SO_REUSEADDR` (repair mode clobbers it, so it is restored explicitly).
    pub reuseaddr: bool,
    /// `TCP_KEEPIDLE`, seconds.
    pub keepidle: u32,
    /// `TCP_KEEPINTVL`, seconds.
    pub keepintvl: u32,
    /// `TCP_KEEPCNT`.
    pub keepcnt: u32,
    /// `TCP_USER_TIMEOUT`, milliseconds (0: system default).
    pub user_timeout: u32,
    /// `SO_SNDBUF` as the kernel reports it (twice what was set).
    pub sndbuf: u32,
    /// `SO_RCVBUF` as the kernel reports it.
    pub rcvbuf: u32,
    /// `SO_MARK`.
    pub mark: u32,
    /// `SO_PRIORITY`.
    pub priority: u32,
    /// `SO_LINGER`.
    pub linger: Linger,
    /// `IPV6_TCLASS` or `IP_TOS`.
    pub tclass: u8,
    /// `IPV6_UNICAST_HOPS` or `IP_TTL` (the effective value).
    pub hop_limit: u8,
}

/// A TCP connection as captured under `TCP_REPAIR`: the parsed form of a state blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnState {
    /// Our address (the service address) and port.
    pub local: SocketAddr,
    /// The peer's address and port.
    pub peer: SocketAddr,
    /// Connection state.
    pub state: TcpState,
    /// Negotiated options.
    pub negotiated: Negotiated,
    /// `TCP_TIMESTAMP`: our timestamp clock, meaningful only with timestamps.
    pub timestamp: u32,
    /// `CLOCK_REALTIME` in milliseconds, modulo 2^32, when `timestamp` was read: the acceptor
    /// advances the clock by the time the handoff took (only with timestamps).
    pub captured_at_ms: u32,
    /// Sequence number after the last data byte received (FIN excluded).
    pub recv_seq: u32,
    /// Sequence number of the first byte of the send queue (FIN excluded).
    pub send_seq: u32,
    /// Window state from `TCP_REPAIR_WINDOW`.
    pub window: RepairWindow,
    /// Congestion window, segments (`tcpi_snd_cwnd`); 0 = unknown. The acceptor's socket starts
    /// with it when the `restore_cwnd` program is attached (see docs/tcpstate.md).
    pub snd_cwnd: u32,
    /// Bytes received and not yet read by the application.
    pub recv_queue: Vec<u8>,
    /// Bytes sent but not acknowledged.
    pub unacked: Vec<u8>,
    /// Bytes written by the application but never sent.
    pub unsent: Vec<u8>,
    /// Application socket options.
    pub options: SocketOptions,
}

/// `CLOCK_REALTIME` in milliseconds, modulo 2^32 (wraps every 49 days; only differences of a
/// few seconds are used).
pub fn realtime_ms() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u32)
        .unwrap_or(0)
}

impl ConnState {
    /// Sequence number just after the last byte of the send queue (where our FIN goes).
    pub fn send_end(&self) -> u32 {
        self.send_seq
            .wrapping_add(self.unacked.len() as u32)
            .wrapping_add(self.unsent.len() as u32)
    }

    /// The kernel's `rcv_nxt` (FIN included).
    pub fn rcv_nxt(&self) -> u32 {
        self.recv_seq
            .wrapping_add(u32::from(self.state.fin_received()))
    }

    /// The flow key of the peer's packets (peer → us), as the freeze map wants it.
    pub fn inbound_key(&self) -> handoff_common::FlowKey {
        handoff_common::FlowKey::new(self.peer, self.local)
    }
}
