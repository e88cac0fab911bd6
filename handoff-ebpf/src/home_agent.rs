//! Home agent: packets for a registered home address are tunnelled to its care-of address;
//! reverse-tunnelled packets from a node are decapsulated and routed on by the kernel.

use aya_ebpf::programs::TcContext;
use handoff_common::Counter;

use crate::{
    HA_BINDINGS, PIPE, config, count, discard,
    packet::{self, IPPROTO_IPV6},
    rewrite,
};

pub fn ingress(ctx: &TcContext) -> i32 {
    let (Some(ip), Some(config)) = (packet::ipv6(ctx), config()) else {
        return PIPE;
    };
    if ip.next == IPPROTO_IPV6 && ip.dst == config.local {
        if rewrite::decapsulate(ctx).is_err() {
            return discard(Counter::DropRewriteFailed);
        }
        count(Counter::Decapsulated);
        return PIPE;
    }
    // SAFETY: the entry is copied out at once.
    let Some(care_of) = unsafe { HA_BINDINGS.get(ip.dst) }.copied() else {
        return PIPE;
    };
    if rewrite::encapsulate(ctx, &config.local, &care_of.addr).is_err() {
        return discard(Counter::DropRewriteFailed);
    }
    count(Counter::HaTunneled);
    rewrite::forward_from_ingress(ctx, &config.local, &care_of.addr, IPPROTO_IPV6)
}
