//! Room for the headers the data path adds.
//!
//! A route-optimized packet grows by 24 bytes (RH2 from the client, Home Address option from the
//! server); a tunnelled one by 40 (home agent → node, node → node redirect, reverse tunnel). The
//! data path never adds both to one packet: an RH2 is removed before a packet is redirected. So
//! every packet that crosses a link of MTU `m` must leave the endpoint at most `m - 40` bytes
//! long.
//!
//! Choice: the server side clamps the MSS of the sockets it serves the DSA with (listening
//! sockets, and restored ones) to `m - 40 (IPv6) - 20 (TCP) - 40`. The clamp limits both the MSS
//! the server advertises — so the unmodified client sends small enough segments — and the
//! segments the server sends. Nothing is needed on clients, and no route MTU has to be kept in
//! sync with bindings that come and go. TCP options (timestamps) are taken out of the MSS by the
//! stack itself. The programs open room with `BPF_F_ADJ_ROOM_FIXED_GSO`, so GSO packets are
//! still cut into segments of the full MSS, each of which fits because of the clamp.

use std::{io, os::fd::AsFd};

use nix::sys::socket::{setsockopt, sockopt::TcpMaxSeg};

/// The most bytes the data path adds to a packet (an outer IPv6 header).
pub const MAX_GROWTH: u32 = 40;
const IPV6_HEADER: u32 = 40;
const TCP_HEADER: u32 = 20;

/// The MSS that keeps every packet of a connection within links of MTU `mtu` whatever the data
/// path adds to it.
pub const fn clamped_mss(mtu: u32) -> u32 {
    mtu.saturating_sub(IPV6_HEADER + TCP_HEADER + MAX_GROWTH)
}

/// Clamps the MSS of `socket` (a listening socket, before `listen`, or a restored one) for links
/// of MTU `mtu`.
pub fn clamp_mss(socket: &impl AsFd, mtu: u32) -> io::Result<()> {
    setsockopt(socket, TcpMaxSeg, &clamped_mss(mtu)).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_for_ethernet_leaves_room_for_a_tunnel() {
        assert_eq!(clamped_mss(1500), 1400);
        assert_eq!(clamped_mss(1500) + 20 + 40 + MAX_GROWTH, 1500);
        assert_eq!(clamped_mss(50), 0);
    }
}
