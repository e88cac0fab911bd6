//! Packet rewrites: extension headers in and out, IPv6-in-IPv6 in and out, and sending a packet
//! whose destination changed towards its new next hop. Each helper leaves the packet consistent
//! (next header, payload length) or returns `Err` with the packet possibly half-changed — the
//! caller then drops it.
//!
//! Every store uses `BPF_F_RECOMPUTE_CSUM` so that `CHECKSUM_COMPLETE` packets stay right; no
//! transport checksum is touched, since both ends compute them over the home address
//! (RFC 6275 §6.1.1).

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_FIXED_GSO,
        BPF_F_RECOMPUTE_CSUM, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
        bpf_adj_room_mode::{BPF_ADJ_ROOM_MAC, BPF_ADJ_ROOM_NET},
        bpf_fib_lookup, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use handoff_common::{Addr, Counter};

use crate::{
    discard,
    packet::{self, ETH_HLEN, IP6_PAYLOAD_LEN, IP6_SRC, IPPROTO_IPV6},
};

const AF_INET6: u8 = 10;
const OUTER_HOP_LIMIT: u8 = 64;

pub struct Failed;

#[inline(always)]
fn store<T>(ctx: &TcContext, offset: usize, value: &T) -> Result<(), Failed> {
    ctx.store(offset, value, BPF_F_RECOMPUTE_CSUM as u64)
        .map_err(|_| Failed)
}

