//! Types shared by the eBPF programs (`handoff-ebpf`) and userspace (`handoff-user`).
//!
//! Everything here is `#[repr(C)]` with no implicit padding, because the same bytes are read by
//! the kernel-side programs and written by userspace through BPF maps.
#![no_std]

use core::net::{IpAddr, SocketAddr};

/// A TCP connection as the eBPF programs see it in one packet: source and destination address
/// and port, in the direction the packet travels.
///
/// Addresses are IPv6; IPv4 connections use IPv4-mapped addresses (`::ffff:a.b.c.d`) so that one
/// map serves both families. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address of the packet.
    pub src_addr: [u8; 16],
    /// Destination address of the packet.
    pub dst_addr: [u8; 16],
    /// Source TCP port.
    pub src_port: u16,
    /// Destination TCP port.
    pub dst_port: u16,
}

impl FlowKey {
    /// The key of packets sent from `src` to `dst` (IPv4 addresses in their IPv4-mapped form).
    pub const fn new(src: SocketAddr, dst: SocketAddr) -> FlowKey {
        FlowKey {
            src_addr: ip_bytes(src.ip()),
            dst_addr: ip_bytes(dst.ip()),
            src_port: src.port(),
            dst_port: dst.port(),
        }
    }

    /// The key of packets travelling the other way on the same connection.
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

const fn ip_bytes(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) of an IPv4 address, as stored in a [`FlowKey`].
pub const fn ipv4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// An IPv6 address as the programs store it (network byte order).
pub type Addr = [u8; 16];

/// What a node does with the packets of one connection: the value of the `FLOWS` map, keyed by
/// the connection's [`FlowKey`] as its packets arrive. One map, so that activation switches a
/// connection from frozen to redirected in one update (DESIGN.md §4, phase 7) and the data path
/// needs one lookup per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// `FLOW_FROZEN` or `FLOW_REDIRECT`.
    pub action: u32,
    /// For `FLOW_REDIRECT`: the member that owns the connection now; the packet is encapsulated
    /// (IPv6-in-IPv6) from this node's address to it (path B/D).
    pub node: Addr,
    /// For `FLOW_FROZEN` at an acceptor: the congestion window (segments) the donor's socket
    /// had, which the `restore_cwnd` program gives the socket re-created for this connection
    /// when it connects; 0 leaves the kernel's initial window.
    pub cwnd: u32,
    /// `FLOW_LEASED`, `FLOW_BOUNCED`.
    pub flags: u32,
}

/// `FlowEntry::flags`, for `FLOW_FROZEN`: the freeze holds only while the agent's lease runs
/// (the `LEASE` map). An acceptor's freezes are leased: the socket they protect lives in
/// handoffd, and once handoffd is gone (its lease lapsed) the flow's packets reach the stack,
/// which answers them with a reset when no socket is left, rather than vanish.
pub const FLOW_LEASED: u32 = 1;
/// `FlowEntry::flags`, for `FLOW_REDIRECT`, set by the programs: a packet of the flow came back
/// tunnelled from the very member it is redirected to, which therefore has no socket for it and
/// points it here. The packet is dropped (it would go back and forth until its hop limit); the
/// flag tells handoffd (a donor whose handoff to that member has no known outcome: nothing of
/// the connection is live there). Rewriting the entry clears it.
pub const FLOW_BOUNCED: u32 = 2;

/// Drop every packet of the flow (its socket is under TCP_REPAIR: the kernel must not see the
/// packet, and the peer simply retransmits later).
pub const FLOW_FROZEN: u32 = 0;
/// Encapsulate every packet of the flow to `FlowEntry::node`.
pub const FLOW_REDIRECT: u32 = 1;
/// Like `FLOW_FROZEN`, but hand each packet to userspace first (`FROZEN_PACKETS`), so that a
/// handoff can replay it on the acceptor instead of waiting for the peer to retransmit it.
pub const FLOW_QUEUED: u32 = 2;

/// Header of a packet handed to userspace by a `FLOW_QUEUED` entry; the packet itself (the
/// Ethernet frame, `len` bytes) follows it in the perf event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedPacket {
    /// The flow the packet belongs to.
    pub flow: FlowKey,
    /// Length of the frame that follows.
    pub len: u32,
}

