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

/// Value of an entry of the freeze map: what to do with the packets of a frozen flow.
///
/// Only dropping exists so far; the value is a word so that later actions (hand the packet to
/// userspace for replay) fit without changing the map layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreezeEntry {
    /// One of the `FREEZE_ACTION_*` constants.
    pub action: u32,
}

/// Drop every packet of the flow (the kernel never sees it, so the socket under repair is not
/// disturbed and the peer simply retransmits later).
pub const FREEZE_ACTION_DROP: u32 = 0;

/// Name of the freeze program in the eBPF object.
pub const FREEZE_PROGRAM: &str = "freeze";
/// Name of the freeze map (`FlowKey` → `FreezeEntry`) in the eBPF object.
pub const FREEZE_FLOWS_MAP: &str = "FREEZE_FLOWS";
/// Name of the freeze program's per-CPU counter array in the eBPF object.
pub const FREEZE_STATS_MAP: &str = "FREEZE_STATS";
/// Capacity of the freeze map: the most connections that can be frozen at once.
pub const FREEZE_FLOWS_CAPACITY: u32 = 65_536;

/// Indices of the freeze program's per-CPU counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreezeCounter {
    /// TCP packets looked up in the freeze map and passed on.
    Passed = 0,
    /// TCP packets dropped because their flow is frozen.
    Dropped = 1,
    /// Packets that are not TCP over IPv4/IPv6 or whose headers could not be read; passed
    /// untouched.
    Skipped = 2,
}

impl FreezeCounter {
    /// Number of counters (the length of the per-CPU array).
    pub const COUNT: u32 = FreezeCounter::Skipped as u32 + 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are #[repr(C)], made of integers and byte arrays without padding, and valid
    // for every bit pattern.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FreezeEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_key_has_no_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 36);
        assert_eq!(core::mem::size_of::<FreezeEntry>(), 4);
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
}
