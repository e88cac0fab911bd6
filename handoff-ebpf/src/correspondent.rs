//! Correspondent node support for clients whose kernel has no Mobile IPv6: RH2 on the way out to
//! a bound home address, Home Address option validated and removed on the way in.

use aya_ebpf::programs::TcContext;
use handoff_common::{Addr, BindingErrorEvent, Counter};

use crate::{
    BINDING_ERRORS, CN_BINDINGS, PIPE, count, discard,
    node::OPT_HOME_ADDRESS,
    packet::{self, IP6_EXT, IPPROTO_MH, NEXTHDR_DEST, NEXTHDR_ROUTING},
    rewrite::{self, Readdress},
};

/// Longest Destination Options header examined (hdr ext len ≤ 7); longer ones go to the kernel.
const MAX_DEST_OPTS_LEN: usize = 64;
/// Most options walked in it.
const MAX_OPTIONS: usize = 12;
const OPT_PAD1: u8 = 0;
const OPT_PADN: u8 = 1;

pub fn egress(ctx: &TcContext) -> i32 {
    let Some(ip) = packet::ipv6(ctx) else {
        return PIPE;
    };
    // HoT and other signalling to the home address must not be route-optimized; mipv6d builds
    // its Binding Acknowledgements with their RH2 itself.
    if ip.next == IPPROTO_MH {
        return PIPE;
    }
    // SAFETY: the entry is copied out at once.
    let Some(care_of) = unsafe { CN_BINDINGS.get(ip.dst) }.copied() else {
        return PIPE;
    };
    let mut rh2 = [0u8; 24];
    rh2[0] = ip.next;
    rh2[1] = 2;
    rh2[2] = 2;
    rh2[3] = 1;
    rh2[8..24].copy_from_slice(&ip.dst);
    if rewrite::insert_ext(
        ctx,
        &rh2,
        NEXTHDR_ROUTING,
        Readdress::Destination(&care_of.addr),
    )
    .is_err()
    {
        return discard(Counter::DropRewriteFailed);
    }
    count(Counter::Rh2Inserted);
    rewrite::forward_from_egress(ctx)
}

pub fn ingress(ctx: &TcContext) -> i32 {
    let Some(ip) = packet::ipv6(ctx) else {
        return PIPE;
    };
    if ip.next != NEXTHDR_DEST {
        return PIPE;
    }
    let Some(fixed) = packet::read::<[u8; 2]>(ctx, IP6_EXT) else {
        return discard(Counter::DropHaoMalformed);
    };
    let (inner, len) = (fixed[0], (usize::from(fixed[1]) + 1) * 8);
    if len > MAX_DEST_OPTS_LEN {
        return PIPE;
    }
    let home = match home_address_option(ctx, len) {
        Ok(Some(home)) => home,
        // Destination options without a Home Address option: the kernel's business.
        Ok(None) => return PIPE,
        Err(counter) => return discard(counter),
    };
    if home[0] == 0xff {
        return discard(Counter::DropHaoMulticast);
    }
    if inner == IPPROTO_MH {
        // A Binding Update: mipv6d reads it, headers intact, from its packet socket.
        return discard(Counter::MobilityToDaemon);
    }
    // SAFETY: the entry is copied out at once.
    let bound = unsafe { CN_BINDINGS.get(home) }.copied();
    if bound.is_none_or(|care_of| care_of.addr != ip.src) {
        report_binding_error(&home, &ip.src, &ip.dst);
        return discard(Counter::DropHaoNoBinding);
    }
    if rewrite::remove_ext(ctx, len as u16, inner, Readdress::Source(&home)).is_err() {
        return discard(Counter::DropRewriteFailed);
    }
    count(Counter::HaoAccepted);
    PIPE
}

/// The home address of the (single) Home Address option in the Destination Options header of
/// `len` bytes after the IPv6 header; `Err` names why the header is refused.
#[inline(always)]
fn home_address_option(ctx: &TcContext, len: usize) -> Result<Option<Addr>, Counter> {
    let end = IP6_EXT + len;
    let mut offset = IP6_EXT + 2;
    let mut home: Option<Addr> = None;
    for _ in 0..MAX_OPTIONS {
        if offset >= end {
            break;
        }
        // Helper loads here: the verifier cannot follow direct packet access at an offset that
        // the loop computes.
        let kind = ctx
            .load::<u8>(offset)
            .map_err(|_| Counter::DropHaoMalformed)?;
        if kind == OPT_PAD1 {
            offset += 1;
            continue;
        }
        let opt_len = usize::from(
            ctx.load::<u8>(offset + 1)
                .map_err(|_| Counter::DropHaoMalformed)?,
        );
        if offset + 2 + opt_len > end {
            return Err(Counter::DropHaoMalformed);
        }
        if kind == OPT_HOME_ADDRESS {
            if home.is_some() || opt_len != 16 {
                return Err(Counter::DropHaoMalformed);
            }
            home = Some(
                ctx.load::<Addr>(offset + 2)
                    .map_err(|_| Counter::DropHaoMalformed)?,
            );
        } else if kind != OPT_PADN && kind >> 6 != 0 {
            // An unknown option whose action bits say "do not skip": we cannot hand the packet
            // to the kernel without the HAO removed, nor remove the HAO and keep this one.
            return Err(Counter::DropHaoMalformed);
        }
        offset += 2 + opt_len;
    }
    if home.is_some() && offset != end {
        return Err(Counter::DropHaoMalformed);
    }
    Ok(home)
}

#[inline(always)]
fn report_binding_error(home: &Addr, care_of: &Addr, dst: &Addr) {
    let event = BindingErrorEvent {
        home: *home,
        care_of: *care_of,
        dst: *dst,
    };
    if BINDING_ERRORS
        .output::<BindingErrorEvent>(&event, 0)
        .is_err()
    {
        count(Counter::BindingErrorLost);
    }
}