/// Key of a route-optimized binding at a server: the client (`peer`) and the home address (DSA)
/// it has bound to this node's care-of address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BindingKey {
    /// The client (correspondent node).
    pub peer: Addr,
    /// The home address (a DSA this node serves).
    pub home: Addr,
}

/// A care-of address: the value of every binding map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CareOf {
    /// The care-of address.
    pub addr: Addr,
}

/// Per-node settings of the programs (the single entry of the `CONFIG` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's own address: tunnel endpoint, and care-of address of a server node.
    pub local: Addr,
    /// The home agent's address (reverse tunnel destination of a server node).
    pub home_agent: Addr,
    /// `NODE_*` flags.
    pub flags: u32,
}

/// Server egress: packets from a DSA to a peer without a route-optimized binding are tunnelled
/// to the home agent (otherwise they are sent as they are).
pub const NODE_REVERSE_TUNNEL: u32 = 1;
/// The node is drained (`handoff drain`, until `handoff undrain`). handoffd's own state, kept
/// here so that it lasts as long as the rest of the data path — across handoffd restarts; the
/// programs ignore it.
pub const NODE_DRAINED: u32 = 2;

/// A Home Address option without a matching binding, reported by the correspondent's ingress
/// program so that mipv6d sends a Binding Error with status 1 (RFC 6275 §9.3.1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingErrorEvent {
    /// The home address in the option.
    pub home: Addr,
    /// The packet's source address (the care-of address the sender claims).
    pub care_of: Addr,
    /// The packet's destination address.
    pub dst: Addr,
}

/// Names of the programs in the eBPF object.
pub mod program {
    /// Drops packets of frozen flows (TC ingress).
    pub const FREEZE: &str = "freeze";
    /// Server node ingress: decapsulation, RH2 restore, freeze, per-connection redirect.
    pub const NODE_INGRESS: &str = "node_ingress";
    /// Server node egress: Home Address option for route-optimized peers, or reverse tunnel.
    pub const NODE_EGRESS: &str = "node_egress";
    /// Home agent ingress: tunnel to the registered care-of address; reverse-tunnel decap.
    pub const HA_INGRESS: &str = "ha_ingress";
    /// Correspondent (client) egress: RH2 for bound home addresses.
    pub const CN_EGRESS: &str = "cn_egress";
    /// Correspondent (client) ingress: Home Address option validation and removal.
    pub const CN_INGRESS: &str = "cn_ingress";
    /// Socket operations (cgroup): gives a restored connection its donor's congestion window.
    pub const RESTORE_CWND: &str = "restore_cwnd";
}

/// Names of the maps in the eBPF object.
pub mod map {
    /// `FlowKey` → `FlowEntry`: frozen and redirected connections.
    pub const FLOWS: &str = "FLOWS";
    /// Perf event array: `QueuedPacket` + frame, for `FLOW_QUEUED` flows.
    pub const FROZEN_PACKETS: &str = "FROZEN_PACKETS";
    /// `Addr` (a DSA served here) → `u32` (reserved, 0).
    pub const LOCAL_HOMES: &str = "LOCAL_HOMES";
    /// `BindingKey` → `CareOf`: server-side route-optimized bindings.
    pub const RO_BINDINGS: &str = "RO_BINDINGS";
    /// `Addr` (home address) → `CareOf`: the home agent's binding cache.
    pub const HA_BINDINGS: &str = "HA_BINDINGS";
    /// `Addr` (home address) → `CareOf`: the correspondent's binding cache.
    pub const CN_BINDINGS: &str = "CN_BINDINGS";
    /// Array of one `NodeConfig`.
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU `u64` counters indexed by `Counter`.
    pub const STATS: &str = "STATS";
    /// Ring buffer of `BindingErrorEvent`.
    pub const BINDING_ERRORS: &str = "BINDING_ERRORS";
    /// Array of one `u64`: `CLOCK_MONOTONIC` nanoseconds until which the agent (handoffd) is
    /// alive; it renews the lease while it runs. Leased freezes (`FLOW_LEASED`) lapse
    /// after it.
    pub const LEASE: &str = "LEASE";
    /// Array of one `u64`: the cookie of the network namespace whose sockets `restore_cwnd`
    /// acts on. Not pinned: it belongs to the process that attached the program.
    pub const NETNS_COOKIE: &str = "NETNS_COOKIE";
}

