//! Server node: ingress (decapsulate, restore route-optimized packets, freeze, redirect) and
//! egress (Home Address option towards route-optimized peers, or the reverse tunnel).

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use handoff_common::{
    BindingKey, Counter, FLOW_BOUNCED, FLOW_FROZEN, FLOW_LEASED, FLOW_QUEUED, FLOW_REDIRECT,
    FlowEntry, FlowKey, NODE_REVERSE_TUNNEL, QueuedPacket,
};

use crate::{
    FLOWS, FROZEN_PACKETS, LEASE, LOCAL_HOMES, PIPE, RO_BINDINGS, config, count, discard,
    packet::{self, IP6_EXT, IPPROTO_IPV6, IPPROTO_MH, NEXTHDR_DEST, NEXTHDR_ROUTING},
    rewrite::{self, Failed, Readdress},
};

/// Type 2 Routing Header: routing type and the only valid header length and segments left.
const RH2_TYPE: u8 = 2;
const RH2_HDR_EXT_LEN: u8 = 2;
const RH2_SEGMENTS_LEFT: u8 = 1;
/// Home Address destination option type (RFC 6275 §6.3).
pub const OPT_HOME_ADDRESS: u8 = 0xc9;

/// Whether `entry`, a freeze, has lapsed: it is leased and the agent's lease ran out (handoffd
/// died or hangs): its packets go to the stack, which resets the connection if no socket is
/// left for it, instead of being dropped for good.
#[inline(always)]
fn lapsed(entry: &FlowEntry) -> bool {
    if entry.flags & FLOW_LEASED == 0 {
        return false;
    }
    let until = LEASE.get(0).copied().unwrap_or(0);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    now >= until
}

/// The freeze decision for a TCP packet.
#[inline(always)]
pub fn freeze_verdict(ctx: &TcContext, key: &FlowKey) -> i32 {
    // SAFETY: the entry is copied out at once.
    match unsafe { FLOWS.get(key) }.copied() {
        Some(entry) if entry.action != FLOW_REDIRECT && lapsed(&entry) => {
            count(Counter::Lapsed);
            PIPE
        }
        Some(entry) if entry.action == FLOW_FROZEN => discard(Counter::Dropped),
        Some(entry) if entry.action == FLOW_QUEUED => queue(ctx, key),
        _ => {
            count(Counter::Passed);
            PIPE
        }
    }
}

pub fn ingress(ctx: &TcContext) -> i32 {
    let Some(config) = config() else {
        return discard(Counter::DropRewriteFailed);
    };
    if let Some(mut ip) = packet::ipv6(ctx) {
        // (a) IPv6-in-IPv6 from the home agent or another member.
        if ip.next == IPPROTO_IPV6 && ip.dst == config.local {
            // (c) for a connection another member owns now: re-address the tunnel and send it
            // on (no decapsulation and re-encapsulation: the kernel refuses to encapsulate an
            // skb still marked as encapsulated, and two header moves cost more than two stores).
            if let Some(inner) = packet::tunnelled_tcp_flow_key(ctx) {
                // SAFETY: the entry is copied out at once.
                if let Some(entry) = unsafe { FLOWS.get(inner) }.copied()
                    && entry.action == FLOW_REDIRECT
                {
                    if entry.node == ip.src {
                        return bounced(&inner);
                    }
                    if rewrite::set_addresses(ctx, &config.local, &entry.node).is_err() {
                        return discard(Counter::DropRewriteFailed);
                    }
                    count(Counter::Redirected);
                    return rewrite::forward_from_ingress(
                        ctx,
                        &config.local,
                        &entry.node,
                        IPPROTO_IPV6,
                    );
                }
            }
            if rewrite::decapsulate(ctx).is_err() {
                return discard(Counter::DropRewriteFailed);
            }
            count(Counter::Decapsulated);
            match packet::ipv6(ctx) {
                Some(inner) => ip = inner,
                None => return discard(Counter::DropRewriteFailed),
            }
        }
        // (b) Route-optimized: dst = CoA, RH2 carrying the DSA.
        if ip.next == NEXTHDR_ROUTING {
            match restore_rh2(ctx) {
                Ok(Some(verdict)) => return verdict,
                Ok(None) => {}
                Err(Failed) => return discard(Counter::DropRewriteFailed),
            }
        }
    }
    let Some(key) = packet::tcp_flow_key(ctx) else {
        count(Counter::Skipped);
        return PIPE;
    };
    // SAFETY: the entry is copied out at once.
    match unsafe { FLOWS.get(key) }.copied() {
        // (d) Frozen while its socket is captured or restored — unless the freeze lapsed.
        Some(entry) if entry.action != FLOW_REDIRECT && lapsed(&entry) => {
            count(Counter::Lapsed);
            PIPE
        }
        Some(entry) if entry.action == FLOW_FROZEN => discard(Counter::Dropped),
        Some(entry) if entry.action == FLOW_QUEUED => queue(ctx, &key),
        // (c) Owned by another member now: tunnel it there.
        Some(entry) if entry.action == FLOW_REDIRECT => {
            if rewrite::encapsulate(ctx, &config.local, &entry.node).is_err() {
                return discard(Counter::DropRewriteFailed);
            }
            count(Counter::Redirected);
            rewrite::forward_from_ingress(ctx, &config.local, &entry.node, IPPROTO_IPV6)
        }
        _ => {
            count(Counter::Passed);
            PIPE
        }
    }
}

