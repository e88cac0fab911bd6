//! Header parsing shared by the programs: Ethernet → IPv4/IPv6 (with extension headers) → TCP.

use aya_ebpf::programs::TcContext;
use handoff_common::{FlowKey, ipv4_mapped};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
/// Hop-by-Hop Options, Routing and Destination Options: the extension headers that may stand
/// before TCP in the packets we steer (RH2 and the Home Address option among them).
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;
/// Most extension headers walked before giving up (the verifier needs a bound).
const MAX_EXT_HEADERS: usize = 4;

/// The 4-tuple of a TCP packet, or `None` for anything else (other protocols, non-first IPv4
/// fragments, IPv6 fragments, truncated headers).
#[inline(always)]
pub fn tcp_flow_key(ctx: &TcContext) -> Option<FlowKey> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (src_addr, dst_addr, l4) = match ethertype {
        ETH_P_IPV6 => ipv6(ctx)?,
        ETH_P_IP => ipv4(ctx)?,
        _ => return None,
    };
    let ports = ctx.load::<[u8; 4]>(l4).ok()?;
    Some(FlowKey {
        src_addr,
        dst_addr,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
    })
}

#[inline(always)]
fn ipv6(ctx: &TcContext) -> Option<([u8; 16], [u8; 16], usize)> {
    let mut next = ctx.load::<u8>(ETH_HLEN + 6).ok()?;
    let src = ctx.load::<[u8; 16]>(ETH_HLEN + 8).ok()?;
    let dst = ctx.load::<[u8; 16]>(ETH_HLEN + 24).ok()?;
    let mut offset = ETH_HLEN + IPV6_HLEN;
    for _ in 0..MAX_EXT_HEADERS {
        if next != NEXTHDR_HOP && next != NEXTHDR_ROUTING && next != NEXTHDR_DEST {
            break;
        }
        let header = ctx.load::<[u8; 2]>(offset).ok()?;
        next = header[0];
        offset += (usize::from(header[1]) + 1) * 8;
    }
    (next == IPPROTO_TCP).then_some((src, dst, offset))
}

#[inline(always)]
fn ipv4(ctx: &TcContext) -> Option<([u8; 16], [u8; 16], usize)> {
    let header = ctx.load::<[u8; 20]>(ETH_HLEN).ok()?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    if header[9] != IPPROTO_TCP || ihl < 20 || fragment_offset != 0 {
        return None;
    }
    let src = ipv4_mapped([header[12], header[13], header[14], header[15]]);
    let dst = ipv4_mapped([header[16], header[17], header[18], header[19]]);
    Some((src, dst, ETH_HLEN + ihl))
}