/// Capacity of the flow and binding maps: the most connections frozen or redirected at once,
/// and the most bindings.
pub const FLOW_MAP_CAPACITY: u32 = 65_536;

/// Indices of the programs' per-CPU counters: one per action and per drop reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// TCP packets looked up in the freeze map and passed on.
    Passed = 0,
    /// TCP packets dropped because their flow is frozen.
    Dropped,
    /// Packets none of the rules applies to (other protocols, unreadable headers); passed
    /// untouched.
    Skipped,
    /// IPv6-in-IPv6 packets addressed to this node, decapsulated.
    Decapsulated,
    /// Type 2 Routing Headers validated and removed, destination restored to the home address.
    Rh2Restored,
    /// Packets of connections owned by another member, encapsulated to it.
    Redirected,
    /// Home Address options inserted at a server's egress (source set to the care-of address).
    HaoInserted,
    /// Packets from a DSA tunnelled to the home agent.
    ReverseTunneled,
    /// Packets for a registered home address tunnelled by the home agent.
    HaTunneled,
    /// Type 2 Routing Headers inserted at a correspondent's egress.
    Rh2Inserted,
    /// Home Address options validated and removed at a correspondent's ingress.
    HaoAccepted,
    /// Mobility Header packets carrying an RH2 or a HAO, left to mipv6d's packet socket and
    /// dropped before the kernel (which has no MIPv6) answers them with an ICMP error.
    MobilityToDaemon,
    /// Dropped: Type 2 Routing Header malformed (length ≠ 2, segments left ≠ 1, truncated).
    DropRh2Malformed,
    /// Dropped: Type 2 Routing Header naming an address that is not a home address served here.
    DropRh2ForeignHome,
    /// Dropped: Destination Options with a Home Address option that is malformed (length ≠ 16,
    /// two of them, truncated, or an unknown option that must not be skipped).
    DropHaoMalformed,
    /// Dropped: Home Address option carrying a multicast address.
    DropHaoMulticast,
    /// Dropped: Home Address option without a binding (home address, care-of = source).
    DropHaoNoBinding,
    /// Dropped: no route to the new destination after encapsulation or rewrite.
    DropNoRoute,
    /// Dropped: the kernel refused to grow, shrink or rewrite the packet.
    DropRewriteFailed,
    /// A binding-error report was lost because the ring buffer was full.
    BindingErrorLost,
    /// Packets of `FLOW_QUEUED` flows handed to userspace (and dropped from the kernel's path).
    Queued,
    /// Restored sockets given their donor's congestion window (`FlowEntry::cwnd`) at connect.
    CwndApplied,
    /// Restored sockets whose congestion window the kernel refused to set (they keep the
    /// kernel's initial window).
    CwndFailed,
    /// TCP packets of a leased freeze let through to the stack because the agent's lease lapsed
    /// (handoffd died or hangs with the flow frozen for a handoff to this node).
    Lapsed,
    /// Dropped: a redirected packet came back tunnelled from the member it is redirected to
    /// (`FLOW_BOUNCED`).
    DropBounced,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 25] = [
        Counter::Passed,
        Counter::Dropped,
        Counter::Skipped,
        Counter::Decapsulated,
        Counter::Rh2Restored,
        Counter::Redirected,
        Counter::HaoInserted,
        Counter::ReverseTunneled,
        Counter::HaTunneled,
        Counter::Rh2Inserted,
        Counter::HaoAccepted,
        Counter::MobilityToDaemon,
        Counter::DropRh2Malformed,
        Counter::DropRh2ForeignHome,
        Counter::DropHaoMalformed,
        Counter::DropHaoMulticast,
        Counter::DropHaoNoBinding,
        Counter::DropNoRoute,
        Counter::DropRewriteFailed,
        Counter::BindingErrorLost,
        Counter::Queued,
        Counter::CwndApplied,
        Counter::CwndFailed,
        Counter::Lapsed,
        Counter::DropBounced,
    ];
    /// Number of counters (the length of the per-CPU array).
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Name for reports (`handoff status`, benchmarks, test failures).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::Dropped => "frozen_dropped",
            Counter::Skipped => "skipped",
            Counter::Decapsulated => "decapsulated",
            Counter::Rh2Restored => "rh2_restored",
            Counter::Redirected => "redirected",
            Counter::HaoInserted => "hao_inserted",
            Counter::ReverseTunneled => "reverse_tunneled",
            Counter::HaTunneled => "ha_tunneled",
            Counter::Rh2Inserted => "rh2_inserted",
            Counter::HaoAccepted => "hao_accepted",
            Counter::MobilityToDaemon => "mobility_to_daemon",
            Counter::DropRh2Malformed => "drop_rh2_malformed",
            Counter::DropRh2ForeignHome => "drop_rh2_foreign_home",
            Counter::DropHaoMalformed => "drop_hao_malformed",
            Counter::DropHaoMulticast => "drop_hao_multicast",
            Counter::DropHaoNoBinding => "drop_hao_no_binding",
            Counter::DropNoRoute => "drop_no_route",
            Counter::DropRewriteFailed => "drop_rewrite_failed",
            Counter::BindingErrorLost => "binding_error_lost",
            Counter::Queued => "queued",
            Counter::CwndApplied => "cwnd_applied",
            Counter::CwndFailed => "cwnd_failed",
            Counter::Lapsed => "lease_lapsed",
            Counter::DropBounced => "drop_bounced",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)], made of integers and byte arrays without padding, and valid
    // for every bit pattern.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::QueuedPacket {}
    unsafe impl aya::Pod for super::BindingKey {}
    unsafe impl aya::Pod for super::CareOf {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::BindingErrorEvent {}
}

