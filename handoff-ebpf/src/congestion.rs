//! Socket operations (a cgroup program): a connection re-created at an acceptor gets the
//! congestion window its donor's socket had, instead of the kernel's initial window.
//!
//! A restore's repair-mode `connect()` goes through `tcp_finish_connect` → `tcp_init_transfer`,
//! which sets the initial window and then runs this program with
//! `BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB`. The acceptor froze the connection's packets in `FLOWS`
//! before, with the captured window in the entry; `TCP_BPF_IW` sets it while the socket has sent
//! no data, which a socket in repair mode never has.
//!
//! Attached to the root of the cgroup hierarchy, the program runs for the sockets of every
//! network namespace of the host, where other data paths froze connections of their own (one per
//! namespace: each server node of a testbed, containers sharing a host): it acts only on sockets
//! of the namespace its own data path belongs to (`NETNS_COOKIE`), whatever their 4-tuple.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_ops},
    helpers::{bpf_get_netns_cookie, bpf_setsockopt},
    programs::SockOpsContext,
};
use handoff_common::{Counter, FLOW_FROZEN, FlowKey, ipv4_mapped};

use crate::{FLOWS, NETNS_COOKIE, count};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOL_TCP: i32 = 6;
/// `TCP_BPF_IW` (`linux/bpf.h`): the initial congestion window, in segments.
const TCP_BPF_IW: i32 = 1001;

/// On an active open (a restore's connect among them) in this data path's namespace: if the
/// connection is frozen here with a window, sets it. Every other socket and operation returns at
/// once.
#[inline(always)]
pub fn restore_cwnd(ctx: &SockOpsContext) {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return;
    }
    // SAFETY: `ctx.ops` is the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    if NETNS_COOKIE.get(0).copied() != Some(netns) {
        return;
    }
    let Some(key) = inbound_key(ctx.ops) else {
        return;
    };
    // SAFETY: the entry is copied out at once.
    let Some(entry) = (unsafe { FLOWS.get(key) }).copied() else {
        return;
    };
    if entry.action != FLOW_FROZEN || entry.cwnd == 0 {
        return;
    }
    let mut cwnd = entry.cwnd.min(i32::MAX as u32) as i32;
    // SAFETY: `ctx.ops` is the program's context; `cwnd` is a live int of the length passed.
    let ret = unsafe {
        bpf_setsockopt(
            ctx.ops.cast(),
            SOL_TCP,
            TCP_BPF_IW,
            (&mut cwnd as *mut i32).cast(),
            size_of::<i32>() as i32,
        )
    };
    count(if ret == 0 {
        Counter::CwndApplied
    } else {
        Counter::CwndFailed
    });
}

/// The `FLOWS` key of the packets that arrive for the socket: from the peer to us. Addresses
/// are in network byte order in the context (IPv4 in its mapped form in the key); `local_port`
/// is in host byte order, `remote_port` in network byte order in the whole 32-bit field (the
/// kernel shifts the port into its upper half on little-endian machines).
#[inline(always)]
fn inbound_key(ops: *mut bpf_sock_ops) -> Option<FlowKey> {
    // Fields of the context, each read as one 32-bit word at a constant offset from the
    // context: the only access the verifier allows. All are read before any branch: a load in a
    // branch may be compiled from a pointer computed before it, which the verifier refuses.
    macro_rules! field {
        ($($field:tt)+) => {
            // SAFETY: `ops` is the program's context, valid for the whole run.
            unsafe { read_volatile(addr_of!((*ops).$($field)+)) }
        };
    }
    let family = field!(family);
    let remote_ip4 = field!(remote_ip4);
    let local_ip4 = field!(local_ip4);
    let remote_ip6 = [
        field!(remote_ip6[0]),
        field!(remote_ip6[1]),
        field!(remote_ip6[2]),
        field!(remote_ip6[3]),
    ];
    let local_ip6 = [
        field!(local_ip6[0]),
        field!(local_ip6[1]),
        field!(local_ip6[2]),
        field!(local_ip6[3]),
    ];
    let remote_port = field!(remote_port);
    let local_port = field!(local_port);
    let (src_addr, dst_addr) = match family {
        AF_INET6 => (ipv6_bytes(remote_ip6), ipv6_bytes(local_ip6)),
        AF_INET => (
            ipv4_mapped(remote_ip4.to_ne_bytes()),
            ipv4_mapped(local_ip4.to_ne_bytes()),
        ),
        _ => return None,
    };
    Some(FlowKey {
        src_addr,
        dst_addr,
        src_port: u32::from_be(remote_port) as u16,
        dst_port: local_port as u16,
    })
}

/// An address from the context's four words (each in network byte order in memory).
#[inline(always)]
fn ipv6_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    out
}
