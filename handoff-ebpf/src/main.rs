//! TC programs of Distributed Servers for Linux. Every packet transformation of the design's
//! packet paths (DESIGN.md §3) is one of these programs, because the kernels we run on have
//! neither Mobile IPv6 nor an IPv6 tunnel:
//!
//! - `freeze`: drops the packets of frozen connections (a socket under TCP_REPAIR).
//! - `node_ingress` / `node_egress`: a server node — decapsulation, RH2 restore, freeze,
//!   per-connection redirect; Home Address option or reverse tunnel on the way out.
//! - `ha_ingress`: the home agent — tunnels packets for registered home addresses.
//! - `cn_ingress` / `cn_egress`: Mobile IPv6 correspondent support for clients whose kernel has
//!   none.
//!
//! One program is not a TC program: `restore_cwnd` (socket operations, attached to a cgroup)
//! gives a connection re-created at an acceptor its donor's congestion window.
#![no_std]
#![no_main]

mod congestion;
mod correspondent;
mod home_agent;
mod node;
mod packet;
mod rewrite;

use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT},
    macros::{classifier, map, sock_ops},
    maps::{Array, HashMap, PerCpuArray, PerfEventArray, RingBuf},
    programs::{SockOpsContext, TcContext},
};
use handoff_common::{
    Addr, BindingKey, CareOf, Counter, FLOW_MAP_CAPACITY, FlowEntry, FlowKey, NodeConfig,
    QueuedPacket,
};

/// Frozen connections, and connections another member owns now; filled by userspace.
#[map(name = "FLOWS")]
static FLOWS: HashMap<FlowKey, FlowEntry> = HashMap::with_max_entries(FLOW_MAP_CAPACITY, 0);

/// Packets of `FLOW_QUEUED` flows, for replay on the acceptor.
#[map(name = "FROZEN_PACKETS")]
static FROZEN_PACKETS: PerfEventArray<QueuedPacket> = PerfEventArray::new(0);

/// The home addresses (DSAs) this node serves.
#[map(name = "LOCAL_HOMES")]
static LOCAL_HOMES: HashMap<Addr, u32> = HashMap::with_max_entries(256, 0);

/// Server side: route-optimized bindings (client, DSA) → this node's care-of address.
#[map(name = "RO_BINDINGS")]
static RO_BINDINGS: HashMap<BindingKey, CareOf> = HashMap::with_max_entries(FLOW_MAP_CAPACITY, 0);

/// Home agent binding cache: home address → care-of address.
#[map(name = "HA_BINDINGS")]
static HA_BINDINGS: HashMap<Addr, CareOf> = HashMap::with_max_entries(FLOW_MAP_CAPACITY, 0);

/// Correspondent binding cache: home address → care-of address.
#[map(name = "CN_BINDINGS")]
static CN_BINDINGS: HashMap<Addr, CareOf> = HashMap::with_max_entries(FLOW_MAP_CAPACITY, 0);

/// This node's settings.
#[map(name = "CONFIG")]
static CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `Counter`.
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Until when (`CLOCK_MONOTONIC` ns) the agent is alive: it renews this while it runs. Leased
/// freezes (`FLOW_LEASED`) hold only until then.
#[map(name = "LEASE")]
static LEASE: Array<u64> = Array::with_max_entries(1, 0);

/// The cookie of the network namespace `restore_cwnd` acts in: the one its data path belongs to.
/// Userspace writes it before attaching the program, which runs for every namespace of the host.
///
/// A map of its own rather than a field of `CONFIG` (whose layout change would force operators to
/// remove the pinned data path on upgrade) or a read-only global (fixed when `Datapath::load`
/// creates the maps, while the namespace is the one `attach_restore_cwnd` is called in, as with
/// every attachment: callers may load in one namespace and attach in another); not pinned, since
/// it describes this process's attachment, not the maps shared with the node's other agents.
#[map(name = "NETNS_COOKIE")]
static NETNS_COOKIE: Array<u64> = Array::with_max_entries(1, 0);

/// Home Address options without a binding, for mipv6d's Binding Errors.
#[map(name = "BINDING_ERRORS")]
static BINDING_ERRORS: RingBuf = RingBuf::with_byte_size(16 * 4096, 0);

/// Drops packets of frozen flows (redirect entries are the node programs' business); every other
/// packet continues (`TC_ACT_PIPE`, which TCX treats
/// as "next program", so later programs on the same hook still run).
#[classifier]
pub fn freeze(ctx: TcContext) -> i32 {
    packet::linearize(&ctx);
    match packet::tcp_flow_key(&ctx) {
        Some(key) => node::freeze_verdict(&ctx, &key),
        None => {
            count(Counter::Skipped);
            PIPE
        }
    }
}

/// Server node ingress.
#[classifier]
pub fn node_ingress(ctx: TcContext) -> i32 {
    packet::linearize(&ctx);
    node::ingress(&ctx)
}

/// Server node egress.
#[classifier]
pub fn node_egress(ctx: TcContext) -> i32 {
    packet::linearize(&ctx);
    node::egress(&ctx)
}

/// Home agent ingress.
#[classifier]
pub fn ha_ingress(ctx: TcContext) -> i32 {
    packet::linearize(&ctx);
    home_agent::ingress(&ctx)
}

/// Correspondent ingress.
#[classifier]
pub fn cn_ingress(ctx: TcContext) -> i32 {
    packet::linearize(&ctx);
    correspondent::ingress(&ctx)
}

/// Correspondent egress.
#[classifier]
pub fn cn_egress(ctx: TcContext) -> i32 {
    packet::linearize(&ctx);
    correspondent::egress(&ctx)
}

/// Socket operations: the donor's congestion window for a restored connection (cgroup program).
#[sock_ops]
pub fn restore_cwnd(ctx: SockOpsContext) -> u32 {
    congestion::restore_cwnd(&ctx);
    // Socket operations programs answer 1 (the kernel ignores the value on this operation).
    1
}

/// Verdict: let the packet continue (TCX: on to the next program, then the stack).
const PIPE: i32 = TC_ACT_PIPE;
/// Verdict: drop the packet.
const SHOT: i32 = TC_ACT_SHOT;

/// Counts `counter` and drops the packet.
#[inline(always)]
fn discard(counter: Counter) -> i32 {
    count(counter);
    SHOT
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, so no other program instance writes it concurrently.
        unsafe { *value += 1 };
    }
}

/// This node's settings (all zero until userspace writes them).
#[inline(always)]
fn config() -> Option<&'static NodeConfig> {
    CONFIG.get(0)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
