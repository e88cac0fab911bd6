//! Header layout and parsing shared by the programs: Ethernet → IPv4/IPv6 (with extension
//! headers) → TCP. Offsets are from the start of the Ethernet frame, as TC programs see it.

use aya_ebpf::programs::TcContext;
use handoff_common::{Addr, FlowKey, ipv4_mapped};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_MH: u8 = 135;
pub const IPV6_HLEN: usize = 40;
/// Offsets of the IPv6 header fields.
pub const IP6_PAYLOAD_LEN: usize = ETH_HLEN + 4;
pub const IP6_NEXT: usize = ETH_HLEN + 6;
pub const IP6_SRC: usize = ETH_HLEN + 8;
pub const IP6_DST: usize = ETH_HLEN + 24;
/// First byte after the fixed IPv6 header.
pub const IP6_EXT: usize = ETH_HLEN + IPV6_HLEN;
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_DEST: u8 = 60;
/// Most extension headers walked before giving up (the verifier needs a bound).
const MAX_EXT_HEADERS: usize = 4;

/// Header bytes made linear before parsing, so that they can be read directly.
const LINEAR_HEADERS: u32 = 256;

/// Makes the first bytes of the packet (all the headers the programs look at) directly
/// readable. Most packets already are; the pull is for the rest. Call before [`read`].
#[inline(always)]
pub fn linearize(ctx: &TcContext) {
    let want = ctx.len().min(LINEAR_HEADERS) as usize;
    if ctx.data_end() - ctx.data() < want {
        // On failure reads beyond the linear part return None: the packet is "truncated".
        let _ = ctx.pull_data(want as u32);
    }
}

/// Reads a `T` at `offset` from the start of the frame, straight from packet memory (a helper
/// call per field costs more than the whole lookup otherwise); `None` beyond the linear data.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: the bytes lie within [data, data_end), checked above; no alignment is assumed.
    Some(unsafe { ((start + offset) as *const T).read_unaligned() })
}

/// The fixed IPv6 header fields the programs decide on.
pub struct Ipv6 {
    pub next: u8,
    pub src: Addr,
    pub dst: Addr,
}

/// The IPv6 header of an IPv6 frame, or `None` for anything else.
#[inline(always)]
pub fn ipv6(ctx: &TcContext) -> Option<Ipv6> {
    if u16::from_be(read::<u16>(ctx, 12)?) != ETH_P_IPV6 {
        return None;
    }
    Some(Ipv6 {
        next: read(ctx, IP6_NEXT)?,
        src: read(ctx, IP6_SRC)?,
        dst: read(ctx, IP6_DST)?,
    })
}

/// The 4-tuple of a TCP packet, or `None` for anything else (other protocols, non-first IPv4
/// fragments, IPv6 fragments, truncated headers).
#[inline(always)]
pub fn tcp_flow_key(ctx: &TcContext) -> Option<FlowKey> {
    let ethertype = u16::from_be(read::<u16>(ctx, 12)?);
    let (src_addr, dst_addr, l4) = match ethertype {
        ETH_P_IPV6 => ipv6_l4(ctx, ETH_HLEN)?,
        ETH_P_IP => ipv4_l4(ctx)?,
        _ => return None,
    };
    flow_key_at(ctx, src_addr, dst_addr, l4)
}

/// The 4-tuple of the TCP packet inside an IPv6-in-IPv6 packet (outer header without
/// extension headers), or `None`.
#[inline(always)]
pub fn tunnelled_tcp_flow_key(ctx: &TcContext) -> Option<FlowKey> {
    let (src_addr, dst_addr, l4) = ipv6_l4(ctx, IP6_EXT)?;
    flow_key_at(ctx, src_addr, dst_addr, l4)
}

#[inline(always)]
fn flow_key_at(ctx: &TcContext, src_addr: Addr, dst_addr: Addr, l4: usize) -> Option<FlowKey> {
    let ports = read::<[u8; 4]>(ctx, l4)?;
    Some(FlowKey {
        src_addr,
        dst_addr,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
    })
}

/// Addresses and transport offset of the IPv6 header at `base` (the frame's own header at
/// `ETH_HLEN`, a tunnelled one behind it).
#[inline(always)]
fn ipv6_l4(ctx: &TcContext, base: usize) -> Option<(Addr, Addr, usize)> {
    let mut next = read::<u8>(ctx, base + (IP6_NEXT - ETH_HLEN))?;
    let src = read::<Addr>(ctx, base + (IP6_SRC - ETH_HLEN))?;
    let dst = read::<Addr>(ctx, base + (IP6_DST - ETH_HLEN))?;
    let mut offset = base + IPV6_HLEN;
    for _ in 0..MAX_EXT_HEADERS {
        if next != NEXTHDR_HOP && next != NEXTHDR_ROUTING && next != NEXTHDR_DEST {
            break;
        }
        let header = read::<[u8; 2]>(ctx, offset)?;
        next = header[0];
        offset += (usize::from(header[1]) + 1) * 8;
    }
    (next == IPPROTO_TCP).then_some((src, dst, offset))
}

#[inline(always)]
fn ipv4_l4(ctx: &TcContext) -> Option<(Addr, Addr, usize)> {
    let header = read::<[u8; 20]>(ctx, ETH_HLEN)?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    if header[9] != IPPROTO_TCP || ihl < 20 || fragment_offset != 0 {
        return None;
    }
    let src = ipv4_mapped([header[12], header[13], header[14], header[15]]);
    let dst = ipv4_mapped([header[16], header[17], header[18], header[19]]);
    Some((src, dst, ETH_HLEN + ihl))
}