/// A packet of a redirected flow came back from the member it is redirected to: that member
/// has no socket for it and points it here. Marks the entry for handoffd (`FLOW_BOUNCED`) and
/// drops the packet rather than send it back and forth until its hop limit runs out.
#[inline(always)]
fn bounced(key: &FlowKey) -> i32 {
    if let Some(entry) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value; a concurrent update replaces it whole, a lost flag is set again
        // by the next packet.
        unsafe { (*entry).flags |= FLOW_BOUNCED };
    }
    discard(Counter::DropBounced)
}

/// Hands the packet (the whole frame, after the header) to userspace and drops it.
#[inline(always)]
fn queue(ctx: &TcContext, key: &FlowKey) -> i32 {
    let len = ctx.len();
    let header = QueuedPacket { flow: *key, len };
    // The flags' upper half asks the kernel to append that many bytes of the packet.
    FROZEN_PACKETS.output(ctx, header, len);
    discard(Counter::Queued)
}

/// Validates a Type 2 Routing Header right after the IPv6 header and turns the packet back into
/// one addressed to the home address. `Ok(None)`: restored (or another routing type, left to the
/// kernel); `Ok(Some(verdict))`: handled here.
#[inline(always)]
fn restore_rh2(ctx: &TcContext) -> Result<Option<i32>, Failed> {
    let Some(rh) = packet::read::<[u8; 24]>(ctx, IP6_EXT) else {
        // Too short even for its own fixed part.
        return Ok(Some(discard(Counter::DropRh2Malformed)));
    };
    if rh[2] != RH2_TYPE {
        return Ok(None);
    }
    if rh[1] != RH2_HDR_EXT_LEN || rh[3] != RH2_SEGMENTS_LEFT {
        return Ok(Some(discard(Counter::DropRh2Malformed)));
    }
    let mut home = [0u8; 16];
    home.copy_from_slice(&rh[8..24]);
    // SAFETY: presence test only.
    if unsafe { LOCAL_HOMES.get(home) }.is_none() {
        return Ok(Some(discard(Counter::DropRh2ForeignHome)));
    }
    if rh[0] == IPPROTO_MH {
        // A Binding Acknowledgement: mipv6d reads it, headers intact, from its packet socket.
        return Ok(Some(discard(Counter::MobilityToDaemon)));
    }
    rewrite::remove_ext(ctx, 24, rh[0], Readdress::Destination(&home))?;
    count(Counter::Rh2Restored);
    Ok(None)
}

pub fn egress(ctx: &TcContext) -> i32 {
    let Some(ip) = packet::ipv6(ctx) else {
        return PIPE;
    };
    // SAFETY: presence test only.
    if unsafe { LOCAL_HOMES.get(ip.src) }.is_none() {
        return PIPE;
    }
    let Some(config) = config() else {
        return PIPE;
    };
    // Mobility signalling from the DSA (HoTI) must take the home path, never the optimized one.
    if ip.next != IPPROTO_MH {
        let key = BindingKey {
            peer: ip.dst,
            home: ip.src,
        };
        // SAFETY: the entry is copied out at once.
        if let Some(care_of) = unsafe { RO_BINDINGS.get(key) }.copied() {
            return match insert_hao(ctx, ip.next, &ip.src, &care_of.addr) {
                Ok(()) => {
                    count(Counter::HaoInserted);
                    PIPE
                }
                Err(Failed) => discard(Counter::DropRewriteFailed),
            };
        }
    }
    if config.flags & NODE_REVERSE_TUNNEL != 0 {
        if rewrite::encapsulate(ctx, &config.local, &config.home_agent).is_err() {
            return discard(Counter::DropRewriteFailed);
        }
        count(Counter::ReverseTunneled);
        return rewrite::forward_from_egress(ctx);
    }
    PIPE
}

/// src := care-of address, and a Destination Options header with the Home Address option
/// (PadN of 4 so that the option sits at 8n+6, RFC 6275 §6.3).
#[inline(always)]
fn insert_hao(
    ctx: &TcContext,
    next: u8,
    home: &handoff_common::Addr,
    care_of: &handoff_common::Addr,
) -> Result<(), Failed> {
    let mut header = [0u8; 24];
    header[0] = next;
    header[1] = 2;
    header[2..6].copy_from_slice(&[1, 2, 0, 0]);
    header[6] = OPT_HOME_ADDRESS;
    header[7] = 16;
    header[8..24].copy_from_slice(home);
    rewrite::insert_ext(ctx, &header, NEXTHDR_DEST, Readdress::Source(care_of))
}