/// The one address a header insertion or removal also rewrites.
pub enum Readdress<'a> {
    /// The IPv6 source address becomes this.
    Source(&'a Addr),
    /// The IPv6 destination address becomes this.
    Destination(&'a Addr),
}

/// Offset of the IPv6 header's bytes after the flow label: payload length, next header, hop
/// limit, source and destination (36 bytes), which the rewrites store in one piece.
const IP6_TAIL: usize = IP6_PAYLOAD_LEN;
const IP6_TAIL_LEN: usize = 36;

/// The IPv6 header's bytes 4..40, with the payload length changed by `delta`, the next header
/// set to `next` and one address replaced.
#[inline(always)]
fn rewritten_tail(
    ctx: &TcContext,
    delta: i32,
    next: u8,
    address: Readdress,
) -> Result<[u8; IP6_TAIL_LEN], Failed> {
    let mut tail = packet::read::<[u8; IP6_TAIL_LEN]>(ctx, IP6_TAIL).ok_or(Failed)?;
    let len = i32::from(u16::from_be_bytes([tail[0], tail[1]])) + delta;
    if !(0..=i32::from(u16::MAX)).contains(&len) {
        return Err(Failed);
    }
    tail[..2].copy_from_slice(&(len as u16).to_be_bytes());
    tail[2] = next;
    match address {
        Readdress::Source(addr) => tail[4..20].copy_from_slice(addr),
        Readdress::Destination(addr) => tail[20..36].copy_from_slice(addr),
    }
    Ok(tail)
}

/// Inserts the 24-byte extension header `header` right after the IPv6 header; `kind` becomes the
/// IPv6 next header (the header's own first byte must carry the old one), and `address` is
/// rewritten. One store writes the IPv6 header's changed part and the new header together
/// (each store is a helper call that also updates `CHECKSUM_COMPLETE`).
#[inline(always)]
pub fn insert_ext(
    ctx: &TcContext,
    header: &[u8; 24],
    kind: u8,
    address: Readdress,
) -> Result<(), Failed> {
    let tail = rewritten_tail(ctx, 24, kind, address)?;
    // FIXED_GSO: segments keep the MSS; the MSS clamp (datapath::mtu) left room for the header.
    ctx.adjust_room(24, BPF_ADJ_ROOM_NET, BPF_F_ADJ_ROOM_FIXED_GSO as u64)
        .map_err(|_| Failed)?;
    let mut bytes = [0u8; IP6_TAIL_LEN + 24];
    bytes[..IP6_TAIL_LEN].copy_from_slice(&tail);
    bytes[IP6_TAIL_LEN..].copy_from_slice(header);
    store(ctx, IP6_TAIL, &bytes)
}

/// Removes the `len`-byte extension header right after the IPv6 header, whose next header was
/// `inner`, and rewrites `address`. FIXED_GSO: a GSO packet keeps its segment size — without it
/// the kernel would grow `gso_size` by `len` (room for more payload per segment), and the
/// receiving TCP, which takes `gso_size` as the peer's segment size, then ran at half the
/// throughput.
#[inline(always)]
pub fn remove_ext(ctx: &TcContext, len: u16, inner: u8, address: Readdress) -> Result<(), Failed> {
    let tail = rewritten_tail(ctx, -i32::from(len), inner, address)?;
    store(ctx, IP6_TAIL, &tail)?;
    ctx.adjust_room(
        -i32::from(len),
        BPF_ADJ_ROOM_NET,
        BPF_F_ADJ_ROOM_FIXED_GSO as u64,
    )
    .map_err(|_| Failed)
}

/// Overwrites both IPv6 addresses (adjacent: one store).
#[inline(always)]
pub fn set_addresses(ctx: &TcContext, src: &Addr, dst: &Addr) -> Result<(), Failed> {
    let mut both = [0u8; 32];
    both[..16].copy_from_slice(src);
    both[16..].copy_from_slice(dst);
    store(ctx, IP6_SRC, &both)
}

/// Wraps the packet in an outer IPv6 header from `src` to `dst` (next header 41).
#[inline(always)]
pub fn encapsulate(ctx: &TcContext, src: &Addr, dst: &Addr) -> Result<(), Failed> {
    let inner_len = ctx.len() as usize - ETH_HLEN;
    if inner_len > usize::from(u16::MAX) {
        return Err(Failed);
    }
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV6;
    ctx.adjust_room(40, BPF_ADJ_ROOM_MAC, flags as u64)
        .map_err(|_| Failed)?;
    let mut outer = [0u8; 40];
    outer[0] = 0x60;
    outer[4..6].copy_from_slice(&(inner_len as u16).to_be_bytes());
    outer[6] = IPPROTO_IPV6;
    outer[7] = OUTER_HOP_LIMIT;
    outer[8..24].copy_from_slice(src);
    outer[24..40].copy_from_slice(dst);
    store(ctx, ETH_HLEN, &outer)
}

/// Removes the outer IPv6 header of an IPv6-in-IPv6 packet (the inner segment size stays, as in
/// `remove_ext`).
#[inline(always)]
pub fn decapsulate(ctx: &TcContext) -> Result<(), Failed> {
    let flags = BPF_F_ADJ_ROOM_DECAP_L3_IPV6 | BPF_F_ADJ_ROOM_FIXED_GSO;
    ctx.adjust_room(-40, BPF_ADJ_ROOM_MAC, flags as u64)
        .map_err(|_| Failed)
}

/// At ingress: sends the packet (whose destination is now `dst`, from `src`) out of the
/// interface the routing table chooses for it, to the next hop the lookup found — rewriting the
/// destination in a TC program does not redo routing. One route lookup per packet: the next hop
/// goes to the redirect (without it the redirect would look the route up again), and the lookup
/// skips the neighbour table, which the redirect consults (and fills) itself. The FIB lookup,
/// like forwarding, needs `forwarding` enabled on the receiving interface (nodes and home
/// agents are routers for these packets).
#[inline(always)]
pub fn forward_from_ingress(ctx: &TcContext, src: &Addr, dst: &Addr, l4_protocol: u8) -> i32 {
    // SAFETY: plain-data struct for which all-zero is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    params.l4_protocol = l4_protocol;
    // tot_len stays 0: the kernel then checks the MTU with is_skb_forwardable, which
    // understands GSO packets.
    // SAFETY: ctx.skb.skb is the program's valid __sk_buff.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv6_src = words(src);
    params.__bindgen_anon_4.ipv6_dst = words(dst);
    // SAFETY: params is a valid bpf_fib_lookup of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return discard(Counter::DropNoRoute);
    }
    // The lookup replaced the destination with the next hop (the gateway, or the destination
    // itself when it is on the link).
    let mut next_hop = bpf_redir_neigh {
        nh_family: u32::from(AF_INET6),
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            // SAFETY: the lookup filled the IPv6 member.
            ipv6_nh: unsafe { params.__bindgen_anon_4.ipv6_dst },
        },
    };
    // SAFETY: next_hop is a valid bpf_redir_neigh of the size passed.
    unsafe {
        bpf_redirect_neigh(
            params.ifindex,
            &mut next_hop,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}

/// At egress: sends the packet, whose destination changed, out of the same interface with the
/// next hop of a fresh route lookup for the new destination (no forwarding needed: the host is
/// the sender).
#[inline(always)]
pub fn forward_from_egress(ctx: &TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the program's valid __sk_buff; a null parameter block asks the
    // kernel to look the route and next hop up itself.
    unsafe {
        let ifindex = (*ctx.skb.skb).ifindex;
        bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32
    }
}

/// An address as the four native-endian words the FIB lookup takes (byte order preserved).
#[inline(always)]
fn words(addr: &Addr) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (i, word) in out.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ]);
    }
    out
}
