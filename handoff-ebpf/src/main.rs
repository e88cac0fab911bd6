//! TC programs of Distributed Servers for Linux.
//!
//! `freeze`: drops the packets of TCP connections whose 4-tuple is in the `FREEZE_FLOWS` map, so
//! that a socket under TCP_REPAIR is not disturbed while its state is captured or restored.
#![no_std]
#![no_main]

mod packet;

use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use handoff_common::{FREEZE_FLOWS_CAPACITY, FlowKey, FreezeCounter, FreezeEntry};

/// Frozen flows, filled by userspace (pinned so that every agent of a node shares it).
#[map(name = "FREEZE_FLOWS")]
static FREEZE_FLOWS: HashMap<FlowKey, FreezeEntry> =
    HashMap::with_max_entries(FREEZE_FLOWS_CAPACITY, 0);

/// Per-CPU packet counters, indexed by `FreezeCounter`.
#[map(name = "FREEZE_STATS")]
static FREEZE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FreezeCounter::COUNT, 0);

/// Drops packets of frozen flows; every other packet continues (`TC_ACT_PIPE`, which TCX treats
/// as "next program", so later programs on the same hook still run).
#[classifier]
pub fn freeze(ctx: TcContext) -> i32 {
    let Some(key) = packet::tcp_flow_key(&ctx) else {
        count(FreezeCounter::Skipped);
        return TC_ACT_PIPE;
    };
    // SAFETY: the value is only read to test presence; userspace never holds a reference into it.
    if unsafe { FREEZE_FLOWS.get(key) }.is_some() {
        count(FreezeCounter::Dropped);
        TC_ACT_SHOT
    } else {
        count(FreezeCounter::Passed);
        TC_ACT_PIPE
    }
}

#[inline(always)]
fn count(counter: FreezeCounter) {
    if let Some(value) = FREEZE_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, so no other program instance writes it concurrently.
        unsafe { *value += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
