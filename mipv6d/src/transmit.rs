//! What the protocol cores hand to the IO shell: whole IPv6 datagrams.

use std::net::Ipv6Addr;

use crate::wire::MhType;

/// What a queued datagram carries (for logs, statistics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// A Mobility Header message of this type.
    Mobility(MhType),
    /// An ICMPv6 Parameter Problem about a received Mobility Header.
    ParameterProblem,
}

/// A datagram to send: complete IPv6 packet (header, RH2/HAO, upper layer, checksums set).
///
/// The shell sends it with `IPV6_HDRINCL` (or a packet socket), because kernels without MIPv6
/// refuse RH2/HAO from normal sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// IPv6 source address of the packet.
    pub source: Ipv6Addr,
    /// IPv6 destination address of the packet (the next hop to route to).
    pub destination: Ipv6Addr,
    /// What it carries.
    pub kind: TransmitKind,
    /// The packet bytes, starting with the IPv6 header.
    pub packet: Vec<u8>,
}