/// Whether Binding Update sequence number `new` is greater than `last` modulo 2^16
/// (RFC 6275 §9.5.1). mipv6d orders Binding Updates by it; handoffd orders the bindings its
/// members announce.
pub fn sequence_greater(new: u16, last: u16) -> bool {
    (new.wrapping_sub(last) as i16) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_types_have_no_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<FlowKey>(), 36);
        assert_eq!(size_of::<FlowEntry>(), 28);
        assert_eq!(size_of::<QueuedPacket>(), 40);
        assert_eq!(size_of::<BindingKey>(), 32);
        assert_eq!(size_of::<CareOf>(), 16);
        assert_eq!(size_of::<NodeConfig>(), 36);
        assert_eq!(size_of::<BindingErrorEvent>(), 48);
    }

    #[test]
    fn counters_are_indexed_in_order() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index, "{}", counter.name());
        }
    }

    #[test]
    fn reversed_swaps_both_ends() {
        let key = FlowKey {
            src_addr: [1; 16],
            dst_addr: [2; 16],
            src_port: 3,
            dst_port: 4,
        };
        let back = key.reversed();
        assert_eq!(back.src_addr, [2; 16]);
        assert_eq!(back.dst_port, 3);
        assert_eq!(back.reversed(), key);
    }

    #[test]
    fn new_from_socket_addresses() {
        let key = FlowKey::new(
            "[fd00::1]:4000".parse().unwrap(),
            "192.0.2.2:80".parse().unwrap(),
        );
        assert_eq!(key.src_addr[15], 1);
        assert_eq!(key.dst_addr, ipv4_mapped([192, 0, 2, 2]));
        assert_eq!((key.src_port, key.dst_port), (4000, 80));
    }

    #[test]
    fn ipv4_mapped_form() {
        let mapped = core::net::Ipv6Addr::from(ipv4_mapped([192, 0, 2, 1]));
        assert_eq!(
            mapped.to_ipv4_mapped(),
            Some(core::net::Ipv4Addr::new(192, 0, 2, 1))
        );
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(sequence_greater(1, 0));
        assert!(sequence_greater(0, 0xffff));
        assert!(sequence_greater(0x7fff, 0));
        assert!(!sequence_greater(0x8000, 0));
        assert!(!sequence_greater(5, 5));
        assert!(!sequence_greater(4, 5));
        assert!(sequence_greater(0x8000, 0x0001));
    }
}
